//! Drives one AMQP [`Session`] — the connection's state machine, without its socket — through a sequence of
//! client frames chosen by a byte string: well-formed methods of every class the broker serves, with arguments
//! and field tables drawn from small sets that make them collide (the same few queue, exchange and consumer-tag
//! names, argument keys the broker checks, values of every field type), content with right and wrong sizes,
//! frames out of place, and the deliveries the queues hand back. Frames go through the real reader
//! ([`next_frame_with`], with its memo), as the connection feeds them. Shared by the CI test
//! `tests/session_garbage.rs` (seeded random byte strings) and the fuzz target
//! `fuzz/fuzz_targets/amqp_session.rs` (libFuzzer's).
//!
//! Half of the runs drive two connections on the same broker, each op on one of them: messages one publishes
//! the other consumes, settles or finds requeued when the first goes. A connection that ends (a connection
//! error, or the client's own close) is released as the connection task releases it and opened again, and the
//! run goes on.
//!
//! Checked on every run: nothing panics, the session's output parses as frames, and once the connections are
//! released their exclusive queues are gone and no queue keeps one of their consumers.
//!
//! Conservation runs (half of the inputs; the first choices decide) keep to what drops no message by policy and
//! keep a ledger — an id in each body, the server's confirms, what was delivered, what the client settled:
//! - messages go to `q1` or `q2` through the default exchange, or through `amq.fanout`, `amq.direct`,
//!   `amq.topic` or `amq.headers` to whichever of them the server's bind-oks and unbind-oks say the key (or
//!   the message's headers) routes to (the ledger keeps the bindings, told apart by key and arguments, and
//!   matches topic patterns and `x-match` all / any itself); it counts each copy (message id and queue);
//! - in half of them `q1` dead-letters to `dlq` (default exchange, key `dlq`): a reject or nack without
//!   requeue that the server took moves the copy there, where the client may consume it in turn; half of
//!   those cap `q1` at 4 ready messages or 4 KiB of them (drop-head, reject-publish or reject-publish-dlx),
//!   and half let its messages expire (a queue TTL of 20 ms, or an `expiration` on messages published to
//!   `q1` alone), so a confirmed copy of `q1` may be in `dlq` instead — the ledger follows neither the
//!   queue's order nor its clock — but never in both (what expires depends on the clock, so such a run,
//!   replayed, may take another path: the client's choices follow what it holds);
//! - every copy the server confirmed, and every dead letter, must be back in its queue at the end unless a
//!   settle the client sent may have covered it (acknowledged means safe, through channel closes, recover,
//!   cancels, connection errors and the release);
//! - in half of them both queues are priority queues (`x-max-priority` 5; a durable one indexes every ready
//!   message by level);
//! - in half of them the vhost has a store: `q1` is durable and persistent messages go through its log
//!   (confirms wait for the fsync); after the release the live state is checked (messages read and put back),
//!   then the vhost is dropped and opened again from its files and checked again, expecting every confirmed
//!   persistent message of `q1` back (and, after a clean restart, every persistent dead letter of the durable
//!   `dlq`; a crash may lose those, dead-lettering being at most once); half of those restarts are clean (journals flushed and logs closed
//!   first, as the broker shuts down), and then no message the client surely settled may come back;
//! - a no-ack delivery counts as consumed once the queue hands it out, as in RabbitMQ, so queues that had a
//!   no-ack consumer are left out of the loss check.
//!
//! The ledger's model of the server is exact because the run is lockstep: an op's frames are fed, the server's
//! answer read, and only then the next op made; a settle counts once the answer shows it was not refused (no
//! close of its channel or connection).
//! Where it cannot know, it gives the broker the benefit of the doubt: a settle whose answer a connection's end
//! cut off counts as maybe settled, and a dead letter it may have made is not looked for.

// Each includer uses a different part (the fuzz target only `run`).
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
use wharf_core::queues::{QueueArgs, QueueError, QueueEvent, QueueSpec, VHost};

/// Most operations one input drives (a long input is cut here, so one run stays fast).
const OPS_MAX: usize = 400;
/// Largest body the generator writes (several body frames at the small frame_max below).
const BODY_MAX: usize = 9_000;
/// The frame_max the generated client negotiates: small, so bodies span frames.
const FRAME_MAX: u32 = 4096;
/// The client uses channels 1 to `CHANNELS - 1` on each connection.
const CHANNELS: usize = 4;
/// Connections at once in a run that has two (half of them): the second publishes, consumes and settles on
/// the same queues, and either may end (a connection error, or its own close) and be opened again while the
/// other goes on.
const CONNECTIONS: usize = 2;
/// Per-channel state of the client is indexed by slot: connection × `CHANNELS` + channel number.
const SLOTS: usize = CONNECTIONS * CHANNELS;

const QUEUES: [&str; 6] = ["q1", "q2", "", "amq.rabbitmq.reply-to", "amq.q", "dlq"];
/// The names a conservation run consumes from: its ledger's queues, and the empty name (the channel's last
/// declared queue, one of them too).
const CONSERVED: [&str; 4] = ["q1", "q2", "dlq", ""];
const EXCHANGES: [&str; 8] = [
    "",
    "x1",
    "x2",
    "amq.direct",
    "amq.fanout",
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

/// The channels the generated client believes open (it learns of the server's closes from its output), and,
/// in conservation mode, its ledger of messages.
#[derive(Default)]
struct Client {
    open: [bool; SLOTS],
    /// Conservation mode (the input's first byte chooses): the client keeps to what drops no message by policy
    /// — publishes through the default exchange to `q1` / `q2` (declared before the run, no arguments), no
    /// `expiration`, bodies carrying a unique id, no purge or delete, every channel in confirm mode — and the
    /// run checks at the end that every message the server confirmed is back in its queue unless the client
    /// delivered a settle that may have covered it.
    conserve: bool,
    /// In a conservation run on a vhost with a store (`q1` durable, its persistent messages in a log; after
    /// the release the vhost is dropped and opened again from disk before the check, which then expects only
    /// persistent messages of `q1` back): the restart is clean (journals flushed and logs closed first, as the broker shuts down),
    /// so messages the client surely settled must not come back either; else it is a crash (nothing flushed).
    clean_restart: bool,
    ledger: Ledger,
}

/// The queues a conservation run publishes to, each with the number that tells its copies apart.
/// `dlq` only ever receives `q1`'s dead letters (nothing is published or bound to it), so a copy in it is
/// one message's one dead letter.
const LEDGER_QUEUES: [(&str, u64); 3] = [("q1", 1), ("q2", 2), ("dlq", 3)];
/// The exchanges a conservation run publishes through besides the default one, with the bindings it makes
/// to them (queue, key, and one of [`binding_arguments`]) modelled by its ledger.
const LEDGER_EXCHANGES: [&str; 4] = ["amq.fanout", "amq.direct", "amq.topic", "amq.headers"];

/// A binding's arguments in a conservation run: one of four tables, so that the ledger can tell bindings
/// apart by their arguments as the broker does (bindings that differ only in arguments are distinct). For
/// `amq.headers` they are the pattern: anything (empty, `x-match` all by default), `a` = "1", `b` = 1, or
/// `x-match` any of those two.
fn binding_arguments(variant: u8) -> FieldTable {
    let mut table = FieldTable::default();
    if variant == 3 {
        table.insert("x-match".into(), AMQPValue::LongString("any".into()));
    }
    if variant == 1 || variant == 3 {
        table.insert("a".into(), AMQPValue::LongString("1".into()));
    }
    if variant == 2 || variant == 3 {
        table.insert("b".into(), AMQPValue::ShortInt(1));
    }
    table
}

/// The headers of a conservation run's message, by number: none, `a` = "1", `b` = 1, both, or `a` = "2".
fn message_headers(headers: u8) -> FieldTable {
    let mut table = FieldTable::default();
    let a = match headers {
        1 | 3 => Some("1"),
        4 => Some("2"),
        _ => None,
    };
    if let Some(a) = a {
        table.insert("a".into(), AMQPValue::LongString(a.into()));
    }
    if headers == 2 || headers == 3 {
        table.insert("b".into(), AMQPValue::ShortInt(1));
    }
    table
}

/// Whether `amq.headers` routes a message with headers number `headers` ([`message_headers`]) through a
/// binding with arguments `variant` ([`binding_arguments`]): the ledger's own reading of `x-match`.
fn headers_match(variant: u8, headers: u8) -> bool {
    let a = headers == 1 || headers == 3;
    let b = headers == 2 || headers == 3;
    match variant {
        0 => true,
        1 => a,
        2 => b,
        _ => a || b,
    }
}

/// Whether a topic binding's pattern matches a routing key (`*` one word, `#` zero or more): the ledger's own
/// plain reading of the rule, against which the broker's trie is checked.
fn topic_matches(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => {
            topic_matches(rest, key)
                || key
                    .split_first()
                    .is_some_and(|(_, tail)| topic_matches(pattern, tail))
        }
        Some((word, rest)) => key.split_first().is_some_and(|(first, tail)| {
            (*word == "*" || word == first) && topic_matches(rest, tail)
        }),
    }
}

/// A binding of a ledger queue to one of [`LEDGER_EXCHANGES`]: exchange, queue number, key, arguments variant.
type LedgerBinding = (&'static str, u64, String, u8);

/// One copy of a message: its id and the queue it was routed to (a message published to `amq.fanout`
/// has a copy in each bound queue), as one number. 0 names no queue.
fn copy_of(id: u64, queue: u64) -> u64 {
    // Wrapping: outside conservation runs a body's first bytes are any bytes.
    id.wrapping_mul(4).wrapping_add(queue)
}

/// The message id a conservation run's body starts with (the publish writes it big-endian).
fn id_in(body: &[u8]) -> Option<u64> {
    body.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
}

/// The queue a name means in a conservation run (0: neither).
fn queue_number(name: &str) -> u64 {
    LEDGER_QUEUES
        .iter()
        .find(|(q, _)| *q == name)
        .map_or(0, |(_, n)| *n)
}

/// What the client of a conservation run knows of its messages, by copy ([`copy_of`]).
#[derive(Default)]
struct Ledger {
    next_id: u64,
    /// Per channel: publishes since its confirm.select, and the copies of those not confirmed yet, by sequence.
    published: [u64; SLOTS],
    unconfirmed: [std::collections::BTreeMap<u64, Vec<u64>>; SLOTS],
    confirmed: std::collections::HashSet<u64>,
    /// Per channel: what the server delivered that the client has not settled, by delivery tag.
    delivered: [std::collections::BTreeMap<u64, u64>; SLOTS],
    /// Copies a settle sent by the client may have covered (acked, or rejected without requeue: gone for good).
    maybe_settled: std::collections::HashSet<u64>,
    /// Of those, the copies a settle certainly covered (the server took it): after a clean restart these
    /// must not come back.
    surely_settled: std::collections::HashSet<u64>,
    /// Per channel: the delivery whose content comes next (tag, whether it is settled as it leaves, and the
    /// number of its queue).
    content_next: [Option<(u64, bool, u64)>; SLOTS],
    /// Per channel: each basic.get (`no_ack`, queue name) and basic.consume waiting for its answer; each
    /// consumer's `no_ack` and queue number by tag.
    gets: [std::collections::VecDeque<(bool, String)>; SLOTS],
    consumes: [std::collections::VecDeque<(String, bool, String)>; SLOTS],
    /// Per channel: the queue its last declare-ok named (what the empty queue name means there).
    last_declared: [Option<String>; SLOTS],
    /// The client's last settle without requeue, taken off `delivered` when sent: (channel, ids). It counts
    /// once the server's answer to it is read: void if that closed the channel or the connection (the
    /// messages went back), settled otherwise.
    /// The last element: whether the settle dead-letters (a reject or nack without requeue, not an ack).
    pending_settle: Option<(u16, Vec<u64>, bool)>,
    consumers: HashMap<(u16, String), (bool, u64)>,
    /// Whether each published copy was persistent (delivery-mode 2).
    sent: HashMap<u64, bool>,
    /// The bindings of the ledger queues to [`LEDGER_EXCHANGES`], as the bind-oks and unbind-oks said, and
    /// the binding asked for by the op just sent (bind or unbind).
    bindings: std::collections::BTreeSet<LedgerBinding>,
    pending_bind: Option<(LedgerBinding, bool)>,
    /// Whether `q1` dead-letters to `dlq` in this run (through the default exchange, key `dlq`).
    q1_dead_letters: bool,
    /// Whether `q1` drops messages by itself in this run, dead-lettering them to `dlq`: it holds at most 4
    /// ready messages or 4 KiB of them, or its messages expire (`x-message-ttl`, or an `expiration` on messages published to
    /// it alone). A confirmed copy of `q1` may then be in `dlq` instead (the ledger follows neither the
    /// queue's order nor its clock), but never in both.
    q1_drops: bool,
    /// Whether messages published to `q1` alone get an `expiration` now and then.
    q1_expirations: bool,
    /// Copies the server moved to `dlq`: a reject or nack without requeue of a `q1` delivery, once the
    /// server's answer showed it was taken. Each must be in `dlq` unless the client settled it there (after a
    /// crash not even that: dead-lettering is at most once, as in RabbitMQ).
    dead_lettered: std::collections::HashSet<u64>,
    /// Copies published through one of [`LEDGER_EXCHANGES`] (for the run's figures).
    via_exchange: std::collections::HashSet<u64>,
    /// Queues a no-ack consumer was asked for. A no-ack delivery is consumed once the queue hands it to the
    /// connection (RabbitMQ's rule too): if the connection goes before writing it, it is gone — from a durable
    /// queue for good, a queue in memory puts it back — and the client never saw it, so missing messages of
    /// these queues are not counted as lost.
    no_ack_queues: std::collections::HashSet<&'static str>,
}

impl Ledger {
    /// Channel `slot` opened again or closed: what it had delivered goes back to its queue (requeued by the
    /// server), its confirms start over.
    fn channel_reset(&mut self, slot: u16) {
        let i = usize::from(slot);
        if let Some(d) = self.delivered.get_mut(i) {
            d.clear();
        }
        if let Some(u) = self.unconfirmed.get_mut(i) {
            u.clear();
        }
        if let Some(p) = self.published.get_mut(i) {
            *p = 0;
        }
        if let Some(c) = self.content_next.get_mut(i) {
            *c = None;
        }
        if let Some(g) = self.gets.get_mut(i) {
            g.clear();
        }
        if let Some(c) = self.consumes.get_mut(i) {
            c.clear();
        }
        if let Some(q) = self.last_declared.get_mut(i) {
            *q = None;
        }
        self.consumers.retain(|(c, _), _| *c != slot);
    }

    /// The client settles `tag` (and everything before it with `multiple`; all with tag 0 and `multiple`):
    /// acked or dropped unless `requeue`, else back in the queue. Either way the messages leave `delivered`:
    /// if the server refuses the settle (an unknown tag), it closes the channel and requeues them.
    fn client_settle(
        &mut self,
        slot: u16,
        tag: u64,
        multiple: bool,
        requeue: bool,
        dead_letters: bool,
    ) {
        let Some(delivered) = self.delivered.get_mut(usize::from(slot)) else {
            return;
        };
        let covered: Vec<u64> = if multiple {
            delivered
                .keys()
                .copied()
                .filter(|t| tag == 0 || *t <= tag)
                .collect()
        } else {
            vec![tag]
        };
        let ids: Vec<u64> = covered.iter().filter_map(|t| delivered.remove(t)).collect();
        if !requeue {
            self.pending_settle = Some((slot, ids, dead_letters));
        }
    }

    /// The server's answer to the last batch was read: a pending settle counts unless its channel or the
    /// connection was closed.
    fn settle_answered(&mut self, heard: &Heard, base: u16) {
        self.pending_bind = None;
        if let Some((slot, ids, dead_letters)) = self.pending_settle.take() {
            let closed = heard.closed_channels.iter().any(|ch| base + ch == slot);
            if heard.connection_closed.is_none() && !closed {
                let q1 = queue_number("q1");
                for copy in ids
                    .iter()
                    .filter(|c| dead_letters && self.q1_dead_letters && *c % 4 == q1)
                {
                    let moved = copy_of(copy / 4, queue_number("dlq"));
                    let persistent = self.sent.get(copy).copied().unwrap_or(false);
                    self.sent.insert(moved, persistent);
                    self.dead_lettered.insert(moved);
                }
                self.maybe_settled.extend(ids.iter().copied());
                self.surely_settled.extend(ids);
            }
        }
    }

    /// The run ended before the server's answer to a settle was read: it may have counted.
    fn settle_unanswered(&mut self) {
        if let Some((_, ids, _)) = self.pending_settle.take() {
            self.maybe_settled.extend(ids);
        }
    }

    /// A basic-class method from the server on `slot`.
    fn heard(&mut self, slot: u16, method: basic::AMQPMethod, conserve: bool) {
        let i = usize::from(slot);
        match method {
            basic::AMQPMethod::Ack(ack) => self.server_ack(slot, ack.delivery_tag, ack.multiple),
            basic::AMQPMethod::Nack(nack) => {
                if let Some(u) = self.unconfirmed.get_mut(i) {
                    u.retain(|seq, _| {
                        !(*seq == nack.delivery_tag || nack.multiple && *seq <= nack.delivery_tag)
                    });
                }
            }
            basic::AMQPMethod::Deliver(deliver) => {
                let key = (slot, deliver.consumer_tag.to_string());
                // Every consume of a conservation run waits for its consume-ok, which comes before any
                // delivery to it; outside one the ledger is not checked.
                let known = self.consumers.get(&key).copied();
                assert!(
                    known.is_some() || !conserve,
                    "a delivery to a consumer the ledger does not know: {key:?}"
                );
                let (auto, queue) = known.unwrap_or((true, 0));
                if let Some(next) = self.content_next.get_mut(i) {
                    *next = Some((deliver.delivery_tag, auto, queue));
                }
            }
            basic::AMQPMethod::GetOk(get) => {
                let asked = self.gets.get_mut(i).and_then(|g| g.pop_front());
                assert!(
                    asked.is_some() || !conserve,
                    "a get-ok the ledger did not ask for on channel {slot}"
                );
                let (auto, queue) = asked.unwrap_or((true, String::new()));
                let queue = queue_number(&self.resolve(slot, queue));
                if let Some(next) = self.content_next.get_mut(i) {
                    *next = Some((get.delivery_tag, auto, queue));
                }
            }
            basic::AMQPMethod::GetEmpty(_) => {
                if let Some(g) = self.gets.get_mut(i) {
                    g.pop_front();
                }
            }
            // No delivery may follow a cancel-ok for its consumer.
            basic::AMQPMethod::CancelOk(ok) => {
                self.consumers.remove(&(slot, ok.consumer_tag.to_string()));
            }
            basic::AMQPMethod::ConsumeOk(ok) => {
                let Some((_, no_ack, queue)) = self.consumes.get_mut(i).and_then(|c| c.pop_front())
                else {
                    return;
                };
                let queue = self.resolve(slot, queue);
                self.consumers.insert(
                    (slot, ok.consumer_tag.to_string()),
                    (no_ack, queue_number(&queue)),
                );
                if let Some((name, _)) = LEDGER_QUEUES.iter().find(|(q, _)| no_ack && *q == queue) {
                    self.no_ack_queues.insert(name);
                }
            }
            _ => {}
        }
    }

    /// What `queue` names on `slot`: the empty name is the channel's last declared queue.
    fn resolve(&self, slot: u16, queue: String) -> String {
        match queue.as_str() {
            "" => self
                .last_declared
                .get(usize::from(slot))
                .cloned()
                .flatten()
                .unwrap_or_default(),
            _ => queue,
        }
    }

    /// The server's bind-ok or unbind-ok for the op just sent.
    fn bound(&mut self) {
        match self.pending_bind.take() {
            Some((binding, true)) => {
                self.bindings.insert(binding);
            }
            Some((binding, false)) => {
                self.bindings.remove(&binding);
            }
            None => {}
        }
    }

    /// The ledger queues a message published to `exchange` (one of [`LEDGER_EXCHANGES`]) with `key` and
    /// headers number `headers` reaches, by the bindings the server acknowledged; each once, however many
    /// bindings match.
    fn routes(&self, exchange: &str, key: &str, headers: u8) -> Vec<u64> {
        let words: Vec<&str> = key.split('.').collect();
        let queues: std::collections::BTreeSet<u64> = self
            .bindings
            .iter()
            .filter(|(x, _, binding_key, variant)| {
                *x == exchange
                    && match exchange {
                        "amq.fanout" => true,
                        "amq.direct" => binding_key == key,
                        "amq.headers" => headers_match(*variant, headers),
                        _ => {
                            let pattern: Vec<&str> = binding_key.split('.').collect();
                            topic_matches(&pattern, &words)
                        }
                    }
            })
            .map(|(_, queue, _, _)| *queue)
            .collect();
        queues.into_iter().collect()
    }

    /// A body frame from the server on `slot`: the first of a delivery's content carries its id.
    fn body(&mut self, slot: u16, body: &[u8]) {
        let i = usize::from(slot);
        let Some((tag, auto, queue)) = self.content_next.get_mut(i).and_then(Option::take) else {
            return;
        };
        let Some(id) = id_in(body) else {
            return;
        };
        let copy = copy_of(id, queue);
        if auto {
            self.maybe_settled.insert(copy);
        } else if let Some(d) = self.delivered.get_mut(i) {
            d.insert(tag, copy);
        }
    }

    /// The server confirmed `tag` (and all before it with `multiple`) on `slot`.
    fn server_ack(&mut self, slot: u16, tag: u64, multiple: bool) {
        let Some(unconfirmed) = self.unconfirmed.get_mut(usize::from(slot)) else {
            return;
        };
        let seqs: Vec<u64> = if multiple {
            unconfirmed.range(..=tag).map(|(s, _)| *s).collect()
        } else {
            vec![tag]
        };
        for seq in seqs {
            if let Some(copies) = unconfirmed.remove(&seq) {
                self.confirmed.extend(copies);
            }
        }
    }
}

fn method(out: &mut Vec<u8>, channel: u16, class: AMQPClass) {
    let _ = write_method(out, channel, class);
}

/// One client frame (or a few: a publish with its content) as bytes. Most go to a channel the client has
/// open (opening it first if need be), as a client does; now and then one breaks a rule of the connection
/// (which ends the run), so that those paths run too without cutting every run short.
fn next_op(c: &mut Choices, out: &mut Vec<u8>, client: &mut Client, base: u16) -> Op {
    let ch = 1 + c.below(CHANNELS - 1) as u16;
    // The client's state of this channel (the ledger's channels are slots).
    let slot = base + ch;
    let rare = c.below(128) == 0;
    if let Some(open) = client.open.get_mut(usize::from(slot)) {
        // Rarely, a method on a channel that is not open (a connection error).
        if !(*open || rare && c.below(4) == 0) {
            method(
                out,
                ch,
                AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            );
            *open = true;
            if client.conserve {
                method(
                    out,
                    ch,
                    AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                        nowait: false,
                    })),
                );
            }
        }
    }
    let conserve = client.conserve;
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
            if let Some(open) = client.open.get_mut(usize::from(slot)) {
                *open = false;
            }
            client.ledger.channel_reset(slot);
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
        // Exchange-to-exchange bindings could route the ledger exchanges' messages on: not in a conservation
        // run.
        7 if conserve => {}
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
        8 | 9 if conserve => method(
            out,
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: c.short(&["q1", "q2", "dlq"]),
                passive: true,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        ),
        // Purge and delete drop messages by design: not in a conservation run.
        11 | 12 if conserve => {}
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
            // A conservation run binds its own queues to the ledger exchanges more often than not, with
            // arguments the ledger tells apart.
            let (mut q, x, key) = if conserve && c.flag() {
                (
                    c.short(&["q1", "q2", ""]),
                    c.short(&LEDGER_EXCHANGES),
                    c.short(&KEYS),
                )
            } else {
                (c.short(&QUEUES), c.short(&EXCHANGES), c.short(&KEYS))
            };
            let variant = c.below(4) as u8;
            let modelled = LEDGER_EXCHANGES
                .iter()
                .find(|x_| conserve && **x_ == x.as_str());
            let arguments = if modelled.is_some() {
                binding_arguments(variant)
            } else {
                c.table(0)
            };
            // `dlq` takes dead letters only (a routed copy could share an id with one).
            if modelled.is_some() && client.ledger.resolve(slot, q.to_string()) == "dlq" {
                q = "q1".into();
            }
            let bind = c.flag();
            if let Some(exchange) = modelled {
                let queue = queue_number(&client.ledger.resolve(slot, q.to_string()));
                client.ledger.pending_bind =
                    (queue != 0).then(|| ((*exchange, queue, key.to_string(), variant), bind));
            }
            let class = if bind {
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
        14 | 15 => {
            // A conservation run consumes from the queues its ledger follows.
            let queues: &[&str] = if conserve { &CONSERVED } else { &QUEUES };
            let (queue, mut consumer_tag) = (c.short(queues), c.short(&TAGS));
            // Reusing a tag the channel has is a connection error (530): a conservation run mostly lets the
            // server name the consumer then, so that its state lives on.
            let reused = client
                .ledger
                .consumers
                .contains_key(&(slot, consumer_tag.to_string()))
                || client
                    .ledger
                    .consumes
                    .get(usize::from(slot))
                    .is_some_and(|pending| {
                        pending
                            .iter()
                            .any(|(tag, _, _)| tag == consumer_tag.as_str())
                    });
            if conserve && reused && !consumer_tag.as_str().is_empty() && c.below(8) != 0 {
                consumer_tag = "".into();
            }
            // Fewer no-ack consumers in a conservation run: each makes its queue's check weaker (below).
            let no_ack = if conserve { c.below(8) == 0 } else { c.flag() };
            let (no_local, exclusive) = (c.flag(), c.below(4) == 0);
            // The ledger pairs each consume-ok with its consume: no nowait in a conservation run.
            let nowait = !conserve && c.below(4) == 0;
            if let Some(pending) = client.ledger.consumes.get_mut(usize::from(slot)) {
                pending.push_back((consumer_tag.to_string(), no_ack, queue.to_string()));
            }
            method(
                out,
                ch,
                AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                    queue,
                    consumer_tag,
                    no_local,
                    no_ack,
                    exclusive,
                    nowait,
                    arguments: c.table(0),
                })),
            )
        }
        16 => method(
            out,
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: c.short(&TAGS),
                // A conservation run waits for the cancel-ok, after which no delivery may come.
                nowait: !conserve && c.flag(),
            })),
        ),
        17..=19 => {
            // A conservation run publishes to one queue through the default exchange, or through a ledger
            // exchange to the queues its bindings route the key to (as the bind-oks said).
            let target = c.pick(&[
                "q1",
                "q2",
                "amq.fanout",
                "amq.direct",
                "amq.topic",
                "amq.headers",
            ]);
            let headers = c.below(5) as u8;
            let (exchange, routing_key, copies) = if conserve && target.starts_with("amq.") {
                let key = c.short(&KEYS);
                let copies = client.ledger.routes(target, key.as_str(), headers);
                (ShortString::from(target), key, copies)
            } else if conserve {
                let copies = vec![queue_number(target)];
                (ShortString::from(""), ShortString::from(target), copies)
            } else {
                let (exchange, key) = (c.short(&EXCHANGES), c.short(&KEYS));
                (exchange, key, Vec::new())
            };
            let via_exchange = !exchange.as_str().is_empty();
            method(
                out,
                ch,
                AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                    exchange,
                    routing_key,
                    mandatory: !conserve && c.flag(),
                    immediate: rare && c.flag(),
                })),
            );
            let mut properties = c.properties();
            if conserve {
                // Random properties could drop or reroute the message; the ledger's own are below.
                properties = BasicProperties::default()
                    .with_priority(properties.priority().unwrap_or(0))
                    .with_delivery_mode(if c.flag() { 2 } else { 1 });
                if headers != 0 {
                    properties = properties.with_headers(message_headers(headers));
                }
                // Expiring messages go to `q1` alone (which dead-letters them), now and then.
                let expiration = c.pick(&["0", "5", "50", "", "", ""]);
                if client.ledger.q1_expirations
                    && !expiration.is_empty()
                    && copies.iter().all(|q| *q == queue_number("q1"))
                {
                    properties = properties.with_expiration(expiration.into());
                }
            }
            let size = match c.below(4) {
                0 => 0,
                1 => c.below(BODY_MAX),
                _ => c.below(64),
            };
            let mut body = vec![c.byte(); size];
            if conserve {
                // The message's id leads its body.
                let id = client.ledger.next_id;
                client.ledger.next_id += 1;
                let persistent = properties.delivery_mode() == &Some(2);
                let copies: Vec<u64> = copies.iter().map(|q| copy_of(id, *q)).collect();
                for copy in &copies {
                    client.ledger.sent.insert(*copy, persistent);
                    if via_exchange {
                        client.ledger.via_exchange.insert(*copy);
                    }
                }
                body.splice(..body.len().min(8), id.to_be_bytes());
                let i = usize::from(slot);
                if let (Some(n), Some(unconfirmed)) = (
                    client.ledger.published.get_mut(i),
                    client.ledger.unconfirmed.get_mut(i),
                ) {
                    *n += 1;
                    unconfirmed.insert(*n, copies);
                }
            }
            if let Ok(encoded) = wharf_amqp::frame::encode_properties(&properties) {
                // Now and then a body longer or shorter than its header says, or no body at all.
                match c.below(16) {
                    // (Not in a conservation run: the frames after it would be read as its content, and
                    // the ledger would count ops the server never saw.)
                    0 if rare && !conserve => {}
                    1 if rare && !conserve && size > 0 => {
                        let mut wrong = Vec::new();
                        write_content(&mut wrong, ch, &encoded, &body, FRAME_MAX);
                        wrong.truncate(wrong.len().saturating_sub(c.below(12)));
                        out.extend_from_slice(&wrong);
                    }
                    _ => write_content(out, ch, &encoded, &body, FRAME_MAX),
                }
            }
        }
        20 => {
            let queues: &[&str] = if conserve { &CONSERVED } else { &QUEUES };
            let (queue, no_ack) = (c.short(queues), c.flag());
            if let Some(pending) = client.ledger.gets.get_mut(usize::from(slot)) {
                pending.push_back((no_ack, queue.to_string()));
            }
            method(
                out,
                ch,
                AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get { queue, no_ack })),
            )
        }
        21 | 22 => {
            // Mostly a tag the client holds (when it keeps a ledger), else a small one, maybe unknown.
            let held: Vec<u64> = client
                .ledger
                .delivered
                .get(usize::from(slot))
                .map(|d| d.keys().copied().collect())
                .unwrap_or_default();
            // A conservation run mostly settles what it holds: with nothing held the tag is unknown (a 406
            // that closes the channel, and requeues whatever the channel held), so then it mostly takes its
            // deliveries instead.
            if conserve && held.is_empty() && c.below(8) != 0 {
                return Op::Deliveries;
            }
            let delivery_tag = match held.get(c.below(held.len() + 1)) {
                Some(tag) if c.below(4) != 0 => *tag,
                _ => c.below(8) as u64,
            };
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
            let (multiple, requeue, ack) = match &class {
                basic::AMQPMethod::Ack(_) => (multiple, false, true),
                basic::AMQPMethod::Reject(_) => (false, requeue, false),
                _ => (multiple, requeue, false),
            };
            client
                .ledger
                .client_settle(slot, delivery_tag, multiple, requeue, !ack && !requeue);
            method(out, ch, AMQPClass::Basic(class))
        }
        23 => {
            // requeue=false is 540, a connection error: rarely.
            let requeue = !rare || c.flag();
            if requeue {
                // What the channel holds goes back to its queues (and may come again, with new tags).
                if let Some(d) = client.ledger.delivered.get_mut(usize::from(slot)) {
                    d.clear();
                }
            }
            let class = if c.flag() {
                basic::AMQPMethod::Recover(basic::Recover { requeue })
            } else {
                basic::AMQPMethod::RecoverAsync(basic::RecoverAsync { requeue })
            };
            method(out, ch, AMQPClass::Basic(class))
        }
        // Every channel of a conservation run is in confirm mode, where tx is a 406: now and then only.
        24 if conserve && c.below(8) != 0 => return Op::Deliveries,
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
        26 if rare && !conserve => {
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

/// Reads the session's output, which must be frames a client can read, for what the client must answer (and,
/// in a conservation run, for its ledger: confirms, deliveries and their ids).
fn read_output(session: &mut Session, ledger: &mut Ledger, conserve: bool, base: u16) -> Heard {
    use wharf_amqp::frame::Frame;
    let out = session.take_output();
    let mut buf = BytesMut::from(&out[..]);
    let mut memo = MethodMemo::default();
    let mut heard = Heard::default();
    while !buf.is_empty() {
        let next = next_frame_with(&mut buf, 1 << 20, &mut memo);
        if trace() {
            let shown: String = format!("{next:?}").chars().take(160).collect();
            eprintln!("S {shown}");
        }
        let frame = match next {
            Ok(Some(frame)) => frame,
            other => panic!("the server wrote what does not read as frames: {other:?}"),
        };
        match frame {
            Frame::Method(ch, AMQPClass::Channel(channel::AMQPMethod::Close(_))) => {
                heard.closed_channels.push(ch);
                ledger.channel_reset(base + ch);
            }
            Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(close))) => {
                heard.connection_closed =
                    Some(format!("{} {}", close.reply_code, close.reply_text));
            }
            Frame::Method(ch, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) => {
                if let Some(last) = ledger.last_declared.get_mut(usize::from(base + ch)) {
                    *last = Some(ok.queue.to_string());
                }
            }
            Frame::Method(
                _,
                AMQPClass::Queue(queue::AMQPMethod::BindOk(_) | queue::AMQPMethod::UnbindOk(_)),
            ) => ledger.bound(),
            Frame::Method(ch, AMQPClass::Basic(method)) => {
                ledger.heard(base + ch, method, conserve)
            }
            // Content without a body (only outside conservation runs, whose bodies carry an id): no body
            // frame follows for the delivery.
            Frame::Header(ch, header, _) if header.body_size == 0 => {
                if let Some(next) = ledger.content_next.get_mut(usize::from(base + ch)) {
                    *next = None;
                }
            }
            Frame::Body(ch, body) => ledger.body(base + ch, &body),
            _ => {}
        }
    }
    heard
}

/// What one run did: operations generated, and how connections ended before the input did.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub ops: usize,
    /// Why each connection the broker let go before the input ended went: its connection.close, a frame
    /// error, the client's own close (each was opened again).
    pub close_reasons: Vec<String>,
    /// In a conservation run: messages confirmed, and of those found back in their queues at the end.
    pub confirmed: usize,
    pub confirmed_left: usize,
    /// Of the confirmed copies, those published through a ledger exchange (fanout, direct or topic).
    pub via_exchange: usize,
    /// Copies the server moved from `q1` to `dlq` when the client rejected them.
    pub dead_lettered: usize,
}

/// Every message the server confirmed, and every dead letter it moved to `dlq`, is back in its queue, unless a
/// settle the client sent may have covered it; and no message is there twice.
/// After a restart (`restarted`: `Some(clean)`), only persistent messages of the durable `q1` are expected,
/// and after a clean one also the persistent dead letters in the durable `dlq` (a crash may lose those:
/// dead-lettering is at most once); after a clean one, no message the client surely settled may be there. With `keep`, the messages are read
/// with acknowledgement and put back afterwards, so the state can be checked again after a restart.
fn check_conservation(
    vhost: &VHost,
    ledger: &Ledger,
    restarted: Option<bool>,
    keep: bool,
) -> usize {
    let clean = restarted == Some(true);
    let (q1, dlq) = (queue_number("q1"), queue_number("dlq"));
    // After a crash a dead letter may be lost, and when `q1` drops messages any copy of it may have been one.
    let expected = |copy: &&u64| match restarted {
        None => true,
        Some(clean) => {
            ledger.sent.get(*copy).copied().unwrap_or(false)
                && (**copy % 4 == q1 && (clean || !ledger.q1_drops) || clean && **copy % 4 == dlq)
        }
    };
    if trace() {
        eprintln!("check: {restarted:?} (None: live, Some(clean): after a restart)");
    }
    let restarted = restarted.is_some();
    let mut remaining = std::collections::HashSet::new();
    let mut taken = Vec::new();
    for (name, queue) in LEDGER_QUEUES {
        loop {
            match vhost.get(0, name, !keep) {
                Err(QueueError::NotFound { .. }) if restarted && name == "q2" => break,
                Ok(Some(delivery)) => {
                    let id = id_in(&delivery.message.body);
                    // After a crash a dead letter may come twice: a message of `q1` that expired (or was
                    // dropped) before the crash, its settle not yet on disk, expires again.
                    let crashed = restarted && !clean;
                    if let Some(id) = id {
                        assert!(
                            remaining.insert(copy_of(id, queue)) || crashed && queue == dlq,
                            "message {id} is in {name} twice"
                        );
                    }
                    if keep {
                        taken.push(delivery);
                    }
                }
                Ok(None) => break,
                Err(e) => panic!("queue {name} at the end: {e}"),
            }
        }
    }
    for d in taken {
        d.queue
            .requeue(d.consumer, d.position, d.message, d.expires_at);
    }
    // Copies shown as (id, queue number).
    let show = |copies: Vec<u64>| -> Vec<(u64, u64)> {
        let mut shown: Vec<(u64, u64)> = copies.iter().map(|c| (c / 4, c % 4)).collect();
        shown.sort_unstable();
        shown
    };
    if clean {
        let back: Vec<u64> = remaining
            .intersection(&ledger.surely_settled)
            .copied()
            .collect();
        assert!(
            back.is_empty(),
            "settled messages came back after a clean restart (id, queue): {:?}",
            show(back)
        );
    }
    // A copy that left `q1` as a dead letter is in `dlq` and no longer in `q1` (after a crash both may be
    // there: dead-lettering is at most once, a settle's journal record may be lost).
    if !restarted || clean {
        let both: Vec<u64> = remaining
            .iter()
            .filter(|c| **c % 4 == q1 && remaining.contains(&copy_of(**c / 4, dlq)))
            .copied()
            .collect();
        assert!(
            both.is_empty(),
            "messages both in q1 and, dead-lettered, in dlq (id, queue): {:?}",
            show(both)
        );
    }
    // When `q1` drops messages (length limit, expiry), a copy of it may have been dropped to `dlq`: there now,
    // or taken from there by the client (or by a no-ack consumer of `dlq`, which the ledger cannot see).
    let dropped_to_dlq = |copy: &u64| {
        let moved = copy_of(copy / 4, dlq);
        ledger.q1_drops
            && copy % 4 == q1
            && (remaining.contains(&moved)
                || ledger.maybe_settled.contains(&moved)
                || ledger.no_ack_queues.contains("dlq"))
    };
    let no_ack = |copy: &u64| {
        LEDGER_QUEUES
            .iter()
            .any(|(name, n)| copy % 4 == *n && ledger.no_ack_queues.contains(name))
    };
    let lost: Vec<u64> = ledger
        .confirmed
        .iter()
        .chain(&ledger.dead_lettered)
        .filter(expected)
        .filter(|c| {
            !remaining.contains(c)
                && !ledger.maybe_settled.contains(c)
                && !no_ack(c)
                && !dropped_to_dlq(c)
        })
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "confirmed messages or dead letters lost, neither in their queue nor settled by the client (id, \
         queue): {:?}; {} copies confirmed, {} dead-lettered, {} left in the queues, {} maybe settled",
        show(lost),
        ledger.confirmed.len(),
        ledger.dead_lettered.len(),
        remaining.len(),
        ledger.maybe_settled.len()
    );
    ledger
        .confirmed
        .iter()
        .chain(&ledger.dead_lettered)
        .filter(|c| remaining.contains(c))
        .count()
}

/// The vhost `/` over a store in `dir` (definitions and queue logs, fsync on every commit), as the broker opens
/// it, with `q1` durable if it was declared so before.
fn open_store(dir: &std::path::Path) -> (Arc<VHost>, Arc<wharf_log::LogManager>) {
    let logs = Arc::new(
        wharf_log::LogManager::open(dir.join("logs"), wharf_log::ManagerConfig::default())
            .expect("the log manager"),
    );
    let vhost = VHost::open(
        "/",
        &dir.join("amqp"),
        Arc::clone(&logs),
        wharf_log::Durability::Always,
        wharf_core::flow::MemoryGauge::unlimited(),
    )
    .expect("the vhost's store");
    (vhost, logs)
}

/// One client connection: its session (the broker's side), the session's queue events, and the bytes the
/// client wrote that the session has not read yet.
struct Conn {
    session: Session,
    events: tokio::sync::mpsc::UnboundedReceiver<(u16, QueueEvent)>,
    buf: BytesMut,
    memo: MethodMemo,
}

impl Conn {
    /// A new connection to `broker`, its handshake written (start-ok, tune-ok, open).
    fn open(broker: &Arc<Broker>) -> Conn {
        let (sink, events) = tokio::sync::mpsc::unbounded_channel();
        let mut session = Session::new(Arc::clone(broker), sink, true);
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
        Conn {
            session,
            events,
            buf: BytesMut::from(&handshake[..]),
            memo: MethodMemo::default(),
        }
    }

    /// Hands the session the deliveries its queues sent it.
    fn take_deliveries(&mut self) {
        while let Ok((channel, event)) = self.events.try_recv() {
            self.session.handle_event(channel, event);
        }
    }

    /// The session reads what the client wrote and the client reads the answer (durability waits run to
    /// their end first): the ledger learns from it, and the client queues its replies (close-oks). Returns
    /// why the connection ended, if it did.
    fn exchange(
        &mut self,
        client: &mut Client,
        base: u16,
        runtime: &tokio::runtime::Runtime,
    ) -> Option<String> {
        let mut closed_by_server = None;
        loop {
            loop {
                match next_frame_with(&mut self.buf, self.session.frame_limit(), &mut self.memo) {
                    Ok(Some(frame)) => match handle(&mut self.session, frame) {
                        Step::Continue => {}
                        Step::End(reason) => {
                            return Some(closed_by_server.unwrap_or(format!("end: {reason}")))
                        }
                        Step::CloseOkSent => {
                            return Some(closed_by_server.unwrap_or("closed by the client".into()))
                        }
                    },
                    Ok(None) => break,
                    Err(err) => {
                        self.session.frame_error(&err);
                        return Some(format!("frame error: {err}"));
                    }
                }
            }
            self.session.start_sync();
            while let Some(wait) = self.session.next_sync_wait() {
                // An in-memory vhost has nothing to wait for; a store's waits end with its fsync.
                let done = runtime.block_on(wait.wait);
                self.session.synced(done, wait.actions);
            }
            self.session.flush_confirms();
            let heard = read_output(&mut self.session, &mut client.ledger, client.conserve, base);
            client.ledger.settle_answered(&heard, base);
            let mut out = Vec::new();
            for ch in heard.closed_channels {
                method(
                    &mut out,
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                if let Some(open) = client.open.get_mut(usize::from(base + ch)) {
                    *open = false;
                }
            }
            let Some(reason) = heard.connection_closed else {
                // The close-oks go with the client's next frames.
                self.buf.extend_from_slice(&out);
                return None;
            };
            // The client's close-ok ends the connection.
            closed_by_server = Some(reason);
            method(
                &mut out,
                0,
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
            );
            self.buf.extend_from_slice(&out);
        }
    }

    /// The connection goes (its socket closed): what it held goes back, as the connection task does it,
    /// and the client's channels on it are gone.
    fn finish(mut self, client: &mut Client, base: u16) {
        client.ledger.settle_unanswered();
        // A bind whose answer the connection's end cut off.
        client.ledger.pending_bind = None;
        self.session.release_all();
        while let Ok((_, event)) = self.events.try_recv() {
            self.session.requeue_event(event);
        }
        read_output(&mut self.session, &mut client.ledger, client.conserve, base);
        drop(self.session);
        // Deliveries sent after the last drain may still sit in the channel: they go back too.
        while let Ok((_, event)) = self.events.try_recv() {
            if let QueueEvent::Deliver(d) = event {
                d.queue
                    .requeue(d.consumer, d.position, d.message, d.expires_at);
            }
        }
        for ch in 0..CHANNELS as u16 {
            client.ledger.channel_reset(base + ch);
            if let Some(open) = client.open.get_mut(usize::from(base + ch)) {
                *open = false;
            }
        }
    }
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
    let mut choices = Choices { data, at: 0 };
    let conserve = choices.flag();
    let durable = conserve && choices.flag();
    let clean_restart = durable && choices.flag();
    // Priority queues keep their messages by level (a durable one indexes every ready message), another path
    // through the backlog, requeue and recovery.
    let priorities = conserve && choices.flag();
    // `q1` dead-letters what the client rejects to `dlq` in half of the conservation runs (the other half
    // keeps the path where a durable queue's confirm may wait for its consumer's ack, which a queue with a
    // dead-letter exchange skips).
    let dead_letters = conserve && choices.flag();
    // Of those, half cap `q1` at a few ready messages: dropped ones (drop-head) or refused ones
    // (reject-publish-dlx) are dead-lettered to `dlq` too, refused ones nacked (reject-publish too).
    let max_length = dead_letters && choices.flag();
    // The cap counts messages (4) or bytes of bodies (4 KiB; a body is up to 9 000 bytes).
    let cap_bytes = max_length && choices.flag();
    // And half of them let `q1`'s messages expire: a queue TTL of 20 ms, or an `expiration` of 0, 5 or 50 ms
    // on some of the messages published to `q1` alone; expired ones are dead-lettered to `dlq`.
    let expiry = dead_letters && choices.flag();
    let queue_ttl = expiry && choices.flag();
    let overflow = match choices.below(4) {
        _ if !max_length => wharf_core::queue_args::Overflow::DropHead,
        0 => wharf_core::queue_args::Overflow::RejectPublish,
        1 => wharf_core::queue_args::Overflow::RejectPublishDlx,
        _ => wharf_core::queue_args::Overflow::DropHead,
    };
    let store = durable.then(|| tempfile::tempdir().expect("a temporary directory"));
    // The log runs its fsyncs on tokio's blocking pool, and settle waits have timeouts: a runtime for both,
    // which also runs the waits to their end.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let _context = runtime.enter();
    let (vhost, logs) = match &store {
        Some(dir) => {
            let (vhost, logs) = open_store(dir.path());
            (vhost, Some(logs))
        }
        None => (VHost::new(), None),
    };
    let broker = Broker::new(
        AmqpConfig::default(),
        HashMap::from([("/".to_string(), Arc::clone(&vhost))]),
    );
    let mut client = Client {
        conserve,
        clean_restart,
        ..Client::default()
    };
    client.ledger.q1_dead_letters = dead_letters;
    client.ledger.q1_drops = max_length || expiry;
    client.ledger.q1_expirations = expiry && !queue_ttl;
    for name in ["q1", "q2", "dlq"] {
        let dead_letter = dead_letters && name == "q1";
        let spec = QueueSpec {
            durable: durable && name != "q2",
            exclusive: false,
            auto_delete: false,
            arguments: QueueArgs {
                max_priority: (priorities && name != "dlq").then_some(5),
                dead_letter_exchange: dead_letter.then(String::new),
                dead_letter_routing_key: dead_letter.then(|| "dlq".to_string()),
                max_length: (max_length && !cap_bytes && name == "q1").then_some(4),
                max_length_bytes: (cap_bytes && name == "q1").then_some(4096),
                message_ttl_ms: (queue_ttl && name == "q1").then_some(20),
                overflow,
                ..QueueArgs::default()
            },
        };
        if let Err(e) = vhost.declare_queue(0, name, false, spec) {
            panic!("declaring {name}: {e}");
        }
    }
    // Half of the runs have a second connection on the same queues.
    let connections = if choices.flag() { CONNECTIONS } else { 1 };
    if trace() {
        eprintln!(
            "run: conserve {conserve}, store {durable} (clean restart {clean_restart}), priorities \
             {priorities}, dead letters {dead_letters}, max length {max_length} (in bytes {cap_bytes}, \
             {overflow:?}), \
             expiry {expiry} (queue TTL {queue_ttl}), \
             {connections} connection(s)"
        );
    }
    let mut conns: Vec<Conn> = (0..connections).map(|_| Conn::open(&broker)).collect();
    let mut ops = 0;
    let mut close_reasons = Vec::new();
    while !choices.done() && ops < OPS_MAX {
        let i = choices.below(connections);
        let base = (i * CHANNELS) as u16;
        let Some(conn) = conns.get_mut(i) else {
            break;
        };
        ops += 1;
        let mut out = Vec::new();
        if let Op::Deliveries = next_op(&mut choices, &mut out, &mut client, base) {
            conn.take_deliveries();
        }
        conn.buf.extend_from_slice(&out);
        if let Some(reason) = conn.exchange(&mut client, base, &runtime) {
            close_reasons.push(reason);
            // The broker let the connection go; the client connects again.
            std::mem::replace(conn, Conn::open(&broker)).finish(&mut client, base);
        }
    }
    for (i, mut conn) in conns.into_iter().enumerate() {
        let base = (i * CHANNELS) as u16;
        // What is left to send (close-oks), then the connection goes: what it held goes back, as the
        // connection task does it.
        if let Some(reason) = conn.exchange(&mut client, base, &runtime) {
            close_reasons.push(reason);
        }
        conn.finish(&mut client, base);
    }
    // No queue keeps a consumer of a connection that went, and their exclusive queues are gone.
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
    let confirmed_left = match (&store, logs) {
        (Some(dir), Some(logs)) => {
            // The live state first (read and put back), then a restart: everything of this run dropped, the
            // vhost opened again from its files; a clean one first does what the broker's shutdown does.
            check_conservation(&vhost, &client.ledger, None, true);
            if client.clean_restart {
                vhost.flush_journals();
                if let Err(e) = logs.close() {
                    panic!("closing the logs: {e}");
                }
            }
            drop(broker);
            drop(vhost);
            drop(logs);
            let (vhost, _logs) = open_store(dir.path());
            check_conservation(&vhost, &client.ledger, Some(client.clean_restart), false)
        }
        _ if client.conserve => check_conservation(&vhost, &client.ledger, None, false),
        _ => 0,
    };
    Outcome {
        ops,
        close_reasons,
        confirmed: client.ledger.confirmed.len(),
        via_exchange: client
            .ledger
            .confirmed
            .intersection(&client.ledger.via_exchange)
            .count(),
        dead_lettered: client.ledger.dead_lettered.len(),
        confirmed_left,
    }
}
