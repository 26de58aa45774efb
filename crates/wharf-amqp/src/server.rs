//! The AMQP listener: accepts connections (at most `max_connections` at once) and serves each on its own
//! task until shutdown, then waits for them to close.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::collections::HashMap;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, warn};

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
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(broker.config.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(&mut shutdown) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut shutdown) => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let broker = Arc::clone(&broker);
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    connection::serve(stream, broker, shutdown).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of descriptors and the like: keep serving the connections we have.
                warn!("AMQP accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    info!(
        connections = connections.len(),
        "AMQP listener stopped; closing connections"
    );
    while connections.join_next().await.is_some() {}
}

/// Completes once `shutdown` is true (or its sender is gone, which also means stop).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
