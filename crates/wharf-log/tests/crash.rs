//! Crash test: a child process appends with durability `always` and reports each acknowledged batch; it is
//! SIGKILLed at random moments; after reopening, every acknowledged batch is readable and intact, offsets are
//! dense, and nothing damaged is served. `WHARF_CRASH_CYCLES` sets the number of cycles (default 50).

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use wharf_log::testing::check_pattern;
use wharf_log::{FileCache, Log, LogConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ack {
    base: u64,
    count: u32,
    id: u64,
    len: usize,
}

fn parse(line: &str) -> Option<Ack> {
    let mut it = line.strip_prefix("ACK ")?.split(' ');
    Some(Ack {
        base: it.next()?.parse().ok()?,
        count: it.next()?.parse().ok()?,
        id: it.next()?.parse().ok()?,
        len: it.next()?.parse().ok()?,
    })
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let cycles: usize = std::env::var("WHARF_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id() as u64);
    let mut acked: Vec<Ack> = Vec::new();
    for cycle in 0..cycles {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wharf-log-torture"))
            .arg(dir.path())
            .arg("4")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn torture child");
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = parse(&line) {
                    acks.push(a);
                }
            }
            acks
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..200)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let new_acks = reader.join().unwrap();
        acked.extend(new_acks);

        let log = Log::open(
            dir.path(),
            "torture",
            LogConfig::default(),
            Arc::new(FileCache::new(64)),
        )
        .unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
        // Every acknowledged batch is there, intact, at its offset.
        for a in &acked {
            let got = log.read(a.base, 1, None).unwrap_or_else(|e| {
                panic!("cycle {cycle}: acked batch at {} unreadable: {e}", a.base)
            });
            let b = got
                .first()
                .unwrap_or_else(|| panic!("cycle {cycle}: acked batch at {} lost", a.base));
            assert_eq!(b.base_offset, a.base, "cycle {cycle}");
            assert_eq!(b.record_count, a.count, "cycle {cycle}");
            assert_eq!(
                check_pattern(&b.payload),
                Some(a.id),
                "cycle {cycle}: batch at {} damaged",
                a.base
            );
            assert_eq!(b.payload.len(), a.len + 8);
        }
        // Everything served is intact and dense, acknowledged or not.
        let mut cursor = 0;
        loop {
            let batches = log.read(cursor, 1 << 20, None).unwrap();
            if batches.is_empty() {
                break;
            }
            for b in batches {
                assert_eq!(b.base_offset, cursor, "cycle {cycle}: offsets are dense");
                assert!(
                    check_pattern(&b.payload).is_some(),
                    "cycle {cycle}: served a damaged batch at {cursor}"
                );
                cursor = b.next_offset();
            }
        }
        assert_eq!(cursor, log.offsets().log_end);
    }
    assert!(
        acked.len() > cycles,
        "the child acknowledged appends ({} in {cycles} cycles)",
        acked.len()
    );
    eprintln!(
        "{} acknowledged batches verified over {cycles} SIGKILL cycles",
        acked.len()
    );
}
