//! What every protocol listener of Wharf does the same way, whatever the protocol: accept connections on a
//! bound listener, at most `max_connections` at once (the next accept waits for a permit, so the kernel's
//! backlog holds the rest), serve each on its own task, keep accepting after transient accept errors (out of
//! file descriptors, …), and on shutdown stop accepting and wait for every connection task to finish (each
//! protocol decides how its connections wind down when told to stop).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, warn};

/// How long the loop waits after a failed accept before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// Accepts on `listener` until `shutdown` turns true (or its sender is gone), serving each connection with
/// `serve(stream, shutdown)` on its own task, at most `max_connections` (at least 1) at once; then waits for
/// every connection task. `protocol` names the listener in logs.
pub async fn accept_loop<F, Fut>(
    protocol: &'static str,
    listener: TcpListener,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(TcpStream, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
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
                let connection = serve(stream, shutdown.clone());
                connections.spawn(async move {
                    connection.await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of descriptors and the like: keep serving the connections we have.
                warn!("{protocol} accept failed: {e}");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
            }
        }
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    // Connections that ended since the last accept are still in the set until reaped: count only live ones.
    while connections.try_join_next().is_some() {}
    info!(
        connections = connections.len(),
        "{protocol} listener stopped; waiting for its connections to finish"
    );
    while connections.join_next().await.is_some() {}
}

/// Completes once `shutdown` is true (or its sender is gone, which also means stop).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here rather than across an await.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn serves_at_most_the_limit_and_waits_for_connections_at_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let server = tokio::spawn(accept_loop(
            "test",
            listener,
            1,
            shutdown,
            |mut stream: TcpStream, mut shutdown: watch::Receiver<bool>| async move {
                // Greet, then hold the connection until shutdown.
                let _ = stream.write_all(b"hi").await;
                stopped(&mut shutdown).await;
                let _ = stream.write_all(b"bye").await;
            },
        ));
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut greeting = [0u8; 2];
        first.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"hi");
        // The limit is one: a second client is not served while the first is.
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        let waited = tokio::time::timeout(Duration::from_millis(200), second.read(&mut byte)).await;
        assert!(
            waited.is_err(),
            "a second connection was served past the limit"
        );
        // Shutdown: the connection finishes its work, then the loop returns.
        stop.send(true).unwrap();
        let mut bye = [0u8; 3];
        first.read_exact(&mut bye).await.unwrap();
        assert_eq!(&bye, b"bye");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the loop returned")
            .unwrap();
    }
}
