//! The connection state machine: handshake (start / start-ok, tune / tune-ok, open), then channels and
//! their methods, orderly close in both directions, and error handling as the spec and RabbitMQ do it —
//! a channel error closes that channel only, a connection error sends connection.close and waits for
//! close-ok. It does no I/O: frames come in through [`Session::handle`], queue events through
//! [`Session::handle_event`], and bytes to send pile up in an output buffer the connection task writes.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{basic, connection, AMQPClass};
use tokio::time::Instant;
use tracing::{debug, warn};
use wharf_core::flow::Outbound;
use wharf_core::queues::{DeliverySink, PendingSync, QueueEvent, VHost};

use crate::channel::Channel;
use crate::config::FRAME_MAX_MIN;
use crate::frame::{self, Frame, FrameError};
use crate::handshake::{self, ClientCapabilities};
use crate::reply::*;
use crate::server::Broker;

/// What the connection task does after a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// Flush and close the socket; an empty reason is an orderly close.
    End(String),
    /// connection.close-ok was sent for the client's connection.close: flush, release everything, and leave
    /// the socket for the client to close (as RabbitMQ does: a client that finds the socket closed under it
    /// before its close returns reports an error — amqp091-go did, for ~3 closes in 4).
    CloseOkSent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitStartOk,
    AwaitTuneOk,
    AwaitOpen,
    Open,
}

/// One connection's protocol state.
pub struct Session {
    pub(crate) broker: Arc<Broker>,
    pub(crate) id: u64,
    phase: Phase,
    /// Set once the server sent connection.close: only close-ok (or close) matters from then on.
    closing_since: Option<Instant>,
    loopback: bool,
    pub(crate) capabilities: ClientCapabilities,
    pub(crate) frame_max: u32,
    channel_max: u16,
    heartbeat_s: u16,
    /// By number. A `BTreeMap`: a connection has few channels, and this is looked up for every frame and
    /// delivery, where SipHash showed in profiles.
    pub(crate) channels: BTreeMap<u16, Channel>,
    /// Channels opened so far (numbers each opening: [`Channel::generation`]).
    pub(crate) channel_opens: u64,
    /// Frames to write, appended by every send.
    pub(crate) out: Vec<u8>,
    pub(crate) sink: DeliverySink,
    /// The vhost opened (until connection.open, `/`, which nothing uses before then).
    pub(crate) vhost: Arc<VHost>,
    /// The authenticated user (a publish's `user_id` property must name it).
    pub(crate) user: String,
    /// Durability waits gathered while handling the frames read so far, started together by
    /// [`Session::start_sync`].
    pending_sync: PendingSync,
    after_sync: Vec<AfterSync>,
    /// Durability waits gathered and not yet handed to the connection loop, in the order their frames were
    /// read (see [`Session::next_sync_wait`]).
    sync_waits: VecDeque<(PendingSync, Vec<AfterSync>)>,
    /// Bytes of deliveries queued for this connection and not yet turned into frames.
    pub(crate) outbound: Arc<Outbound>,
    /// Set by a publish's content frames, taken by the connection after each frame
    /// ([`Session::take_published`]): the memory alarm blocks a connection when it publishes while the alarm
    /// is on, as RabbitMQ does.
    pub(crate) published: bool,
    /// connection.blocked was sent and unblocked not yet.
    blocked_sent: bool,
}

/// A connection's oldest durability wait, polled by its connection loop (not by a task of its own: a task
/// cost a spawn, a channel send and a wake-up of the connection per wait). Once `wait` resolves (`true`:
/// durable or settled; `false`: the log failed), the loop hands the outcome and `actions` to
/// [`Session::synced`].
pub struct SyncWait {
    pub wait: Pin<Box<dyn Future<Output = bool> + Send>>,
    pub actions: Vec<AfterSync>,
}

impl std::fmt::Debug for SyncWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncWait")
            .field("actions", &self.actions)
            .finish_non_exhaustive()
    }
}

/// What to do once a batch of publishes is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSync {
    /// Settle publisher confirms `first..=last` on `channel` (`ok`: no queue refused the messages), if the
    /// channel is still the opening `generation` that published them. Consecutive publishes of a read share
    /// one action (see [`Session::after_sync`]).
    Confirm {
        channel: u16,
        generation: u64,
        first: u64,
        last: u64,
        ok: bool,
    },
    /// Send tx.commit-ok on `channel`, if it is still the opening `generation` that committed.
    CommitOk { channel: u16, generation: u64 },
}

impl Session {
    pub fn new(broker: Arc<Broker>, sink: DeliverySink, loopback: bool) -> Self {
        let config = &broker.config;
        Self {
            id: broker.next_connection_id(),
            phase: Phase::AwaitStartOk,
            closing_since: None,
            loopback,
            capabilities: ClientCapabilities::default(),
            frame_max: config.frame_max,
            channel_max: config.channel_max,
            heartbeat_s: config.heartbeat_s,
            channels: BTreeMap::new(),
            channel_opens: 0,
            out: Vec::new(),
            sink,
            pending_sync: PendingSync::default(),
            after_sync: Vec::new(),
            sync_waits: VecDeque::new(),
            outbound: Outbound::new(config.connection_pending_bytes_max),
            vhost: broker.vhosts.get("/").cloned().unwrap_or_else(VHost::new),
            user: String::new(),
            published: false,
            blocked_sent: false,
            broker,
        }
    }

    /// Whether the frame just handled was a publish's content header or body (and forgets it).
    pub fn take_published(&mut self) -> bool {
        std::mem::take(&mut self.published)
    }

    /// Whether the memory alarm blocks this connection now: `held` (it published while the alarm was on,
    /// which has not cleared since), and it is open and not closing.
    pub fn blocked(&self, held: bool) -> bool {
        held && self.phase == Phase::Open && self.closing_since.is_none()
    }

    /// Tells a client that asked for it that it is blocked or unblocked (connection.blocked / unblocked),
    /// once per change.
    pub fn notify_blocked(&mut self, blocked: bool) {
        // Nothing but close-ok goes after a connection.close.
        if blocked == self.blocked_sent
            || !self.capabilities.connection_blocked
            || self.closing_since.is_some()
        {
            return;
        }
        self.blocked_sent = blocked;
        let method = if blocked {
            connection::AMQPMethod::Blocked(connection::Blocked {
                reason: "low on memory".into(),
            })
        } else {
            connection::AMQPMethod::Unblocked(connection::Unblocked {})
        };
        self.send(0, AMQPClass::Connection(method));
    }

    /// A delivery of `bytes` left the outbound queue (written, or given back); once a connection that held
    /// its consumers back for room drains, they are dispatched to again.
    pub(crate) fn outbound_released(&mut self, bytes: u64) {
        if self.outbound.release(bytes) {
            for channel in self.channels.values() {
                channel.kick_consumers();
            }
        }
    }

    /// Defers `action` until `sync` is durable (it joins the other waits of this read).
    pub(crate) fn after_sync(&mut self, sync: PendingSync, action: AfterSync) {
        self.pending_sync.merge(sync);
        // The next confirm of the same channel opening with the same outcome extends the last range.
        if let (
            Some(AfterSync::Confirm {
                channel,
                generation,
                last,
                ok,
                ..
            }),
            AfterSync::Confirm {
                channel: next_channel,
                generation: next_generation,
                first: next_first,
                last: next_last,
                ok: next_ok,
            },
        ) = (self.after_sync.last_mut(), action)
        {
            if (*channel, *generation, *ok) == (next_channel, next_generation, next_ok)
                && last.checked_add(1) == Some(next_first)
            {
                *last = next_last;
                return;
            }
        }
        self.after_sync.push(action);
    }

    /// Queues a durability wait for everything gathered since the last call (one per read of frames); the
    /// connection loop takes them one at a time, in order, with [`Session::next_sync_wait`]. The price of the
    /// order: a wait on a slow log holds back the reports queued behind it on this connection (they are in the
    /// same disk's group commit anyway).
    pub fn start_sync(&mut self) {
        if self.after_sync.is_empty() {
            return;
        }
        let sync = std::mem::take(&mut self.pending_sync);
        let actions = std::mem::take(&mut self.after_sync);
        self.sync_waits.push_back((sync, actions));
    }

    /// The oldest queued durability wait, as a future for the connection loop to poll.
    pub fn next_sync_wait(&mut self) -> Option<SyncWait> {
        let (sync, actions) = self.sync_waits.pop_front()?;
        let ack_wait = Duration::from_millis(self.broker.config.confirm_ack_wait_ms);
        let wait = Box::pin(async move {
            match sync.wait(ack_wait).await {
                Ok(()) => true,
                Err(e) => {
                    warn!("publishes could not be made durable: {e}");
                    false
                }
            }
        });
        Some(SyncWait { wait, actions })
    }

    /// A durability wait finished: settle its confirms, send its commit-oks (on channels still open).
    pub fn synced(&mut self, durable: bool, actions: Vec<AfterSync>) {
        for action in actions {
            match action {
                AfterSync::Confirm {
                    channel,
                    generation,
                    first,
                    last,
                    ok,
                } => {
                    if let Some(c) = self
                        .channels
                        .get_mut(&channel)
                        .filter(|c| c.generation == generation)
                    {
                        for tag in first..=last {
                            c.settle_confirm(tag, ok && durable);
                        }
                    }
                }
                AfterSync::CommitOk {
                    channel,
                    generation,
                } => {
                    if self
                        .channels
                        .get(&channel)
                        .is_none_or(|c| c.closing || c.generation != generation)
                    {
                        continue;
                    }
                    if durable {
                        self.send(
                            channel,
                            AMQPClass::Tx(amq_protocol::protocol::tx::AMQPMethod::CommitOk(
                                amq_protocol::protocol::tx::CommitOk {},
                            )),
                        );
                    } else {
                        self.close_connection(Fault::connection(
                            INTERNAL_ERROR,
                            "the transaction's messages could not be made durable",
                        ));
                    }
                }
            }
        }
    }

    /// Sends connection.start (after a good protocol header).
    pub fn start(&mut self) {
        self.send(0, handshake::start());
    }

    /// Largest frame accepted now: the negotiated frame_max, or the server's before tune-ok.
    pub fn frame_limit(&self) -> u32 {
        self.frame_max
    }

    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    pub fn closing_since(&self) -> Option<Instant> {
        self.closing_since
    }

    /// The negotiated heartbeat interval, once tuned.
    pub fn heartbeat(&self) -> Option<Duration> {
        (self.phase != Phase::AwaitStartOk
            && self.phase != Phase::AwaitTuneOk
            && self.heartbeat_s > 0)
            .then(|| Duration::from_secs(u64::from(self.heartbeat_s)))
    }

    pub fn heartbeat_frame(&mut self) {
        if let Err(e) =
            frame::write_frame(&mut self.out, &amq_protocol::frame::AMQPFrame::Heartbeat)
        {
            warn!("{e}");
        }
    }

    /// Bytes waiting to be written.
    pub fn pending_output(&self) -> usize {
        self.out.len()
    }

    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Gives the written buffer back so its capacity is reused.
    pub fn return_output(&mut self, mut out: Vec<u8>) {
        if self.out.is_empty() {
            out.clear();
            self.out = out;
        }
    }

    /// Appends a method frame.
    pub(crate) fn send(&mut self, channel: u16, method: AMQPClass) {
        if let Err(e) = frame::write_method(&mut self.out, channel, method) {
            warn!(connection = self.id, "{e}");
        }
    }

    /// Appends a content header (with the properties as stored: encoded, as received or as the broker
    /// rewrote them) and body frames.
    pub(crate) fn send_content(&mut self, channel: u16, properties: &[u8], body: &[u8]) {
        frame::write_content(&mut self.out, channel, properties, body, self.frame_max);
    }

    /// A framing error: the connection closes (with 501/502 once open; during the handshake the socket
    /// just closes, as RabbitMQ does).
    pub fn frame_error(&mut self, err: &FrameError) {
        if self.phase == Phase::Open && self.closing_since.is_none() {
            let code = match err {
                FrameError::Syntax { .. } | FrameError::TooDeep { .. } => SYNTAX_ERROR,
                _ => FRAME_ERROR,
            };
            self.close_connection(Fault::connection(code, err.to_string()));
        }
    }

    /// The broker is stopping: returns true when a connection.close was sent (wait for close-ok).
    pub fn shutdown(&mut self) -> bool {
        if self.phase == Phase::Open && self.closing_since.is_none() {
            self.close_connection(Fault::connection(
                CONNECTION_FORCED,
                "broker forced connection closure with reason 'shutdown'",
            ));
            return true;
        }
        false
    }

    /// Sends connection.close for `fault`, releasing everything the connection holds.
    pub(crate) fn close_connection(&mut self, fault: Fault) {
        self.release_all();
        let text = fault.reply_text();
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: fault.code,
                reply_text: text.into(),
                class_id: fault.class_id,
                method_id: fault.method_id,
            })),
        );
        self.closing_since = Some(Instant::now());
    }

    /// Cancels every consumer, requeues every unacknowledged message, deletes exclusive queues.
    /// Idempotent.
    pub fn release_all(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            if let Some(mut channel) = self.channels.remove(&id) {
                channel.release(&self.vhost);
            }
        }
        self.vhost.connection_closed(self.id);
    }

    /// A queue event after the connection (or the event's channel) is gone: the message goes back.
    pub fn requeue_event(&mut self, event: QueueEvent) {
        if let QueueEvent::Deliver(d) = event {
            self.outbound.release(d.message.body.len() as u64);
            d.queue
                .requeue(d.consumer, d.position, d.message, d.expires_at);
        }
    }

    /// One frame from the client.
    pub fn handle(&mut self, frame: Frame) -> Step {
        if self.closing_since.is_some() {
            return match frame {
                Frame::Method(0, class) => match class {
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                        Step::End(String::new())
                    }
                    AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                        self.send_close_ok();
                        Step::CloseOkSent
                    }
                    _ => Step::Continue,
                },
                _ => Step::Continue,
            };
        }
        if self.phase != Phase::Open {
            return self.handshake(frame);
        }
        match frame {
            Frame::Heartbeat(0) => Step::Continue,
            // RabbitMQ 3.10.8's code and words (its text shows the frame's empty payload as Erlang prints it).
            Frame::Heartbeat(_) => self.fault(Fault::connection(
                UNEXPECTED_FRAME,
                "type 8, all octets = <<>>",
            )),
            Frame::Method(0, class) => self.connection_method(class),
            Frame::Header(0, ..) | Frame::Body(0, _) => self.fault(Fault::connection(
                UNEXPECTED_FRAME,
                "content frame on channel 0",
            )),
            frame => {
                let outcome = crate::channel::handle(self, frame);
                match outcome {
                    Ok(()) => Step::Continue,
                    Err((channel, fault)) if !fault.hard => {
                        self.close_channel(channel, fault);
                        Step::Continue
                    }
                    Err((_, fault)) => self.fault(fault),
                }
            }
        }
    }

    fn fault(&mut self, fault: Fault) -> Step {
        self.close_connection(fault);
        Step::Continue
    }

    fn send_close_ok(&mut self) {
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        );
    }

    /// Sends the publisher confirms channel `id` has ready (basic.ack / basic.nack, `multiple` where a
    /// run allows).
    pub(crate) fn send_confirms(&mut self, id: u16) {
        let Some(channel) = self.channels.get_mut(&id).filter(|c| !c.closing) else {
            return;
        };
        for outcome in channel.drain_confirms() {
            if outcome.ok {
                frame::write_basic_ack(&mut self.out, id, outcome.delivery_tag, outcome.multiple);
                continue;
            }
            let method = basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: outcome.delivery_tag,
                multiple: outcome.multiple,
                requeue: false,
            });
            self.send(id, AMQPClass::Basic(method));
        }
    }

    /// Sends every channel's ready confirms; the connection calls it once the frames it has read are
    /// handled, so a burst of publishes gets a few `multiple` acks.
    pub fn flush_confirms(&mut self) {
        if self.closing_since.is_some() {
            return;
        }
        // Channel by channel, in number order, without collecting the numbers first (this runs per read).
        let mut from = 0u16;
        while let Some(id) = self
            .channels
            .range(from..)
            .find(|(_, c)| c.has_confirms())
            .map(|(&id, _)| id)
        {
            self.send_confirms(id);
            match id.checked_add(1) {
                Some(next) => from = next,
                None => break,
            }
        }
    }

    /// How often the connection should call [`Session::check_ack_timeouts`]; `None` when the
    /// acknowledgement timeout is off.
    pub fn ack_check_period(&self) -> Option<Duration> {
        match self.broker.config.consumer_timeout_ms {
            0 => None,
            ms => Some(crate::ack_timeout::check_period(Duration::from_millis(ms))),
        }
    }

    /// The acknowledgement timeout (RabbitMQ's `consumer_timeout`): closes with 406 every channel whose oldest
    /// unacknowledged delivery is older than the timeout, which requeues its unacknowledged messages. Called
    /// every [`Session::ack_check_period`].
    pub fn check_ack_timeouts(&mut self) {
        let ms = self.broker.config.consumer_timeout_ms;
        if ms == 0 || self.closing_since.is_some() {
            return;
        }
        let (now, timeout) = (std::time::Instant::now(), Duration::from_millis(ms));
        let overdue: Vec<u16> = self
            .channels
            .iter_mut()
            .filter(|(_, c)| !c.closing)
            .filter_map(|(&id, c)| c.ack_overdue(now, timeout).then_some(id))
            .collect();
        for id in overdue {
            warn!(
                connection = self.id,
                channel = id,
                "a delivery waited more than {ms} ms for its acknowledgement; closing the channel"
            );
            // RabbitMQ 3.10's words, which client logs and runbooks search for.
            self.close_channel(
                id,
                Fault::channel(
                    PRECONDITION_FAILED,
                    format!(
                        "delivery acknowledgement on channel {id} timed out. Timeout value used: {ms} ms. \
                         This timeout value can be configured, see consumers doc guide to learn more"
                    ),
                ),
            );
        }
    }

    /// Sends channel.close for a channel error; the channel waits for close-ok, dropping other frames.
    /// Confirms of publishes that were enqueued before the error are sent first.
    fn close_channel(&mut self, id: u16, fault: Fault) {
        self.send_confirms(id);
        let Some(channel) = self.channels.get_mut(&id) else {
            return;
        };
        channel.release(&self.vhost);
        channel.closing = true;
        let text = fault.reply_text();
        self.send(
            id,
            AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Close(
                amq_protocol::protocol::channel::Close {
                    reply_code: fault.code,
                    reply_text: text.into(),
                    class_id: fault.class_id,
                    method_id: fault.method_id,
                },
            )),
        );
    }

    fn connection_method(&mut self, class: AMQPClass) -> Step {
        let (class_id, method_id) = (class.get_amqp_class_id(), class.get_amqp_method_id());
        match class {
            AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                self.release_all();
                self.send_close_ok();
                Step::CloseOkSent
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => Step::End(String::new()),
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(update)) => {
                // RabbitMQ 3.10.8 with its internal users answers update-secret-ok whatever the new secret (only
                // token backends check it): clients that refresh credentials (the Java, .NET and Go clients,
                // lapin) must not lose their connection for it.
                debug!(
                    connection = self.id,
                    reason = %update.reason,
                    "connection.update-secret: accepted (passwords are checked at login only)"
                );
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                );
                Step::Continue
            }
            _ => self.fault(
                // RabbitMQ's words and code for any other method on channel 0 of an open connection.
                Fault::connection(
                    CHANNEL_ERROR,
                    "unexpected method in connection state running",
                )
                .at(class_id, method_id),
            ),
        }
    }

    /// Frames before connection.open-ok. Errors here close the socket without a close handshake, except
    /// where RabbitMQ sends connection.close (failed tune-ok, unknown vhost, authentication failure for
    /// clients that asked for it).
    fn handshake(&mut self, frame: Frame) -> Step {
        let class = match frame {
            Frame::Heartbeat(_) => return Step::Continue,
            Frame::Method(0, class) => class,
            _ => return Step::End("unexpected frame during the handshake".into()),
        };
        let (class_id, method_id) = (class.get_amqp_class_id(), class.get_amqp_method_id());
        let AMQPClass::Connection(method) = class else {
            return Step::End("unexpected method during the handshake".into());
        };
        match (self.phase, method) {
            (Phase::AwaitStartOk, connection::AMQPMethod::StartOk(start_ok)) => {
                self.capabilities =
                    ClientCapabilities::from_client_properties(&start_ok.client_properties);
                match handshake::authenticate(&start_ok, self.loopback, &self.broker.config.users) {
                    Ok(user) => {
                        self.user = user;
                        self.phase = Phase::AwaitTuneOk;
                        let config = &self.broker.config;
                        let tune = connection::Tune {
                            channel_max: config.channel_max,
                            frame_max: config.frame_max,
                            heartbeat: config.heartbeat_s,
                        };
                        self.send(0, AMQPClass::Connection(connection::AMQPMethod::Tune(tune)));
                        Step::Continue
                    }
                    // A client that declared `authentication_failure_close` gets a 403 connection.close
                    // (naming no method, as RabbitMQ's does) and its close-ok is awaited, so the client
                    // reads the reason before the socket goes; any other client just loses the socket.
                    Err(fault) if self.capabilities.authentication_failure_close => {
                        tracing::info!(reason = %fault.reply_text(), "AMQP authentication failed");
                        self.fault(fault.at(0, 0))
                    }
                    Err(_) => Step::End("authentication failed".into()),
                }
            }
            (Phase::AwaitTuneOk, connection::AMQPMethod::TuneOk(tune_ok)) => {
                match self.tune(&tune_ok) {
                    Ok(()) => {
                        self.phase = Phase::AwaitOpen;
                        Step::Continue
                    }
                    Err(fault) => self.fault(fault.at(class_id, method_id)),
                }
            }
            (Phase::AwaitOpen, connection::AMQPMethod::Open(open)) => {
                let name = open.virtual_host.as_str();
                let Some(vhost) = self.broker.vhosts.get(name).cloned() else {
                    return self.fault(
                        Fault::connection(NOT_ALLOWED, format!("vhost {name} not found"))
                            .at(class_id, method_id),
                    );
                };
                if !handshake::may_open(&self.user, name, &self.broker.config.users) {
                    return self.fault(
                        Fault::connection(
                            NOT_ALLOWED,
                            format!("access to vhost '{name}' refused for user '{}'", self.user),
                        )
                        .at(class_id, method_id),
                    );
                }
                self.vhost = vhost;
                self.phase = Phase::Open;
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
                );
                Step::Continue
            }
            (_, connection::AMQPMethod::Close(_)) => {
                self.send_close_ok();
                Step::CloseOkSent
            }
            (phase, method) => {
                Step::End(format!("unexpected {method:?} while waiting in {phase:?}"))
            }
        }
    }

    /// Applies tune-ok. As RabbitMQ does, values above the server's (or a frame_max below the minimum)
    /// are refused with 530; 0 from the client means "the server's value".
    fn tune(&mut self, tune_ok: &connection::TuneOk) -> Result<(), Fault> {
        let config = &self.broker.config;
        let channel_max = match tune_ok.channel_max {
            0 => config.channel_max,
            n if n > config.channel_max => {
                return Err(Fault::connection(
                    NOT_ALLOWED,
                    format!(
                    "negotiated channel_max = {n} is higher than the maximum allowed value ({})",
                    config.channel_max
                ),
                ))
            }
            n => n,
        };
        let frame_max = match tune_ok.frame_max {
            0 => config.frame_max,
            n if n > config.frame_max => {
                return Err(Fault::connection(
                    NOT_ALLOWED,
                    format!(
                        "negotiated frame_max = {n} is higher than the maximum allowed value ({})",
                        config.frame_max
                    ),
                ))
            }
            n if n < FRAME_MAX_MIN => {
                return Err(Fault::connection(
                    NOT_ALLOWED,
                    format!(
                        "negotiated frame_max = {n} is lower than the minimum allowed value ({FRAME_MAX_MIN})"
                    ),
                ))
            }
            n => n,
        };
        self.channel_max = channel_max;
        self.frame_max = frame_max;
        self.heartbeat_s = tune_ok.heartbeat;
        Ok(())
    }

    pub(crate) fn channel_max(&self) -> u16 {
        self.channel_max
    }

    /// A queue event for one of this connection's consumers.
    pub fn handle_event(&mut self, channel: u16, event: QueueEvent) {
        if self.closing_since.is_some() {
            self.requeue_event(event);
            return;
        }
        crate::channel::event(self, channel, event);
    }
}
