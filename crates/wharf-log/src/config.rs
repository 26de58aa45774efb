//! Tunables of a log and of the node-wide log manager, with their defaults and limits.

use std::time::Duration;

/// When an acknowledged append is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every acknowledged append has been fdatasync'ed. Concurrent appenders share one fdatasync (group
    /// commit). Loses nothing that was acknowledged, through process crash, kernel crash or power loss.
    Always,
    /// Appends are acknowledged once the log has them (in the page cache, or in the log's held tail for at
    /// most [`ManagerConfig::tail_flush_interval`]); the manager fdatasyncs every log with unsynced data every
    /// `ms` milliseconds. A process crash loses at most the held tail: the batches ending in the last < 128 KiB
    /// of the log appended within the last `tail_flush_interval` (5 ms by default); a kernel crash or power loss
    /// loses up to the last `ms` milliseconds of acknowledged appends.
    Interval {
        /// Flush period in milliseconds.
        ms: u64,
    },
    /// Appends are acknowledged once the log has them (as under `Interval`); the kernel writes the page cache
    /// back when it likes (segments are still fsynced when they roll and at checkpoints and shutdown). A process
    /// crash loses at most the held tail (as under `Interval`); a kernel crash or power loss loses whatever the
    /// kernel had not yet written (typically up to 30 s).
    Os,
}

impl Durability {
    /// Parses `always`, `os`, `interval` (with the given default period) or `interval(MS)` / `interval:MS`.
    pub fn parse(s: &str, default_interval_ms: u64) -> Option<Durability> {
        let s = s.trim();
        match s {
            "always" => Some(Durability::Always),
            "os" => Some(Durability::Os),
            "interval" => Some(Durability::Interval {
                ms: default_interval_ms,
            }),
            _ => {
                let rest = s.strip_prefix("interval")?;
                let ms = rest
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .or_else(|| rest.strip_prefix(':'))?;
                ms.trim().parse().ok().map(|ms| Durability::Interval { ms })
            }
        }
    }
}

/// Largest segment size accepted: positions in the offset index are 32-bit.
pub const SEGMENT_BYTES_MAX: u64 = 2 * 1024 * 1024 * 1024;
/// Largest single batch the log accepts; larger ones are refused before anything is written, and a length
/// field read from disk above this is treated as corruption before anything is allocated.
pub const BATCH_BYTES_MAX: u32 = 256 * 1024 * 1024;

/// Per-log settings. Kafka topic configs and AMQP queue arguments map onto these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll the active segment before it would grow past this many bytes (Kafka `segment.bytes`).
    pub segment_bytes: u64,
    /// Roll the active segment once it is this old (Kafka `segment.ms`).
    pub segment_ms: u64,
    /// One offset-index entry per this many bytes of batches (Kafka `index.interval.bytes`).
    pub index_interval_bytes: u64,
    /// Delete the oldest segments while the log is larger than this (Kafka `retention.bytes`); `None` = keep.
    pub retention_bytes: Option<u64>,
    /// Delete segments whose newest batch is older than this (Kafka `retention.ms`); `None` = keep.
    pub retention_ms: Option<u64>,
    /// When an append counts as durable.
    pub durability: Durability,
    /// Largest batch accepted, in bytes (at most [`BATCH_BYTES_MAX`]).
    pub max_batch_bytes: u32,
    /// Under `always`, under a [`crate::LogManager`], once a caller said it let data go unsynced
    /// ([`crate::Log::owe_sync`]): the longest that data stays unsynced, after which the manager's thread syncs
    /// it; `None` leaves it to the next waiter. A log whose waits are often resolved another way (a durable AMQP
    /// queue confirms messages its consumers acked without a sync) would otherwise have the next sync anyone
    /// waits for write everything since the last one at once (seen: 147 ms for 40 MB on the project's VM); this
    /// bounds that sync to what arrives in this interval. Logs with no such waits (publishers without confirms)
    /// are not synced in the background, as before.
    pub unsynced_age_max_ms: Option<u64>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            retention_bytes: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            durability: Durability::Always,
            max_batch_bytes: 128 * 1024 * 1024,
            unsynced_age_max_ms: None,
        }
    }
}

impl LogConfig {
    /// Clamps every field into its legal range, so that no setting can break an invariant of the engine.
    pub fn clamped(mut self) -> LogConfig {
        self.segment_bytes = self.segment_bytes.clamp(4096, SEGMENT_BYTES_MAX);
        self.segment_ms = self.segment_ms.max(1);
        self.index_interval_bytes = self.index_interval_bytes.clamp(1, self.segment_bytes);
        self.max_batch_bytes = self.max_batch_bytes.clamp(1, BATCH_BYTES_MAX);
        self
    }
}

/// Settings of the node-wide [`crate::LogManager`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagerConfig {
    /// Segment files kept open across all logs; more are opened and closed on demand.
    pub max_open_files: usize,
    /// How often the background task writes index checkpoints of logs with new data, bounding the tail that
    /// recovery scans after a crash.
    pub checkpoint_interval: Duration,
    /// How often retention runs over all logs (Kafka `log.retention.check.interval.ms`).
    pub retention_check_interval: Duration,
    /// How long appended bytes may stay in a log's held tail before they are written to the page cache.
    ///
    /// A log under the manager keeps the bytes past the last aligned boundary of its active segment (under
    /// 128 KiB) in memory and sends them in front of the next batch, so that every
    /// write is a whole, aligned block (far cheaper for the kernel than a write per batch ending mid-page). A
    /// process crash loses held bytes, so under `interval` and `os` this bounds what a process crash can lose:
    /// the batches ending in the held tail, appended within this interval. `always` loses nothing acknowledged
    /// either way (every sync writes the held bytes first). Zero holds nothing back: every batch is written at
    /// once, as a log opened without a manager does, and a process crash loses nothing.
    pub tail_flush_interval: Duration,
}

/// Default of [`ManagerConfig::tail_flush_interval`].
pub const TAIL_FLUSH_INTERVAL_DEFAULT: Duration = Duration::from_millis(5);

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            max_open_files: 1024,
            checkpoint_interval: Duration::from_secs(30),
            retention_check_interval: Duration::from_secs(300),
            tail_flush_interval: TAIL_FLUSH_INTERVAL_DEFAULT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durability() {
        assert_eq!(Durability::parse("always", 5), Some(Durability::Always));
        assert_eq!(Durability::parse("os", 5), Some(Durability::Os));
        assert_eq!(
            Durability::parse("interval", 5),
            Some(Durability::Interval { ms: 5 })
        );
        assert_eq!(
            Durability::parse("interval(20)", 5),
            Some(Durability::Interval { ms: 20 })
        );
        assert_eq!(
            Durability::parse("interval:30", 5),
            Some(Durability::Interval { ms: 30 })
        );
        assert_eq!(Durability::parse("sometimes", 5), None);
    }
}
