//! The Kafka listener: accepts connections (at most `max_connections` at once) and serves each on its own
//! task until shutdown, then waits for them to finish their requests in flight.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::connection;
use crate::handlers::Broker;

/// Accepts and serves Kafka clients on `listener` until `shutdown` turns true; returns when every connection
/// has finished.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    if !wharf_alloc::is_installed() {
        error!(
            "wharf_alloc::GuardedAlloc is not the global allocator: a request with a lying array count can \
             abort the process"
        );
    }
    if wharf_alloc::overcommit_is_strict() {
        warn!("vm.overcommit_memory is 2: requests with lying array counts may abort the process");
    }
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
                warn!("Kafka accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    info!(
        connections = connections.len(),
        "Kafka listener stopped; finishing requests in flight"
    );
    while connections.join_next().await.is_some() {}
}

/// Completes once `shutdown` is true (or its sender is gone, which also means stop).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here rather than across an await.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
