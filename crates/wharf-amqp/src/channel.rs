//! Channels: their state (consumers, unacknowledged deliveries, a publish being assembled, confirm or
//! transaction mode) and the channel-level methods of the classes built so far (channel, queue, basic,
//! confirm, tx; exchange and bindings are in [`crate::topology`]). Errors come back as a [`Fault`] with the channel number; the session closes the
//! channel or the connection as the fault says.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{
    access, basic, basic::AMQPProperties, channel as ch, confirm, queue, tx, AMQPClass,
};
use bytes::{Bytes, BytesMut};
use wharf_core::flow::{ChannelGate, ConsumerGate};
use wharf_core::queues::{
    ConsumeOptions, ConsumerId, Delivered, Delivery, Message, PendingSync, Queue, QueueEvent,
    QueueSpec, Settle, VHost, REPLY_TO,
};

use crate::ack_timeout::TagMarks;
use crate::confirm::Confirms;
use crate::frame::{DeliverTemplate, Frame};
use crate::reply::*;
use crate::routing::{message_headers, sender_routes, without_bcc};
use crate::session::{AfterSync, Session};
use crate::topology;
use crate::unacked::Unsettled;

/// Class id of `basic`, the only content class.
const BASIC_CLASS_ID: u16 = 60;

/// The deliveries one ack / nack / reject names: one (the usual case, settled without building a list) or
/// all up to a tag (`multiple`).
enum Taken {
    One(u64, Unacked),
    Many(Vec<(u64, Unacked)>),
}

impl Taken {
    fn deliveries(&self) -> impl Iterator<Item = &Unacked> {
        let (one, many) = match self {
            Taken::One(_, u) => (Some(u), None),
            Taken::Many(m) => (None, Some(m.iter().map(|(_, u)| u))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    fn into_tagged(self) -> impl Iterator<Item = (u64, Unacked)> {
        let (one, many) = match self {
            Taken::One(tag, u) => (Some((tag, u)), None),
            Taken::Many(m) => (None, Some(m.into_iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// A delivery awaiting ack / nack / reject.
#[derive(Debug)]
struct Unacked {
    queue: Arc<Queue>,
    consumer: Option<ConsumerId>,
    position: u64,
    message: Arc<wharf_core::queues::Message>,
    expires_at: Option<i64>,
}

impl Unacked {
    fn requeue(self) {
        self.queue
            .requeue(self.consumer, self.position, self.message, self.expires_at);
    }
}

/// How an ack / nack / reject ends a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ack,
    /// Back to its queue, marked redelivered.
    Requeue,
    /// Rejected without requeue: dropped or dead-lettered.
    Reject,
}

impl Outcome {
    fn of_reject(requeue: bool) -> Self {
        if requeue {
            Outcome::Requeue
        } else {
            Outcome::Reject
        }
    }
}

#[derive(Debug)]
struct ConsumerRef {
    id: ConsumerId,
    queue: Arc<Queue>,
    no_ack: bool,
    /// This consumer's last basic.deliver frame, patched for the next delivery.
    deliver: DeliverTemplate,
}

/// basic.publish waiting for its content header and body.
#[derive(Debug)]
struct Publish {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    /// Set by the content header.
    body_size: Option<u64>,
    /// The properties as received, and parsed (for headers routing and `CC` / `BCC`), shared with the reader
    /// (see `frame::ContentHeader`).
    properties: Bytes,
    parsed: Option<Arc<AMQPProperties>>,
    body: BytesMut,
}

/// A publish routed inside a transaction, enqueued at tx.commit.
#[derive(Debug)]
struct TxPublish {
    queues: Vec<String>,
    message: Arc<Message>,
    mandatory: bool,
}

/// What a transaction holds until commit: its publishes (already routed, as RabbitMQ routes at publish
/// time and enqueues at commit) and its acks / nacks / rejects (already taken from the unacknowledged
/// set, so a repeated ack is 406 at once; rollback puts them back).
#[derive(Debug, Default)]
struct Tx {
    publishes: Vec<TxPublish>,
    /// (delivery tag, delivery, outcome).
    settlements: Vec<(u64, Unacked, Outcome)>,
}

/// A channel's publishing mode: confirm and tx exclude each other (406 on a switch, as in RabbitMQ).
#[derive(Debug, Default)]
enum Mode {
    #[default]
    Plain,
    Confirm(Confirms),
    Tx(Tx),
}

/// One open channel.
#[derive(Debug, Default)]
pub struct Channel {
    /// Which opening of this channel number on the connection this is: a durability wait started by an
    /// earlier opening (closed and reopened since) must not settle this one's confirms.
    pub(crate) generation: u64,
    /// channel.close was sent; waiting for close-ok, other frames are dropped.
    pub closing: bool,
    /// basic.qos prefetch for consumers created from now on (0 = unlimited).
    prefetch: u16,
    next_delivery_tag: u64,
    unacked: Unsettled<Unacked>,
    /// Delivery tags noted at the connection's periodic checks, for the acknowledgement timeout.
    ack_marks: TagMarks,
    consumers: BTreeMap<String, ConsumerRef>,
    publish: Option<Publish>,
    /// The queue last declared on this channel: an empty queue name in later methods means it.
    last_queue: String,
    mode: Mode,
    /// channel.flow and the channel-wide (`global`) prefetch, consulted by its consumers' queues.
    gate: Arc<ChannelGate>,
    /// Direct reply-to: the private reply queue this channel consumes from, once it consumed from
    /// `amq.rabbitmq.reply-to`; its requests' `reply_to` is rewritten to this name.
    reply_queue: Option<String>,
}

impl Channel {
    /// Cancels this channel's consumers, then requeues its unacknowledged messages (in that order, so
    /// requeued messages are not dispatched back to them).
    pub fn release(&mut self, vhost: &VHost) {
        for (_, consumer) in std::mem::take(&mut self.consumers) {
            vhost.cancel(&consumer.queue, consumer.id);
        }
        for (_, unacked) in self.unacked.take_all() {
            unacked.requeue();
        }
        if let Mode::Tx(tx) = &mut self.mode {
            // Uncommitted acks: the messages were never acknowledged, so they go back too.
            for (_, unacked, _) in std::mem::take(&mut tx.settlements) {
                unacked.requeue();
            }
            tx.publishes.clear();
        }
        self.publish = None;
    }

    /// Dispatches to this channel's consumers again (their gate opened).
    pub(crate) fn kick_consumers(&self) {
        for consumer in self.consumers.values() {
            consumer.queue.kick();
        }
    }

    /// Deliveries to consumers stopped counting against the channel-wide prefetch; with one set, the
    /// consumers may get more now.
    fn released<'a>(&self, taken: impl IntoIterator<Item = &'a Unacked>) {
        let counted = taken.into_iter().filter(|u| u.consumer.is_some()).count();
        for _ in 0..counted {
            self.gate.released();
        }
        if counted > 0 && self.gate.prefetch() > 0 {
            self.kick_consumers();
        }
    }

    /// Records the outcome of publish `tag` once it is known (confirm mode only).
    pub(crate) fn settle_confirm(&mut self, tag: u64, ok: bool) {
        if let Mode::Confirm(confirms) = &mut self.mode {
            confirms.settle(tag, ok);
        }
    }

    /// Whether confirm outcomes are waiting to be sent.
    pub(crate) fn has_confirms(&self) -> bool {
        matches!(&self.mode, Mode::Confirm(c) if c.has_settled())
    }

    /// Publisher confirms waiting to be sent (empty outside confirm mode).
    pub(crate) fn drain_confirms(&mut self) -> Vec<crate::confirm::Outcome> {
        match &mut self.mode {
            Mode::Confirm(confirms) => confirms.drain(),
            _ => Vec::new(),
        }
    }

    /// Acks / nacks / rejects: applied now, or held by the transaction until commit.
    fn settle(&mut self, taken: Taken, outcome: Outcome) {
        self.released(taken.deliveries());
        match &mut self.mode {
            Mode::Tx(tx) => tx
                .settlements
                .extend(taken.into_tagged().map(|(tag, u)| (tag, u, outcome))),
            _ => apply(taken.into_tagged().map(|(_, u)| u), outcome),
        }
    }

    /// Whether this channel's oldest unacknowledged delivery went out at least `timeout` before `now` (see
    /// [`crate::ack_timeout`]); the connection asks at each of its periodic checks.
    pub(crate) fn ack_overdue(&mut self, now: Instant, timeout: Duration) -> bool {
        self.ack_marks.note(
            now,
            self.next_delivery_tag,
            self.unacked.first_tag(),
            timeout,
        )
    }

    fn next_tag(&mut self) -> u64 {
        self.next_delivery_tag += 1;
        self.next_delivery_tag
    }

    /// Removes the deliveries an ack / nack / reject names; an unknown tag is 406.
    fn take(&mut self, tag: u64, multiple: bool) -> Result<Taken, Fault> {
        let unknown = || Fault::channel(PRECONDITION_FAILED, format!("unknown delivery tag {tag}"));
        if multiple {
            if tag != 0 && !self.unacked.contains(tag) {
                return Err(unknown());
            }
            return Ok(Taken::Many(if tag == 0 {
                self.unacked.take_all()
            } else {
                self.unacked.take_through(tag)
            }));
        }
        self.unacked
            .remove(tag)
            .map(|u| Taken::One(tag, u))
            .ok_or_else(unknown)
    }

    pub(crate) fn queue_name(&self, name: &str) -> Result<String, Fault> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        if self.last_queue.is_empty() {
            return Err(Fault::channel(NOT_FOUND, "no previously declared queue"));
        }
        Ok(self.last_queue.clone())
    }
}

type ChannelResult = Result<(), (u16, Fault)>;

/// A frame on a channel other than 0.
pub fn handle(session: &mut Session, frame: Frame) -> ChannelResult {
    let id = match &frame {
        Frame::Method(id, _)
        | Frame::Header(id, ..)
        | Frame::Body(id, _)
        | Frame::Heartbeat(id)
        | Frame::NotImplemented(id, ..) => *id,
    };
    let hard = |fault: Fault| {
        Err((
            id,
            Fault {
                hard: true,
                ..fault
            },
        ))
    };
    let Some(channel) = session.channels.get_mut(&id) else {
        return match frame {
            Frame::Method(_, class) => match class {
                AMQPClass::Channel(ch::AMQPMethod::Open(_)) => {
                    let (open, max) = (session.channels.len(), usize::from(session.channel_max()));
                    if open >= max {
                        // One channel too many (how a client that leaks channels ends): RabbitMQ 3.10.8's code
                        // and words, which count open channels.
                        return hard(Fault::connection(
                            NOT_ALLOWED,
                            format!(
                                "number of channels opened ({open}) has reached the negotiated channel_max ({max})"
                            ),
                        ));
                    }
                    // The specification's rule, which RabbitMQ does not check: numbers run 1..=channel_max.
                    if id > session.channel_max() {
                        return hard(Fault::connection(
                            CHANNEL_ERROR,
                            format!(
                                "channel {id} is above channel_max {}",
                                session.channel_max()
                            ),
                        ));
                    }
                    session.channel_opens += 1;
                    let channel = Channel {
                        generation: session.channel_opens,
                        ..Channel::default()
                    };
                    session.channels.insert(id, channel);
                    session.send(
                        id,
                        AMQPClass::Channel(ch::AMQPMethod::OpenOk(ch::OpenOk {})),
                    );
                    Ok(())
                }
                class => hard(
                    Fault::connection(
                        CHANNEL_ERROR,
                        // RabbitMQ 3.10.8's words (the frame names the channel).
                        "expected 'channel.open'",
                    )
                    .at(class.get_amqp_class_id(), class.get_amqp_method_id()),
                ),
            },
            _ => hard(Fault::connection(
                CHANNEL_ERROR,
                format!("frame on channel {id}, which is not open"),
            )),
        };
    };
    if channel.closing {
        if let Frame::Method(_, class) = frame {
            match class {
                AMQPClass::Channel(ch::AMQPMethod::CloseOk(_)) => {
                    session.channels.remove(&id);
                }
                AMQPClass::Channel(ch::AMQPMethod::Close(_)) => {
                    session.channels.remove(&id);
                    session.send(
                        id,
                        AMQPClass::Channel(ch::AMQPMethod::CloseOk(ch::CloseOk {})),
                    );
                }
                _ => {}
            }
        }
        return Ok(());
    }
    if channel.publish.is_some() {
        return content(session, id, frame);
    }
    match frame {
        Frame::Method(_, class) => {
            // Confirms of earlier publishes go out before the reply to any other method, so that a
            // client closing the channel or committing sees them first; consecutive publishes still
            // share one `multiple` frame.
            if !matches!(class, AMQPClass::Basic(basic::AMQPMethod::Publish(_))) {
                session.send_confirms(id);
            }
            let (class_id, method_id) = (class.get_amqp_class_id(), class.get_amqp_method_id());
            method(session, id, class).map_err(|fault| (id, fault.at(class_id, method_id)))
        }
        // Checked like any method first (unknown or closing channel, content expected), as RabbitMQ does.
        Frame::NotImplemented(_, class_id, method_id, text) => {
            hard(Fault::connection(NOT_IMPLEMENTED, text).at(class_id, method_id))
        }
        _ => hard(Fault::connection(
            UNEXPECTED_FRAME,
            "expected method frame, got non method frame instead",
        )),
    }
}

/// Content header and body frames of a publish in progress.
fn content(session: &mut Session, id: u16, frame: Frame) -> ChannelResult {
    let max = session.broker.config.max_message_bytes;
    let hard = |fault: Fault| Err((id, fault));
    let Some(publish) = session
        .channels
        .get_mut(&id)
        .and_then(|c| c.publish.as_mut())
    else {
        return Ok(());
    };
    // Content of a publish: where the memory alarm blocks the connection (RabbitMQ checks after each content
    // header and body frame, so a publish without a body is routed before the block).
    session.published = true;
    match frame {
        Frame::Header(_, header, properties) if publish.body_size.is_none() => {
            if header.class_id != BASIC_CLASS_ID {
                // RabbitMQ 3.10.8's code and words (raw-socket probe), like the other frames out of place below.
                return hard(Fault::connection(
                    UNEXPECTED_FRAME,
                    format!(
                        "expected content header for class 60, got one for class {} instead",
                        header.class_id
                    ),
                ));
            }
            if header.body_size > max {
                // Checked before any body is buffered; the body frames that follow are dropped with
                // the closing channel.
                return Err((
                    id,
                    Fault::channel(
                        PRECONDITION_FAILED,
                        format!(
                            "message size {} is larger than configured max size {max}",
                            header.body_size
                        ),
                    )
                    .at(BASIC_CLASS_ID, 40),
                ));
            }
            publish.body_size = Some(header.body_size);
            publish.properties = properties;
            publish.parsed = Some(header.properties);
        }
        Frame::Body(_, bytes) if publish.body_size.is_some() => {
            let size = publish.body_size.unwrap_or(0);
            if publish.body.len() as u64 + bytes.len() as u64 > size {
                return hard(Fault::connection(
                    FRAME_ERROR,
                    "content body is longer than its header said",
                ));
            }
            if publish.body.is_empty() && bytes.len() as u64 == size {
                // A single-frame body: keep the received bytes without copying.
                publish.body = BytesMut::new();
                return finish_publish(session, id, bytes);
            }
            publish.body.extend_from_slice(&bytes);
        }
        _ if publish.body_size.is_none() => {
            return hard(Fault::connection(
                UNEXPECTED_FRAME,
                "expected content header for class 60, got non content header frame instead",
            ))
        }
        _ => {
            return hard(Fault::connection(
                UNEXPECTED_FRAME,
                "expected content body, got non content body frame instead",
            ))
        }
    }
    if publish.body_size == Some(publish.body.len() as u64) {
        let body = std::mem::take(&mut publish.body).freeze();
        return finish_publish(session, id, body);
    }
    Ok(())
}

fn finish_publish(session: &mut Session, id: u16, body: Bytes) -> ChannelResult {
    let Some(publish) = session.channels.get_mut(&id).and_then(|c| c.publish.take()) else {
        return Ok(());
    };
    let at = |fault: Fault| (id, fault.at(BASIC_CLASS_ID, 40));
    // Always set here (a body is read only after its header), but a missing one reads as no properties.
    let mut parsed = publish.parsed.unwrap_or_default();
    let (extra_keys, has_bcc) = sender_routes(&parsed).map_err(at)?;
    let expiration_ms = crate::queue_args::expiration_ms(&parsed).map_err(at)?;
    // A `user_id` must be the authenticated user's name, so a receiver can trust it (RabbitMQ's rule; Wharf has
    // no impersonator tag).
    if let Some(claimed) = parsed.user_id() {
        if claimed.as_str() != session.user {
            return Err(at(Fault::channel(
                PRECONDITION_FAILED,
                format!(
                    "user_id property set to '{claimed}' but authenticated user was '{}'",
                    session.user
                ),
            )));
        }
    }
    // Direct reply-to: a request asking for replies on the pseudo-queue gets this channel's reply queue.
    let reply_queue = if parsed.reply_to().as_ref().map(|r| r.as_str()) == Some(REPLY_TO) {
        let Some(name) = session
            .channels
            .get(&id)
            .and_then(|c| c.reply_queue.clone())
        else {
            return Err(at(Fault::channel(
                PRECONDITION_FAILED,
                "fast reply consumer does not exist",
            )));
        };
        // Shared with the reader's memo: changed in a copy of its own.
        let own = Arc::make_mut(&mut parsed);
        *own = std::mem::take(own).with_reply_to(name.as_str().into());
        true
    } else {
        false
    };
    let parsed = &*parsed;
    let headers = || message_headers(parsed);
    let properties = if has_bcc {
        without_bcc(parsed.clone()).map_err(at)?
    } else if reply_queue {
        crate::frame::encode_properties(parsed)
            .map(Bytes::from)
            .map_err(|e| at(Fault::channel(PRECONDITION_FAILED, e)))?
    } else {
        publish.properties
    };
    // The default exchange without CC / BCC routes to the queue its key names: no table, no list to build.
    let routed = if publish.exchange.is_empty() && extra_keys.is_empty() {
        None
    } else {
        let mut keys: Vec<&str> = Vec::with_capacity(1 + extra_keys.len());
        keys.push(&publish.routing_key);
        keys.extend(extra_keys.iter().map(String::as_str));
        Some(
            session
                .vhost
                .route(&publish.exchange, &keys, &headers)
                .map_err(|e| at(Fault::from(e)))?,
        )
    };
    let message = Arc::new(Message {
        exchange: publish.exchange,
        routing_key: publish.routing_key,
        properties,
        body,
        persistent: *parsed.delivery_mode() == Some(2),
        priority: parsed.priority().unwrap_or(0),
        expiration_ms,
    });
    let named = Arc::clone(&message);
    let queues: &[String] = match &routed {
        Some(queues) => queues,
        None => std::slice::from_ref(&named.routing_key),
    };
    let channel = channel_mut(session, id).map_err(|f| (id, f))?;
    let generation = channel.generation;
    match &mut channel.mode {
        Mode::Tx(tx) => {
            tx.publishes.push(TxPublish {
                queues: queues.to_vec(),
                message,
                mandatory: publish.mandatory,
            });
            Ok(())
        }
        Mode::Confirm(confirms) => {
            let tag = confirms.next_tag();
            let delivered = deliver(session, id, queues, message, publish.mandatory);
            let ok = !delivered.failed;
            if delivered.sync.is_empty() {
                // In memory only (transient, or no durable queue): enqueued is as safe as it gets.
                if let Some(c) = session.channels.get_mut(&id) {
                    c.settle_confirm(tag, ok);
                }
            } else {
                // Persistent in a durable queue: confirmed once the log has it durably.
                session.after_sync(
                    delivered.sync,
                    AfterSync::Confirm {
                        channel: id,
                        generation,
                        first: tag,
                        last: tag,
                        ok,
                    },
                );
            }
            Ok(())
        }
        Mode::Plain => {
            deliver(session, id, queues, message, publish.mandatory);
            Ok(())
        }
    }
}

/// Enqueues a routed message on its queues; a mandatory message that reached none comes back in a
/// basic.return (before its confirm, as in RabbitMQ).
fn deliver(
    session: &mut Session,
    id: u16,
    queues: &[String],
    message: Arc<Message>,
    mandatory: bool,
) -> Delivered {
    let delivered = session.vhost.deliver(queues, Arc::clone(&message));
    if mandatory && delivered.queues == 0 {
        session.send(
            id,
            AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: NO_ROUTE,
                reply_text: "NO_ROUTE".into(),
                exchange: message.exchange.clone().into(),
                routing_key: message.routing_key.clone().into(),
            })),
        );
        session.send_content(id, &message.properties, &message.body);
    }
    delivered
}

pub(crate) fn channel_mut(session: &mut Session, id: u16) -> Result<&mut Channel, Fault> {
    session
        .channels
        .get_mut(&id)
        .ok_or_else(|| Fault::connection(CHANNEL_ERROR, format!("channel {id} is not open")))
}

/// A method on an open channel.
fn method(session: &mut Session, id: u16, class: AMQPClass) -> Result<(), Fault> {
    let vhost = Arc::clone(&session.vhost);
    let conn = session.id;
    match class {
        AMQPClass::Channel(ch::AMQPMethod::Close(_)) => {
            if let Some(mut channel) = session.channels.remove(&id) {
                channel.release(&vhost);
            }
            session.send(
                id,
                AMQPClass::Channel(ch::AMQPMethod::CloseOk(ch::CloseOk {})),
            );
        }
        AMQPClass::Channel(ch::AMQPMethod::Open(_)) => {
            return Err(Fault::connection(
                CHANNEL_ERROR,
                "second 'channel.open' seen",
            ))
        }
        AMQPClass::Channel(ch::AMQPMethod::Flow(flow)) => {
            let channel = channel_mut(session, id)?;
            channel.gate.set_active(flow.active);
            if flow.active {
                channel.kick_consumers();
            }
            session.send(
                id,
                AMQPClass::Channel(ch::AMQPMethod::FlowOk(ch::FlowOk {
                    active: flow.active,
                })),
            );
        }
        AMQPClass::Queue(queue::AMQPMethod::Declare(declare))
            if declare.passive && declare.queue.as_str() == REPLY_TO =>
        {
            // RabbitMQ answers a passive declare of the pseudo-queue, so clients can test for the feature; it
            // reports one consumer (the pseudo-queue always "has" its consumer).
            if !declare.nowait {
                session.send(
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: REPLY_TO.into(),
                        message_count: 0,
                        consumer_count: 1,
                    })),
                );
            }
        }
        AMQPClass::Queue(queue::AMQPMethod::Declare(declare)) => {
            let name = declare.queue.as_str();
            let spec = QueueSpec {
                durable: declare.durable,
                exclusive: declare.exclusive,
                auto_delete: declare.auto_delete,
                arguments: if declare.passive {
                    Default::default()
                } else {
                    crate::queue_args::queue_args(vhost.name(), name, &declare.arguments)?
                },
            };
            let ok = vhost.declare_queue(conn, name, declare.passive, spec)?;
            channel_mut(session, id)?.last_queue = ok.queue.name().to_string();
            if !declare.nowait {
                session.send(
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: ok.queue.name().to_string().into(),
                        message_count: ok.message_count,
                        consumer_count: ok.consumer_count,
                    })),
                );
            }
        }
        AMQPClass::Queue(queue::AMQPMethod::Delete(delete)) => {
            let name = channel_mut(session, id)?.queue_name(delete.queue.as_str())?;
            let message_count =
                vhost.delete_queue(conn, &name, delete.if_unused, delete.if_empty)?;
            if !delete.nowait {
                session.send(
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                        message_count,
                    })),
                );
            }
        }
        AMQPClass::Queue(queue::AMQPMethod::Purge(purge)) => {
            let name = channel_mut(session, id)?.queue_name(purge.queue.as_str())?;
            let message_count = vhost.purge_queue(conn, &name)?;
            if !purge.nowait {
                session.send(
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk { message_count })),
                );
            }
        }
        AMQPClass::Queue(queue::AMQPMethod::Bind(b)) => {
            topology::queue_binding(
                session,
                id,
                true,
                b.queue.as_str(),
                b.exchange.as_str(),
                b.routing_key.as_str(),
                &b.arguments,
            )?;
            if !b.nowait {
                topology::reply_bound(session, id, queue::AMQPMethod::BindOk(queue::BindOk {}));
            }
        }
        AMQPClass::Queue(queue::AMQPMethod::Unbind(u)) => {
            topology::queue_binding(
                session,
                id,
                false,
                u.queue.as_str(),
                u.exchange.as_str(),
                u.routing_key.as_str(),
                &u.arguments,
            )?;
            topology::reply_bound(session, id, queue::AMQPMethod::UnbindOk(queue::UnbindOk {}));
        }
        AMQPClass::Exchange(method) => return topology::exchange_method(session, id, method),
        AMQPClass::Basic(method) => return basic_method(session, id, method),
        AMQPClass::Confirm(confirm::AMQPMethod::Select(select)) => {
            let channel = channel_mut(session, id)?;
            match channel.mode {
                Mode::Tx(_) => {
                    return Err(Fault::channel(
                        PRECONDITION_FAILED,
                        "cannot switch from tx to confirm mode",
                    ))
                }
                Mode::Confirm(_) => {}
                Mode::Plain => channel.mode = Mode::Confirm(Confirms::default()),
            }
            if !select.nowait {
                session.send(
                    id,
                    AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                );
            }
        }
        AMQPClass::Tx(method) => return tx_method(session, id, method),
        AMQPClass::Access(access::AMQPMethod::Request(_)) => {
            // 0-8's access.request, still sent by some old clients: RabbitMQ 3.10.8 answers request-ok with
            // ticket 1 and checks nothing (tickets mean nothing in 0-9-1; permissions are checked per method).
            session.send(
                id,
                // amq-protocol writes the ticket, a reserved field in 0-9-1, as 1.
                AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
            );
        }
        // A method only the server sends (declare-ok, channel.flow-ok, an unasked close-ok, …): RabbitMQ 3.10.8's
        // code and words.
        other => {
            return Err(Fault::unimplemented_method()
                .at(other.get_amqp_class_id(), other.get_amqp_method_id()))
        }
    }
    Ok(())
}

fn basic_method(session: &mut Session, id: u16, method: basic::AMQPMethod) -> Result<(), Fault> {
    let vhost = Arc::clone(&session.vhost);
    let conn = session.id;
    match method {
        basic::AMQPMethod::Qos(qos) => {
            // As RabbitMQ reads it: without `global`, the prefetch of each consumer created from now on;
            // with it, one limit shared by all of the channel's consumers.
            let channel = channel_mut(session, id)?;
            if qos.global {
                channel.gate.set_prefetch(qos.prefetch_count);
                channel.kick_consumers();
            } else {
                channel.prefetch = qos.prefetch_count;
            }
            session.send(
                id,
                AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
            );
        }
        basic::AMQPMethod::Publish(publish) => {
            if publish.immediate {
                return Err(Fault::connection(NOT_IMPLEMENTED, "immediate=true"));
            }
            // The exchange is checked (404, or 403 when internal) once the content is in, when the
            // message is routed: the content frames must be read either way.
            channel_mut(session, id)?.publish = Some(Publish {
                // The parsed strings move in: no copy per publish.
                exchange: publish.exchange.into(),
                routing_key: publish.routing_key.into(),
                mandatory: publish.mandatory,
                body_size: None,
                properties: Bytes::new(),
                parsed: None,
                body: BytesMut::new(),
            });
        }
        basic::AMQPMethod::Consume(consume) => {
            let outbound = Arc::clone(&session.outbound);
            let channel = channel_mut(session, id)?;
            let mut queue_name = channel.queue_name(consume.queue.as_str())?;
            // Checked before anything is set up for the consumer (a direct reply-to queue, say).
            let priority = crate::queue_args::consumer_priority(
                vhost.name(),
                &queue_name,
                &consume.arguments,
            )?;
            if queue_name == REPLY_TO {
                if !consume.no_ack {
                    return Err(Fault::channel(
                        PRECONDITION_FAILED,
                        "reply consumer cannot acknowledge",
                    ));
                }
                if channel.reply_queue.is_some() {
                    return Err(Fault::channel(
                        PRECONDITION_FAILED,
                        "reply consumer already set",
                    ));
                }
                let reply = vhost.declare_reply_queue(conn)?;
                queue_name = reply.name().to_string();
                channel_mut(session, id)?.reply_queue = Some(queue_name.clone());
            }
            let channel = channel_mut(session, id)?;
            let tag = if consume.consumer_tag.as_str().is_empty() {
                format!("amq.ctag-{:016x}", rand::random::<u64>())
            } else {
                consume.consumer_tag.as_str().to_string()
            };
            if channel.consumers.contains_key(&tag) {
                return Err(Fault::connection(
                    NOT_ALLOWED,
                    format!("attempt to reuse consumer tag '{tag}'"),
                ));
            }
            let options = ConsumeOptions {
                consumer_tag: tag.clone(),
                channel: id,
                no_ack: consume.no_ack,
                exclusive: consume.exclusive,
                prefetch: channel.prefetch,
                priority,
                gate: ConsumerGate {
                    outbound,
                    channel: Arc::clone(&channel.gate),
                },
            };
            // Reply first: deliveries the consume triggers reach this connection as events, which are
            // handled after this frame, so consume-ok always precedes them.
            let (queue, consumer) =
                vhost.consume(conn, &queue_name, options, session.sink.clone())?;
            channel_mut(session, id)?.consumers.insert(
                tag.clone(),
                ConsumerRef {
                    id: consumer,
                    queue,
                    no_ack: consume.no_ack,
                    deliver: DeliverTemplate::default(),
                },
            );
            if !consume.nowait {
                session.send(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                        consumer_tag: tag.into(),
                    })),
                );
            }
        }
        basic::AMQPMethod::Cancel(cancel) => {
            let tag = cancel.consumer_tag.as_str().to_string();
            let channel = channel_mut(session, id)?;
            if let Some(consumer) = channel.consumers.remove(&tag) {
                if channel.reply_queue.as_deref() == Some(consumer.queue.name()) {
                    // The reply queue goes with its consumer (auto-delete).
                    channel.reply_queue = None;
                }
                vhost.cancel(&consumer.queue, consumer.id);
            }
            if !cancel.nowait {
                session.send(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: tag.into(),
                    })),
                );
            }
        }
        basic::AMQPMethod::Get(get) => {
            let name = channel_mut(session, id)?.queue_name(get.queue.as_str())?;
            match vhost.get(conn, &name, get.no_ack)? {
                None => session.send(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                ),
                Some(delivery) => {
                    let channel = channel_mut(session, id)?;
                    let tag = channel.next_tag();
                    let message = Arc::clone(&delivery.message);
                    if !get.no_ack {
                        channel.unacked.insert(tag, unacked(&delivery));
                    }
                    session.send(
                        id,
                        AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                            delivery_tag: tag,
                            redelivered: delivery.redelivered,
                            exchange: message.exchange.clone().into(),
                            routing_key: message.routing_key.clone().into(),
                            message_count: delivery.remaining,
                        })),
                    );
                    session.send_content(id, &message.properties, &message.body);
                }
            }
        }
        basic::AMQPMethod::Ack(ack) => {
            let channel = channel_mut(session, id)?;
            let taken = channel.take(ack.delivery_tag, ack.multiple)?;
            channel.settle(taken, Outcome::Ack);
        }
        basic::AMQPMethod::Nack(nack) => {
            let channel = channel_mut(session, id)?;
            let taken = channel.take(nack.delivery_tag, nack.multiple)?;
            channel.settle(taken, Outcome::of_reject(nack.requeue));
        }
        basic::AMQPMethod::Reject(reject) => {
            let channel = channel_mut(session, id)?;
            let taken = channel.take(reject.delivery_tag, false)?;
            channel.settle(taken, Outcome::of_reject(reject.requeue));
        }
        basic::AMQPMethod::Recover(basic::Recover { requeue: false })
        | basic::AMQPMethod::RecoverAsync(basic::RecoverAsync { requeue: false }) => {
            // Redelivering to the same consumer without requeueing is not something RabbitMQ does either.
            return Err(Fault::connection(NOT_IMPLEMENTED, "requeue=false"));
        }
        basic::AMQPMethod::Recover(_) | basic::AMQPMethod::RecoverAsync(_) => {
            let reply = matches!(method, basic::AMQPMethod::Recover(_));
            let channel = channel_mut(session, id)?;
            let all = channel.unacked.take_all();
            channel.released(all.iter().map(|(_, u)| u));
            for (_, u) in all {
                u.requeue();
            }
            if reply {
                session.send(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
            }
        }
        // Methods only the server sends (basic.deliver, get-ok, consume-ok, …), as RabbitMQ 3.10.8 answers them.
        _ => return Err(Fault::unimplemented_method()),
    }
    Ok(())
}

/// tx.select / commit / rollback. Commit enqueues the held publishes in order (returning unroutable
/// mandatory ones), then applies the held acks; rollback drops the publishes and puts the held deliveries
/// back among the unacknowledged ones, as RabbitMQ does. Without tx.select, commit and rollback are 406.
fn tx_method(session: &mut Session, id: u16, method: tx::AMQPMethod) -> Result<(), Fault> {
    let channel = channel_mut(session, id)?;
    let reply = match method {
        tx::AMQPMethod::Select(_) => {
            match channel.mode {
                Mode::Confirm(_) => {
                    return Err(Fault::channel(
                        PRECONDITION_FAILED,
                        "cannot switch from confirm to tx mode",
                    ))
                }
                Mode::Tx(_) => {}
                Mode::Plain => channel.mode = Mode::Tx(Tx::default()),
            }
            tx::AMQPMethod::SelectOk(tx::SelectOk {})
        }
        tx::AMQPMethod::Commit(_) | tx::AMQPMethod::Rollback(_) => {
            let commit = matches!(method, tx::AMQPMethod::Commit(_));
            let generation = channel.generation;
            let Mode::Tx(tx) = &mut channel.mode else {
                return Err(Fault::channel(
                    PRECONDITION_FAILED,
                    "channel is not transactional",
                ));
            };
            let Tx {
                publishes,
                settlements,
            } = std::mem::take(tx);
            if commit {
                let mut sync = PendingSync::default();
                for p in publishes {
                    sync.merge(deliver(session, id, &p.queues, p.message, p.mandatory).sync);
                }
                for (_, unacked, outcome) in settlements {
                    apply(std::iter::once(unacked), outcome);
                }
                if !sync.is_empty() {
                    // commit-ok once the transaction's persistent messages are durable.
                    session.after_sync(
                        sync,
                        AfterSync::CommitOk {
                            channel: id,
                            generation,
                        },
                    );
                    return Ok(());
                }
                tx::AMQPMethod::CommitOk(tx::CommitOk {})
            } else {
                let channel = channel_mut(session, id)?;
                channel.unacked.restore(
                    settlements
                        .into_iter()
                        .map(|(tag, unacked, _)| (tag, unacked)),
                );
                tx::AMQPMethod::RollbackOk(tx::RollbackOk {})
            }
        }
        // select-ok, commit-ok, rollback-ok: only the server sends them (RabbitMQ 3.10.8's answer).
        _ => return Err(Fault::unimplemented_method()),
    };
    session.send(id, AMQPClass::Tx(reply));
    Ok(())
}

/// Ends deliveries: requeued (marked redelivered), or settled — acknowledged, or rejected (dead-lettered
/// when the queue has a dead-letter exchange). Settlements go to each queue in one call per run of the same
/// queue, so a `multiple` ack costs one journal record per queue, not one per message.
fn apply(taken: impl IntoIterator<Item = Unacked>, outcome: Outcome) {
    let how = match outcome {
        Outcome::Requeue => {
            taken.into_iter().for_each(Unacked::requeue);
            return;
        }
        Outcome::Ack => Settle::Ack,
        Outcome::Reject => Settle::Reject,
    };
    let mut taken = taken.into_iter();
    let Some(first) = taken.next() else {
        return;
    };
    let Some(second) = taken.next() else {
        // One delivery (the usual ack): no list.
        first
            .queue
            .settle(how, &[(first.consumer, first.position, first.message)]);
        return;
    };
    type Settled = Vec<(Option<ConsumerId>, u64, Arc<Message>)>;
    let mut run: Option<(Arc<Queue>, Settled)> = None;
    for u in [first, second].into_iter().chain(taken) {
        match &mut run {
            Some((queue, items)) if Arc::ptr_eq(queue, &u.queue) => {
                items.push((u.consumer, u.position, u.message))
            }
            _ => {
                if let Some((queue, items)) = run.take() {
                    queue.settle(how, &items);
                }
                run = Some((u.queue, vec![(u.consumer, u.position, u.message)]));
            }
        }
    }
    if let Some((queue, items)) = run {
        queue.settle(how, &items);
    }
}

fn unacked(delivery: &Delivery) -> Unacked {
    Unacked {
        queue: Arc::clone(&delivery.queue),
        consumer: delivery.consumer,
        position: delivery.position,
        message: Arc::clone(&delivery.message),
        expires_at: delivery.expires_at,
    }
}

/// A queue event for this connection: a delivery to write out (or to requeue if its consumer or channel
/// is gone), or a consumer cancelled by the queue's deletion.
pub fn event(session: &mut Session, id: u16, event: QueueEvent) {
    match event {
        QueueEvent::Deliver(delivery) => {
            session.outbound_released(delivery.message.body.len() as u64);
            // Fields, not methods, below: the consumer is borrowed from the channel, the channel from the session.
            let consumer = session
                .channels
                .get_mut(&id)
                .filter(|c| !c.closing)
                .and_then(|c| {
                    let r = c
                        .consumers
                        .get_mut(&*delivery.consumer_tag)
                        .filter(|r| Some(r.id) == delivery.consumer)?;
                    Some((r, &mut c.unacked, &mut c.next_delivery_tag))
                });
            let Some((consumer, unacked_map, next_tag)) = consumer else {
                delivery.queue.requeue(
                    delivery.consumer,
                    delivery.position,
                    delivery.message,
                    delivery.expires_at,
                );
                return;
            };
            *next_tag += 1;
            let tag = *next_tag;
            if !consumer.no_ack {
                unacked_map.insert(tag, unacked(&delivery));
            }
            let message = delivery.message;
            if let Err(e) = consumer.deliver.write(
                &mut session.out,
                id,
                &delivery.consumer_tag,
                tag,
                delivery.redelivered,
                &message.exchange,
                &message.routing_key,
            ) {
                tracing::warn!(connection = session.id, "{e}");
            }
            session.send_content(id, &message.properties, &message.body);
        }
        QueueEvent::Cancelled {
            consumer,
            consumer_tag,
        } => {
            let Some(channel) = session.channels.get_mut(&id) else {
                return;
            };
            if channel
                .consumers
                .get(&consumer_tag)
                .is_some_and(|r| r.id == consumer)
            {
                channel.consumers.remove(&consumer_tag);
                if session.capabilities.consumer_cancel_notify {
                    session.send(
                        id,
                        AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                            consumer_tag: consumer_tag.into(),
                            nowait: true,
                        })),
                    );
                }
            }
        }
    }
}
