//! Helpers shared by the log engine's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use wharf_log::{Durability, FileCache, Log, LogConfig};

/// A small-segment config so that tests roll often.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        durability: Durability::Always,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// Opens the log in `dir` with `config` and a private file cache.
pub fn open(dir: &Path, config: LogConfig) -> Log {
    Log::open(dir, "test", config, Arc::new(FileCache::new(16))).expect("open log")
}

/// Deterministic payload for batch number `n` of length `len`.
pub fn payload(n: u64, len: usize) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Reads the whole log from `from` into `(base, count, ts, payload)` tuples.
pub fn read_all(log: &Log, from: u64) -> Vec<(u64, u32, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut cursor = from;
    loop {
        let batches = log.read(cursor, 64 * 1024, None).expect("read");
        if batches.is_empty() {
            return out;
        }
        for b in batches {
            cursor = b.next_offset();
            out.push((
                b.base_offset,
                b.record_count,
                b.max_timestamp,
                b.payload.to_vec(),
            ));
        }
    }
}

/// Segment files (`*.log`) in a log directory, sorted.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// Copies the files of `from` into `to` (not recursive): what a process crash would leave of a log directory.
pub fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
