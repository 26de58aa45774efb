//! The AMQP listener: accepts connections (at most `max_connections` at once) and serves each on its own
//! task until shutdown, then waits for them to close.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::collections::HashMap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use wharf_core::flow::MemoryGauge;
use wharf_core::queues::VHost;

use crate::config::AmqpConfig;
use crate::connection;

/// What every AMQP connection shares.
#[derive(Debug)]
pub struct Broker {
    /// The vhosts by name; `/` is always there (each keeps its durable state in the data directory).
    pub vhosts: HashMap<String, Arc<VHost>>,
    /// The memory gauge shared by all vhosts (its alarm blocks publishers).
    pub memory: Arc<MemoryGauge>,
    pub config: AmqpConfig,
    next_connection: AtomicU64,
}

impl Broker {
    /// A broker over `vhosts`, which must include `/` and share one memory gauge.
    pub fn new(config: AmqpConfig, vhosts: HashMap<String, Arc<VHost>>) -> Arc<Self> {
        for vhost in vhosts.values() {
            // Dead-lettered messages get their x-death history written by the AMQP codec.
            vhost.set_codec(Arc::new(crate::dead_letter::AmqpCodec));
        }
        let memory = vhosts
            .get("/")
            .map(|v| Arc::clone(v.memory()))
            .unwrap_or_else(MemoryGauge::unlimited);
        Arc::new(Self {
            vhosts,
            memory,
            config,
            next_connection: AtomicU64::new(1),
        })
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}

/// Accepts and serves AMQP clients on `listener` until `shutdown` turns true; returns when every
/// connection has finished (each is sent connection.close 320 first).
pub async fn serve(listener: TcpListener, broker: Arc<Broker>, shutdown: watch::Receiver<bool>) {
    let max_connections = broker.config.max_connections;
    wharf_net::accept_loop(
        "AMQP",
        listener,
        max_connections,
        shutdown,
        move |stream, shutdown| connection::serve(stream, Arc::clone(&broker), shutdown),
    )
    .await;
}

pub(crate) use wharf_net::stopped;
