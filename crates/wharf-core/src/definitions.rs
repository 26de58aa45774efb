//! The durable AMQP topology of a vhost — durable exchanges, durable queues (with the id naming their logs)
//! and the bindings between durable ends — in one small JSON file, `<dir>/definitions.json`, replaced
//! atomically on every change that touches a durable entity. Topology changes are rare next to messages, so a
//! whole-file rewrite (a few ms, with its fsyncs) is simpler than a log of changes and just as safe: a crash
//! leaves the old file or the new one.
//!
//! Order of writes keeps crashes harmless (as for Kafka topics): a durable queue's logs are created before
//! the file names it, and the file stops naming it before its logs are deleted; logs no file names are
//! deleted at open ([`crate::queue_log::QueueLogs::delete_orphans`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::exchanges::{BindingArgs, Destination, ExchangeKind, ExchangeSpec, HeaderValue};
use crate::persist::write_atomic;
use crate::queue_args::QueueArgs;

/// Version of the definitions file format.
const DEFINITIONS_VERSION: u32 = 1;
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
        let defs: Definitions =
            serde_json::from_slice(&bytes).map_err(|e| CoreError::CorruptMeta {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
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
            .replace("\"version\": 1", "\"version\": 99");
        std::fs::write(&path, text).unwrap();
        let err = file.load().unwrap_err().to_string();
        assert!(err.contains("version 99"), "{err}");
    }
}
