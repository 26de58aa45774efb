//! Committed consumer-group offsets, kept in memory and made durable in an internal log named
//! `__consumer_offsets` (one JSON record per change; never visible as a topic).
//!
//! Every change is appended under the store's lock, so the log order is the order changes were applied;
//! callers wait for durability (the log's policy: group-committed fsync by default) before acknowledging.
//! At open the log is replayed from its start. It does not grow forever: once the records written since the
//! last snapshot outweigh the live state, a snapshot record holding every offset is appended and the log start
//! is moved to it, so whole old segments are deleted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::info;
use wharf_log::{Log, LogConfig, LogManager};

use crate::error::{CoreError, Result};

/// Name of the internal log. Without a `-<partition>` suffix, so it can never be taken for a topic partition.
pub const OFFSETS_LOG: &str = "__consumer_offsets";
/// Longest commit metadata string accepted (`offset.metadata.max.bytes`).
pub const OFFSET_METADATA_MAX_BYTES: usize = 4096;
/// Snapshot once this many bytes were written since the last snapshot, and more than the snapshot's size.
const SNAPSHOT_AFTER_BYTES: u64 = 4 * 1024 * 1024;
/// Read size when replaying.
const REPLAY_READ_BYTES: usize = 4 * 1024 * 1024;

/// One committed offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    /// The next offset the group will read.
    #[serde(rename = "o")]
    pub offset: i64,
    /// Leader epoch of the record before `offset`, or -1.
    #[serde(rename = "e")]
    pub leader_epoch: i32,
    /// Client metadata.
    #[serde(rename = "m")]
    pub metadata: String,
    /// When it was committed (ms since the epoch).
    #[serde(rename = "ts")]
    pub commit_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    t: String,
    p: i32,
    #[serde(flatten)]
    c: CommittedOffset,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Record {
    Commit {
        group: String,
        offsets: Vec<Entry>,
    },
    DeleteGroup {
        group: String,
    },
    DeleteOffsets {
        group: String,
        partitions: Vec<(String, i32)>,
    },
    Snapshot {
        groups: BTreeMap<String, Vec<Entry>>,
    },
}

type GroupOffsets = BTreeMap<(String, i32), CommittedOffset>;

struct State {
    groups: HashMap<String, GroupOffsets>,
    bytes_since_snapshot: u64,
    last_snapshot_bytes: u64,
}

/// Committed offsets of every group.
pub struct OffsetStore {
    log: Arc<Log>,
    state: Mutex<State>,
}

impl std::fmt::Debug for OffsetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsetStore")
            .field("log", &self.log.name())
            .finish_non_exhaustive()
    }
}

fn apply(groups: &mut HashMap<String, GroupOffsets>, record: Record) {
    match record {
        Record::Commit { group, offsets } => {
            let g = groups.entry(group).or_default();
            for e in offsets {
                g.insert((e.t, e.p), e.c);
            }
        }
        Record::DeleteGroup { group } => {
            groups.remove(&group);
        }
        Record::DeleteOffsets { group, partitions } => {
            if let Some(g) = groups.get_mut(&group) {
                for p in partitions {
                    g.remove(&p);
                }
                if g.is_empty() {
                    groups.remove(&group);
                }
            }
        }
        Record::Snapshot { groups: all } => {
            groups.clear();
            for (group, entries) in all {
                let g = groups.entry(group).or_default();
                for e in entries {
                    g.insert((e.t, e.p), e.c);
                }
            }
        }
    }
}

impl OffsetStore {
    /// Opens (or creates) the offsets log under `logs` and replays it.
    pub fn open(logs: &LogManager, config: LogConfig) -> Result<OffsetStore> {
        let config = LogConfig {
            segment_bytes: 16 * 1024 * 1024,
            retention_bytes: None,
            retention_ms: None,
            ..config
        }
        .clamped();
        let log = logs.open_log(OFFSETS_LOG, config)?;
        let mut groups = HashMap::new();
        let offsets = log.offsets();
        let mut at = offsets.log_start;
        let mut replayed = 0u64;
        while at < offsets.log_end {
            let batches = log.read(at, REPLAY_READ_BYTES, None)?;
            if batches.is_empty() {
                break;
            }
            for b in batches {
                let record: Record =
                    serde_json::from_slice(&b.payload).map_err(|e| CoreError::CorruptMeta {
                        path: log.dir().to_path_buf(),
                        reason: format!("offset record at {}: {e}", b.base_offset),
                    })?;
                replayed += b.payload.len() as u64;
                apply(&mut groups, record);
                at = b.next_offset();
            }
        }
        info!(
            groups = groups.len(),
            bytes = replayed,
            "committed offsets loaded"
        );
        Ok(OffsetStore {
            log,
            state: Mutex::new(State {
                groups,
                bytes_since_snapshot: replayed,
                last_snapshot_bytes: 0,
            }),
        })
    }

    /// Appends `record` and applies it, under the lock; returns the offset to wait for.
    fn write(&self, record: Record) -> Result<u64> {
        let bytes = serde_json::to_vec(&record).map_err(|e| CoreError::CorruptMeta {
            path: self.log.dir().to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut st = self.state.lock();
        let appended = self.log.append(&bytes, 1, crate::now_ms())?;
        apply(&mut st.groups, record);
        st.bytes_since_snapshot += bytes.len() as u64;
        let mut end = appended.next_offset;
        if st.bytes_since_snapshot > SNAPSHOT_AFTER_BYTES.max(st.last_snapshot_bytes * 2) {
            end = self.snapshot_locked(&mut st)?;
        }
        Ok(end)
    }

    fn snapshot_locked(&self, st: &mut State) -> Result<u64> {
        let groups: BTreeMap<String, Vec<Entry>> = st
            .groups
            .iter()
            .map(|(g, offsets)| {
                let entries = offsets
                    .iter()
                    .map(|((t, p), c)| Entry {
                        t: t.clone(),
                        p: *p,
                        c: c.clone(),
                    })
                    .collect();
                (g.clone(), entries)
            })
            .collect();
        let bytes = serde_json::to_vec(&Record::Snapshot { groups }).map_err(|e| {
            CoreError::CorruptMeta {
                path: self.log.dir().to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        let appended = self.log.append(&bytes, 1, crate::now_ms())?;
        // The snapshot must be durable before older records may go.
        self.log.wait_durable(appended.next_offset)?;
        self.log.advance_log_start(appended.base_offset)?;
        st.bytes_since_snapshot = 0;
        st.last_snapshot_bytes = bytes.len() as u64;
        Ok(appended.next_offset)
    }

    async fn durable(&self, end: u64) -> Result<()> {
        Ok(self.log.wait_for_policy_async(end).await?)
    }

    /// Commits offsets for `group` and waits until they are durable.
    pub async fn commit(
        &self,
        group: &str,
        offsets: Vec<(String, i32, CommittedOffset)>,
    ) -> Result<()> {
        let record = Record::Commit {
            group: group.to_string(),
            offsets: offsets
                .into_iter()
                .map(|(t, p, c)| Entry { t, p, c })
                .collect(),
        };
        let end = self.write(record)?;
        self.durable(end).await
    }

    /// The committed offset of one partition.
    pub fn fetch(&self, group: &str, topic: &str, partition: i32) -> Option<CommittedOffset> {
        self.state
            .lock()
            .groups
            .get(group)
            .and_then(|g| g.get(&(topic.to_string(), partition)))
            .cloned()
    }

    /// Every committed offset of `group`.
    pub fn group_offsets(&self, group: &str) -> Vec<(String, i32, CommittedOffset)> {
        self.state
            .lock()
            .groups
            .get(group)
            .map(|g| {
                g.iter()
                    .map(|((t, p), c)| (t.clone(), *p, c.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Groups that have committed offsets.
    pub fn groups(&self) -> Vec<String> {
        self.state.lock().groups.keys().cloned().collect()
    }

    /// True if `group` has committed offsets.
    pub fn has_group(&self, group: &str) -> bool {
        self.state.lock().groups.contains_key(group)
    }

    /// Deletes every offset of `group`.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let end = self.write(Record::DeleteGroup {
            group: group.to_string(),
        })?;
        self.durable(end).await
    }

    /// Deletes the offsets of some partitions of `group`.
    pub async fn delete_offsets(&self, group: &str, partitions: Vec<(String, i32)>) -> Result<()> {
        let end = self.write(Record::DeleteOffsets {
            group: group.to_string(),
            partitions,
        })?;
        self.durable(end).await
    }

    /// Forces a snapshot now (tests and tools).
    pub fn snapshot(&self) -> Result<()> {
        let mut st = self.state.lock();
        self.snapshot_locked(&mut st).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_log::ManagerConfig;

    fn c(offset: i64) -> CommittedOffset {
        CommittedOffset {
            offset,
            leader_epoch: 0,
            metadata: format!("m{offset}"),
            commit_ms: 1,
        }
    }

    #[tokio::test]
    async fn offsets_survive_reopen_snapshots_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let logs = LogManager::open(dir.path(), ManagerConfig::default()).unwrap();
            let store = OffsetStore::open(&logs, LogConfig::default()).unwrap();
            store
                .commit("g1", vec![("t".into(), 0, c(5)), ("t".into(), 1, c(7))])
                .await
                .unwrap();
            store
                .commit("g2", vec![("u".into(), 0, c(1))])
                .await
                .unwrap();
            store.snapshot().unwrap();
            store
                .commit("g1", vec![("t".into(), 0, c(9))])
                .await
                .unwrap();
            store
                .delete_offsets("g1", vec![("t".into(), 1)])
                .await
                .unwrap();
            store
                .commit("g3", vec![("v".into(), 0, c(3))])
                .await
                .unwrap();
            store.delete_group("g3").await.unwrap();
            logs.close().unwrap();
        }
        let logs = LogManager::open(dir.path(), ManagerConfig::default()).unwrap();
        let store = OffsetStore::open(&logs, LogConfig::default()).unwrap();
        assert_eq!(store.fetch("g1", "t", 0), Some(c(9)));
        assert_eq!(store.fetch("g1", "t", 1), None);
        assert_eq!(store.fetch("g2", "u", 0), Some(c(1)));
        assert!(!store.has_group("g3"));
        let mut groups = store.groups();
        groups.sort();
        assert_eq!(groups, vec!["g1".to_string(), "g2".to_string()]);
        // The snapshot moved the log start past the first two records.
        assert!(logs.get(OFFSETS_LOG).unwrap().offsets().log_start >= 2);
    }
}
