//! The command line (clap).
//!
//! Every option is an `Option` without a clap default: `None` means "not given on the command line nor in
//! the environment", which is what lets [`crate::config::Config::resolve`] fall back to the config file and
//! only then to the built-in default. The defaults shown in `--help` are written here by hand; a test checks
//! them against [`crate::config::Config::default`].
//!
//! Exit status: 0 after a clean shutdown; 1 when the broker cannot run or shut down (data directory in use or
//! of an unknown format, a listener cannot bind, shutdown timed out); 2 when the configuration is invalid,
//! wherever it came from (flag, environment variable or config file).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ListenAddr, LogLevel};

/// Shown under every `--help`.
const AFTER_HELP: &str = "\
Precedence: command-line flag > environment variable > config file > built-in default.
Listen addresses: HOST:PORT (an IP address or localhost; port 0 picks a free port), or 'off'.
Exit status: 0 after a clean shutdown; 1 when the broker cannot start or shut down cleanly \
(data directory in use, unknown data format, cannot bind, shutdown timeout); 2 for an invalid \
configuration (flag, environment variable or config file).";

#[derive(Debug, Parser)]
#[command(
    name = "wharf",
    version,
    about = "Wharf: a message broker speaking AMQP 0-9-1 and Kafka over one commit log",
    long_about = "Wharf: a message broker speaking AMQP 0-9-1 and Kafka over one commit log.\n\n\
                  Without a subcommand, runs `wharf serve` with the options given (`wharf --data-dir X` is \
                  `wharf serve --data-dir X`).",
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The `serve` options, accepted without the subcommand too.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a broker (the default when no subcommand is given).
    #[command(after_help = AFTER_HELP)]
    Serve(ServeArgs),
}

/// Options of `wharf serve`.
#[derive(Debug, Default, Clone, Args)]
pub struct ServeArgs {
    /// Directory for the broker's data; created if missing, locked while the broker runs
    /// [default: ./wharf-data]
    #[arg(long, env = "WHARF_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address for AMQP 0-9-1 clients, or 'off'
    /// [default: 127.0.0.1:5672]
    #[arg(long, env = "WHARF_AMQP_LISTEN", value_name = "ADDR", value_parser = parse_listen_addr)]
    pub amqp_listen: Option<ListenAddr>,

    /// Address for Kafka clients, or 'off'
    /// [default: 127.0.0.1:9092]
    #[arg(long, env = "WHARF_KAFKA_LISTEN", value_name = "ADDR", value_parser = parse_listen_addr)]
    pub kafka_listen: Option<ListenAddr>,

    /// Address for HTTP (/healthz), or 'off'
    /// [default: 127.0.0.1:15672]
    #[arg(long, env = "WHARF_HTTP_LISTEN", value_name = "ADDR", value_parser = parse_listen_addr)]
    pub http_listen: Option<ListenAddr>,

    /// TOML file with these options and every tunable (see wharf.example.toml); unknown keys are an
    /// error [default: none]
    #[arg(long, env = "WHARF_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log level, used when RUST_LOG is not set
    /// [default: info]
    #[arg(
        long,
        env = "WHARF_LOG_LEVEL",
        value_name = "LEVEL",
        ignore_case = true
    )]
    pub log_level: Option<LogLevel>,

    /// Threads that run connections and requests; 0 means one per CPU core. On a machine shared with
    /// the clients (a benchmark on one box), fewer than the cores can cost less CPU per message
    /// [default: 0]
    #[arg(long, env = "WHARF_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<usize>,

    /// Once every enabled listener accepts connections, write a JSON object of their bound addresses
    /// here (e.g. {"http":"127.0.0.1:41236"}), atomically; removed on clean shutdown [default: none]
    #[arg(long, env = "WHARF_READY_FILE", value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

fn parse_listen_addr(value: &str) -> Result<ListenAddr, String> {
    value.parse()
}

/// Parses the process arguments and returns the options of `wharf serve`.
///
/// Plain `wharf` is `wharf serve` with no flags: the serve options are parsed from an empty command line,
/// so their environment variables still apply. On a usage error (or `--help`), clap prints and exits
/// (status 2, or 0 for help and version).
pub fn parse() -> ServeArgs {
    let cli = Cli::try_parse().unwrap_or_else(|err| exit_with(err));
    match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    }
}

/// The environment variables `wharf serve` reads.
pub const ENV_VARS: [&str; 8] = [
    "WHARF_DATA_DIR",
    "WHARF_AMQP_LISTEN",
    "WHARF_KAFKA_LISTEN",
    "WHARF_HTTP_LISTEN",
    "WHARF_CONFIG",
    "WHARF_LOG_LEVEL",
    "WHARF_READY_FILE",
    "WHARF_WORKER_THREADS",
];

/// Prints a clap error and exits. Clap names the flag even when the bad value came from its environment
/// variable, so for a real error this also lists the variables that are set.
fn exit_with(err: clap::Error) -> ! {
    if !err.use_stderr() {
        err.exit(); // --help, --version
    }
    let _ = err.print();
    let set: Vec<String> = ENV_VARS
        .iter()
        .filter_map(|name| {
            std::env::var_os(name).map(|value| format!("{name}={}", value.to_string_lossy()))
        })
        .collect();
    if !set.is_empty() {
        eprintln!("note: set in the environment: {}", set.join(" "));
    }
    std::process::exit(err.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn serve_help() -> String {
        let mut cmd = Cli::command();
        let serve = cmd.find_subcommand_mut("serve").unwrap();
        serve.render_long_help().to_string()
    }

    #[test]
    fn help_shows_the_real_defaults() {
        let help = serve_help();
        let defaults = Config::default();
        for default in [
            format!("[default: {}]", defaults.data_dir.display()),
            format!("[default: {}]", defaults.listen.amqp),
            format!("[default: {}]", defaults.listen.kafka),
            format!("[default: {}]", defaults.listen.http),
            format!("[default: {}]", defaults.log_level),
        ] {
            assert!(help.contains(&default), "help lacks {default}:\n{help}");
        }
    }

    #[test]
    fn options_are_none_unless_given() {
        let cli = Cli::try_parse_from(["wharf", "serve", "--http-listen", "off"]).unwrap();
        let Some(Command::Serve(args)) = cli.command else {
            panic!("no serve subcommand")
        };
        assert_eq!(args.http_listen, Some(ListenAddr::Off));
        assert_eq!(args.data_dir, None);
        assert_eq!(args.log_level, None);
    }

    #[test]
    fn bad_listen_address_is_a_usage_error() {
        let err = Cli::try_parse_from(["wharf", "serve", "--kafka-listen", "nope"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string().contains("invalid listen address 'nope'"),
            "{err}"
        );
    }
}
