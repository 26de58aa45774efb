//! The durable AMQP topology of a vhost — durable exchanges, durable queues (with the id naming their logs)
//! and the bindings between durable ends — as records ([`Definitions`] and its parts), which
//! [`crate::definitions_log`] keeps on the log engine.
//!
//! Builds of data-directory format 1 kept them in one JSON file, `<dir>/definitions.json`, rewritten on every
//! change; [`DefinitionsFile`] reads such a file once, to fold it into the log.
//!
//! Order of writes keeps crashes harmless (as for Kafka topics): a durable queue's logs are created before
//! the definitions name it, and the definitions stop naming it before its logs are deleted; logs no
//! definition names are deleted at open ([`crate::queue_log::QueueLogs::delete_orphans`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::exchanges::{BindingArgs, Destination, ExchangeKind, ExchangeSpec, HeaderValue};
use crate::persist::write_atomic;
use crate::queue_args::QueueArgs;

/// Version of the definitions file format.
/// 2: binding arguments keep numbers and byte arrays as values ([`HeaderValue::Int`], [`HeaderValue::Float`],
/// [`HeaderValue::Bytes`]); version 1 stored them as the protocol crate's rendering (`Other("LongInt(5)")`) and is
/// read by upgrading those values.
const DEFINITIONS_VERSION: u32 = 2;
/// File name inside the vhost's directory.
const FILE_NAME: &str = "definitions.json";

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definitions {
    pub version: u32,
    /// The id the next durable queue gets (ids are never reused, so a log name always means one queue).
    pub next_queue_id: u64,
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueDef>,
    pub bindings: Vec<BindingDef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    #[serde(default)]
    pub alternate_exchange: Option<String>,
}

impl ExchangeDef {
    pub fn new(name: &str, spec: &ExchangeSpec) -> Self {
        Self {
            name: name.to_string(),
            kind: spec.kind.as_str().to_string(),
            auto_delete: spec.auto_delete,
            internal: spec.internal,
            alternate_exchange: spec.alternate_exchange.clone(),
        }
    }

    pub fn spec(&self) -> Option<ExchangeSpec> {
        Some(ExchangeSpec {
            kind: ExchangeKind::parse(&self.kind)?,
            durable: true,
            auto_delete: self.auto_delete,
            internal: self.internal,
            alternate_exchange: self.alternate_exchange.clone(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    pub name: String,
    /// Names the queue's logs (`__amqp.<id>.m`, `__amqp.<id>.j`).
    pub id: u64,
    pub auto_delete: bool,
    /// The `x-*` arguments it was declared with.
    #[serde(default)]
    pub arguments: QueueArgs,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    pub source: String,
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: String,
    pub routing_key: String,
    pub arguments: Vec<(String, HeaderValue)>,
}

impl BindingDef {
    pub fn destination(&self) -> Option<Destination> {
        match self.destination_type.as_str() {
            "queue" => Some(Destination::Queue(self.destination.clone())),
            "exchange" => Some(Destination::Exchange(self.destination.clone())),
            _ => None,
        }
    }

    pub fn args(&self) -> BindingArgs {
        BindingArgs::new(self.arguments.clone())
    }
}

/// Where a vhost's definitions live.
#[derive(Debug)]
pub struct DefinitionsFile {
    path: PathBuf,
}

impl DefinitionsFile {
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(FILE_NAME),
        }
    }

    /// Whether the file is there (an earlier build's, to fold into the definitions log).
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Removes the file durably (once the definitions log holds what it said).
    pub fn remove(&self) -> Result<()> {
        crate::persist::remove_durably(&self.path)
    }

    /// Reads the file; a missing file is an empty topology. An unknown version or a file that does not
    /// parse is refused: starting without the topology would silently drop durable queues.
    pub fn load(&self) -> Result<Definitions> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Definitions {
                    version: DEFINITIONS_VERSION,
                    next_queue_id: 1,
                    ..Definitions::default()
                })
            }
            Err(source) => {
                return Err(CoreError::Meta {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let mut defs: Definitions =
            serde_json::from_slice(&bytes).map_err(|e| CoreError::CorruptMeta {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        if defs.version == 1 {
            for binding in &mut defs.bindings {
                for (_, value) in &mut binding.arguments {
                    if let Some(upgraded) = upgrade_v1_value(value) {
                        *value = upgraded;
                    }
                }
            }
            defs.version = DEFINITIONS_VERSION;
        }
        if defs.version != DEFINITIONS_VERSION {
            return Err(CoreError::CorruptMeta {
                path: self.path.clone(),
                reason: format!(
                    "definitions format version {} is not supported (this build reads {DEFINITIONS_VERSION})",
                    defs.version
                ),
            });
        }
        Ok(defs)
    }

    /// Replaces the file atomically and durably.
    pub fn save(&self, defs: &Definitions) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| CoreError::Meta {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut defs = defs.clone();
        defs.version = DEFINITIONS_VERSION;
        let bytes = serde_json::to_vec_pretty(&defs).map_err(|e| CoreError::CorruptMeta {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.path, &bytes)
    }
}

/// A version-1 binding argument that is a number, a timestamp or a byte array, rendered by `amq-protocol`'s
/// `Debug` (`LongInt(5)`, `Double(5.0)`, `Timestamp(5)`, `ByteArray(ByteArray([104, 105]))`), as the value it
/// stands for; `None` for anything else (strings, booleans, tables… keep their version-1 form, which is still
/// how they are stored).
fn upgrade_v1_value(value: &HeaderValue) -> Option<HeaderValue> {
    let HeaderValue::Other(rendered) = value else {
        return None;
    };
    let (name, rest) = rendered.split_once('(')?;
    let inner = rest.strip_suffix(')')?;
    let int = |ty: u8| {
        inner
            .parse::<i64>()
            .ok()
            .map(|value| HeaderValue::Int { ty, value })
    };
    let float = |ty: u8| {
        inner.parse::<f64>().ok().map(|v| HeaderValue::Float {
            ty,
            bits: v.to_bits(),
        })
    };
    match name {
        "ShortShortInt" => int(b'b'),
        "ShortShortUInt" => int(b'B'),
        "ShortInt" => int(b's'),
        "ShortUInt" => int(b'u'),
        "LongInt" => int(b'I'),
        "LongUInt" => int(b'i'),
        "LongLongInt" => int(b'l'),
        "Timestamp" => int(b'T'),
        // A float32 was printed as the shortest text giving back the f32; the live path widens the f32
        // itself (0.1f32 is 0.10000000149… as an f64), so parse it as an f32 and widen the same way.
        "Float" => inner.parse::<f32>().ok().map(|v| HeaderValue::Float {
            ty: b'f',
            bits: f64::from(v).to_bits(),
        }),
        "Double" => float(b'd'),
        "ByteArray" => {
            let list = inner.strip_prefix("ByteArray([")?.strip_suffix("])")?;
            let bytes: Option<Vec<u8>> = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|b| b.parse::<u8>().ok())
                .collect();
            bytes.map(HeaderValue::Bytes)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_versions() {
        let dir = tempfile::tempdir().unwrap();
        let file = DefinitionsFile::new(&dir.path().join("vhosts/default"));
        let empty = file.load().unwrap();
        assert_eq!(empty.next_queue_id, 1);
        let defs = Definitions {
            version: DEFINITIONS_VERSION,
            next_queue_id: 3,
            exchanges: vec![ExchangeDef::new(
                "x",
                &ExchangeSpec::new(ExchangeKind::Topic),
            )],
            queues: vec![QueueDef {
                name: "q".into(),
                id: 2,
                auto_delete: false,
                arguments: QueueArgs {
                    message_ttl_ms: Some(1000),
                    ..QueueArgs::default()
                },
            }],
            bindings: vec![BindingDef {
                source: "x".into(),
                destination: "q".into(),
                destination_type: "queue".into(),
                routing_key: "a.#".into(),
                arguments: vec![("k".into(), HeaderValue::Str("v".into()))],
            }],
        };
        file.save(&defs).unwrap();
        assert_eq!(file.load().unwrap(), defs);
        let path = dir.path().join("vhosts/default/definitions.json");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"version\": 2", "\"version\": 99");
        std::fs::write(&path, text).unwrap();
        let err = file.load().unwrap_err().to_string();
        assert!(err.contains("version 99"), "{err}");
    }

    #[test]
    fn version_1_binding_arguments_are_upgraded_to_values() {
        // What the previous build wrote for a headers binding on int 5, double 0.5, bytes "hi", bool and string.
        let v1 = r#"{
  "version": 1,
  "next_queue_id": 2,
  "exchanges": [],
  "queues": [],
  "bindings": [{
    "source": "h", "destination": "q", "destination_type": "queue", "routing_key": "",
    "arguments": [
      ["n", {"Other": "LongInt(5)"}],
      ["f", {"Other": "Double(0.5)"}],
      ["f32", {"Other": "Float(0.1)"}],
      ["t", {"Other": "Timestamp(1700000000)"}],
      ["b", {"Other": "ByteArray(ByteArray([104, 105]))"}],
      ["e", {"Other": "ByteArray(ByteArray([]))"}],
      ["flag", {"Other": "Boolean(true)"}],
      ["s", {"Str": "x"}],
      ["x-match", {"Str": "all"}]
    ]
  }]
}"#;
        let dir = tempfile::tempdir().unwrap();
        let file = DefinitionsFile::new(dir.path());
        std::fs::write(dir.path().join(FILE_NAME), v1).unwrap();
        let defs = file.load().unwrap();
        assert_eq!(defs.version, DEFINITIONS_VERSION);
        let args = &defs.bindings[0].arguments;
        let get = |k: &str| args.iter().find(|(key, _)| key == k).unwrap().1.clone();
        assert_eq!(get("n"), HeaderValue::Int { ty: b'I', value: 5 });
        assert_eq!(
            get("f"),
            HeaderValue::Float {
                ty: b'd',
                bits: 0.5f64.to_bits()
            }
        );
        // A float32 widens as the live path widens it (0.1f32 is not 0.1f64).
        assert_eq!(
            get("f32"),
            HeaderValue::Float {
                ty: b'f',
                bits: f64::from(0.1f32).to_bits()
            }
        );
        assert_ne!(f64::from(0.1f32), 0.1f64);
        assert_eq!(
            get("t"),
            HeaderValue::Int {
                ty: b'T',
                value: 1_700_000_000
            }
        );
        assert_eq!(get("b"), HeaderValue::Bytes(b"hi".to_vec()));
        assert_eq!(get("e"), HeaderValue::Bytes(Vec::new()));
        assert_eq!(get("flag"), HeaderValue::Other("Boolean(true)".into()));
        assert_eq!(get("s"), HeaderValue::Str("x".into()));
        // Saved again, it is version 2 and reads back the same.
        file.save(&defs).unwrap();
        assert_eq!(file.load().unwrap(), defs);
    }
}
