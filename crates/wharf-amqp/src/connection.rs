//! One client connection's I/O: the protocol header, then frames in (size checked before buffering) and
//! out, heartbeats both ways, deliveries from queues, and shutdown. The protocol itself is the
//! [`Session`](crate::session::Session) state machine; this module only moves bytes and time.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::frame::{next_frame_with, MethodMemo, PROTOCOL_HEADER, PROTOCOL_HEADER_0_9};
use crate::server::{stopped, Broker};
use crate::session::{Session, Step, SyncWait};

/// Spare room kept in the read buffer before each read.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Output gathered from queued events before it is written (bounds the buffer a burst of deliveries builds).
const EVENT_BATCH_BYTES: usize = 256 * 1024;
/// How long the server waits for connection.close-ok after sending connection.close.
pub(crate) const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server leaves the socket open, after its close-ok, for the client to close it.
const CLIENT_CLOSE_WAIT: Duration = Duration::from_secs(5);
/// The same wait once the broker is shutting down.
const CLIENT_CLOSE_WAIT_IN_SHUTDOWN: Duration = Duration::from_millis(500);

/// Serves one connection until it closes, misbehaves, times out or the broker shuts down; then releases
/// everything it held (consumers cancelled, unacknowledged messages requeued, exclusive queues deleted).
pub async fn serve(mut stream: TcpStream, broker: Arc<Broker>, shutdown: watch::Receiver<bool>) {
    let peer = stream.peer_addr().ok();
    let loopback = peer.is_some_and(|p| p.ip().is_loopback());
    let _ = stream.set_nodelay(true);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let mut session = Session::new(Arc::clone(&broker), events_tx, loopback);
    let end = run(&mut stream, &mut session, &mut events_rx, shutdown.clone()).await;
    session.release_all();
    // Deliveries already on their way to this connection go back to their queues.
    events_rx.close();
    while let Ok((_, event)) = events_rx.try_recv() {
        session.requeue_event(event);
    }
    if matches!(end, End::CloseOkSent) {
        // Everything the connection held is released; only the socket is left, for the client to close.
        await_client_close(&mut stream, shutdown).await;
    }
    let _ = stream.shutdown().await;
    match end {
        End::ClientClosed | End::Closed | End::CloseOkSent | End::Shutdown => {
            debug!(?peer, %end, "AMQP connection ended")
        }
        _ => info!(?peer, %end, "AMQP connection closed"),
    }
}

/// After close-ok to a client's connection.close, the client closes the socket once it has read close-ok
/// (closing first made amqp091-go report EOF errors on graceful closes): wait for that, discarding anything
/// else it sends, for at most [`CLIENT_CLOSE_WAIT`], and at most [`CLIENT_CLOSE_WAIT_IN_SHUTDOWN`] once the
/// broker is shutting down (so the wait never eats the shutdown's own time limit).
async fn await_client_close(stream: &mut TcpStream, mut shutdown: watch::Receiver<bool>) {
    let start = Instant::now();
    let short = start + CLIENT_CLOSE_WAIT_IN_SHUTDOWN;
    let mut deadline = if *shutdown.borrow() {
        short
    } else {
        start + CLIENT_CLOSE_WAIT
    };
    let mut scrap = [0u8; 512];
    loop {
        let in_shutdown = deadline == short;
        tokio::select! {
            read = stream.read(&mut scrap) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = tokio::time::sleep_until(deadline) => return,
            _ = stopped(&mut shutdown), if !in_shutdown => deadline = deadline.min(short),
        }
    }
}

/// Why a connection ended (for the log).
#[derive(Debug)]
enum End {
    /// The socket closed without a connection.close.
    ClientClosed,
    /// An orderly close in either direction.
    Closed,
    /// close-ok sent in answer to the client's connection.close; the socket is left for the client to close.
    CloseOkSent,
    Shutdown,
    BadHeader,
    Timeout(&'static str),
    Io(std::io::Error),
    Protocol(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::ClientClosed => f.write_str("client closed the socket"),
            End::Closed | End::CloseOkSent => f.write_str("closed"),
            End::Shutdown => f.write_str("broker shutdown"),
            End::BadHeader => f.write_str("wrong protocol header"),
            End::Timeout(what) => write!(f, "timed out waiting for {what}"),
            End::Io(e) => write!(f, "I/O error: {e}"),
            End::Protocol(reason) => write!(f, "protocol error: {reason}"),
        }
    }
}

async fn run(
    stream: &mut TcpStream,
    session: &mut Session,
    events: &mut mpsc::UnboundedReceiver<(u16, wharf_core::queues::QueueEvent)>,
    mut shutdown: watch::Receiver<bool>,
) -> End {
    let handshake_deadline =
        Instant::now() + Duration::from_millis(session.broker.config.handshake_timeout_ms);
    let mut header = [0u8; 8];
    match tokio::time::timeout_at(handshake_deadline, stream.read_exact(&mut header)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return End::ClientClosed,
        Ok(Err(e)) => return End::Io(e),
        Err(_) => return End::Timeout("protocol header"),
    }
    if header != PROTOCOL_HEADER && header != PROTOCOL_HEADER_0_9 {
        // The spec's answer to an unsupported protocol: the header we speak, then close.
        let _ = stream.write_all(&PROTOCOL_HEADER).await;
        return End::BadHeader;
    }
    session.start();
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut methods = MethodMemo::default();
    // The memory alarm and the shutdown signal are waited on by futures that live across passes of the loop:
    // building a fresh watch wait in every `select!` (every read and every delivery) cost ~1 000 instructions
    // each per pass.
    // The alarm's current value is read on every pass (a shared read lock); `alarm_changed` only wakes the
    // loop when it changes (a blocked connection reads nothing else). As in RabbitMQ, the alarm holds a
    // connection once it publishes while the alarm is on (`held`): what it sent after that publish waits,
    // unread, until the alarm clears; a connection that does not publish meanwhile (a consumer acking, one
    // that published only before the alarm) is read as usual and never told it is blocked.
    let alarm = session.broker.memory.subscribe();
    let mut alarm_changed = alarm_change(alarm.clone());
    let stop = stopped(&mut shutdown);
    tokio::pin!(stop);
    let mut last_read = Instant::now();
    // When the heartbeat checks started (RabbitMQ's monitor starts at tune-ok; and again when an alarm
    // unblocks the connection).
    let mut ticks_from: Option<Instant> = None;
    let mut last_write = Instant::now();
    let mut shutting_down = false;
    let mut was_blocked = false;
    let mut held = false;
    // Two timers for the life of the connection, moved only when a deadline comes *earlier* than where
    // they stand; when one fires early it is re-armed at the real deadline. Re-arming them on every pass
    // of this loop (that is, every read and every delivery) cost a few percent of a busy broker's CPU.
    let far = Instant::now() + Duration::from_secs(3600);
    let read_timer = tokio::time::sleep_until(handshake_deadline);
    let heartbeat_timer = tokio::time::sleep_until(far);
    // The acknowledgement timeout's periodic check: re-armed only when it fires.
    let ack_period = session.ack_check_period();
    let ack_timer = tokio::time::sleep_until(ack_period.map_or(far, |p| Instant::now() + p));
    tokio::pin!(read_timer, heartbeat_timer, ack_timer);
    // The oldest durability wait (publisher confirms, tx.commit-ok), polled here in read order.
    let mut sync_wait: Option<SyncWait> = None;
    loop {
        let alarm_on = *alarm.borrow();
        // A closing connection is read to its close-ok whatever the alarm.
        held &= alarm_on && session.closing_since().is_none();
        // Serve every whole frame already buffered before reading more, unless the alarm holds the
        // connection.
        while !held {
            match next_frame_with(&mut buf, session.frame_limit(), &mut methods) {
                Ok(Some(frame)) => match session.handle(frame) {
                    Step::Continue => held = session.take_published() && alarm_on,
                    Step::CloseOkSent => {
                        if flush(stream, session, &mut last_write).await.is_err() {
                            return End::Closed;
                        }
                        return End::CloseOkSent;
                    }
                    Step::End(reason) => {
                        let _ = flush(stream, session, &mut last_write).await;
                        return if reason.is_empty() {
                            End::Closed
                        } else {
                            End::Protocol(reason)
                        };
                    }
                },
                Ok(None) => break,
                Err(err) => {
                    session.frame_error(&err);
                    let _ = flush(stream, session, &mut last_write).await;
                    return End::Protocol(err.to_string());
                }
            }
        }
        session.start_sync();
        if sync_wait.is_none() {
            sync_wait = next_pending_sync(session);
        }
        session.flush_confirms();
        // The memory alarm: a connection that published while it is on is told and not read from until it
        // clears (its consumers keep receiving, which is what clears it).
        let blocked = session.blocked(held);
        if was_blocked && !blocked {
            // Not read from while blocked: a fresh heartbeat interval from now, whichever branch woke the loop
            // first after the alarm cleared (a delivery often does, as deliveries are what clear it).
            last_read = Instant::now();
            ticks_from = Some(last_read);
        }
        was_blocked = blocked;
        session.notify_blocked(blocked);
        if let Err(e) = flush(stream, session, &mut last_write).await {
            return End::Io(e);
        }
        let heartbeat = session.heartbeat();
        if heartbeat.is_some() && ticks_from.is_none() {
            ticks_from = Some(Instant::now());
        }
        let read_deadline = if let Some(at) = session.closing_since() {
            at + CLOSE_OK_TIMEOUT
        } else if !session.is_open() {
            handshake_deadline
        } else if blocked {
            // Not reading, so not hearing its heartbeats either: no timeout while blocked.
            Instant::now() + Duration::from_secs(3600)
        } else if let (Some(hb), Some(from)) = (heartbeat, ticks_from) {
            silent_peer_deadline(from, last_read, hb)
        } else {
            Instant::now() + Duration::from_secs(3600)
        };
        // Send a heartbeat when nothing was written for half the interval.
        let heartbeat_at = heartbeat.map(|hb| last_write + hb / 2);
        if read_deadline < read_timer.deadline() {
            read_timer.as_mut().reset(read_deadline);
        }
        if let Some(at) = heartbeat_at {
            if at < heartbeat_timer.deadline() {
                heartbeat_timer.as_mut().reset(at);
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        tokio::select! {
            read = stream.read_buf(&mut buf), if !blocked => match read {
                Ok(0) => return End::ClientClosed,
                Ok(_) => last_read = Instant::now(),
                Err(e) => return End::Io(e),
            },
            mut changed = &mut alarm_changed => {
                // Only wakes the loop: its next pass reads the alarm, and a connection it held gets a fresh
                // heartbeat interval there (`was_blocked`); one it did not hold was read all along.
                changed.borrow_and_update();
                alarm_changed = alarm_change(changed);
            }
            Some((channel, event)) = events.recv() => {
                session.handle_event(channel, event);
                // Take every event already queued before writing: one write for a burst of deliveries,
                // not a syscall per message.
                while session.pending_output() < EVENT_BATCH_BYTES {
                    match events.try_recv() {
                        Ok((channel, event)) => session.handle_event(channel, event),
                        Err(_) => break,
                    }
                }
            }
            durable = sync_done(&mut sync_wait), if sync_wait.is_some() => {
                if let Some(done) = sync_wait.take() {
                    session.synced(durable, done.actions);
                }
                // The waits queued behind it are often done too (one fsync round covers them): report
                // those now, so that one write carries all their confirms.
                sync_wait = next_pending_sync(session);
            }
            _ = &mut read_timer => {
                if Instant::now() < read_deadline {
                    // Fired at an older deadline; the real one moved on.
                    read_timer.as_mut().reset(read_deadline);
                    continue;
                }
                return if session.closing_since().is_some() {
                    End::Timeout("connection.close-ok")
                } else if session.is_open() {
                    End::Timeout("heartbeat")
                } else {
                    End::Timeout("handshake")
                };
            }
            _ = &mut heartbeat_timer, if heartbeat_at.is_some() => {
                match heartbeat_at {
                    Some(at) if Instant::now() < at => heartbeat_timer.as_mut().reset(at),
                    _ => {
                        session.heartbeat_frame();
                        heartbeat_timer.as_mut().reset(far.max(Instant::now() + Duration::from_secs(3600)));
                    }
                }
            }
            _ = &mut ack_timer, if ack_period.is_some() => {
                if session.is_open() {
                    session.check_ack_timeouts();
                }
                let next = ack_period.map_or(far, |p| Instant::now() + p);
                ack_timer.as_mut().reset(next);
            }
            _ = &mut stop, if !shutting_down => {
                shutting_down = true;
                if !session.shutdown() {
                    return End::Shutdown;
                }
            }
        }
    }
}

/// When a peer silent since `last_read` is given up, as RabbitMQ 3.10's heartbeat monitor does it: it checks
/// once per interval from `ticks_from`, the first check always passes, and the connection goes at the
/// second check in a row that saw nothing received since the one before — between two and three intervals
/// after the last byte, and three for a client silent from the start (measured with RabbitMQ 3.10.8 at a
/// 2 s interval: a silent client dropped after 5.96 s, one whose last heartbeat came at 3.0 s after 8.0 s).
/// PHP's php-amqp sends heartbeats only inside library calls and relies on that slack.
fn silent_peer_deadline(ticks_from: Instant, last_read: Instant, interval: Duration) -> Instant {
    let interval_ns = interval.as_nanos().max(1);
    let since = last_read.saturating_duration_since(ticks_from).as_nanos();
    // The check that saw the last byte, then two empty ones; never before the third check.
    let checks = (since.div_ceil(interval_ns) + 2).max(3);
    u32::try_from(checks)
        .ok()
        .and_then(|n| interval.checked_mul(n))
        .and_then(|after| ticks_from.checked_add(after))
        .unwrap_or_else(|| last_read + Duration::from_secs(3600))
}

/// Resolves with the outcome of the connection's oldest durability wait; never when there is none.
async fn sync_done(wait: &mut Option<SyncWait>) -> bool {
    match wait {
        Some(w) => w.wait.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Reports every queued durability wait that is already done, in order, and returns the first one that is
/// not (to be polled by the loop), if any.
fn next_pending_sync(session: &mut Session) -> Option<SyncWait> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    while let Some(mut next) = session.next_sync_wait() {
        // Polled once without a waker of ours: if still pending, the loop polls it again (registering its
        // own waker) before it sleeps.
        match next.wait.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(durable) => session.synced(durable, next.actions),
            std::task::Poll::Pending => return Some(next),
        }
    }
    None
}

/// Resolves with the receiver once the memory alarm changes; never if the broker's sender is gone.
fn alarm_change(
    mut alarm: watch::Receiver<bool>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = watch::Receiver<bool>> + Send>> {
    Box::pin(async move {
        if alarm.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        alarm
    })
}

async fn flush(
    stream: &mut TcpStream,
    session: &mut Session,
    last_write: &mut Instant,
) -> std::io::Result<()> {
    if session.pending_output() == 0 {
        // Not taken: taking an empty buffer and dropping it would throw its capacity away, and the next
        // burst of deliveries would grow a new one from nothing (a realloc and copy per doubling).
        return Ok(());
    }
    let out = session.take_output();
    stream.write_all(&out).await?;
    *last_write = Instant::now();
    session.return_output(out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_peer_is_dropped_at_the_second_empty_check_and_never_before_the_third() {
        let from = Instant::now();
        let s = Duration::from_secs;
        let at = |last: Duration| silent_peer_deadline(from, from + last, s(2)) - from;
        // Silent from the start: the first check passes, the second and third miss.
        assert_eq!(at(s(0)), s(6));
        assert_eq!(at(Duration::from_millis(10)), s(6));
        // The last byte before the check at 4 s: that check passes, 6 s and 8 s miss.
        assert_eq!(at(Duration::from_millis(3500)), s(8));
        // A byte exactly at a check counts for it.
        assert_eq!(at(s(4)), s(8));
        assert_eq!(at(Duration::from_millis(4001)), s(10));
    }
}
