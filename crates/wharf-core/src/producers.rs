//! Idempotent producers: producer ids handed out by InitProducerId, and per partition the epoch and the last
//! few batches of every producer, so that a retried batch gets its original offsets back instead of being
//! written twice, a gap in sequence numbers is refused, and an older epoch is fenced.
//!
//! The state of a partition is rebuilt at open from a snapshot (written at clean shutdown and periodically)
//! plus the batches appended after it; the protocol layer supplies the function that reads producer fields
//! out of a stored batch, since only it knows the batch format.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::persist::write_atomic;

/// Batches remembered per producer and partition for duplicate detection (Kafka's in-flight limit for
/// idempotent producers is 5).
pub const BATCHES_PER_PRODUCER: usize = 5;
/// Producer ids are reserved durably in blocks of this many, so InitProducerId rarely waits for a disk.
const PRODUCER_ID_BLOCK: i64 = 1000;

/// The producer fields of one stored batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchProducer {
    /// Producer id (non-negative for idempotent batches).
    pub producer_id: i64,
    /// Producer epoch.
    pub epoch: i16,
    /// Sequence of the first record.
    pub first_seq: i32,
    /// Sequence of the last record.
    pub last_seq: i32,
    /// Largest timestamp in the batch.
    pub max_timestamp: i64,
}

/// What to do with an idempotent batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceCheck {
    /// New and in order: append it.
    Append,
    /// Already appended at this base offset: answer with it, do not append again.
    Duplicate {
        /// Base offset the batch got the first time.
        base_offset: u64,
    },
}

/// Why an idempotent batch is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    /// The batch's epoch is older than the producer's current one (a zombie instance).
    #[error("producer epoch {got} is older than the current epoch {current}")]
    InvalidEpoch {
        /// The batch's epoch.
        got: i16,
        /// The producer's epoch on this partition.
        current: i16,
    },
    /// The batch does not follow the last one of this producer.
    #[error("out of order sequence number: expected {expected}, got {got}")]
    OutOfOrder {
        /// The next sequence expected.
        expected: i32,
        /// The batch's first sequence.
        got: i32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct BatchMeta {
    first_seq: i32,
    last_seq: i32,
    base_offset: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchMeta>,
    last_timestamp: i64,
}

/// One producer as DescribeProducers shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveProducer {
    /// Producer id.
    pub producer_id: i64,
    /// Current epoch.
    pub epoch: i16,
    /// Last sequence written.
    pub last_sequence: i32,
    /// Timestamp of its last batch.
    pub last_timestamp: i64,
}

/// The idempotence state of one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerTable {
    producers: HashMap<i64, ProducerEntry>,
}

fn next_seq(seq: i32) -> i32 {
    // Sequences wrap from i32::MAX to 0, as in Kafka.
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

impl ProducerTable {
    /// Decides whether `batch` is new, a duplicate, or refused.
    pub fn check(&self, batch: &BatchProducer) -> Result<SequenceCheck, ProducerError> {
        let Some(entry) = self.producers.get(&batch.producer_id) else {
            // A producer new to this partition starts at sequence 0.
            return if batch.first_seq == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(ProducerError::OutOfOrder {
                    expected: 0,
                    got: batch.first_seq,
                })
            };
        };
        if batch.epoch < entry.epoch {
            return Err(ProducerError::InvalidEpoch {
                got: batch.epoch,
                current: entry.epoch,
            });
        }
        if batch.epoch > entry.epoch {
            // A bumped epoch restarts the sequence.
            return if batch.first_seq == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(ProducerError::OutOfOrder {
                    expected: 0,
                    got: batch.first_seq,
                })
            };
        }
        if let Some(seen) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == batch.first_seq && b.last_seq == batch.last_seq)
        {
            return Ok(SequenceCheck::Duplicate {
                base_offset: seen.base_offset,
            });
        }
        let expected = entry.batches.back().map_or(0, |b| next_seq(b.last_seq));
        if batch.first_seq == expected {
            Ok(SequenceCheck::Append)
        } else {
            Err(ProducerError::OutOfOrder {
                expected,
                got: batch.first_seq,
            })
        }
    }

    /// Records an appended batch.
    pub fn record(&mut self, batch: &BatchProducer, base_offset: u64) {
        let entry = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: batch.epoch,
                batches: VecDeque::new(),
                last_timestamp: batch.max_timestamp,
            });
        if batch.epoch != entry.epoch {
            entry.epoch = batch.epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(BatchMeta {
            first_seq: batch.first_seq,
            last_seq: batch.last_seq,
            base_offset,
        });
        while entry.batches.len() > BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
        entry.last_timestamp = batch.max_timestamp;
    }

    /// Every producer with state on this partition.
    pub fn active(&self) -> Vec<ActiveProducer> {
        let mut all: Vec<ActiveProducer> = self
            .producers
            .iter()
            .map(|(id, e)| ActiveProducer {
                producer_id: *id,
                epoch: e.epoch,
                last_sequence: e.batches.back().map_or(-1, |b| b.last_seq),
                last_timestamp: e.last_timestamp,
            })
            .collect();
        all.sort_by_key(|p| p.producer_id);
        all
    }

    /// Forgets batches at or above `end` (after the log was truncated to `end`).
    pub fn truncate(&mut self, end: u64) {
        for entry in self.producers.values_mut() {
            entry.batches.retain(|b| b.base_offset < end);
        }
        self.producers.retain(|_, e| !e.batches.is_empty());
    }
}

/// A partition's table as stored: the table and the log end it reflects.
#[derive(Serialize, Deserialize)]
pub(crate) struct ProducerSnapshot {
    pub(crate) version: u32,
    pub(crate) log_end: u64,
    pub(crate) table: ProducerTable,
}

/// Version of the snapshot file format.
pub(crate) const PRODUCER_SNAPSHOT_VERSION: u32 = 1;

/// Writes a partition's producer snapshot atomically.
pub(crate) fn save_snapshot(path: &Path, log_end: u64, table: &ProducerTable) -> Result<()> {
    let snapshot = ProducerSnapshot {
        version: PRODUCER_SNAPSHOT_VERSION,
        log_end,
        table: table.clone(),
    };
    let bytes = serde_json::to_vec(&snapshot).map_err(|e| CoreError::CorruptMeta {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

/// Reads a partition's producer snapshot; a missing, unreadable or foreign one counts as absent (the state is
/// then rebuilt from the log, which is slower but exact).
pub(crate) fn load_snapshot(path: &Path) -> Option<(u64, ProducerTable)> {
    let bytes = std::fs::read(path).ok()?;
    let snapshot: ProducerSnapshot = serde_json::from_slice(&bytes).ok()?;
    (snapshot.version == PRODUCER_SNAPSHOT_VERSION).then_some((snapshot.log_end, snapshot.table))
}

/// Hands out producer ids, never the same twice, even across restarts: ids are reserved durably in blocks.
#[derive(Debug)]
pub struct ProducerIds {
    path: PathBuf,
    /// (next id, end of the reserved block).
    state: Mutex<(i64, i64)>,
}

impl ProducerIds {
    /// Opens the allocator whose reservation is kept in `path`.
    pub fn open(path: impl Into<PathBuf>) -> Result<ProducerIds> {
        let path = path.into();
        let reserved = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<i64>()
                .map_err(|_| CoreError::CorruptMeta {
                    path: path.clone(),
                    reason: format!("not a producer id: {text:?}"),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => return Err(CoreError::Meta { path, source }),
        };
        // Ids below the stored reservation may have been handed out before a crash: start above it.
        Ok(ProducerIds {
            path,
            state: Mutex::new((reserved, reserved)),
        })
    }

    /// The next producer id.
    pub fn next(&self) -> Result<i64> {
        let mut st = self.state.lock();
        if st.0 >= st.1 {
            let end = st.1 + PRODUCER_ID_BLOCK;
            write_atomic(&self.path, format!("{end}\n").as_bytes())?;
            st.1 = end;
        }
        let id = st.0;
        st.0 += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(pid: i64, epoch: i16, first: i32, last: i32) -> BatchProducer {
        BatchProducer {
            producer_id: pid,
            epoch,
            first_seq: first,
            last_seq: last,
            max_timestamp: 0,
        }
    }

    #[test]
    fn sequences_dedupe_fence_and_refuse_gaps() {
        let mut t = ProducerTable::default();
        assert_eq!(
            t.check(&b(1, 0, 5, 9)),
            Err(ProducerError::OutOfOrder {
                expected: 0,
                got: 5
            })
        );
        assert_eq!(t.check(&b(1, 0, 0, 4)), Ok(SequenceCheck::Append));
        t.record(&b(1, 0, 0, 4), 100);
        assert_eq!(
            t.check(&b(1, 0, 0, 4)),
            Ok(SequenceCheck::Duplicate { base_offset: 100 })
        );
        assert_eq!(
            t.check(&b(1, 0, 6, 7)),
            Err(ProducerError::OutOfOrder {
                expected: 5,
                got: 6
            })
        );
        assert_eq!(t.check(&b(1, 0, 5, 7)), Ok(SequenceCheck::Append));
        t.record(&b(1, 0, 5, 7), 105);
        // A new epoch restarts at 0 and fences the old one.
        t.record(&b(1, 1, 0, 0), 200);
        assert_eq!(
            t.check(&b(1, 0, 8, 8)),
            Err(ProducerError::InvalidEpoch { got: 0, current: 1 })
        );
        // Only the last five batches are remembered.
        for i in 1..=6 {
            t.record(&b(1, 1, i, i), 200 + i as u64);
        }
        assert_eq!(
            t.check(&b(1, 1, 6, 6)),
            Ok(SequenceCheck::Duplicate { base_offset: 206 })
        );
        assert_eq!(
            t.check(&b(1, 1, 1, 1)),
            Err(ProducerError::OutOfOrder {
                expected: 7,
                got: 1
            })
        );
        assert_eq!(t.active()[0].last_sequence, 6);
        t.truncate(204);
        assert_eq!(t.active()[0].last_sequence, 3);
    }

    #[test]
    fn producer_ids_are_never_reused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids");
        let ids = ProducerIds::open(&path).unwrap();
        let first: Vec<i64> = (0..3).map(|_| ids.next().unwrap()).collect();
        assert_eq!(first, vec![0, 1, 2]);
        drop(ids);
        let ids = ProducerIds::open(&path).unwrap();
        assert!(ids.next().unwrap() >= PRODUCER_ID_BLOCK);
    }
}
