//! Log set-up: `tracing` events formatted to stderr.
//!
//! `RUST_LOG`, when set, wins (it allows per-module directives such as `wharf_admin=debug`); otherwise the
//! resolved `log_level` applies. An invalid `RUST_LOG` is not fatal: it comes from the environment, so the
//! broker warns and falls back to `log_level` rather than refusing to start.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogLevel;

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(level: LogLevel) {
    let fallback = || EnvFilter::new(level.as_str());
    let (filter, problem) = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => match EnvFilter::try_new(&directives) {
            Ok(filter) => (filter, None),
            Err(err) => (
                fallback(),
                Some(format!("ignoring invalid RUST_LOG {directives:?}: {err}")),
            ),
        },
        Ok(_) | Err(std::env::VarError::NotPresent) => (fallback(), None),
        Err(std::env::VarError::NotUnicode(_)) => (
            fallback(),
            Some("ignoring RUST_LOG: not valid UTF-8".to_string()),
        ),
    };
    // Fails only if a subscriber is already installed, in which case logs go there: nothing to do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    if let Some(problem) = problem {
        tracing::warn!("{problem}; using log level {level}");
    }
}
