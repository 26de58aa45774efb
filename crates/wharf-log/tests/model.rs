//! Property test: random sequences of append / read / reopen / truncate / log-start moves / retention / roll
//! agree with a simple in-memory model of the log, for a log on its own and for logs under a manager (which
//! hold their tail back: never written by a timer, or written by one every millisecond; their appends of
//! 4000 bytes and more have their CRC computed by the manager's helper thread). A simulated process
//! crash (a copy of the files, opened on its own) always finds a prefix of the model, short by at most the held
//! tail.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{copy_dir, open, payload};
use proptest::prelude::*;
use wharf_log::{Durability, Log, LogConfig, LogManager, ManagerConfig};

#[derive(Debug, Clone)]
enum Op {
    Append { len: usize, count: u32, ts: i64 },
    Read { at: f64, max_bytes: usize },
    Reopen { clean: bool },
    Truncate { at: f64 },
    AdvanceStart { at: f64 },
    RetainBytes { keep: u64 },
    Roll,
    FindTime { ts: i64 },
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..700, 1u32..6, 0i64..1000).prop_map(|(len, count, ts)| Op::Append { len, count, ts }),
        1 => (4000usize..20_000, 1u32..6, 0i64..1000).prop_map(|(len, count, ts)| Op::Append { len, count, ts }),
        4 => (0.0f64..1.0, 1usize..3000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        1 => (0.0f64..1.0).prop_map(|at| Op::Truncate { at }),
        1 => (0.0f64..1.0).prop_map(|at| Op::AdvanceStart { at }),
        1 => (1000u64..20_000).prop_map(|keep| Op::RetainBytes { keep }),
        1 => Just(Op::Roll),
        1 => (0i64..1000).prop_map(|ts| Op::FindTime { ts }),
        1 => Just(Op::Crash),
    ]
}

#[derive(Default, Debug)]
struct Model {
    batches: Vec<(u64, u32, i64, Vec<u8>)>,
    start: u64,
    end: u64,
}

impl Model {
    fn pick(&self, at: f64) -> u64 {
        self.start + ((self.end - self.start) as f64 * at) as u64
    }
    /// Batches still readable (those ending after the log start).
    fn live(&self) -> impl Iterator<Item = &(u64, u32, i64, Vec<u8>)> {
        self.batches
            .iter()
            .filter(|b| b.0 + u64::from(b.1) > self.start)
    }
}

thread_local! {
    /// The durability policy of the current property run (rolls seal synchronously only under `always`).
    static POLICY: std::cell::Cell<Durability> = const { std::cell::Cell::new(Durability::Always) };
}

fn config() -> LogConfig {
    LogConfig {
        durability: POLICY.with(|p| p.get()),
        segment_bytes: 4096,
        index_interval_bytes: 300,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// How the log under test is opened.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// `Log::open`: nothing held back.
    Alone,
    /// Under a manager whose tail flusher never fires within the test: held bytes are written only by syncs,
    /// rolls, truncations, checkpoints, close and drop.
    HeldLong,
    /// Under a manager whose tail flusher fires after 1 ms, racing with the operations.
    HeldShort,
}

/// The log under test and, in the held modes, its manager (dropped after the log).
struct Handle {
    log: Arc<Log>,
    manager: Option<LogManager>,
}

fn open_handle(dir: &Path, mode: Mode) -> Handle {
    let interval = match mode {
        Mode::Alone => {
            return Handle {
                log: Arc::new(open(dir, config())),
                manager: None,
            }
        }
        Mode::HeldLong => Duration::from_secs(3600),
        Mode::HeldShort => Duration::from_millis(1),
    };
    let manager = LogManager::open(
        dir,
        ManagerConfig {
            tail_flush_interval: interval,
            ..ManagerConfig::default()
        },
    )
    .unwrap();
    // The larger appends (4000 bytes and more) take the path of large payloads: CRC by the manager's helper
    // thread, header written last over a zeroed placeholder.
    manager.set_parallel_crc_min_bytes(4000);
    let log = manager.open_log("m", config()).unwrap();
    Handle {
        log,
        manager: Some(manager),
    }
}

/// Where the log's files are.
fn log_dir(dir: &Path, mode: Mode) -> std::path::PathBuf {
    match mode {
        Mode::Alone => dir.to_path_buf(),
        Mode::HeldLong | Mode::HeldShort => dir.join("m"),
    }
}

/// Closes (if `clean`) and drops the log and its manager.
fn shut(h: Handle, clean: bool) {
    if clean {
        h.log.close().unwrap();
    }
    drop(h.log);
    if let Some(m) = h.manager {
        if clean {
            m.close().unwrap();
        }
    }
}

/// Frame bytes (header included) of the batches after `end`.
fn bytes_after(model: &Model, end: u64) -> usize {
    model
        .batches
        .iter()
        .filter(|b| b.0 >= end)
        .map(|b| b.3.len() + 32)
        .sum()
}

fn check_read(log: &Log, model: &Model, from: u64, max_bytes: usize) {
    let got = log.read(from, max_bytes, None).expect("read in range");
    let want: Vec<_> = model
        .live()
        .filter(|b| b.0 + u64::from(b.1) > from)
        .collect();
    if want.is_empty() {
        assert!(got.is_empty());
        return;
    }
    assert!(
        !got.is_empty(),
        "a read with data available returns at least one batch"
    );
    let mut total = 0;
    for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
        assert_eq!(
            (g.base_offset, g.record_count, g.max_timestamp),
            (w.0, w.1, w.2)
        );
        assert_eq!(g.payload.as_ref(), w.3.as_slice());
        if i > 0 {
            total += g.payload.len();
        }
    }
    assert!(got.len() <= want.len());
    assert!(
        total <= max_bytes,
        "only the first batch may exceed the budget"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]
    #[test]
    fn log_agrees_with_model(ops in proptest::collection::vec(op(), 1..60), lazy in any::<bool>(), mode in 0u8..3) {
        POLICY.with(|p| p.set(if lazy { Durability::Os } else { Durability::Always }));
        let mode = [Mode::Alone, Mode::HeldLong, Mode::HeldShort][usize::from(mode)];
        let dir = tempfile::tempdir().unwrap();
        let mut log = Some(open_handle(dir.path(), mode));
        let mut model = Model::default();
        let mut n = 0u64;
        for op in ops {
            let l = &log.as_ref().unwrap().log;
            match op {
                Op::Append { len, count, ts } => {
                    n += 1;
                    let p = payload(n, len);
                    let a = l.append(&p, count, ts).unwrap();
                    prop_assert_eq!(a.base_offset, model.end);
                    model.batches.push((a.base_offset, count, ts, p));
                    model.end = a.next_offset;
                }
                Op::Read { at, max_bytes } => check_read(l, &model, model.pick(at), max_bytes),
                Op::Reopen { clean } => {
                    shut(log.take().unwrap(), clean);
                    log = Some(open_handle(dir.path(), mode));
                }
                Op::Crash => {
                    // What a process crash would leave: the files as they are now (the page cache survives).
                    let copy = tempfile::tempdir().unwrap();
                    copy_dir(&log_dir(dir.path(), mode), copy.path());
                    let crashed = open(copy.path(), config());
                    let offs = crashed.offsets();
                    prop_assert!(offs.log_end <= model.end);
                    prop_assert!(offs.log_start >= model.start.min(offs.log_end));
                    if let Mode::Alone = mode {
                        prop_assert_eq!(offs.log_end, model.end, "a log on its own holds nothing back");
                    }
                    // Only batches in the held tail can be missing (it is under 2 x 64 KiB).
                    prop_assert!(bytes_after(&model, offs.log_end) < 128 * 1024 + 20_032);
                    let lost: Vec<_> = model.batches.iter().filter(|b| b.0 >= offs.log_end).cloned().collect();
                    let kept = Model {
                        batches: model.batches.iter().filter(|b| b.0 < offs.log_end).cloned().collect(),
                        start: offs.log_start,
                        end: offs.log_end,
                    };
                    prop_assert!(lost.is_empty() || lost[0].0 == offs.log_end, "the copy ends on a batch boundary");
                    check_read(&crashed, &kept, offs.log_start, usize::MAX);
                }
                Op::Truncate { at } => {
                    let t = model.pick(at);
                    let new_end = l.truncate_to(t).unwrap();
                    // The batch holding `t` and everything after it go; the end becomes that batch's base.
                    let expect_end = model.batches.iter().find(|b| b.0 + u64::from(b.1) > t).map_or(model.end, |b| b.0);
                    model.batches.retain(|b| b.0 + u64::from(b.1) <= t);
                    prop_assert_eq!(new_end, expect_end);
                    model.end = new_end;
                    model.start = model.start.min(new_end);
                }
                Op::AdvanceStart { at } => {
                    let o = model.pick(at);
                    l.advance_log_start(o).unwrap();
                    model.start = model.start.max(o);
                }
                Op::RetainBytes { keep } => {
                    let mut c = config();
                    c.retention_bytes = Some(keep);
                    l.set_config(c);
                    l.apply_retention(0).unwrap();
                    l.set_config(config());
                    let start = l.offsets().log_start;
                    prop_assert!(start >= model.start && start <= model.end);
                    prop_assert!(start == model.end || model.batches.iter().any(|b| b.0 == start) || start == model.start,
                        "retention moves the start to a batch boundary");
                    model.start = start;
                }
                Op::Roll => l.roll().unwrap(),
                Op::FindTime { ts } => {
                    let got = l.find_offset_by_timestamp(ts).unwrap().map(|g| g.0);
                    let want = model.live().find(|b| b.2 >= ts).map(|b| b.0.max(model.start));
                    prop_assert_eq!(got, want);
                }
            }
            let l = &log.as_ref().unwrap().log;
            let offs = l.offsets();
            prop_assert_eq!((offs.log_start, offs.log_end), (model.start, model.end));
        }
        // Finally everything live reads back, also after one more unclean reopen (dropping writes the held tail).
        shut(log.take().unwrap(), false);
        let l = open(&log_dir(dir.path(), mode), config());
        prop_assert_eq!((l.offsets().log_start, l.offsets().log_end), (model.start, model.end));
        check_read(&l, &model, model.start, usize::MAX);
    }
}
