//! One client connection: read size-prefixed frames (the size checked against `socket.request.max.bytes`
//! before anything is buffered), dispatch each request in order, and write responses in request order.
//!
//! Requests are *dispatched* one after another (so appends to a partition keep the client's order), but
//! their responses may complete later (produce waiting for durability, fetch long polling); they wait in an
//! ordered queue of at most `max_inflight_requests`. Ready responses are coalesced into one write.
//!
//! Anything malformed closes this connection only, as Kafka does; it never affects other connections.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use kafka_protocol::messages::{ApiKey, ResponseKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::codec::{self, RequestError};
use crate::handlers::{self, api_versions, Broker, Reply};

/// Initial read buffer; grows to the largest request seen (bounded by `request_max_bytes`).
const READ_BUFFER_INITIAL_BYTES: usize = 64 * 1024;

type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Option<BytesMut>> + Send>>;

/// Why a connection ended (for the log).
#[derive(Debug)]
enum End {
    ClientClosed,
    Idle,
    Shutdown,
    Io(std::io::Error),
    Bad(String),
}

/// Serves one connection until the client leaves, it idles out, it misbehaves, or the broker shuts down.
pub async fn serve(
    mut stream: TcpStream,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = stream.peer_addr().ok();
    // Kafka shows member hosts as "/<ip>".
    let peer_host = peer.map(|p| format!("/{}", p.ip())).unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.split();
    let mut buf = BytesMut::with_capacity(READ_BUFFER_INITIAL_BYTES);
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    let idle = Duration::from_millis(broker.config.connections_max_idle_ms);
    let max_inflight = broker.config.max_inflight_requests.max(1);
    let mut idle_deadline = tokio::time::Instant::now() + idle;
    let end = loop {
        // Serve every whole frame already buffered before reading more.
        match next_frame(
            &mut buf,
            broker.config.request_max_bytes,
            broker.config.non_produce_request_max_bytes,
        ) {
            Err(reason) => break End::Bad(reason),
            Ok(Some(frame)) if pending.len() < max_inflight => {
                idle_deadline = tokio::time::Instant::now() + idle;
                match handle(&broker, frame, &peer_host) {
                    Ok(Some(p)) => pending.push_back(p),
                    Ok(None) => {}
                    Err(reason) => break End::Bad(reason),
                }
                continue;
            }
            Ok(Some(frame)) => {
                // Too many in flight: put the frame back and wait for the oldest response.
                let mut restored = BytesMut::with_capacity(frame.len() + 4 + buf.len());
                restored.extend_from_slice(&(frame.len() as u32).to_be_bytes());
                restored.extend_from_slice(&frame);
                restored.extend_from_slice(&buf);
                buf = restored;
            }
            Ok(None) => {}
        }
        let can_read = pending.len() < max_inflight;
        tokio::select! {
            biased;
            Some(first) = pending.next(), if !pending.is_empty() => {
                // Coalesce every response that is already complete into one write.
                let mut out = first.unwrap_or_default();
                while let Some(Some(next)) = pending.next().now_or_never().flatten().map(Some) {
                    if let Some(bytes) = next {
                        out.extend_from_slice(&bytes);
                    }
                }
                if !out.is_empty() {
                    if let Err(e) = writer.write_all(&out).await {
                        break End::Io(e);
                    }
                }
            }
            read = reader.read_buf(&mut buf), if can_read => match read {
                Ok(0) => break End::ClientClosed,
                Ok(_) => {}
                Err(e) => break End::Io(e),
            },
            _ = tokio::time::sleep_until(idle_deadline), if pending.is_empty() => break End::Idle,
            _ = crate::server::stopped(&mut shutdown) => break End::Shutdown,
        }
    };
    // Requests already dispatched finish and are answered (a produce that was appended gets its answer).
    if !matches!(end, End::Io(_)) {
        while let Some(response) = pending.next().await {
            if let Some(bytes) = response {
                if writer.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = writer.shutdown().await;
    match &end {
        End::Bad(reason) => warn!(?peer, "closing Kafka connection: {reason}"),
        End::Idle => info!(
            ?peer,
            "closing idle Kafka connection (connections.max.idle.ms)"
        ),
        End::Io(e) => debug!(?peer, "Kafka connection failed: {e}"),
        End::ClientClosed | End::Shutdown => debug!(?peer, ?end, "Kafka connection closed"),
    }
}

/// Takes one whole frame (without its size prefix) off the front of `buf`, if it is all there. A negative
/// or too large size is an error before anything is allocated for it: above `max` for any request, above
/// `non_produce_max` for any API but Produce (whose key is read first).
fn next_frame(
    buf: &mut BytesMut,
    max: usize,
    non_produce_max: usize,
) -> Result<Option<bytes::Bytes>, String> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let size = usize::try_from(size).map_err(|_| format!("negative request size {size}"))?;
    if size > max {
        return Err(format!(
            "request of {size} bytes exceeds socket.request.max.bytes ({max})"
        ));
    }
    if size > non_produce_max {
        // Only Produce may be this large: wait for its API key before buffering anything more.
        let Some(key) = buf.get(4..6) else {
            return Ok(None);
        };
        let api_key = i16::from_be_bytes([key[0], key[1]]);
        if api_key != ApiKey::Produce as i16 {
            return Err(format!(
                "request of {size} bytes for API key {api_key} exceeds \
                 kafka.non_produce_request_max_bytes ({non_produce_max})"
            ));
        }
    }
    if buf.len() < 4 + size {
        buf.reserve(4 + size - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(size).freeze()))
}

/// Parses and dispatches one request; returns its pending response, if it has one.
fn handle(
    broker: &Arc<Broker>,
    frame: bytes::Bytes,
    peer_host: &str,
) -> Result<Option<Pending>, String> {
    let mut request = match codec::parse_request(frame) {
        Ok(r) => r,
        Err(RequestError::UnsupportedApiVersionsVersion {
            correlation_id,
            version,
        }) => {
            debug!(
                version,
                "ApiVersions version not served; answering with v0 and error 35"
            );
            let body = ResponseKind::ApiVersions(api_versions::unsupported_version());
            let mut out = BytesMut::new();
            codec::encode_response(&mut out, ApiKey::ApiVersions, 0, correlation_id, &body)
                .map_err(|e| format!("cannot encode ApiVersions fallback: {e}"))?;
            return Ok(Some(Box::pin(async move { Some(out) })));
        }
        Err(e) => return Err(e.to_string()),
    };
    let api_key = request.api_key;
    let version = request.version;
    let correlation_id = request.header.correlation_id;
    let reply = handlers::dispatch(broker, &mut request, peer_host).map_err(|e| e.to_string())?;
    let encode = move |body: ResponseKind| -> Option<BytesMut> {
        let mut out = BytesMut::with_capacity(size_hint(&body));
        match codec::encode_response(&mut out, api_key, version, correlation_id, &body) {
            Ok(()) => Some(out),
            Err(e) => {
                // A response the codec cannot encode is a bug in a handler; the client times out this
                // request rather than receiving garbage.
                tracing::error!(?api_key, version, "cannot encode response: {e:#}");
                None
            }
        }
    };
    Ok(match reply {
        Reply::Now(body) => Some(Box::pin(std::future::ready(encode(body)))),
        Reply::Later(future) => Some(Box::pin(future.map(encode))),
        Reply::None => None,
    })
}

/// Bytes to reserve for a response before encoding it: a fetch response is mostly its record data, and
/// growing a multi-megabyte buffer by doubling would copy it several times.
fn size_hint(body: &ResponseKind) -> usize {
    const OVERHEAD_BYTES: usize = 4096;
    match body {
        ResponseKind::Fetch(fetch) => {
            let records: usize = fetch
                .responses
                .iter()
                .flat_map(|t| t.partitions.iter())
                .map(|p| p.records.as_ref().map_or(0, |r| r.len()) + 64)
                .sum();
            records + OVERHEAD_BYTES
        }
        _ => OVERHEAD_BYTES,
    }
}
