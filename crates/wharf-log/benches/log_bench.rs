//! Throughput of the commit log against the raw bandwidth of the same file system, measured in the same run.
//!
//! `cargo bench -p wharf-log --bench log_bench` runs:
//! 1. raw sequential writes (page cache, and one fdatasync per chunk) with the chunk sizes the log cases use,
//!    each measured right before the log case it is compared with;
//! 2. append throughput of 1 KiB records in 16 KiB and 1 MiB batches under `always`, `interval(10)` and `os`;
//! 3. durable appends (1 KiB, `wait_durable`) from 1, 8 and 64 threads on one log: appends/s and appends per
//!    fdatasync (group commit);
//! 4. sequential reads of a ~512 MiB log with a 1 MiB budget (page cache warm);
//! 5. a diagnostic `os` case without rolls, against raw writes framed like the log's (32 extra bytes each);
//!
//! then a few small criterion groups (per-append latency of 16 KiB batches under each policy), and finally a
//! plain table of the headline figures with PASS/MISS against the goals.
//!
//! Everything is written under `CARGO_TARGET_TMPDIR` (the target dir's file system, not a tmpfs `/tmp`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use wharf_log::frame::FRAME_HEADER_LEN;
use wharf_log::{Durability, FileCache, Log, LogConfig, LogManager, ManagerConfig};

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
    raw_write_framed(path, chunk, 0, sync, total, deadline)
}

/// Like [`raw_write`], but every write also carries `frame` extra bytes (as the log's 32-byte frame header
/// does), so writes are no longer page-aligned; only the `chunk` bytes are counted.
fn raw_write_framed(
    path: &Path,
    chunk: usize,
    frame: usize,
    sync: bool,
    total: usize,
    deadline: Option<Duration>,
) -> Run {
    let buf = payload(chunk + frame);
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

/// Appends `chunk`-sized batches of 1 KiB records to `log`, waiting as its policy requires after each.
fn append_loop(log: &Log, chunk: usize, total: usize, deadline: Option<Duration>) -> Run {
    let buf = payload(chunk);
    let records = (chunk / RECORD) as u32;
    let start = Instant::now();
    let mut written = 0usize;
    let mut stall_secs = 0.0;
    while written < total && deadline.is_none_or(|d| start.elapsed() < d) {
        timed(&mut stall_secs, || {
            let a = log.append(&buf, records, now_ms()).expect("append");
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

fn open_log(dir: &Path, durability: Durability) -> Log {
    open_log_with(dir, log_config(durability))
}

fn open_log_with(dir: &Path, config: LogConfig) -> Log {
    Log::open(dir, "bench", config, Arc::new(FileCache::new(64))).expect("open log")
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

/// `policy` is `os`, `interval(10)` or the diagnostic `os, no roll` (a 1 GiB segment that never rolls).
fn page_cache_case(root: &Path, chunk: usize, policy: &'static str) -> WriteCase {
    let mut raws = Vec::new();
    let mut logs = Vec::new();
    let mut syncs = 0;
    let mut segments = 0;
    for rep in 0..REPS {
        let raw_path = root.join("raw.dat");
        // The diagnostic row compares against writes framed like the log's, isolating the engine's own cost.
        let frame = if policy == "os, no roll" {
            FRAME_HEADER_LEN
        } else {
            0
        };
        raws.push(raw_write_framed(
            &raw_path,
            chunk,
            frame,
            false,
            PAGE_CACHE_TOTAL,
            None,
        ));
        let dir = root.join(format!("case-{chunk}-{rep}"));
        let run = if policy.starts_with("os") {
            let segment_bytes = if policy == "os" {
                SEGMENT_BYTES
            } else {
                4 * SEGMENT_BYTES
            };
            let log = open_log_with(&dir, log_config_with(Durability::Os, segment_bytes));
            let run = append_loop(&log, chunk, PAGE_CACHE_TOTAL, None);
            let st = log.stats();
            (syncs, segments) = (st.syncs, st.segments);
            run
        } else {
            let manager = LogManager::open(&dir, ManagerConfig::default()).expect("open manager");
            let log = manager
                .open_log("bench", log_config(Durability::Interval { ms: 10 }))
                .expect("open log");
            let run = append_loop(&log, chunk, PAGE_CACHE_TOTAL, None);
            let st = log.stats();
            (syncs, segments) = (st.syncs, st.segments);
            run
        };
        logs.push(run);
        cleanup(&dir);
    }
    let mut pcts: Vec<f64> = raws
        .iter()
        .zip(&logs)
        .map(|(r, l)| 100.0 * l.mb_s() / r.mb_s())
        .collect();
    pcts.sort_by(f64::total_cmp);
    WriteCase {
        pct: pcts[pcts.len() / 2],
        policy,
        chunk,
        raw_label: if policy == "os, no roll" {
            "page cache +32 B"
        } else {
            "page cache"
        },
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
    let log = open_log(&dir, Durability::Always);
    let run = append_loop(&log, chunk, DURABLE_TOTAL, Some(DURABLE_TIME));
    let st = log.stats();
    drop(log);
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
    let log = Arc::new(open_log(&dir, Durability::Always));
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
    let log = open_log(&dir, Durability::Os);
    append_loop(&log, MIB, PAGE_CACHE_TOTAL, None);
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
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
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

fn main() {
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
    for chunk in [16 * KIB, MIB] {
        for policy in ["os", "os, no roll", "interval(10)"] {
            eprintln!(
                "[{:>5.1}s] {policy} {}",
                t0.elapsed().as_secs_f64(),
                size_label(chunk)
            );
            writes.push(page_cache_case(root, chunk, policy));
        }
        eprintln!(
            "[{:>5.1}s] always {}",
            t0.elapsed().as_secs_f64(),
            size_label(chunk)
        );
        writes.push(durable_case(root, chunk));
    }
    let mut concurrent = Vec::new();
    for threads in [1, 8, 64] {
        eprintln!(
            "[{:>5.1}s] {threads} durable appenders",
            t0.elapsed().as_secs_f64()
        );
        concurrent.push(concurrent_case(root, threads));
    }
    eprintln!("[{:>5.1}s] sequential read", t0.elapsed().as_secs_f64());
    let read = read_case(root);
    eprintln!("[{:>5.1}s] criterion groups", t0.elapsed().as_secs_f64());
    criterion_groups(root);

    println!();
    println!(
        "wharf-log headline figures (bench dir {}, same file system as the target dir)",
        root.display()
    );
    println!();
    println!("1-2. Append throughput, 1 KiB records, segment_bytes 256 MiB; raw = same chunk size, same total, measured right before");
    println!(
        "{:<13} {:>7} {:>6} {:>9} {:>16} {:>9} {:>7} {:>6} {:>5} {:>11}  goal",
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
            ("os", _) => {
                let ok = pct >= 90.0;
                goals.push((
                    format!(
                        "os {} >= 90% of raw page-cache bandwidth",
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
            "{:<13} {:>7} {:>6.0} {:>9.1} {:>16} {:>9.1} {:>6.1}% {:>6} {:>5} {:>5.2}/{:<5.2}  {}",
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
    println!(" `os, no roll` is a diagnostic: 1 GiB segment, raw writes carry 32 extra bytes like the log's frames;");
    println!(
        " syncs = group-commit fdatasyncs (roll syncs not counted); segs = segments at the end;"
    );
    println!(
        " stall s l/r = seconds spent in single log appends / raw writes slower than {STALL:?})"
    );
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
    println!();
    println!("Goals:");
    for (goal, ok) in &goals {
        println!("   {} {goal}", verdict(*ok));
    }
    println!("(total bench time {:.0} s)", t0.elapsed().as_secs_f64());
}
