//! The Kafka listener: accepts connections (at most `max_connections` at once) and serves each on its own
//! task until shutdown, then waits for them to finish their requests in flight.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, warn};

use crate::connection;
use crate::handlers::Broker;

/// Accepts and serves Kafka clients on `listener` until `shutdown` turns true; returns when every connection
/// has finished.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>, shutdown: watch::Receiver<bool>) {
    if !wharf_alloc::is_installed() {
        error!(
            "wharf_alloc::GuardedAlloc is not the global allocator: a request with a lying array count can \
             abort the process"
        );
    }
    if wharf_alloc::overcommit_is_strict() {
        warn!("vm.overcommit_memory is 2: requests with lying array counts may abort the process");
    }
    let max_connections = broker.config.max_connections;
    wharf_net::accept_loop(
        "Kafka",
        listener,
        max_connections,
        shutdown,
        move |stream, shutdown| connection::serve(stream, Arc::clone(&broker), shutdown),
    )
    .await;
}

pub(crate) use wharf_net::stopped;
