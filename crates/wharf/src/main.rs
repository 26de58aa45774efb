//! `wharf`: the broker binary. Configuration, start-up and shutdown live here; everything that speaks a
//! protocol or touches the logs lives in a library crate.
//!
//! Exit status (part of the contract with outside tools, also printed by `--help`):
//! - 0: clean shutdown after SIGTERM or SIGINT;
//! - 1: the broker could not start or could not shut down cleanly (data directory in use or of an unknown
//!   format, a listener could not bind, shutdown timeout, I/O error);
//! - 2: invalid configuration, wherever it came from (flag, environment variable or config file), or a
//!   command-line usage error.

mod cli;
mod config;
mod data_dir;
mod logging;
mod ready_file;
mod serve;

use std::process::ExitCode;

/// Lying length prefixes in requests cost address space, not an abort (see `wharf-alloc`).
#[global_allocator]
static ALLOC: wharf_alloc::GuardedAlloc = wharf_alloc::GuardedAlloc;

/// Exit status for an invalid configuration: the same as clap's for a usage error.
const EXIT_INVALID_CONFIG: u8 = 2;
/// Exit status when the broker cannot run or cannot shut down cleanly.
const EXIT_FAILURE: u8 = 1;

/// Keeps glibc from handing multi-megabyte fetch and produce buffers back to the kernel after every request
/// (and faulting fresh zeroed pages in for the next one): buffers up to 32 MiB come from the heap, and up to
/// 64 MiB of free heap is kept for reuse. Allocations of 64 MiB and more go to `wharf-alloc`'s own mappings.
fn tune_malloc() {
    // SAFETY: mallopt only changes allocator parameters; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 * 1024 * 1024);
    }
}

fn main() -> ExitCode {
    tune_malloc();
    let args = cli::parse();
    let config = match config::Config::resolve(&args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
    };
    logging::init(config.log_level);

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if config.worker_threads > 0 {
        builder.worker_threads(config.worker_threads);
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    tracing::info!(
        worker_threads = runtime.metrics().num_workers(),
        "async runtime started"
    );
    let result = runtime.block_on(serve::run(config, args.ready_file));
    // Do not wait for tasks still running: after a shutdown timeout one of them may be stuck (an fsync on a
    // dying disk), and waiting would defeat the timeout.
    runtime.shutdown_background();

    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
