//! `wharf-log-torture DIR THREADS`: appends self-describing batches to the log in DIR from THREADS threads with
//! durability `always`, forever, and prints `ACK <base> <count> <id> <len>` for each append only after it is
//! durable. The crash test SIGKILLs it at random moments and checks that every acknowledged batch survived.

use std::io::Write;
use std::sync::Arc;

use wharf_log::testing::pattern;
use wharf_log::{Durability, FileCache, Log, LogConfig};

fn main() {
    if let Err(e) = run() {
        eprintln!("wharf-log-torture: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: wharf-log-torture DIR THREADS")?;
    let threads: u64 = args
        .next()
        .ok_or("usage: wharf-log-torture DIR THREADS")?
        .parse()?;
    let config = LogConfig {
        segment_bytes: 256 * 1024,
        index_interval_bytes: 1024,
        durability: Durability::Always,
        retention_ms: None,
        ..LogConfig::default()
    };
    let log = Arc::new(Log::open(
        &dir,
        "torture",
        config,
        Arc::new(FileCache::new(64)),
    )?);
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
                    let len = (id % 3000) as usize + 10;
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
