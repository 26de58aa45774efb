//! The durable AMQP topology of a vhost as a log of changes on the log engine (`<prefix>definitions`, e.g.
//! `__amqp.definitions`), so that declaring a durable queue costs one small append and one group-committed
//! fdatasync however many queues exist. A rewrite of the whole topology per change (the `definitions.json` of
//! earlier builds) grew with it: at 8 000 durable queues and bindings each declare took ~20 ms of CPU.
//!
//! Each record is a [`Delta`]: the state, read when the change was saved, of every exchange, queue and
//! binding the operation touched (present with its definition, or gone). Saves are serialised and read the
//! live topology under the same lock, so the records are in the order of the states they describe and
//! replaying them in order gives the topology of the last save. Deleting an exchange or a queue also drops,
//! on replay, the bindings it had at either end — as the live model does — so a delete does not list them.
//!
//! When the records since the last snapshot outgrow it (and 64 KiB), the next save appends a snapshot
//! (`reset`) of the whole topology and drops the records before it: the log stays within about twice the
//! topology's size and a change costs O(1) amortised.
//!
//! A `definitions.json` left by an earlier build is read once as the base, written into the log as a
//! snapshot, and then removed (a crash in between reads the file again and then the snapshot, which
//! replaces it).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wharf_log::{Durability, Log, LogConfig, LogManager};

use crate::definitions::{BindingDef, Definitions, DefinitionsFile, ExchangeDef, QueueDef};
use crate::error::{CoreError, Result};

/// Format version written in every record.
const DELTA_VERSION: u32 = 1;
/// Records since the last snapshot may grow to this much before one is written, whatever the topology's size.
const SNAPSHOT_SLACK_BYTES: u64 = 64 * 1024;
/// Segment size of a definitions log: records below the last snapshot are skipped at once and their
/// space comes back a segment at a time.
const SEGMENT_BYTES: u64 = 1024 * 1024;
/// Most bytes asked of the log per read at open.
const READ_BYTES: usize = 1024 * 1024;

/// One saved change: see the module docs.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub v: u32,
    /// A snapshot: everything before is replaced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    /// The id the next durable queue gets (ids are never reused).
    pub next_queue_id: u64,
    /// Exchange name → its definition, or `None` when it is gone (or no longer durable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exchanges: Vec<(String, Option<ExchangeDef>)>,
    /// Queue name → its definition, or `None` when it is gone (or no longer durable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<(String, Option<QueueDef>)>,
    /// A binding and whether it is there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<(BindingDef, bool)>,
}

impl Delta {
    /// An empty change record.
    pub fn new(next_queue_id: u64) -> Delta {
        Delta {
            v: DELTA_VERSION,
            next_queue_id,
            ..Delta::default()
        }
    }

    /// A snapshot record of `defs`.
    pub fn snapshot(defs: &Definitions) -> Delta {
        Delta {
            v: DELTA_VERSION,
            reset: true,
            next_queue_id: defs.next_queue_id,
            exchanges: defs
                .exchanges
                .iter()
                .map(|x| (x.name.clone(), Some(x.clone())))
                .collect(),
            queues: defs
                .queues
                .iter()
                .map(|q| (q.name.clone(), Some(q.clone())))
                .collect(),
            bindings: defs.bindings.iter().map(|b| (b.clone(), true)).collect(),
        }
    }
}

/// The topology being rebuilt from records.
#[derive(Debug, Default)]
struct Replay {
    next_queue_id: u64,
    exchanges: BTreeMap<String, ExchangeDef>,
    queues: BTreeMap<String, QueueDef>,
    /// Keyed by the binding's serialised form (its arguments are sorted, so one binding has one key).
    bindings: BTreeMap<String, BindingDef>,
}

impl Replay {
    fn from_definitions(defs: Definitions) -> Replay {
        let mut replay = Replay::default();
        replay.apply(Delta::snapshot(&defs));
        replay
    }

    fn apply(&mut self, delta: Delta) {
        if delta.reset {
            *self = Replay::default();
        }
        self.next_queue_id = self.next_queue_id.max(delta.next_queue_id);
        for (name, def) in delta.exchanges {
            match def {
                Some(def) => {
                    self.exchanges.insert(name, def);
                }
                None => {
                    self.exchanges.remove(&name);
                    self.bindings.retain(|_, b| {
                        b.source != name
                            && !(b.destination_type == "exchange" && b.destination == name)
                    });
                }
            }
        }
        for (name, def) in delta.queues {
            match def {
                Some(def) => {
                    self.next_queue_id = self.next_queue_id.max(def.id.saturating_add(1));
                    self.queues.insert(name, def);
                }
                None => {
                    self.queues.remove(&name);
                    self.bindings
                        .retain(|_, b| !(b.destination_type == "queue" && b.destination == name));
                }
            }
        }
        for (def, present) in delta.bindings {
            let key = binding_key(&def);
            if present {
                self.bindings.insert(key, def);
            } else {
                self.bindings.remove(&key);
            }
        }
    }

    fn into_definitions(self) -> Definitions {
        let mut queues: Vec<QueueDef> = self.queues.into_values().collect();
        queues.sort_by_key(|q| q.id);
        Definitions {
            version: 0,
            next_queue_id: self.next_queue_id.max(1),
            exchanges: self.exchanges.into_values().collect(),
            queues,
            bindings: self.bindings.into_values().collect(),
        }
    }
}

/// A binding's identity as a map key.
fn binding_key(def: &BindingDef) -> String {
    serde_json::to_string(def).unwrap_or_default()
}

/// The log holding a vhost's topology, and how much of it the next snapshot would replace.
#[derive(Debug)]
pub struct DefinitionsLog {
    log: Arc<Log>,
    /// Bytes of records since the last snapshot, and that snapshot's size.
    since_snapshot: parking_lot::Mutex<(u64, u64)>,
}

impl DefinitionsLog {
    /// Opens (creating if needed) the log `name` and replays it over `legacy` (an earlier build's file, if
    /// any, which is then folded into the log and removed). Returns the log and the topology it holds.
    pub fn open(
        logs: &LogManager,
        name: &str,
        legacy: &DefinitionsFile,
    ) -> Result<(DefinitionsLog, Definitions)> {
        let config = LogConfig {
            segment_bytes: SEGMENT_BYTES,
            retention_ms: None,
            retention_bytes: None,
            segment_ms: u64::MAX / 2,
            durability: Durability::Always,
            ..LogConfig::default()
        };
        let log = logs.open_log(name, config)?;
        let legacy_found = legacy.exists();
        let mut replay = Replay::from_definitions(legacy.load()?);
        let mut since_snapshot = (0u64, 0u64);
        let mut cursor = log.offsets().log_start;
        loop {
            let batches = log.read(cursor, READ_BYTES, None)?;
            if batches.is_empty() {
                break;
            }
            for batch in batches {
                cursor = batch.next_offset();
                let delta: Delta =
                    serde_json::from_slice(&batch.payload).map_err(|e| CoreError::CorruptMeta {
                        path: name.into(),
                        reason: format!("record at offset {}: {e}", batch.base_offset),
                    })?;
                if delta.v != DELTA_VERSION {
                    return Err(CoreError::CorruptMeta {
                        path: name.into(),
                        reason: format!(
                            "definitions record version {} is not supported (this build reads {DELTA_VERSION})",
                            delta.v
                        ),
                    });
                }
                let bytes = batch.payload.len() as u64;
                if delta.reset {
                    since_snapshot = (0, bytes);
                } else {
                    since_snapshot.0 += bytes;
                }
                replay.apply(delta);
            }
        }
        let defs = replay.into_definitions();
        let this = DefinitionsLog {
            log,
            since_snapshot: parking_lot::Mutex::new(since_snapshot),
        };
        if legacy_found {
            this.snapshot(&defs)?;
            legacy.remove()?;
            tracing::info!(
                log = name,
                "definitions file folded into the definitions log"
            );
        }
        Ok((this, defs))
    }

    /// Appends `delta` and waits until it is durable.
    pub fn append(&self, delta: &Delta) -> Result<()> {
        let (_, bytes) = self.write(delta)?;
        self.since_snapshot.lock().0 += bytes;
        Ok(())
    }

    /// Whether the records since the last snapshot outgrew it: the next save should write one.
    pub fn wants_snapshot(&self) -> bool {
        let (since, snapshot) = *self.since_snapshot.lock();
        since > snapshot.max(SNAPSHOT_SLACK_BYTES)
    }

    /// Appends a snapshot of `defs`, waits until it is durable, and drops the records before it.
    pub fn snapshot(&self, defs: &Definitions) -> Result<()> {
        let (appended, bytes) = self.write(&Delta::snapshot(defs))?;
        self.log.advance_log_start(appended.base_offset)?;
        *self.since_snapshot.lock() = (0, bytes);
        Ok(())
    }

    /// Appends one record and waits until it is durable; returns where it went and its size.
    fn write(&self, delta: &Delta) -> Result<(wharf_log::Appended, u64)> {
        let bytes = serde_json::to_vec(delta).map_err(|e| CoreError::CorruptMeta {
            path: self.log.name().into(),
            reason: e.to_string(),
        })?;
        let appended = self.log.append(&bytes, 1, crate::now_ms())?;
        self.log.wait_durable(appended.next_offset)?;
        Ok((appended, bytes.len() as u64))
    }
}
