//! Wharf's HTTP front end.
//!
//! This crate is where everything a person or a monitoring system reaches over HTTP lives: today only
//! `GET /healthz`; later the management API, the embedded web UI and the Prometheus `/metrics` endpoint.
//!
//! It must not know storage internals. It sees the broker only through the state handed to it
//! ([`AdminState`]), so the log engine can change without touching HTTP code, and the HTTP server can be
//! tested without a data directory.
//!
//! Paths that are not routed answer `404 Not Found`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

/// What the HTTP handlers may see of the broker.
///
/// Cloning is cheap: every clone shares the same flags, so the binary keeps one clone to flip readiness
/// while the server holds another.
#[derive(Debug, Clone, Default)]
pub struct AdminState {
    /// True while the broker serves traffic. False while it starts and again while it shuts down, so a
    /// load balancer stops sending new clients before the listeners close.
    ready: Arc<AtomicBool>,
}

impl AdminState {
    /// A state that reports "not ready" until [`AdminState::set_ready`] is called.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the broker as serving traffic (`true`) or not (`false`).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the broker currently serves traffic.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Why the HTTP server stopped other than by a requested shutdown.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The accept loop or the listener failed.
    #[error("admin HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Body of `/healthz` while the broker serves traffic.
pub const HEALTHZ_READY_BODY: &str = "ok";
/// Body of `/healthz` while the broker starts or shuts down.
pub const HEALTHZ_NOT_READY_BODY: &str = "not ready";

/// The routes of the admin HTTP API, bound to `state`.
///
/// Public so tests (and later the binary, to nest more routes) can use it without a socket.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(state)
}

/// `GET /healthz`: 200 `ok` once the broker serves traffic, 503 before and during shutdown.
async fn healthz(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    if state.is_ready() {
        (StatusCode::OK, HEALTHZ_READY_BODY)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, HEALTHZ_NOT_READY_BODY)
    }
}

/// Serves the admin API on an already bound `listener` until `shutdown` completes.
///
/// The listener is bound by the caller so that the caller knows the real address (port 0) and can report
/// readiness only once connections are accepted. When `shutdown` completes the server stops accepting,
/// lets requests in flight finish, closes idle connections and returns `Ok(())`; it does not bound how long
/// that takes: the caller applies its own shutdown timeout.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AdminError> {
    let local_addr = listener.local_addr()?;
    tracing::info!(addr = %local_addr, "admin HTTP listener accepting connections");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!(addr = %local_addr, "admin HTTP listener stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    /// Sends one HTTP/1.1 request with `Connection: close` and returns (status, body).
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_string())
    }

    async fn start() -> (
        SocketAddr,
        AdminState,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), AdminError>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AdminState::new();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        (addr, state, tx, server)
    }

    #[tokio::test]
    async fn healthz_follows_the_readiness_flag() {
        let (addr, state, stop, server) = start().await;

        assert_eq!(
            request(addr, "GET", "/healthz").await,
            (503, HEALTHZ_NOT_READY_BODY.to_string())
        );
        state.set_ready(true);
        assert_eq!(
            request(addr, "GET", "/healthz").await,
            (200, HEALTHZ_READY_BODY.to_string())
        );
        state.set_ready(false);
        assert_eq!(request(addr, "GET", "/healthz").await.0, 503);

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found() {
        let (addr, state, stop, server) = start().await;
        state.set_ready(true);
        assert_eq!(request(addr, "GET", "/nope").await.0, 404);
        assert_eq!(request(addr, "GET", "/healthz/extra").await.0, 404);
        assert_eq!(request(addr, "POST", "/healthz").await.0, 405);
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn shutdown_stops_accepting() {
        let (addr, _state, stop, server) = start().await;
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        // The listener was dropped with the server: nobody accepts any more.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
