//! Throughput of the commit log against the raw bandwidth of the same file system, measured in the same run.
//!
//! `cargo bench -p wharf-log --bench log_bench` runs:
//! 1. raw sequential writes (page cache, and one fdatasync per chunk) with the chunk sizes the log cases use:
//!    a plain `write(2)` loop of `chunk`-byte writes into a fresh file, the same total, in the same directory;
//! 2. append throughput of 1 KiB records in 16 KiB and 1 MiB batches under `os`, `interval(10)` and `always`.
//!    Every log runs under a `LogManager` with the default settings, as the broker runs it (tail flusher,
//!    maintenance thread). The `os` rows come twice: `os` (`append`: the log computes each frame's CRC32C) and
//!    `os, known CRC` (`append_with_known_crc`: the caller passes the CRC32C of bytes 21.., as the Kafka layer
//!    can with the CRC it verifies; the caller stamps the base offset into bytes 0..8 like Kafka's). Under `os`
//!    a payload of 256 KiB or more has its CRC computed by the manager's helper thread while it is written; the
//!    diagnostic `os, CRC inline` row turns the helper off (every CRC on the appending thread, as before). A
//!    diagnostic `os, no hold` row runs with `tail_flush_interval` 0: every frame written whole at once,
//!    unaligned, as before the held tail; and a diagnostic `raw, gathered` row compares a raw loop of 64 KiB writes
//!    (the blocks the log gathers 16 KiB frames into) with the 16 KiB loop, without any log. Each page-cache row
//!    is 5 raw/log pairs in alternating order;
//! 3. durable appends (1 KiB, `wait_durable`) from 1, 8 and 64 threads on one log: appends/s and appends per
//!    fdatasync (group commit);
//! 4. sequential reads of a ~512 MiB log with a 1 MiB budget (page cache warm);
//!
//! then a few small criterion groups (per-append latency of 16 KiB batches under each policy), and finally a
//! plain table of the headline figures with PASS/MISS against the goals.
//!
//! Environment (all optional): `WHARF_LOG_BENCH_ONLY=os` runs only the page-cache `os` rows (`os`, `os, known
//! CRC`, `os, CRC inline`) and skips everything else; `WHARF_LOG_BENCH_CHUNKS_KIB=16,256,1024` sets the batch
//! sizes of the page-cache rows (default 16 and 1024); `WHARF_LOG_BENCH_PARALLEL_CRC_MIN=BYTES` sets the smallest
//! payload whose CRC the helper computes in the `os` and `os, known CRC` rows (to measure the threshold).
//!
//! Everything is written under `CARGO_TARGET_TMPDIR` (the target dir's file system, not a tmpfs `/tmp`). The log
//! writes 32 bytes of frame header per batch more than the raw loop; only payload bytes are counted for both.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use wharf_log::{Durability, KnownCrc, Log, LogConfig, LogManager, ManagerConfig};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// Size of one record inside a batch.
const RECORD: usize = KIB;
/// Segment size of every log case: the page-cache cases write twice this, so each rolls once.
const SEGMENT_BYTES: u64 = 256 * MIB as u64;
/// Bytes written per page-cache case (raw and log).
const PAGE_CACHE_TOTAL: usize = 512 * MIB;
/// Upper bound of bytes written per fdatasync case…
const DURABLE_TOTAL: usize = 256 * MIB;
/// …and of its duration.
const DURABLE_TIME: Duration = Duration::from_secs(3);
/// Repetitions of each page-cache pair (raw, log); the median is reported.
const REPS: usize = 5;
/// Duration of each concurrent-appender case.
const CONCURRENT_TIME: Duration = Duration::from_secs(2);
/// A single write or append slower than this counts as a stall (a roll's fdatasync, writeback throttling).
const STALL: Duration = Duration::from_millis(20);

/// Times `op`, adding its duration to `stall_secs` if it was a stall.
fn timed<T>(stall_secs: &mut f64, op: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = op();
    let d = t.elapsed();
    if d >= STALL {
        *stall_secs += d.as_secs_f64();
    }
    out
}

/// One measured run: bytes (or operations) over seconds.
#[derive(Clone, Copy, Debug)]
struct Run {
    bytes: u64,
    secs: f64,
    /// Seconds spent in single operations slower than [`STALL`].
    stall_secs: f64,
}

impl Run {
    fn mb_s(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.mb_s().total_cmp(&b.mb_s()));
    runs[runs.len() / 2]
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

fn log_config(durability: Durability) -> LogConfig {
    log_config_with(durability, SEGMENT_BYTES)
}

fn log_config_with(durability: Durability, segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        durability,
        retention_ms: None,
        max_batch_bytes: 2 * MIB as u32,
        ..LogConfig::default()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Deletes `path` (dirty pages of deleted files are dropped, not written) and flushes whatever else is dirty,
/// so the next case starts without writeback debt from the previous one.
fn cleanup(path: &Path) {
    if path.is_dir() {
        std::fs::remove_dir_all(path).expect("remove bench dir");
    } else if path.exists() {
        std::fs::remove_file(path).expect("remove bench file");
    }
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
}

/// A plain write loop of `chunk`-sized writes into a fresh file, with one fdatasync per chunk if `sync`.
fn raw_write(
    path: &Path,
    chunk: usize,
    sync: bool,
    total: usize,
    deadline: Option<Duration>,
) -> Run {
    let buf = payload(chunk);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create raw file");
    let start = Instant::now();
    let mut written = 0usize;
    let mut stall_secs = 0.0;
    while written < total && deadline.is_none_or(|d| start.elapsed() < d) {
        timed(&mut stall_secs, || {
            file.write_all(&buf).expect("raw write");
            if sync {
                file.sync_data().expect("raw fdatasync");
            }
        });
        written += chunk;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(file);
    cleanup(path);
    Run {
        bytes: written as u64,
        secs,
        stall_secs,
    }
}

/// Where the Kafka record-batch CRC starts (bytes 21..); the known-CRC rows pass a CRC over the same range.
const KAFKA_CRC_FROM: usize = 21;

/// Appends `chunk`-sized batches of 1 KiB records to `log`, waiting as its policy requires after each. With
/// `known_crc`, each append goes through `append_with_known_crc` as the Kafka layer's can: the base offset is
/// stamped into bytes 0..8 and the CRC32C of bytes 21.. (computed once here, as the producer computes it) is
/// passed in; otherwise through `append`, and the log computes the whole CRC.
fn append_loop(
    log: &Log,
    chunk: usize,
    total: usize,
    deadline: Option<Duration>,
    known_crc: bool,
) -> Run {
    let mut buf = payload(chunk);
    let known = KnownCrc {
        from: KAFKA_CRC_FROM,
        crc32c: crc32c::crc32c(&buf[KAFKA_CRC_FROM..]),
    };
    let records = (chunk / RECORD) as u32;
    let start = Instant::now();
    let mut written = 0usize;
    let mut stall_secs = 0.0;
    while written < total && deadline.is_none_or(|d| start.elapsed() < d) {
        timed(&mut stall_secs, || {
            let a = if known_crc {
                log.append_with_known_crc(&mut buf, records, now_ms(), known, |base, p| {
                    p[..8].copy_from_slice(&base.to_be_bytes())
                })
            } else {
                log.append(&buf, records, now_ms())
            }
            .expect("append");
            log.wait_for_policy(a.next_offset).expect("wait_for_policy");
        });
        written += chunk;
    }
    Run {
        bytes: written as u64,
        secs: start.elapsed().as_secs_f64(),
        stall_secs,
    }
}

/// A log in `dir` under a [`LogManager`] with the default settings (tail flusher included), as the broker runs
/// it. Drop the manager after the log.
fn open_log(dir: &Path, durability: Durability) -> (LogManager, Arc<Log>) {
    open_log_with(dir, log_config(durability), ManagerConfig::default())
}

fn open_log_with(
    dir: &Path,
    config: LogConfig,
    manager_config: ManagerConfig,
) -> (LogManager, Arc<Log>) {
    let manager = LogManager::open(dir, manager_config).expect("open manager");
    let log = manager.open_log("bench", config).expect("open log");
    (manager, log)
}

/// Raw and log figures of one policy and batch size.
struct WriteCase {
    policy: &'static str,
    chunk: usize,
    raw_label: &'static str,
    raw: Run,
    log: Run,
    /// Log bandwidth as a percentage of raw: median of the per-pair ratios.
    pct: f64,
    syncs: u64,
    segments: usize,
}

/// The page-cache rows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// `os` as the broker runs it, the log computing each frame's CRC (`append`).
    Os,
    /// `os`, the caller passing the CRC32C of bytes 21.. (`append_with_known_crc`), as Kafka produce can.
    OsKnownCrc,
    /// Diagnostic: `os` with the CRC helper off, so the appending thread computes every CRC before writing.
    OsInlineCrc,
    /// Diagnostic: `os` with `tail_flush_interval` 0, so every frame is written whole at once (no held tail),
    /// as before page-aligned appends.
    OsWriteThrough,
    /// `interval(10)`.
    Interval,
    /// Diagnostic, no log at all: a raw loop of writes four times the chunk size (at most 64 KiB, as the log
    /// gathers frames) against the raw loop of chunk-sized writes: how much gathering alone is worth.
    RawGathered,
}

/// Size of the writes of the [`Variant::RawGathered`] loop for `chunk`: four chunks, at most 64 KiB, at least
/// the chunk (the largest block the log's held tail gathers frames into).
fn gathered(chunk: usize) -> usize {
    (4 * chunk).min(64 * KIB).max(chunk)
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Os => "os",
            Variant::OsKnownCrc => "os, known CRC",
            Variant::OsInlineCrc => "os, CRC inline",
            Variant::OsWriteThrough => "os, no hold",
            Variant::Interval => "interval(10)",
            Variant::RawGathered => "raw, gathered",
        }
    }
}

/// One page-cache row: `REPS` pairs of a raw write loop and the log, in alternating order (raw first in even
/// pairs, log first in odd ones) so that neither side always runs on the page cache the other just freed.
fn page_cache_case(root: &Path, chunk: usize, variant: Variant) -> WriteCase {
    let mut raws = Vec::new();
    let mut logs = Vec::new();
    let mut syncs = 0;
    let mut segments = 0;
    for rep in 0..REPS {
        let raw_path = root.join("raw.dat");
        let dir = root.join(format!("case-{chunk}-{rep}"));
        let mut log_run = || {
            let (durability, tail_flush_interval) = match variant {
                Variant::RawGathered => {
                    let path = root.join("gathered.dat");
                    return raw_write(&path, gathered(chunk), false, PAGE_CACHE_TOTAL, None);
                }
                Variant::Os | Variant::OsKnownCrc | Variant::OsInlineCrc => {
                    (Durability::Os, ManagerConfig::default().tail_flush_interval)
                }
                Variant::OsWriteThrough => (Durability::Os, Duration::ZERO),
                Variant::Interval => (
                    Durability::Interval { ms: 10 },
                    ManagerConfig::default().tail_flush_interval,
                ),
            };
            let (manager, log) = open_log_with(
                &dir,
                log_config(durability),
                ManagerConfig {
                    tail_flush_interval,
                    ..ManagerConfig::default()
                },
            );
            if variant == Variant::OsInlineCrc {
                manager.set_parallel_crc_min_bytes(usize::MAX);
            } else if let Some(min) = env_usize("WHARF_LOG_BENCH_PARALLEL_CRC_MIN") {
                manager.set_parallel_crc_min_bytes(min);
            }
            let run = append_loop(
                &log,
                chunk,
                PAGE_CACHE_TOTAL,
                None,
                variant == Variant::OsKnownCrc,
            );
            let st = log.stats();
            (syncs, segments) = (st.syncs, st.segments);
            drop(log);
            drop(manager);
            cleanup(&dir);
            run
        };
        let raw_run = || raw_write(&raw_path, chunk, false, PAGE_CACHE_TOTAL, None);
        if rep % 2 == 0 {
            raws.push(raw_run());
            logs.push(log_run());
        } else {
            logs.push(log_run());
            raws.push(raw_run());
        }
    }
    let mut pcts: Vec<f64> = raws
        .iter()
        .zip(&logs)
        .map(|(r, l)| 100.0 * l.mb_s() / r.mb_s())
        .collect();
    pcts.sort_by(f64::total_cmp);
    WriteCase {
        pct: pcts[pcts.len() / 2],
        policy: variant.label(),
        chunk,
        raw_label: "page cache",
        raw: median(raws),
        log: median(logs),
        syncs,
        segments,
    }
}

fn durable_case(root: &Path, chunk: usize) -> WriteCase {
    let raw = raw_write(
        &root.join("raw.dat"),
        chunk,
        true,
        DURABLE_TOTAL,
        Some(DURABLE_TIME),
    );
    let dir = root.join(format!("always-{chunk}"));
    let (manager, log) = open_log(&dir, Durability::Always);
    let run = append_loop(&log, chunk, DURABLE_TOTAL, Some(DURABLE_TIME), false);
    let st = log.stats();
    drop(log);
    drop(manager);
    cleanup(&dir);
    WriteCase {
        policy: "always",
        chunk,
        raw_label: "fdatasync/chunk",
        pct: 100.0 * run.mb_s() / raw.mb_s(),
        raw,
        log: run,
        syncs: st.syncs,
        segments: st.segments,
    }
}

struct ConcurrentCase {
    threads: usize,
    /// Acknowledged (durable) appends in the window.
    appends: u64,
    /// Appends counted by `stats()` in the window.
    log_appends: u64,
    secs: f64,
    syncs: u64,
}

/// `threads` appenders of 1 KiB batches on one `always` log, each waiting for durability after every append.
fn concurrent_case(root: &Path, threads: usize) -> ConcurrentCase {
    let dir = root.join(format!("concurrent-{threads}"));
    let (manager, log) = open_log(&dir, Durability::Always);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (log, stop, done, barrier) = (
                Arc::clone(&log),
                Arc::clone(&stop),
                Arc::clone(&done),
                Arc::clone(&barrier),
            );
            std::thread::spawn(move || {
                let buf = payload(RECORD);
                barrier.wait();
                while !stop.load(Ordering::Relaxed) {
                    let a = log.append(&buf, 1, now_ms()).expect("append");
                    log.wait_durable(a.next_offset).expect("wait_durable");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let before = log.stats();
    std::thread::sleep(CONCURRENT_TIME);
    let appends = done.load(Ordering::Relaxed);
    let after = log.stats();
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("appender thread");
    }
    drop(log);
    drop(manager);
    cleanup(&dir);
    ConcurrentCase {
        threads,
        appends,
        secs,
        // Appends per sync come from the log's own counters over the same window.
        log_appends: after.appends - before.appends,
        syncs: (after.syncs - before.syncs).max(1),
    }
}

struct ReadCase {
    log_bytes: u64,
    raw: Run,
    log: Run,
}

/// Writes a ~512 MiB log (`os`, 1 MiB batches), then reads it back with a 1 MiB budget per call; also reads
/// the segment files with a plain 1 MiB read loop for comparison. Best of three passes, page cache warm.
fn read_case(root: &Path) -> ReadCase {
    let dir = root.join("read");
    let (manager, log) = open_log(&dir, Durability::Os);
    append_loop(&log, MIB, PAGE_CACHE_TOTAL, None, false);
    let end = log.offsets().log_end;
    let log_bytes = log.stats().size_bytes;
    let mut logs = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let mut from = 0;
        let mut bytes = 0u64;
        while from < end {
            let batches = log.read(from, MIB, None).expect("read");
            let last = batches
                .last()
                .expect("read returns at least one batch below the end");
            from = last.base_offset + u64::from(last.record_count);
            bytes += batches.iter().map(|b| b.payload.len() as u64).sum::<u64>();
        }
        logs.push(Run {
            bytes,
            secs: start.elapsed().as_secs_f64(),
            stall_secs: 0.0,
        });
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(log.dir())
        .expect("list log dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    let mut raws = Vec::new();
    let mut buf = vec![0u8; MIB];
    for _ in 0..3 {
        let start = Instant::now();
        let mut bytes = 0u64;
        for path in &files {
            let mut f = File::open(path).expect("open segment");
            loop {
                let n = f.read(&mut buf).expect("raw read");
                if n == 0 {
                    break;
                }
                bytes += n as u64;
            }
        }
        raws.push(Run {
            bytes,
            secs: start.elapsed().as_secs_f64(),
            stall_secs: 0.0,
        });
    }
    drop(log);
    drop(manager);
    cleanup(&dir);
    let best = |runs: Vec<Run>| {
        runs.into_iter()
            .max_by(|a, b| a.mb_s().total_cmp(&b.mb_s()))
            .expect("runs")
    };
    ReadCase {
        log_bytes,
        raw: best(raws),
        log: best(logs),
    }
}

/// Per-append latency of 16 KiB batches under each policy (criterion). The logs roll at 64 MiB and keep at
/// most 128 MiB, so the sustained page-cache cases do not fill the disk.
fn criterion_groups(root: &Path) {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let manager =
        LogManager::open(root.join("criterion"), ManagerConfig::default()).expect("open manager");
    let mut group = c.benchmark_group("append_16KiB");
    group.throughput(Throughput::Bytes(16 * KIB as u64));
    let buf = payload(16 * KIB);
    for (name, durability) in [
        ("always", Durability::Always),
        ("interval_10ms", Durability::Interval { ms: 10 }),
        ("os", Durability::Os),
    ] {
        let config = LogConfig {
            segment_bytes: 64 * MIB as u64,
            retention_bytes: Some(128 * MIB as u64),
            ..log_config(durability)
        };
        let log = manager.open_log(name, config).expect("open log");
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let a = log.append(&buf, 16, now_ms()).expect("append");
                    log.wait_for_policy(a.next_offset).expect("wait_for_policy");
                }
                let elapsed = start.elapsed();
                log.apply_retention(now_ms()).expect("retention");
                elapsed
            })
        });
        manager.delete_log(name).expect("delete log");
    }
    group.finish();
    drop(manager);
    cleanup(&root.join("criterion"));
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn size_label(bytes: usize) -> String {
    if bytes >= MIB {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{} KiB", bytes / KIB)
    }
}

/// A number from the environment, if set and valid.
fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn main() {
    let only_os = std::env::var("WHARF_LOG_BENCH_ONLY").is_ok_and(|v| v == "os");
    let chunks: Vec<usize> = std::env::var("WHARF_LOG_BENCH_CHUNKS_KIB").map_or_else(
        |_| vec![16 * KIB, MIB],
        |v| {
            v.split(',')
                .map(|c| {
                    c.trim()
                        .parse::<usize>()
                        .expect("WHARF_LOG_BENCH_CHUNKS_KIB")
                        * KIB
                })
                .collect()
        },
    );
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench dir");
    let root = tmp.path();
    eprintln!("wharf-log bench dir: {}", root.display());
    let t0 = Instant::now();
    // Warm-up: the first writes after boot (or after memory was returned to the host) are much slower.
    raw_write(
        &root.join("warmup.dat"),
        MIB,
        false,
        2 * PAGE_CACHE_TOTAL,
        None,
    );

    let mut writes = Vec::new();
    for &chunk in &chunks {
        for variant in [
            Variant::Os,
            Variant::OsKnownCrc,
            Variant::OsInlineCrc,
            Variant::OsWriteThrough,
            Variant::RawGathered,
            Variant::Interval,
        ] {
            if variant == Variant::RawGathered && gathered(chunk) == chunk {
                continue; // nothing to gather: it would compare the raw loop with itself
            }
            let os_row = matches!(
                variant,
                Variant::Os | Variant::OsKnownCrc | Variant::OsInlineCrc
            );
            if only_os && !os_row {
                continue;
            }
            eprintln!(
                "[{:>5.1}s] {} {}",
                t0.elapsed().as_secs_f64(),
                variant.label(),
                size_label(chunk)
            );
            writes.push(page_cache_case(root, chunk, variant));
        }
        if only_os {
            continue;
        }
        eprintln!(
            "[{:>5.1}s] always {}",
            t0.elapsed().as_secs_f64(),
            size_label(chunk)
        );
        writes.push(durable_case(root, chunk));
    }
    let mut concurrent = Vec::new();
    for threads in [1, 8, 64].into_iter().filter(|_| !only_os) {
        eprintln!(
            "[{:>5.1}s] {threads} durable appenders",
            t0.elapsed().as_secs_f64()
        );
        concurrent.push(concurrent_case(root, threads));
    }
    let read = if only_os {
        None
    } else {
        eprintln!("[{:>5.1}s] sequential read", t0.elapsed().as_secs_f64());
        let read = read_case(root);
        eprintln!("[{:>5.1}s] criterion groups", t0.elapsed().as_secs_f64());
        criterion_groups(root);
        Some(read)
    };

    println!();
    println!(
        "wharf-log headline figures (bench dir {}, same file system as the target dir)",
        root.display()
    );
    println!();
    println!("1-2. Append throughput, 1 KiB records, segment_bytes 256 MiB; raw = same chunk size, same total, measured right before");
    println!(
        "{:<14} {:>7} {:>6} {:>9} {:>16} {:>9} {:>7} {:>6} {:>5} {:>11}  goal",
        "policy",
        "batch",
        "MiB",
        "log MB/s",
        "raw baseline",
        "raw MB/s",
        "% raw",
        "syncs",
        "segs",
        "stall s l/r"
    );
    let mut goals = Vec::new();
    for w in &writes {
        let pct = w.pct;
        let goal = match (w.policy, w.chunk) {
            ("os" | "os, known CRC", _) => {
                let ok = pct >= 90.0;
                goals.push((
                    format!(
                        "{} {} >= 90% of raw page-cache bandwidth",
                        w.policy,
                        size_label(w.chunk)
                    ),
                    ok,
                ));
                format!("{} (>= 90%)", verdict(ok))
            }
            ("always", MIB) => {
                let ok = pct >= 50.0;
                goals.push((
                    "always 1 MiB >= 50% of raw fdatasync-per-MiB bandwidth".to_string(),
                    ok,
                ));
                format!("{} (>= 50%)", verdict(ok))
            }
            _ => String::new(),
        };
        println!(
            "{:<14} {:>7} {:>6.0} {:>9.1} {:>16} {:>9.1} {:>6.1}% {:>6} {:>5} {:>5.2}/{:<5.2}  {}",
            w.policy,
            size_label(w.chunk),
            w.log.bytes as f64 / MIB as f64,
            w.log.mb_s(),
            w.raw_label,
            w.raw.mb_s(),
            pct,
            w.syncs,
            w.segments,
            w.log.stall_secs,
            w.raw.stall_secs,
            goal
        );
    }
    println!(
        "(page-cache rows: median MB/s of {REPS} raw/log pairs, % raw = median of per-pair ratios; always rows: up to {} MiB or {:?} each;",
        DURABLE_TOTAL / MIB,
        DURABLE_TIME
    );
    println!(" `os` = append, the log computes the CRC32C; `os, known CRC` = append_with_known_crc, the caller passes the");
    println!(" CRC32C of bytes 21.. it has already verified (as Kafka produce can), so the log does not read the payload;");
    println!(" under `os`, payloads of 256 KiB or more have their CRC computed by a helper thread while they are written;");
    println!(" `os, CRC inline` is a diagnostic: helper off, every CRC on the appending thread before the write;");
    println!(" `os, no hold` is a diagnostic: tail_flush_interval 0, so every frame is written whole at once, unaligned;");
    println!(" `raw, gathered` is a diagnostic without a log: a raw loop of 64 KiB writes against the 16 KiB loop;");
    println!(
        " syncs = group-commit fdatasyncs (roll syncs not counted); segs = segments at the end;"
    );
    println!(
        " stall s l/r = seconds spent in single log appends / raw writes slower than {STALL:?})"
    );
    if !concurrent.is_empty() {
        println!();
        println!("3. Durable appends: 1 KiB batches (record_count 1), policy always, wait_durable after each, {:?} per case", CONCURRENT_TIME);
        println!(
            "{:>9} {:>10} {:>10} {:>8} {:>14}  goal",
            "appenders", "appends", "appends/s", "syncs", "appends/sync"
        );
        for c in &concurrent {
            let per_sync = c.log_appends as f64 / c.syncs as f64;
            let goal = if c.threads == 64 {
                let ok = per_sync >= 16.0;
                goals.push((
                    "64 durable appenders >= 16 appends per fdatasync".to_string(),
                    ok,
                ));
                format!("{} (>= 16)", verdict(ok))
            } else {
                String::new()
            };
            println!(
                "{:>9} {:>10} {:>10.0} {:>8} {:>14.1}  {}",
                c.threads,
                c.appends,
                c.appends as f64 / c.secs,
                c.syncs,
                per_sync,
                goal
            );
        }
    }
    if let Some(read) = &read {
        println!();
        println!(
            "4. Sequential read of a {:.0} MiB log, read(from, 1 MiB, None) in a loop, page cache warm, best of 3",
            read.log_bytes as f64 / MIB as f64
        );
        println!(
            "   log read {:.1} MB/s; raw read(2) of the segment files, 1 MiB buffer: {:.1} MB/s ({:.1}% of raw)",
            read.log.mb_s(),
            read.raw.mb_s(),
            100.0 * read.log.mb_s() / read.raw.mb_s()
        );
    }
    println!();
    println!("Goals:");
    for (goal, ok) in &goals {
        println!("   {} {goal}", verdict(*ok));
    }
    println!("(total bench time {:.0} s)", t0.elapsed().as_secs_f64());
}
