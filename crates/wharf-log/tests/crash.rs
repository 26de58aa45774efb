//! Crash tests: a child process appends (under a `LogManager`, so appends hold their tail back) and reports each
//! acknowledged batch; it is SIGKILLed at random moments; after reopening, offsets are dense and nothing damaged
//! is served, and
//! - under `always`, every acknowledged batch is readable and intact;
//! - under `os`, the log is a prefix of what was acknowledged, short by at most the held tail (under 128 KiB).
//!
//! A third test runs both policies with large batches too (written with a zeroed header that is filled in once
//! the helper thread has computed the CRC).
//!
//! `WHARF_CRASH_CYCLES` sets the number of cycles (default 50 for `always`, half as many for `os`, a fifth for
//! each policy with large batches).

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

/// Most frame bytes (payload and 32-byte header) a process crash may lose under `os`: the held tail is under
/// 2 × 64 KiB, and the batches ending in it are lost whole (the torture child's are at most 3 KiB).
const OS_LOSS_MAX_BYTES: usize = 128 * 1024 + 4096;

fn cycles(default: usize) -> usize {
    std::env::var("WHARF_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    run(cycles(50), "always");
}

#[test]
fn os_loses_at_most_the_held_tail_to_sigkill() {
    run(cycles(50).div_ceil(2), "os");
}

/// Largest batch of the torture child's `big` runs (1.25 MiB payload, 8-byte id, 32-byte header).
const BIG_BATCH_MAX_BYTES: usize = 256 * 1024 + 1024 * 1024 + 8 + 32;

/// With batches of 256 KiB and more, whose header is written after the rest of the frame (the CRC being
/// computed meanwhile): a SIGKILL between the two writes must leave nothing damaged served, and under `always`
/// lose nothing acknowledged.
#[test]
fn large_batches_written_header_last_survive_sigkill() {
    run_with(cycles(50).div_ceil(5), "always", true);
    run_with(cycles(50).div_ceil(5), "os", true);
}

fn run(cycles: usize, policy: &str) {
    run_with(cycles, policy, false);
}

fn run_with(cycles: usize, policy: &str, big: bool) {
    // Under `os` a crash loses the batches ending in the held tail: with big batches, one of those may be big.
    let loss_max = if big {
        OS_LOSS_MAX_BYTES + BIG_BATCH_MAX_BYTES
    } else {
        OS_LOSS_MAX_BYTES
    };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id() as u64);
    let mut acked: Vec<Ack> = Vec::new();
    for cycle in 0..cycles {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wharf-log-torture"))
            .arg(dir.path())
            .arg("4")
            .arg(policy)
            .args(big.then_some("big"))
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
            dir.path().join("torture"),
            "torture",
            LogConfig::default(),
            Arc::new(FileCache::new(64)),
        )
        .unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
        let end = log.offsets().log_end;
        if policy == "os" {
            // Acknowledged from the page cache: a crash loses the held tail, the batches ending in it.
            let lost: usize = acked
                .iter()
                .filter(|a| a.base >= end)
                .map(|a| a.len + 8 + 32)
                .sum();
            assert!(
                lost < loss_max,
                "cycle {cycle}: lost {lost} bytes of acknowledged batches"
            );
            // Their offsets are given to new batches from now on.
            acked.retain(|a| a.base < end);
        }
        // Every (remaining) acknowledged batch is there, intact, at its offset.
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
        assert_eq!(cursor, end);
    }
    assert!(
        acked.len() > cycles,
        "the child acknowledged appends ({} in {cycles} cycles)",
        acked.len()
    );
    eprintln!(
        "{policy}{}: {} acknowledged batches verified over {cycles} SIGKILL cycles",
        if big { " (big batches)" } else { "" },
        acked.len()
    );
}
