//! The broker's configuration: built-in defaults, the TOML file, and the merge with the command line.
//!
//! Precedence is flag > environment variable > config file > built-in default. Clap already folds the
//! first two together (an `env = ...` option takes the flag if given, else the variable), so this module
//! only has to lay the command line over the file, and the file over the defaults: the file is
//! deserialised with `#[serde(default)]`, so every key it leaves out keeps its built-in value.
//!
//! The sample `wharf.example.toml` at the workspace root lists every key with its default; a test here
//! checks that it matches [`Config::default`] key for key, so the sample cannot drift.
//!
//! Relative paths (`data_dir`) are relative to the working directory of the process, not to the config
//! file, as with the command-line options.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::cli::ServeArgs;

/// Where a listener binds, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ListenAddr {
    /// The listener is disabled (`off`).
    Off,
    /// The listener binds here; port 0 lets the OS pick a free port.
    At(SocketAddr),
}

impl ListenAddr {
    /// The address to bind, or `None` when the listener is off.
    pub fn socket_addr(self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Off => None,
            ListenAddr::At(addr) => Some(addr),
        }
    }
}

/// The error text for a listen address that does not parse; shared by the CLI and the config file.
fn listen_addr_error(value: &str) -> String {
    format!(
        "invalid listen address '{value}': expected HOST:PORT with an IP address or 'localhost' as HOST \
         (e.g. 127.0.0.1:5672, [::1]:5672, localhost:5672; port 0 picks a free port), or 'off'"
    )
}

impl FromStr for ListenAddr {
    type Err = String;

    /// Accepts `off`, any `SocketAddr` (`1.2.3.4:5`, `[::1]:5`), and `localhost:PORT`, which means
    /// 127.0.0.1 so the result does not depend on the resolver (or on `localhost` resolving to `::1`).
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let trimmed = value.trim();
        if trimmed == "off" {
            return Ok(ListenAddr::Off);
        }
        if let Ok(addr) = trimmed.parse::<SocketAddr>() {
            return Ok(ListenAddr::At(addr));
        }
        if let Some((host, port)) = trimmed.rsplit_once(':') {
            if host.eq_ignore_ascii_case("localhost") {
                if let Ok(port) = port.parse::<u16>() {
                    return Ok(ListenAddr::At(SocketAddr::V4(SocketAddrV4::new(
                        Ipv4Addr::LOCALHOST,
                        port,
                    ))));
                }
            }
        }
        Err(listen_addr_error(value))
    }
}

impl TryFrom<String> for ListenAddr {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<ListenAddr> for String {
    fn from(value: ListenAddr) -> Self {
        value.to_string()
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Off => f.write_str("off"),
            ListenAddr::At(addr) => write!(f, "{addr}"),
        }
    }
}

/// How verbose the logs are when `RUST_LOG` is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The name used in the config file, on the command line and in `RUST_LOG` directives.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When appended data is forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync before anything is acknowledged (group-committed). Nothing acknowledged is ever lost.
    Always,
    /// fsync every `flush_interval_ms`: a power loss can lose up to that much acknowledged data.
    Interval,
    /// Never fsync explicitly, the OS writes back when it likes: a power loss can lose acknowledged data.
    Os,
}

/// The `[listen]` table: one address (or `off`) per protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// AMQP 0-9-1 clients.
    pub amqp: ListenAddr,
    /// Kafka clients.
    pub kafka: ListenAddr,
    /// HTTP: `/healthz`, later the management API, web UI and metrics.
    pub http: ListenAddr,
}

impl Default for ListenConfig {
    fn default() -> Self {
        let local =
            |port| ListenAddr::At(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)));
        Self {
            amqp: local(5672),
            kafka: local(9092),
            http: local(15672),
        }
    }
}

/// The `[storage]` table: tunables of the commit-log engine.
///
/// Passed through as plain values for now; they will be mapped onto the log engine's own configuration.
/// Sizes are in bytes, times in milliseconds; `-1` means unlimited where noted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Roll a segment when it reaches this size.
    pub segment_bytes: u64,
    /// Roll a segment when its first record is this old.
    pub segment_ms: u64,
    /// One sparse offset-index entry per this many bytes of records.
    pub index_interval_bytes: u64,
    /// Delete the oldest segments while a log is larger than this; -1 = unlimited.
    pub retention_bytes: i64,
    /// Delete segments whose newest record is older than this; -1 = unlimited.
    pub retention_ms: i64,
    /// When appended data is forced to disk.
    pub durability: Durability,
    /// fsync period when `durability = "interval"`.
    pub flush_interval_ms: u64,
    /// Cap on segment file descriptors kept open across all logs.
    pub max_open_files: u64,
    /// How often retention runs over every log (Kafka `log.retention.check.interval.ms`).
    pub retention_check_interval_ms: u64,
    /// Under `interval` and `os`, the partial last page of a log's writes is held in memory (so writes stay
    /// page-aligned) for at most this long; 0 writes every append through at once.
    pub tail_flush_interval_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        const DAY_MS: u64 = 24 * 60 * 60 * 1000;
        Self {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * DAY_MS,
            index_interval_bytes: 4096,
            retention_bytes: -1,
            retention_ms: 7 * DAY_MS as i64,
            durability: Durability::Always,
            flush_interval_ms: 1000,
            max_open_files: 1024,
            retention_check_interval_ms: 300_000,
            tail_flush_interval_ms: 5,
        }
    }
}

impl StorageConfig {
    /// The log engine's per-log defaults from this section (clamped into the engine's legal ranges).
    pub fn log_config(&self) -> wharf_log::LogConfig {
        wharf_log::LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
            index_interval_bytes: self.index_interval_bytes,
            retention_bytes: u64::try_from(self.retention_bytes).ok(),
            retention_ms: u64::try_from(self.retention_ms).ok(),
            durability: match self.durability {
                Durability::Always => wharf_log::Durability::Always,
                Durability::Interval => wharf_log::Durability::Interval {
                    ms: self.flush_interval_ms,
                },
                Durability::Os => wharf_log::Durability::Os,
            },
            ..wharf_log::LogConfig::default()
        }
        .clamped()
    }

    /// The node-wide log manager settings from this section.
    pub fn manager_config(&self) -> wharf_log::ManagerConfig {
        wharf_log::ManagerConfig {
            max_open_files: usize::try_from(self.max_open_files).unwrap_or(usize::MAX),
            retention_check_interval: std::time::Duration::from_millis(
                self.retention_check_interval_ms,
            ),
            tail_flush_interval: std::time::Duration::from_millis(self.tail_flush_interval_ms),
            ..wharf_log::ManagerConfig::default()
        }
    }
}

/// The `[kafka]` table: the Kafka front end and topic defaults, named after Kafka's broker settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// Create unknown topics on Metadata and Produce (`auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic, or one created without a count (`num.partitions`).
    pub num_partitions: i32,
    /// Largest record batch a producer may send, unless the topic sets `max.message.bytes`
    /// (`message.max.bytes`).
    pub message_max_bytes: i64,
    /// `CreateTime` or `LogAppendTime`, unless the topic sets `message.timestamp.type`.
    pub message_timestamp_type: String,
    /// Largest request, checked before it is read (`socket.request.max.bytes`).
    pub request_max_bytes: u64,
    /// Largest request of any API but Produce, checked before it is read (decoding multiplies requests of
    /// many tiny elements 15–40 times in memory).
    pub non_produce_request_max_bytes: u64,
    /// Close connections idle this long (`connections.max.idle.ms`).
    pub connections_max_idle_ms: u64,
    /// Most client connections at once (`max.connections`).
    pub max_connections: u64,
    /// Requests of one connection in flight at once (dispatched, response not yet sent).
    pub max_inflight_requests: u64,
    /// `HOST:PORT` clients are told to connect to (`advertised.listeners`); empty = the bound address.
    pub advertised_listener: String,
    /// Delay of an empty group's first rebalance (`group.initial.rebalance.delay.ms`).
    pub group_initial_rebalance_delay_ms: u64,
    /// Smallest session timeout a group member may ask for (`group.min.session.timeout.ms`).
    pub group_min_session_timeout_ms: u64,
    /// Largest session timeout a group member may ask for (`group.max.session.timeout.ms`).
    pub group_max_session_timeout_ms: u64,
    /// Most members in one consumer group (`group.max.size`).
    pub group_max_size: u64,
}

impl Default for KafkaSection {
    fn default() -> Self {
        let d = wharf_kafka::KafkaConfig::default();
        Self {
            auto_create_topics: d.auto_create_topics,
            num_partitions: 1,
            message_max_bytes: 1_048_588,
            message_timestamp_type: "CreateTime".into(),
            request_max_bytes: d.request_max_bytes as u64,
            non_produce_request_max_bytes: d.non_produce_request_max_bytes as u64,
            connections_max_idle_ms: d.connections_max_idle_ms,
            max_connections: d.max_connections as u64,
            max_inflight_requests: d.max_inflight_requests as u64,
            advertised_listener: String::new(),
            group_initial_rebalance_delay_ms: 3000,
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            group_max_size: 10_000,
        }
    }
}

impl KafkaSection {
    /// The advertised host and port, if set.
    pub fn advertised(&self) -> anyhow::Result<Option<(String, u16)>> {
        if self.advertised_listener.is_empty() {
            return Ok(None);
        }
        let (host, port) = self
            .advertised_listener
            .rsplit_once(':')
            .context("kafka.advertised_listener must be HOST:PORT")?;
        let port: u16 = port
            .parse()
            .context("kafka.advertised_listener has an invalid port")?;
        if host.is_empty() || port == 0 {
            bail!("kafka.advertised_listener must be HOST:PORT with a non-zero port");
        }
        Ok(Some((host.trim_matches(['[', ']']).to_string(), port)))
    }

    /// The Kafka front end's settings.
    pub fn front_end(&self) -> anyhow::Result<wharf_kafka::KafkaConfig> {
        Ok(wharf_kafka::KafkaConfig {
            request_max_bytes: usize::try_from(self.request_max_bytes).unwrap_or(usize::MAX),
            non_produce_request_max_bytes: usize::try_from(self.non_produce_request_max_bytes)
                .unwrap_or(usize::MAX),
            connections_max_idle_ms: self.connections_max_idle_ms,
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            max_inflight_requests: usize::try_from(self.max_inflight_requests)
                .unwrap_or(usize::MAX),
            auto_create_topics: self.auto_create_topics,
            advertised_address: self.advertised()?,
        })
    }

    /// The group coordinator's settings.
    pub fn group_config(&self) -> wharf_core::GroupConfig {
        wharf_core::GroupConfig {
            initial_rebalance_delay_ms: self.group_initial_rebalance_delay_ms,
            min_session_timeout_ms: self.group_min_session_timeout_ms,
            max_session_timeout_ms: self.group_max_session_timeout_ms,
            max_members: usize::try_from(self.group_max_size).unwrap_or(usize::MAX),
        }
    }

    /// Topic defaults: these settings over the storage section.
    pub fn topic_defaults(&self, storage: &StorageConfig) -> wharf_core::TopicDefaults {
        let log = storage.log_config();
        wharf_core::TopicDefaults {
            partitions: self.num_partitions,
            retention_ms: storage.retention_ms,
            retention_bytes: storage.retention_bytes,
            segment_bytes: i64::try_from(log.segment_bytes).unwrap_or(i64::MAX),
            segment_ms: i64::try_from(log.segment_ms).unwrap_or(i64::MAX),
            max_message_bytes: self.message_max_bytes,
            timestamp_type: if self.message_timestamp_type == "LogAppendTime" {
                wharf_core::TimestampType::LogAppendTime
            } else {
                wharf_core::TimestampType::CreateTime
            },
            index_interval_bytes: log.index_interval_bytes,
            durability: log.durability,
        }
    }
}

/// The `[amqp]` table: limits of the AMQP 0-9-1 front end, named after RabbitMQ's settings and defaulting
/// to RabbitMQ's values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpSection {
    /// Largest frame offered in connection.tune and accepted (`frame_max`); a bigger frame closes the
    /// connection before its payload is read. At least 8192.
    pub frame_max: u32,
    /// Highest channel number a connection may open (`channel_max`).
    pub channel_max: u16,
    /// Heartbeat interval offered in connection.tune, in seconds (`heartbeat`); 0 disables heartbeats.
    pub heartbeat_s: u16,
    /// Most client connections at once; more wait in the accept queue.
    pub max_connections: u64,
    /// Largest message body a publisher may send (`max_message_size`); a larger one is a 406 channel error.
    pub max_message_bytes: u64,
    /// Time a new connection has to finish the handshake (`handshake_timeout`).
    pub handshake_timeout_ms: u64,
    /// Bytes of deliveries a connection may have waiting to be written before its consumers are paused.
    pub connection_pending_bytes_max: u64,
    /// How long a confirm of persistent messages in a durable queue with consumers waits for their acks
    /// before asking for an fsync (a message consumed and acked on every queue it reached needs none); 0:
    /// every confirm waits for the fsync.
    pub confirm_ack_wait_ms: u64,
    /// How long a delivery may stay unacknowledged before its channel is closed with 406 and its messages go
    /// back to their queues (`consumer_timeout`); 0: never.
    pub consumer_timeout_ms: u64,
    /// Bytes of messages that may wait in memory (non-durable queues) before publishers are blocked
    /// (connection.blocked); `0` means 40 % of the machine's memory, RabbitMQ's default watermark.
    pub memory_limit_bytes: u64,
    /// The vhosts; `/` is always one of them.
    pub vhosts: Vec<String>,
    /// Users besides `guest` (who may log in from loopback addresses only). Written as `[[amqp.users]]`
    /// tables, so an empty list is left out (the example file shows one commented out).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<AmqpUser>,
}

/// One `[[amqp.users]]` entry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpUser {
    pub name: String,
    pub password: String,
    /// The vhosts the user may open; empty or absent = all.
    #[serde(default)]
    pub vhosts: Vec<String>,
}

impl std::fmt::Debug for AmqpUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The resolved configuration is logged at debug level: never the password.
        f.debug_struct("AmqpUser")
            .field("name", &self.name)
            .field("vhosts", &self.vhosts)
            .finish_non_exhaustive()
    }
}

impl Default for AmqpSection {
    fn default() -> Self {
        let d = wharf_amqp::AmqpConfig::default();
        Self {
            frame_max: d.frame_max,
            channel_max: d.channel_max,
            heartbeat_s: d.heartbeat_s,
            max_connections: d.max_connections as u64,
            max_message_bytes: d.max_message_bytes,
            handshake_timeout_ms: d.handshake_timeout_ms,
            connection_pending_bytes_max: d.connection_pending_bytes_max,
            confirm_ack_wait_ms: d.confirm_ack_wait_ms,
            consumer_timeout_ms: d.consumer_timeout_ms,
            memory_limit_bytes: 0,
            vhosts: vec!["/".to_string()],
            users: Vec::new(),
        }
    }
}

impl AmqpSection {
    /// The memory limit for messages waiting in memory: the configured one, or 40 % of the machine's memory
    /// (RabbitMQ's default watermark), or 1 GiB if that cannot be read.
    pub fn memory_limit(&self) -> u64 {
        if self.memory_limit_bytes > 0 {
            return self.memory_limit_bytes;
        }
        let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
        total_kib.map_or(1 << 30, |kib| kib.saturating_mul(1024) / 10 * 4)
    }

    /// The AMQP front end's settings.
    pub fn front_end(&self) -> wharf_amqp::AmqpConfig {
        wharf_amqp::AmqpConfig {
            frame_max: self.frame_max,
            channel_max: self.channel_max,
            heartbeat_s: self.heartbeat_s,
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            max_message_bytes: self.max_message_bytes,
            handshake_timeout_ms: self.handshake_timeout_ms,
            connection_pending_bytes_max: self.connection_pending_bytes_max,
            confirm_ack_wait_ms: self.confirm_ack_wait_ms,
            consumer_timeout_ms: self.consumer_timeout_ms,
            users: self
                .users
                .iter()
                .map(|u| wharf_amqp::config::User {
                    name: u.name.clone(),
                    password: u.password.clone(),
                    vhosts: u.vhosts.clone(),
                })
                .collect(),
        }
    }

    /// The vhost names, `/` first and each once.
    pub fn vhost_names(&self) -> Vec<String> {
        let mut names = vec!["/".to_string()];
        for v in &self.vhosts {
            if !names.contains(v) {
                names.push(v.clone());
            }
        }
        names
    }
}

/// The `[limits]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// After SIGTERM/SIGINT, the time allowed to drain connections and flush storage before giving up
    /// with a non-zero exit.
    pub shutdown_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout_ms: 10_000,
        }
    }
}

/// Most async worker threads `worker_threads` may ask for (a typo of a few zeros should not start a
/// hundred thousand threads).
pub const WORKER_THREADS_MAX: usize = 1024;
/// Largest `amqp.confirm_ack_wait_ms`: a confirm waiting for acks holds back the confirms queued behind it on
/// its connection, so the wait is meant to be a few milliseconds.
pub const CONFIRM_ACK_WAIT_MS_MAX: u64 = 1000;

/// The whole resolved configuration; also the schema of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the broker keeps its data (created if missing, locked while the broker runs).
    pub data_dir: PathBuf,
    /// Log verbosity when `RUST_LOG` is not set.
    pub log_level: LogLevel,
    /// Async worker threads running connections and requests; 0 is one per CPU core.
    pub worker_threads: usize,
    pub listen: ListenConfig,
    pub storage: StorageConfig,
    pub kafka: KafkaSection,
    pub amqp: AmqpSection,
    pub limits: LimitsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./wharf-data"),
            log_level: LogLevel::Info,
            worker_threads: 0,
            listen: ListenConfig::default(),
            storage: StorageConfig::default(),
            kafka: KafkaSection::default(),
            amqp: AmqpSection::default(),
            limits: LimitsConfig::default(),
        }
    }
}

impl Config {
    /// Reads a config file. Keys it leaves out keep their defaults; unknown keys are an error.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses config-file text (see [`Config::load`]).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        // toml's message already names the key (unknown field `x`, expected one of ...) and the line.
        let config: Config = toml::from_str(text)?;
        Ok(config)
    }

    /// Builds the configuration for `wharf serve`: command line (flags and env) over file over defaults,
    /// then validates the result.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let mut config = match &args.config {
            Some(path) => Self::load(path)?,
            None => Self::default(),
        };
        if let Some(data_dir) = &args.data_dir {
            config.data_dir = data_dir.clone();
        }
        if let Some(level) = args.log_level {
            config.log_level = level;
        }
        if let Some(threads) = args.worker_threads {
            config.worker_threads = threads;
        }
        if let Some(addr) = args.amqp_listen {
            config.listen.amqp = addr;
        }
        if let Some(addr) = args.kafka_listen {
            config.listen.kafka = addr;
        }
        if let Some(addr) = args.http_listen {
            config.listen.http = addr;
        }
        config.validate()?;
        Ok(config)
    }

    /// Rejects values that are well-typed but meaningless, so the broker fails at start-up with a clear
    /// message instead of misbehaving later.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.data_dir.as_os_str().is_empty() {
            bail!("data_dir must not be empty");
        }
        if self.worker_threads > WORKER_THREADS_MAX {
            bail!(
                "worker_threads must be at most {WORKER_THREADS_MAX} (0: one per CPU core), not {}",
                self.worker_threads
            );
        }
        let storage = &self.storage;
        let positive = [
            ("storage.segment_bytes", storage.segment_bytes),
            ("storage.segment_ms", storage.segment_ms),
            ("storage.index_interval_bytes", storage.index_interval_bytes),
            ("storage.flush_interval_ms", storage.flush_interval_ms),
            ("storage.max_open_files", storage.max_open_files),
            (
                "storage.retention_check_interval_ms",
                storage.retention_check_interval_ms,
            ),
            (
                "limits.shutdown_timeout_ms",
                self.limits.shutdown_timeout_ms,
            ),
            ("kafka.request_max_bytes", self.kafka.request_max_bytes),
            (
                "kafka.non_produce_request_max_bytes",
                self.kafka.non_produce_request_max_bytes,
            ),
            (
                "kafka.connections_max_idle_ms",
                self.kafka.connections_max_idle_ms,
            ),
            ("kafka.max_connections", self.kafka.max_connections),
            ("amqp.max_connections", self.amqp.max_connections),
            ("amqp.max_message_bytes", self.amqp.max_message_bytes),
            ("amqp.handshake_timeout_ms", self.amqp.handshake_timeout_ms),
            ("amqp.channel_max", u64::from(self.amqp.channel_max)),
            (
                "amqp.connection_pending_bytes_max",
                self.amqp.connection_pending_bytes_max,
            ),
            (
                "kafka.max_inflight_requests",
                self.kafka.max_inflight_requests,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                bail!("{key} must be greater than 0");
            }
        }
        for (key, value) in [
            ("storage.retention_bytes", storage.retention_bytes),
            ("storage.retention_ms", storage.retention_ms),
        ] {
            if value < -1 {
                bail!("{key} must be -1 (unlimited) or at least 0, not {value}");
            }
        }
        if self.amqp.confirm_ack_wait_ms > CONFIRM_ACK_WAIT_MS_MAX {
            bail!(
                "amqp.confirm_ack_wait_ms must be at most {CONFIRM_ACK_WAIT_MS_MAX} (0: confirms wait for the fsync), not {}",
                self.amqp.confirm_ack_wait_ms
            );
        }
        for vhost in &self.amqp.vhosts {
            if vhost.is_empty() || vhost.len() > 255 {
                bail!("amqp.vhosts: a vhost name must be 1 to 255 bytes, not {vhost:?}");
            }
        }
        let vhosts = self.amqp.vhost_names();
        for user in &self.amqp.users {
            if user.name.is_empty() || user.password.is_empty() {
                bail!("amqp.users: every user needs a name and a password");
            }
            if let Some(v) = user.vhosts.iter().find(|v| !vhosts.contains(v)) {
                bail!(
                    "amqp.users: user '{}' names vhost '{v}', which is not in amqp.vhosts",
                    user.name
                );
            }
        }
        if self.amqp.frame_max < wharf_amqp::config::FRAME_MAX_MIN {
            bail!(
                "amqp.frame_max must be at least {}",
                wharf_amqp::config::FRAME_MAX_MIN
            );
        }
        let kafka = &self.kafka;
        if !(1..=wharf_core::PARTITIONS_PER_TOPIC_MAX).contains(&kafka.num_partitions) {
            bail!(
                "kafka.num_partitions must be between 1 and {}",
                wharf_core::PARTITIONS_PER_TOPIC_MAX
            );
        }
        if !(0..=i64::from(i32::MAX)).contains(&kafka.message_max_bytes) {
            bail!("kafka.message_max_bytes must be between 0 and {}", i32::MAX);
        }
        if !matches!(
            kafka.message_timestamp_type.as_str(),
            "CreateTime" | "LogAppendTime"
        ) {
            bail!("kafka.message_timestamp_type must be \"CreateTime\" or \"LogAppendTime\"");
        }
        kafka.advertised()?;
        if kafka.group_min_session_timeout_ms > kafka.group_max_session_timeout_ms {
            bail!("kafka.group_min_session_timeout_ms is larger than kafka.group_max_session_timeout_ms");
        }
        // Two protocols on one fixed address would only fail once both are built; say so now.
        let listeners = [
            ("amqp", self.listen.amqp),
            ("kafka", self.listen.kafka),
            ("http", self.listen.http),
        ];
        for (i, (name_a, a)) in listeners.iter().enumerate() {
            for (name_b, b) in &listeners[i + 1..] {
                if let (Some(a), Some(b)) = (a.socket_addr(), b.socket_addr()) {
                    if a == b && a.port() != 0 {
                        bail!("the {name_a} and {name_b} listeners are both set to {a}");
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn storage_section_maps_onto_the_log_engine() {
        let storage = StorageConfig {
            retention_bytes: -1,
            retention_ms: 5000,
            durability: Durability::Interval,
            flush_interval_ms: 250,
            ..StorageConfig::default()
        };
        let log = storage.log_config();
        assert_eq!(log.retention_bytes, None);
        assert_eq!(log.retention_ms, Some(5000));
        assert_eq!(log.durability, wharf_log::Durability::Interval { ms: 250 });
        assert_eq!(log.segment_bytes, 1024 * 1024 * 1024);
        assert_eq!(storage.manager_config().max_open_files, 1024);
    }

    use super::*;

    const EXAMPLE: &str = include_str!("../../../wharf.example.toml");

    #[test]
    fn example_file_equals_the_defaults() {
        let parsed = Config::parse(EXAMPLE).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn example_file_lists_every_key() {
        // Equality above holds even for a key missing from the sample (it defaults); this catches that.
        let sample: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        assert_eq!(sample, defaults);
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn file_values_override_defaults() {
        let config = Config::parse(
            "data_dir = \"/var/lib/wharf\"\n[listen]\nhttp = \"off\"\nkafka = \"localhost:0\"\n\
             [storage]\ndurability = \"interval\"\n",
        )
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/wharf"));
        assert_eq!(config.listen.http, ListenAddr::Off);
        assert_eq!(config.listen.kafka, "127.0.0.1:0".parse().unwrap());
        assert_eq!(config.listen.amqp, ListenConfig::default().amqp);
        assert_eq!(config.storage.durability, Durability::Interval);
        assert_eq!(
            config.storage.segment_bytes,
            StorageConfig::default().segment_bytes
        );
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        for text in [
            "colour = 1",
            "[listen]\nftp = \"off\"",
            "[storage]\nsegment_size = 1",
            "[nope]",
        ] {
            let err = format!("{:#}", Config::parse(text).unwrap_err());
            assert!(err.contains("unknown field"), "{text}: {err}");
        }
    }

    #[test]
    fn bad_values_are_rejected() {
        let err = format!(
            "{:#}",
            Config::parse("[listen]\nhttp = \"nowhere\"").unwrap_err()
        );
        assert!(err.contains("invalid listen address 'nowhere'"), "{err}");
        assert!(Config::parse("[storage]\ndurability = \"sometimes\"").is_err());
        assert!(Config::parse("log_level = \"loud\"").is_err());

        let mut config = Config::default();
        config.storage.retention_ms = -2;
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.storage.segment_bytes = 0;
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.listen.kafka = config.listen.amqp;
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.amqp.confirm_ack_wait_ms = CONFIRM_ACK_WAIT_MS_MAX + 1;
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.listen.kafka = "127.0.0.1:0".parse().unwrap();
        config.listen.http = "127.0.0.1:0".parse().unwrap();
        config.validate().unwrap();
    }

    #[test]
    fn listen_addr_forms() {
        assert_eq!("off".parse::<ListenAddr>(), Ok(ListenAddr::Off));
        assert_eq!(
            "localhost:5672".parse::<ListenAddr>(),
            Ok(ListenAddr::At("127.0.0.1:5672".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:0".parse::<ListenAddr>(),
            Ok(ListenAddr::At("[::1]:0".parse().unwrap()))
        );
        for bad in [
            "",
            "5672",
            "127.0.0.1",
            "localhost:99999",
            "example.com:80",
            "off:1",
        ] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(ListenAddr::Off.to_string(), "off");
    }
}
