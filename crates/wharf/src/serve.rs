//! `wharf serve`: start-up, serving, and shutdown.
//!
//! Start-up order matters for the contract with outside tools:
//! 1. signal handlers first, so a SIGTERM during start-up still leads to a clean shutdown;
//! 2. the data directory (lock, then format) before anything else touches the disk or the network, so a
//!    second broker on the same directory fails at once and changes nothing;
//! 3. every enabled listener bound and its server running before readiness is reported (`/healthz` 200 and
//!    the ready file), so whoever reads the ready file can connect at once.
//!
//! Shutdown on SIGTERM or SIGINT: report not ready, stop accepting, let requests in flight finish, close
//! storage ([`shutdown_storage`]), all within `limits.shutdown_timeout_ms`. Past the timeout, or on a second
//! signal, the broker logs an error and returns an error (exit status 1) without waiting further.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};
use wharf_admin::{AdminError, AdminState};
use wharf_core::TopicRegistry;
use wharf_log::LogManager;

use crate::config::{Config, ListenAddr};
use crate::data_dir::{sync_dir, DataDir};
use crate::ready_file::{self, BoundListeners};

/// Runs the broker until a shutdown signal, then shuts it down.
pub async fn run(config: Config, ready_file: Option<PathBuf>) -> anyhow::Result<()> {
    let mut signals = Signals::install().context("cannot install signal handlers")?;
    info!(
        version = env!("CARGO_PKG_VERSION"),
        data_dir = %config.data_dir.display(),
        amqp = %config.listen.amqp,
        kafka = %config.listen.kafka,
        http = %config.listen.http,
        "starting wharf"
    );
    tracing::debug!(?config, "resolved configuration");

    // Blocking file I/O on the runtime is fine here: nothing else runs yet.
    let data_dir = DataDir::open(&config.data_dir)?;
    let logs_dir = data_dir.path().join("logs");
    let logs = Arc::new(
        LogManager::open(&logs_dir, config.storage.manager_config())
            .with_context(|| format!("cannot open the log store in {}", logs_dir.display()))?,
    );
    info!(
        logs = logs.existing().map(|l| l.len()).unwrap_or(0),
        "log store open"
    );
    tracing::debug!(defaults = ?config.storage.log_config(), "per-log storage defaults");
    if let Some(path) = &ready_file {
        ready_file::remove(path)?;
    }

    let topics = Arc::new(
        TopicRegistry::open(
            Arc::clone(&logs),
            data_dir.path().join("kafka").join("topics"),
            config.kafka.topic_defaults(&config.storage),
            wharf_kafka::batch::producer_fields,
        )
        .context("cannot open the topic registry")?,
    );
    let offsets = Arc::new(
        wharf_core::OffsetStore::open(&logs, config.storage.log_config())
            .context("cannot open the committed-offsets log")?,
    );
    let groups = wharf_core::GroupCoordinator::new(config.kafka.group_config());
    tokio::spawn(wharf_core::GroupCoordinator::run_timers(Arc::downgrade(
        &groups,
    )));
    let producer_ids = Arc::new(
        wharf_core::ProducerIds::open(data_dir.path().join("kafka").join("producer_ids"))
            .context("cannot open the producer id reservation")?,
    );
    tokio::spawn(snapshot_producers_periodically(Arc::downgrade(&topics)));
    let cluster_id = cluster_id(data_dir.path())?;

    let mut bound = BoundListeners::default();

    let admin_state = AdminState::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut amqp_task: Option<JoinHandle<()>> = None;
    // Kept to write the durable queues' last journal facts at shutdown.
    let mut amqp_vhosts: Vec<Arc<wharf_core::queues::VHost>> = Vec::new();
    match config.listen.amqp {
        ListenAddr::Off => info!("AMQP listener is off"),
        ListenAddr::At(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for AMQP on {addr}"))?;
            let local = listener
                .local_addr()
                .context("cannot read the AMQP listener's address")?;
            bound.insert("amqp", local);
            let memory = wharf_core::flow::MemoryGauge::new(config.amqp.memory_limit());
            let mut vhosts = std::collections::HashMap::new();
            for name in config.amqp.vhost_names() {
                // `/` keeps `vhosts/default`; others a directory named by a hash of their name.
                let key =
                    wharf_core::queue_log::vhost_key(&name).unwrap_or_else(|| "default".into());
                let vhost = wharf_core::queues::VHost::open(
                    &name,
                    &data_dir.path().join("amqp").join("vhosts").join(key),
                    Arc::clone(&logs),
                    config.storage.log_config().durability,
                    Arc::clone(&memory),
                )
                .with_context(|| format!("cannot restore AMQP vhost '{name}'"))?;
                tokio::spawn(maintain_queues_periodically(Arc::downgrade(&vhost)));
                tokio::spawn(wharf_core::queues::VHost::run_timers(Arc::downgrade(
                    &vhost,
                )));
                amqp_vhosts.push(Arc::clone(&vhost));
                vhosts.insert(name, vhost);
            }
            let broker = wharf_amqp::Broker::new(config.amqp.front_end(), vhosts);
            amqp_task = Some(tokio::spawn(wharf_amqp::serve(
                listener,
                broker,
                stop_rx.clone(),
            )));
        }
    }
    let mut kafka_task: Option<JoinHandle<()>> = None;
    match config.listen.kafka {
        ListenAddr::Off => info!("Kafka listener is off"),
        ListenAddr::At(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for Kafka on {addr}"))?;
            let local = listener
                .local_addr()
                .context("cannot read the Kafka listener's address")?;
            bound.insert("kafka", local);
            let front_end = config.kafka.front_end()?;
            let (host, port) = front_end
                .advertised_address
                .clone()
                .unwrap_or_else(|| (local.ip().to_string(), local.port()));
            let broker = Arc::new(wharf_kafka::Broker {
                topics: Arc::clone(&topics),
                groups: Arc::clone(&groups),
                offsets: Arc::clone(&offsets),
                producer_ids: Arc::clone(&producer_ids),
                config: front_end,
                node: wharf_kafka::NodeInfo {
                    host,
                    port,
                    cluster_id: cluster_id.clone(),
                },
            });
            kafka_task = Some(tokio::spawn(wharf_kafka::server::serve(
                listener,
                broker,
                stop_rx.clone(),
            )));
        }
    }
    let mut admin_task: Option<JoinHandle<Result<(), AdminError>>> = None;
    match config.listen.http {
        ListenAddr::Off => info!("HTTP listener is off"),
        ListenAddr::At(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for HTTP on {addr}"))?;
            let local = listener
                .local_addr()
                .context("cannot read the HTTP listener's address")?;
            bound.insert("http", local);
            let mut stop = stop_rx.clone();
            let shutdown = async move {
                // An error means the sender is gone, which also means: stop.
                let _ = stop.wait_for(|stop| *stop).await;
            };
            admin_task = Some(tokio::spawn(wharf_admin::serve(
                listener,
                admin_state.clone(),
                shutdown,
            )));
        }
    }

    admin_state.set_ready(true);
    if let Some(path) = &ready_file {
        ready_file::write(path, &bound)?;
    }
    info!(listeners = %bound.to_json(), "wharf is ready");

    // Serve until a signal, or until a server stops by itself (which is a failure).
    let mut failure = None;
    tokio::select! {
        name = signals.recv() => info!(signal = name, "shutting down"),
        outcome = wait_admin(&mut admin_task) => {
            admin_task = None;
            let reason = match outcome {
                Ok(()) => "the HTTP server stopped unexpectedly".to_string(),
                Err(err) => format!("{err:#}"),
            };
            error!(%reason, "shutting down after a failure");
            failure = Some(reason);
        }
    }

    admin_state.set_ready(false);
    if let Some(path) = &ready_file {
        if let Err(err) = ready_file::remove(path) {
            warn!("{err:#}");
        }
    }
    // Stops the accept loops; requests in flight are left to finish.
    let _ = stop_tx.send(true);

    let timeout_ms = config.limits.shutdown_timeout_ms;
    let drain = async {
        if let Some(task) = amqp_task {
            if let Err(err) = task.await {
                error!("the AMQP server task failed: {err}");
            }
        }
        if let Some(task) = kafka_task {
            if let Err(err) = task.await {
                error!("the Kafka server task failed: {err}");
            }
        }
        if let Some(task) = admin_task {
            if let Err(err) = join_admin(task).await {
                error!("{err:#}");
            }
        }
        for vhost in &amqp_vhosts {
            // Settlements of the last ticks; the logs close (and sync) right after.
            vhost.flush_journals();
        }
        if let Err(err) = topics.snapshot_producers() {
            error!("cannot write producer snapshots: {err}");
        }
        shutdown_storage(&data_dir, &logs).await
    };
    tokio::select! {
        outcome = tokio::time::timeout(Duration::from_millis(timeout_ms), drain) => match outcome {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(err.context("shutdown failed")),
            Err(_elapsed) => {
                error!(timeout_ms, "shutdown did not finish in time; exiting anyway");
                bail!("shutdown did not finish within {timeout_ms} ms (limits.shutdown_timeout_ms)");
            }
        },
        name = signals.recv() => {
            error!(signal = name, "second signal during shutdown; exiting without finishing it");
            bail!("shutdown interrupted by a second {name}");
        }
    }
    drop(data_dir); // releases the lock only now that storage is closed
    if let Some(reason) = failure {
        bail!("{reason}");
    }
    info!("wharf stopped cleanly");
    Ok(())
}

/// How often changed idempotent-producer state is snapshotted, bounding what start-up after a crash rescans.
const PRODUCER_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(10);

/// Writes producer snapshots every [`PRODUCER_SNAPSHOT_INTERVAL`] until the registry is gone.
async fn snapshot_producers_periodically(topics: std::sync::Weak<TopicRegistry>) {
    let mut tick = tokio::time::interval(PRODUCER_SNAPSHOT_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(topics) = topics.upgrade() else {
            return;
        };
        let outcome = tokio::task::spawn_blocking(move || topics.snapshot_producers()).await;
        if let Ok(Err(err)) = outcome {
            warn!("cannot write producer snapshots: {err}");
        }
    }
}

/// How often durable queues compact their journals and give back consumed segments.
const QUEUE_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

/// Runs durable-queue maintenance every [`QUEUE_MAINTENANCE_INTERVAL`] until the vhost is gone.
async fn maintain_queues_periodically(vhost: std::sync::Weak<wharf_core::queues::VHost>) {
    let mut tick = tokio::time::interval(QUEUE_MAINTENANCE_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(vhost) = vhost.upgrade() else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || vhost.maintain()).await;
    }
}

/// The cluster id Kafka clients see: random at the first start, then kept in `<data-dir>/kafka/cluster_id`
/// for the life of the data directory (22 URL-safe characters, like Kafka's base64 UUIDs).
fn cluster_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const LEN: usize = 22;
    let dir = data_dir.join("kafka");
    let path = dir.join("cluster_id");
    match std::fs::read_to_string(&path) {
        Ok(id) => {
            let id = id.trim().to_string();
            if id.len() != LEN || !id.bytes().all(|b| ALPHABET.contains(&b)) {
                bail!("{} does not hold a cluster id", path.display());
            }
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let id: String = (0..LEN)
                .map(|_| char::from(ALPHABET[rand::random::<usize>() % ALPHABET.len()]))
                .collect();
            crate::data_dir::write_atomically(&path, format!("{id}\n").as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Closes storage: every log is fdatasync'ed and its index checkpointed (so the next start scans nothing),
/// then the data directory is fsynced. Runs on the blocking pool so the shutdown timeout still fires if the
/// disk hangs.
async fn shutdown_storage(data_dir: &DataDir, logs: &Arc<LogManager>) -> anyhow::Result<()> {
    let path: PathBuf = data_dir.path().to_path_buf();
    let logs = Arc::clone(logs);
    tokio::task::spawn_blocking(move || {
        logs.close().context("cannot close the log store")?;
        sync_dir(&path)
    })
    .await
    .context("storage shutdown task failed")??;
    info!("storage closed");
    Ok(())
}

/// Waits for the HTTP server task to end; never returns when there is none.
async fn wait_admin(task: &mut Option<JoinHandle<Result<(), AdminError>>>) -> anyhow::Result<()> {
    match task {
        Some(task) => flatten(task.await),
        None => std::future::pending().await,
    }
}

/// Waits for the HTTP server task to finish its graceful shutdown.
async fn join_admin(task: JoinHandle<Result<(), AdminError>>) -> anyhow::Result<()> {
    flatten(task.await)
}

fn flatten(joined: Result<Result<(), AdminError>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match joined {
        Ok(result) => Ok(result?),
        Err(err) => Err(anyhow::anyhow!("the HTTP server task failed: {err}")),
    }
}

/// SIGTERM and SIGINT, the two ways to ask the broker to stop.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT and returns its name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
