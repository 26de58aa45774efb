//! `wharf-log-torture DIR THREADS [always|os] [big]`: appends self-describing batches to the log `DIR/torture`
//! (under a `LogManager`, as the broker runs it, so appends hold their tail back) from THREADS threads, forever,
//! and prints `ACK <base> <count> <id> <len>` for each append once the policy allows acknowledging it: after
//! fdatasync under `always` (the default), at once under `os`. With `big`, one batch in four is 256 KiB to
//! 1.25 MiB (its CRC computed by the manager's helper thread while it is written, header last). The crash tests
//! SIGKILL it at random moments and check what survived.

use std::io::Write;
use std::sync::Arc;

use wharf_log::testing::pattern;
use wharf_log::{Durability, LogConfig, LogManager, ManagerConfig};

/// Smallest batch of `big` runs (the helper's default threshold), and the spread of their lengths.
const BIG_MIN: usize = 256 * 1024;
const BIG_SPREAD: usize = 1024 * 1024;

fn main() {
    if let Err(e) = run() {
        eprintln!("wharf-log-torture: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    const USAGE: &str = "usage: wharf-log-torture DIR THREADS [always|os] [big]";
    let dir = args.next().ok_or(USAGE)?;
    let threads: u64 = args.next().ok_or(USAGE)?.parse()?;
    let durability = match args.next().as_deref() {
        None | Some("always") => Durability::Always,
        Some("os") => Durability::Os,
        Some(_) => return Err(USAGE.into()),
    };
    let big = match args.next().as_deref() {
        None => false,
        Some("big") => true,
        Some(_) => return Err(USAGE.into()),
    };
    let config = LogConfig {
        segment_bytes: if big { 8 << 20 } else { 256 * 1024 },
        index_interval_bytes: 1024,
        durability,
        retention_ms: None,
        ..LogConfig::default()
    };
    let manager = LogManager::open(&dir, ManagerConfig::default())?;
    let log = manager.open_log("torture", config)?;
    // Ids continue across runs: each run gets a fresh range from the pid and the clock.
    let run_id = u64::from(std::process::id()) << 32
        ^ (std::time::UNIX_EPOCH.elapsed()?.as_nanos() as u64) << 40;
    let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    std::thread::scope(|s| {
        for t in 0..threads {
            let log = Arc::clone(&log);
            let stdout = Arc::clone(&stdout);
            s.spawn(move || -> Result<(), String> {
                for i in 0u64.. {
                    let id = run_id.wrapping_add(t << 24).wrapping_add(i);
                    let len = if big && id % 4 == 0 {
                        BIG_MIN + (id >> 2) as usize % BIG_SPREAD
                    } else {
                        (id % 3000) as usize + 10
                    };
                    let count = (id % 4) as u32 + 1;
                    let p = pattern(id, len);
                    let a = log.append(&p, count, i as i64).map_err(|e| e.to_string())?;
                    log.wait_for_policy(a.next_offset)
                        .map_err(|e| e.to_string())?;
                    let mut out = stdout.lock().map_err(|e| e.to_string())?;
                    writeln!(out, "ACK {} {} {} {}", a.base_offset, count, id, len)
                        .map_err(|e| e.to_string())?;
                    out.flush().map_err(|e| e.to_string())?;
                }
                Ok(())
            });
        }
    });
    Ok(())
}
