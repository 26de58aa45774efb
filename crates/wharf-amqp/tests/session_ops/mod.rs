//! Drives one AMQP [`Session`] — the connection's state machine, without its socket — through a sequence of
//! client frames chosen by a byte string: well-formed methods of every class the broker serves, with arguments
//! and field tables drawn from small sets that make them collide (the same few queue, exchange and consumer-tag
//! names, argument keys the broker checks, values of every field type), content with right and wrong sizes,
//! frames out of place, and the deliveries the queues hand back. Frames go through the real reader
//! ([`next_frame_with`], with its memo), as the connection feeds them.
//!
//! Shared by the CI test `tests/session_garbage.rs` (seeded random byte strings) and the fuzz target
//! `fuzz/fuzz_targets/amqp_session.rs` (libFuzzer's). The properties checked: nothing panics, the session's
//! output parses as frames, and once the connection is released its exclusive queues are gone and no queue
//! keeps one of its consumers.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::protocol::{
    basic, channel, confirm, connection, exchange, queue, tx, AMQPClass, BasicProperties,
};
use amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use bytes::BytesMut;
use wharf_amqp::frame::{next_frame_with, write_content, write_method, MethodMemo};
use wharf_amqp::{AmqpConfig, Broker, Session, Step};
use wharf_core::queues::{QueueError, QueueEvent, VHost};

/// Most operations one input drives (a long input is cut here, so one run stays fast).
const OPS_MAX: usize = 400;
/// Largest body the generator writes (several body frames at the small frame_max below).
const BODY_MAX: usize = 9_000;
/// The frame_max the generated client negotiates: small, so bodies span frames.
const FRAME_MAX: u32 = 4096;

const QUEUES: [&str; 6] = ["q1", "q2", "", "amq.rabbitmq.reply-to", "amq.q", "dlq"];
const EXCHANGES: [&str; 7] = [
    "",
    "x1",
    "x2",
    "amq.direct",
    "amq.topic",
    "amq.headers",
    "dlx",
];
const KINDS: [&str; 5] = ["direct", "fanout", "topic", "headers", "bogus"];
const KEYS: [&str; 6] = ["q1", "q2", "a.b", "#", "*.b", "dlq"];
const TAGS: [&str; 3] = ["", "t1", "t2"];
const ARG_KEYS: [&str; 22] = [
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-single-active-consumer",
    "x-queue-type",
    "x-queue-mode",
    "x-queue-version",
    "x-priority",
    "x-match",
    "alternate-exchange",
    "CC",
    "BCC",
    "x-death",
    "x-delivery-limit",
    "a",
    "b",
    "x-k",
];
const STRINGS: [&str; 12] = [
    "",
    "reject-publish",
    "drop-head",
    "reject-publish-dlx",
    "classic",
    "quorum",
    "lazy",
    "all",
    "any-with-x",
    "dlx",
    "q1",
    "-1",
];

/// Whether to print every frame each way (`SESSION_OPS_TRACE=1`, to read what a failing input did).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("SESSION_OPS_TRACE").is_some())
}

/// Reads choices off the input; past its end every choice is 0.
struct Choices<'a> {
    data: &'a [u8],
    at: usize,
}

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }
    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }
    fn pick<'s>(&mut self, from: &[&'s str]) -> &'s str {
        from.get(self.below(from.len())).copied().unwrap_or("")
    }
    fn short(&mut self, from: &[&str]) -> ShortString {
        self.pick(from).into()
    }
    fn int(&mut self) -> i64 {
        match self.below(6) {
            0 => 0,
            1 => -1,
            2 => i64::from(self.byte()),
            3 => i64::from(u16::from_be_bytes([self.byte(), self.byte()])),
            4 => i64::MAX,
            _ => 256,
        }
    }
    fn value(&mut self, depth: u32) -> AMQPValue {
        let n = self.int();
        match self.below(if depth > 2 { 12 } else { 14 }) {
            0 => AMQPValue::Boolean(self.flag()),
            1 => AMQPValue::ShortShortInt(n as i8),
            2 => AMQPValue::ShortInt(n as i16),
            3 => AMQPValue::LongInt(n as i32),
            4 => AMQPValue::LongLongInt(n),
            5 => AMQPValue::LongUInt(n as u32),
            6 => AMQPValue::Double(n as f64 / 2.0),
            7 => AMQPValue::LongString(LongString::from(self.pick(&STRINGS))),
            // (No short strings: RabbitMQ's table dialect has none — its `s` is a short int — so a client
            // cannot send one; amq-protocol reads `s` as a short string, which makes the frame unreadable.)
            8 => AMQPValue::ShortUInt(n as u16),
            9 => AMQPValue::Timestamp(n as u64),
            10 => AMQPValue::Void,
            11 => AMQPValue::DecimalValue(DecimalValue {
                scale: self.byte(),
                value: n as u32,
            }),
            12 => AMQPValue::FieldTable(self.table(depth + 1)),
            _ => {
                let mut array = FieldArray::default();
                for _ in 0..self.below(4) {
                    array.push(self.value(depth + 1));
                }
                if self.flag() {
                    array.push(AMQPValue::ByteArray(ByteArray::from(vec![self.byte()])));
                }
                AMQPValue::FieldArray(array)
            }
        }
    }
    fn table(&mut self, depth: u32) -> FieldTable {
        let mut table = FieldTable::default();
        for _ in 0..self.below(4) {
            let key = self.pick(&ARG_KEYS);
            let value = self.value(depth);
            table.insert(key.into(), value);
        }
        table
    }
    fn properties(&mut self) -> BasicProperties {
        let mut p = BasicProperties::default();
        if self.flag() {
            p = p.with_headers(self.table(0));
        }
        if self.flag() {
            p = p.with_delivery_mode(self.below(4) as u8);
        }
        if self.flag() {
            p = p.with_priority(self.byte());
        }
        if self.flag() {
            let expiration = ["0", "10", "soon", "-1", "4294967296", ""][self.below(6)];
            p = p.with_expiration(expiration.into());
        }
        if self.flag() {
            p = p.with_reply_to(self.short(&["amq.rabbitmq.reply-to", "q1", ""]));
        }
        if self.flag() {
            p = p.with_user_id(self.short(&["guest", "mallory"]));
        }
        p
    }
}

/// The channels the generated client believes open (it learns of the server's closes from its output).
#[derive(Default)]
struct Client {
    open: [bool; 4],
}

fn method(out: &mut Vec<u8>, channel: u16, class: AMQPClass) {
    let _ = write_method(out, channel, class);
}

/// One client frame (or a few: a publish with its content) as bytes. Most go to a channel the client has
/// open (opening it first if need be), as a client does; now and then one breaks a rule of the connection
/// (which ends the run), so that those paths run too without cutting every run short.
fn next_op(c: &mut Choices, out: &mut Vec<u8>, client: &mut Client) -> Op {
    let ch = 1 + c.below(3) as u16;
    let rare = c.below(128) == 0;
    if let Some(open) = client.open.get_mut(usize::from(ch)) {
        // Rarely, a method on a channel that is not open (a connection error).
        if !(*open || rare && c.below(4) == 0) {
            method(
                out,
                ch,
                AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            );
            *open = true;
        }
    }
    match c.below(28) {
        // A second channel.open is a connection error: only now and then.
        0 | 1 if rare => method(
            out,
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ),
        0 | 1 => {}
        2 => {
            method(
                out,
                ch,
                AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                    reply_code: 200,
                    reply_text: "bye".into(),
                    class_id: 0,
                    method_id: 0,
                })),
            );
            if let Some(open) = client.open.get_mut(usize::from(ch)) {
                *open = false;
            }
        }
        3 if !rare => {}
        3 => method(
            out,
            ch,
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        ),
        4 => method(
            out,
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow {
                active: c.flag(),
            })),
        ),
        5 => method(
            out,
            ch,
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: c.short(&EXCHANGES),
                kind: if rare {
                    c.short(&KINDS)
                } else {
                    c.short(&KINDS[..4])
                },
                passive: c.below(4) == 0,
                durable: c.flag(),
                auto_delete: c.flag(),
                internal: c.below(4) == 0,
                nowait: c.below(4) == 0,
                arguments: c.table(0),
            })),
        ),
        6 => method(
            out,
            ch,
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                exchange: c.short(&EXCHANGES),
                if_unused: c.flag(),
                nowait: c.below(4) == 0,
            })),
        ),
        7 => {
            let (destination, source, routing_key) =
                (c.short(&EXCHANGES), c.short(&EXCHANGES), c.short(&KEYS));
            let arguments = c.table(0);
            let class = if c.flag() {
                exchange::AMQPMethod::Bind(exchange::Bind {
                    destination,
                    source,
                    routing_key,
                    nowait: false,
                    arguments,
                })
            } else {
                exchange::AMQPMethod::Unbind(exchange::Unbind {
                    destination,
                    source,
                    routing_key,
                    nowait: false,
                    arguments,
                })
            };
            method(out, ch, AMQPClass::Exchange(class))
        }
        8 | 9 => method(
            out,
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: c.short(&QUEUES),
                passive: c.below(4) == 0,
                durable: c.flag(),
                exclusive: c.below(3) == 0,
                auto_delete: c.below(3) == 0,
                nowait: c.below(4) == 0,
                arguments: c.table(0),
            })),
        ),
        10 => {
            let (q, x, key) = (c.short(&QUEUES), c.short(&EXCHANGES), c.short(&KEYS));
            let arguments = c.table(0);
            let class = if c.flag() {
                queue::AMQPMethod::Bind(queue::Bind {
                    queue: q,
                    exchange: x,
                    routing_key: key,
                    nowait: false,
                    arguments,
                })
            } else {
                queue::AMQPMethod::Unbind(queue::Unbind {
                    queue: q,
                    exchange: x,
                    routing_key: key,
                    arguments,
                })
            };
            method(out, ch, AMQPClass::Queue(class))
        }
        11 => method(
            out,
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: c.short(&QUEUES),
                nowait: false,
            })),
        ),
        12 => method(
            out,
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: c.short(&QUEUES),
                if_unused: c.flag(),
                if_empty: c.flag(),
                nowait: false,
            })),
        ),
        13 => method(
            out,
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: c.below(4) as u16,
                global: c.flag(),
            })),
        ),
        14 | 15 => method(
            out,
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: c.short(&QUEUES),
                consumer_tag: c.short(&TAGS),
                no_local: c.flag(),
                no_ack: c.flag(),
                exclusive: c.below(4) == 0,
                nowait: c.below(4) == 0,
                arguments: c.table(0),
            })),
        ),
        16 => method(
            out,
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: c.short(&TAGS),
                nowait: c.flag(),
            })),
        ),
        17..=19 => {
            method(
                out,
                ch,
                AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                    exchange: c.short(&EXCHANGES),
                    routing_key: c.short(&KEYS),
                    mandatory: c.flag(),
                    immediate: rare && c.flag(),
                })),
            );
            let properties = c.properties();
            let size = match c.below(4) {
                0 => 0,
                1 => c.below(BODY_MAX),
                _ => c.below(64),
            };
            let body = vec![c.byte(); size];
            if let Ok(encoded) = wharf_amqp::frame::encode_properties(&properties) {
                // Now and then a body longer or shorter than its header says, or no body at all.
                match c.below(16) {
                    0 if rare => {}
                    1 if rare && size > 0 => {
                        let mut wrong = Vec::new();
                        write_content(&mut wrong, ch, &encoded, &body, FRAME_MAX);
                        wrong.truncate(wrong.len().saturating_sub(c.below(12)));
                        out.extend_from_slice(&wrong);
                    }
                    _ => write_content(out, ch, &encoded, &body, FRAME_MAX),
                }
            }
        }
        20 => method(
            out,
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: c.short(&QUEUES),
                no_ack: c.flag(),
            })),
        ),
        21 | 22 => {
            let delivery_tag = c.below(8) as u64;
            let (multiple, requeue) = (c.flag(), c.flag());
            let class = match c.below(3) {
                0 => basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag,
                    multiple,
                }),
                1 => basic::AMQPMethod::Reject(basic::Reject {
                    delivery_tag,
                    requeue,
                }),
                _ => basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag,
                    multiple,
                    requeue,
                }),
            };
            method(out, ch, AMQPClass::Basic(class))
        }
        23 => {
            // requeue=false is 540, a connection error: rarely.
            let requeue = !rare || c.flag();
            let class = if c.flag() {
                basic::AMQPMethod::Recover(basic::Recover { requeue })
            } else {
                basic::AMQPMethod::RecoverAsync(basic::RecoverAsync { requeue })
            };
            method(out, ch, AMQPClass::Basic(class))
        }
        24 => {
            let class = match c.below(3) {
                0 => tx::AMQPMethod::Select(tx::Select {}),
                1 => tx::AMQPMethod::Commit(tx::Commit {}),
                _ => tx::AMQPMethod::Rollback(tx::Rollback {}),
            };
            method(out, ch, AMQPClass::Tx(class))
        }
        25 => method(
            out,
            ch,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: c.flag(),
            })),
        ),
        26 if rare => {
            // Out of place: content with no publish, a heartbeat on a channel, a close on channel 0.
            match c.below(4) {
                0 => write_content(out, ch, &[0, 0], b"stray", FRAME_MAX),
                1 => out.extend_from_slice(&[8, 0, ch as u8, 0, 0, 0, 0, 0xCE]),
                2 => out.extend_from_slice(&[3, 0, ch as u8, 0, 0, 0, 1, 7, 0xCE]),
                _ => method(
                    out,
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                        reply_code: 200,
                        reply_text: "bye".into(),
                        class_id: 0,
                        method_id: 0,
                    })),
                ),
            }
        }
        _ => return Op::Deliveries,
    }
    Op::Frames
}

enum Op {
    /// Frames were written for the session to read.
    Frames,
    /// Hand the session the deliveries its queues sent it.
    Deliveries,
}

/// What the server said that the client must answer.
#[derive(Default)]
struct Heard {
    /// Channels the server closed (each wants a close-ok).
    closed_channels: Vec<u16>,
    /// The server closed the connection, with this reply.
    connection_closed: Option<String>,
}

/// Reads the session's output, which must be frames a client can read, for what the client must answer.
fn read_output(session: &mut Session) -> Heard {
    let out = session.take_output();
    let mut buf = BytesMut::from(&out[..]);
    let mut memo = MethodMemo::default();
    let mut heard = Heard::default();
    while !buf.is_empty() {
        let next = next_frame_with(&mut buf, 1 << 20, &mut memo);
        if trace() {
            eprintln!(
                "S {}",
                format!("{next:?}").chars().take(160).collect::<String>()
            );
        }
        match next {
            Ok(Some(wharf_amqp::frame::Frame::Method(
                ch,
                AMQPClass::Channel(channel::AMQPMethod::Close(_)),
            ))) => heard.closed_channels.push(ch),
            Ok(Some(wharf_amqp::frame::Frame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Close(close)),
            ))) => {
                heard.connection_closed = Some(format!("{} {}", close.reply_code, close.reply_text))
            }
            Ok(Some(_)) => {}
            other => panic!("the server wrote what does not read as frames: {other:?}"),
        }
    }
    heard
}

/// What one run did: operations generated, and whether the connection ended before the input did.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub ops: usize,
    pub connection_ended: bool,
    /// The server's connection.close, if it sent one.
    pub close_reason: Option<String>,
}

/// One client frame into the session (printed first when tracing).
fn handle(session: &mut Session, frame: wharf_amqp::frame::Frame) -> Step {
    if trace() {
        let shown: String = format!("{frame:?}").chars().take(160).collect();
        eprintln!("C {shown}");
    }
    session.handle(frame)
}

/// Runs the client that `data` describes against a fresh in-memory broker.
pub fn run(data: &[u8]) -> Outcome {
    let vhost = VHost::new();
    let broker = Broker::new(
        AmqpConfig::default(),
        HashMap::from([("/".to_string(), Arc::clone(&vhost))]),
    );
    let (sink, mut events) = tokio::sync::mpsc::unbounded_channel();
    let mut session = Session::new(Arc::clone(&broker), sink, true);
    session.start();
    let mut handshake = Vec::new();
    for class in [
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: "\0guest\0guest".into(),
            locale: "en_US".into(),
        })),
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 8,
            frame_max: FRAME_MAX,
            heartbeat: 0,
        })),
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    ] {
        let _ = write_method(&mut handshake, 0, class);
    }
    let mut buf = BytesMut::from(&handshake[..]);
    let mut memo = MethodMemo::default();
    let mut choices = Choices { data, at: 0 };
    let mut ended = false;
    let mut ops = 0;
    let mut client = Client::default();
    let mut close_reason = None;
    'ops: for _ in 0..OPS_MAX {
        loop {
            match next_frame_with(&mut buf, session.frame_limit(), &mut memo) {
                Ok(Some(frame)) => match handle(&mut session, frame) {
                    Step::Continue => {}
                    Step::End(reason) => {
                        close_reason.get_or_insert(format!("end: {reason}"));
                        ended = true;
                        break 'ops;
                    }
                    Step::CloseOkSent => {
                        ended = true;
                        break 'ops;
                    }
                },
                Ok(None) => break,
                Err(err) => {
                    session.frame_error(&err);
                    close_reason = Some(format!("frame error: {err}"));
                    ended = true;
                    break 'ops;
                }
            }
        }
        session.start_sync();
        while let Some(wait) = session.next_sync_wait() {
            // An in-memory vhost has nothing to wait for: every wait is done at once.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let mut future = wait.wait;
            let durable = match future.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(durable) => durable,
                std::task::Poll::Pending => panic!("a wait pending on an in-memory vhost"),
            };
            session.synced(durable, wait.actions);
        }
        session.flush_confirms();
        let heard = read_output(&mut session);
        let mut out = Vec::new();
        for ch in heard.closed_channels {
            method(
                &mut out,
                ch,
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
            );
            if let Some(open) = client.open.get_mut(usize::from(ch)) {
                *open = false;
            }
        }
        if let Some(reason) = heard.connection_closed {
            close_reason = Some(reason);
            // The client's close-ok ends the connection.
            method(
                &mut out,
                0,
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
            );
        } else if !choices.done() {
            ops += 1;
            if let Op::Deliveries = next_op(&mut choices, &mut out, &mut client) {
                while let Ok((channel, event)) = events.try_recv() {
                    session.handle_event(channel, event);
                }
            }
        } else if out.is_empty() {
            break;
        }
        buf.extend_from_slice(&out);
    }
    drop(buf);
    // The connection goes: what it held goes back, as the connection task does it.
    session.release_all();
    while let Ok((_, event)) = events.try_recv() {
        session.requeue_event(event);
    }
    read_output(&mut session);
    drop(session);
    // Its exclusive queues are gone and no queue keeps a consumer of it.
    for name in ["q1", "q2", "amq.q", "dlq"] {
        match vhost.lookup(u64::MAX, name) {
            Ok(queue) => assert_eq!(
                queue.counts().1,
                0,
                "queue {name} keeps a consumer of a connection that went"
            ),
            Err(QueueError::NotFound { .. }) => {}
            Err(e) => panic!("queue {name} after the connection went: {e}"),
        }
    }
    // Deliveries sent after the last drain may still sit in the channel: they go back too.
    while let Ok((_, event)) = events.try_recv() {
        if let QueueEvent::Deliver(d) = event {
            d.queue
                .requeue(d.consumer, d.position, d.message, d.expires_at);
        }
    }
    Outcome {
        ops,
        connection_ended: ended,
        close_reason,
    }
}
