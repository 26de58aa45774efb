//! The held tail of logs under a manager: appends write only whole aligned blocks and keep the rest in memory;
//! reads see the held bytes; every sync, roll, checkpoint, truncation and close writes them; the tail flusher
//! writes them within `tail_flush_interval`; and what a process crash would leave (a copy of the files) is a
//! prefix of the log that lacks at most the held bytes.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{copy_dir, open, payload, read_all, segment_files};
use wharf_log::frame::FRAME_HEADER_LEN;
use wharf_log::{Durability, KnownCrc, Log, LogConfig, LogError, LogManager, ManagerConfig};

/// A tail flusher that never fires within a test.
const NEVER: Duration = Duration::from_secs(3600);

fn manager(dir: &Path, interval: Duration) -> LogManager {
    LogManager::open(
        dir,
        ManagerConfig {
            tail_flush_interval: interval,
            ..ManagerConfig::default()
        },
    )
    .unwrap()
}

fn config(durability: Durability) -> LogConfig {
    LogConfig {
        durability,
        segment_bytes: 1 << 20,
        index_interval_bytes: 1024,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// Bytes of the active (last) segment file.
fn active_file_len(log: &Log) -> u64 {
    let files = segment_files(log.dir());
    std::fs::metadata(files.last().unwrap()).unwrap().len()
}

/// Logical bytes of the active segment: the frames appended to it.
fn frames_len(batches: &[(u64, u32, i64, Vec<u8>)]) -> u64 {
    batches
        .iter()
        .map(|b| (b.3.len() + FRAME_HEADER_LEN) as u64)
        .sum()
}

/// Appends `count` batches of `len` bytes (batch `i` has timestamp `i`); returns what was appended.
fn append_n(log: &Log, first: u64, count: u64, len: usize) -> Vec<(u64, u32, i64, Vec<u8>)> {
    (first..first + count)
        .map(|n| {
            let p = payload(n, len);
            let a = log.append(&p, 1, n as i64).unwrap();
            (a.base_offset, 1, n as i64, p)
        })
        .collect()
}

/// Opens a copy of the log's files on its own: what a process crash at this moment would leave.
fn crash_copy(log: &Log) -> (tempfile::TempDir, Log) {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(log.dir(), copy.path());
    let reopened = open(copy.path(), config(Durability::Os));
    (copy, reopened)
}

#[test]
fn reads_and_time_lookups_see_held_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), NEVER);
    let log = m.open_log("q", config(Durability::Os)).unwrap();
    // 70 frames of 1000 + 32 bytes: one aligned 64 KiB block written, 6704 bytes held (frame 63 straddles).
    let appended = append_n(&log, 0, 70, 1000);
    assert_eq!(
        active_file_len(&log),
        65_536,
        "only whole aligned blocks are written"
    );
    assert_eq!(log.stats().size_bytes, frames_len(&appended));
    assert_eq!(read_all(&log, 0), appended);
    // A read starting inside the held bytes, and one spanning file and held bytes with a small budget.
    assert_eq!(log.read(69, 1, None).unwrap()[0].payload, appended[69].3);
    let some = log.read(62, 2000, None).unwrap();
    assert_eq!(some.len(), 2);
    assert_eq!(some[1].payload, appended[63].3);
    assert_eq!(log.find_offset_by_timestamp(69).unwrap(), Some((69, 69)));
    m.close().unwrap();
}

#[test]
fn sync_writes_the_held_tail_before_claiming_durability() {
    for durability in [Durability::Always, Durability::Os] {
        let dir = tempfile::tempdir().unwrap();
        let m = manager(dir.path(), NEVER);
        let log = m.open_log("q", config(durability)).unwrap();
        let appended = append_n(&log, 0, 5, 700);
        assert!(active_file_len(&log) < frames_len(&appended));
        // A crash now loses the held batches, and only them.
        let (_copy, crashed) = crash_copy(&log);
        let end = crashed.offsets().log_end;
        assert!(end < 5);
        assert_eq!(read_all(&crashed, 0), appended[..end as usize].to_vec());
        log.wait_for_policy(5).unwrap();
        log.sync().unwrap();
        assert_eq!(log.offsets().durable, 5);
        assert_eq!(active_file_len(&log), frames_len(&appended));
        let (_copy, crashed) = crash_copy(&log);
        assert_eq!(read_all(&crashed, 0), appended);
        // Appends after the sync start again from the held (already written) page: still aligned, still correct.
        let more = append_n(&log, 5, 60, 700);
        // 732-byte frames end writes on 32 KiB boundaries.
        assert_eq!(active_file_len(&log) % 32_768, 0);
        assert_eq!(read_all(&log, 0), [appended, more].concat());
        m.close().unwrap();
    }
}

#[test]
fn roll_checkpoint_truncate_and_close_write_the_held_tail() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), NEVER);
    let log = m.open_log("q", config(Durability::Os)).unwrap();
    let mut all = append_n(&log, 0, 3, 500);
    log.roll().unwrap();
    let files = segment_files(log.dir());
    assert_eq!(files.len(), 2);
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().len(),
        frames_len(&all),
        "the rolled segment holds all of its frames"
    );
    let second = append_n(&log, 3, 3, 500);
    log.checkpoint().unwrap();
    assert_eq!(active_file_len(&log), frames_len(&second));
    all.extend(second);
    let third = append_n(&log, 6, 4, 500);
    all.extend(third);
    assert_eq!(log.truncate_to(8).unwrap(), 8);
    all.truncate(8);
    assert_eq!(read_all(&log, 0), all);
    let last = append_n(&log, 8, 2, 300);
    all.extend(last);
    assert!(active_file_len(&log) < frames_len(&all[3..]));
    m.close().unwrap();
    drop(log);
    // Closing wrote everything: a log opened on its own (nothing held) finds it all.
    let reopened = open(&dir.path().join("q"), config(Durability::Os));
    assert_eq!(read_all(&reopened, 0), all);
}

#[test]
fn dropping_the_manager_writes_held_tails() {
    let dir = tempfile::tempdir().unwrap();
    let appended = {
        let m = manager(dir.path(), NEVER);
        let log = m.open_log("q", config(Durability::Os)).unwrap();
        let appended = append_n(&log, 0, 7, 900);
        assert!(active_file_len(&log) < frames_len(&appended));
        drop(log);
        drop(m); // not closed
        appended
    };
    let reopened = open(&dir.path().join("q"), config(Durability::Os));
    assert_eq!(read_all(&reopened, 0), appended);
}

#[test]
fn the_tail_flusher_writes_idle_tails_within_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let interval = Duration::from_millis(20);
    let m = manager(dir.path(), interval);
    let logs: Vec<Arc<Log>> = (0..50)
        .map(|i| {
            m.open_log(&format!("q{i}"), config(Durability::Os))
                .unwrap()
        })
        .collect();
    let started = Instant::now();
    let appended: Vec<_> = logs.iter().map(|l| append_n(l, 0, 3, 100)).collect();
    let deadline = started + Duration::from_secs(10);
    for (log, batches) in logs.iter().zip(&appended) {
        while active_file_len(log) < frames_len(batches) {
            assert!(Instant::now() < deadline, "the held tail was never written");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let took = started.elapsed();
    assert!(took >= interval, "not written before it was due ({took:?})");
    // A crash now loses nothing.
    for (log, batches) in logs.iter().zip(&appended) {
        let (_copy, crashed) = crash_copy(log);
        assert_eq!(&read_all(&crashed, 0), batches);
    }
    // Nothing was synced: the flusher writes to the page cache only.
    assert!(logs.iter().all(|l| l.offsets().durable < 3));
    // A busy log keeps being written by its appends; when it goes idle, its tail is written too.
    let busy = &logs[0];
    let mut more = appended[0].clone();
    for round in 0..10 {
        more.extend(append_n(busy, 3 + round * 5, 5, 300));
        std::thread::sleep(Duration::from_millis(3));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while active_file_len(busy) < frames_len(&more) {
        assert!(
            Instant::now() < deadline,
            "the busy log's tail was never written"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(read_all(busy, 0), more);
    m.close().unwrap();
}

#[test]
fn zero_interval_holds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), Duration::ZERO);
    let log = m.open_log("q", config(Durability::Os)).unwrap();
    let appended = append_n(&log, 0, 5, 333);
    assert_eq!(active_file_len(&log), frames_len(&appended));
    m.close().unwrap();
}

#[test]
fn known_crc_appends_read_back_and_wrong_ones_are_refused_in_debug_builds() {
    let dir = tempfile::tempdir().unwrap();
    let m = manager(dir.path(), NEVER);
    let log = m.open_log("q", config(Durability::Os)).unwrap();
    let mut batches = Vec::new();
    for (n, len) in [(0u64, 100usize), (1, 20_000), (2, 70_000), (3, 5000)] {
        let mut p = payload(n, len);
        let known = KnownCrc {
            from: 21,
            crc32c: crc32c::crc32c(&p[21..]),
        };
        // Like Kafka: the base offset goes into bytes 0..8, outside the known CRC.
        let a = log
            .append_with_known_crc(&mut p, 2, n as i64, known, |base, b| {
                b[..8].copy_from_slice(&base.to_be_bytes())
            })
            .unwrap();
        assert_eq!(&p[..8], &a.base_offset.to_be_bytes());
        batches.push((a.base_offset, 2, n as i64, p));
    }
    assert_eq!(read_all(&log, 0), batches);
    let mut p = payload(9, 10_000);
    let past_end = KnownCrc {
        from: 10_001,
        crc32c: 0,
    };
    assert!(matches!(
        log.append_with_known_crc(&mut p, 1, 0, past_end, |_, _| {}),
        Err(LogError::InvalidBatch(_))
    ));
    if cfg!(debug_assertions) {
        let wrong = KnownCrc {
            from: 21,
            crc32c: crc32c::crc32c(&p[21..]) ^ 1,
        };
        assert!(matches!(
            log.append_with_known_crc(&mut p, 1, 0, wrong, |_, _| {}),
            Err(LogError::InvalidBatch(_))
        ));
        // A stamp that changes the covered bytes makes the known CRC wrong: refused too.
        let right = KnownCrc {
            from: 21,
            crc32c: crc32c::crc32c(&p[21..]),
        };
        assert!(matches!(
            log.append_with_known_crc(&mut p, 1, 0, right, |_, b| b[100] ^= 1),
            Err(LogError::InvalidBatch(_))
        ));
    }
    assert_eq!(log.offsets().log_end, 8);
    // Reopened on its own after a close, the frames check out (their CRCs are right).
    m.close().unwrap();
    drop(log);
    let reopened = open(&dir.path().join("q"), config(Durability::Os));
    assert_eq!(read_all(&reopened, 0), batches);
}
