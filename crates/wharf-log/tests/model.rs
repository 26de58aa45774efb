//! Property test: random sequences of append / read / reopen / truncate / log-start moves / retention / roll
//! agree with a simple in-memory model of the log.

mod common;

use common::{open, payload};
use proptest::prelude::*;
use wharf_log::{Durability, Log, LogConfig};

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
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..700, 1u32..6, 0i64..1000).prop_map(|(len, count, ts)| Op::Append { len, count, ts }),
        4 => (0.0f64..1.0, 1usize..3000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        1 => (0.0f64..1.0).prop_map(|at| Op::Truncate { at }),
        1 => (0.0f64..1.0).prop_map(|at| Op::AdvanceStart { at }),
        1 => (1000u64..20_000).prop_map(|keep| Op::RetainBytes { keep }),
        1 => Just(Op::Roll),
        1 => (0i64..1000).prop_map(|ts| Op::FindTime { ts }),
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
    fn log_agrees_with_model(ops in proptest::collection::vec(op(), 1..60), lazy in any::<bool>()) {
        POLICY.with(|p| p.set(if lazy { Durability::Os } else { Durability::Always }));
        let dir = tempfile::tempdir().unwrap();
        let mut log = Some(open(dir.path(), config()));
        let mut model = Model::default();
        let mut n = 0u64;
        for op in ops {
            let l = log.as_ref().unwrap();
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
                    let old = log.take().unwrap();
                    if clean {
                        old.close().unwrap();
                    }
                    drop(old);
                    log = Some(open(dir.path(), config()));
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
            let l = log.as_ref().unwrap();
            let offs = l.offsets();
            prop_assert_eq!((offs.log_start, offs.log_end), (model.start, model.end));
        }
        // Finally everything live reads back, also after one more unclean reopen.
        drop(log.take());
        let l = open(dir.path(), config());
        prop_assert_eq!((l.offsets().log_start, l.offsets().log_end), (model.start, model.end));
        check_read(&l, &model, model.start, usize::MAX);
    }
}
