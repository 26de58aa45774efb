//! AMQP-style queues in memory: declare / delete / purge, consumers with prefetch credit, fair
//! (round-robin) dispatch, acknowledgement and requeue at the original position; and the vhost that ties
//! them to its exchanges and bindings ([`crate::exchanges`]): publish routes through the exchange table,
//! bind checks the queue exists, and a deleted queue takes its bindings along.
//!
//! Messages live in memory only; durable queues, TTL, length limits and dead-lettering come later. It
//! knows no wire format:
//! message properties are kept as the opaque bytes the protocol crate gave us, so they can be stored as
//! received once queues sit on the log engine.
//!
//! Concurrency: the exchange table and the queue table are read-mostly `RwLock`s, taken in that order
//! (exchanges, then queues) whenever both are needed, so a bind cannot slip in between a queue's removal
//! and the removal of its bindings; a publish holds each only to read. Each queue has its own mutex, so publishers and
//! consumers of different queues never contend (design.md: no hot global lock). Deliveries leave a queue
//! through each consumer's [`DeliverySink`], an unbounded channel to the consumer's connection: what a
//! consumer can have outstanding is bounded by its prefetch; no-ack consumers are bounded only by the
//! connection draining its channel (a per-connection bound is a later increment).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tracing::debug;

use crate::exchanges::headers::Headers;
use crate::exchanges::{Binding, BindingArgs, Destination, ExchangeError, ExchangeSpec, Exchanges};

/// Longest queue name (AMQP short strings are at most 255 bytes).
pub const QUEUE_NAME_MAX_LEN: usize = 255;

/// Identifies a client connection to the model (exclusive queues belong to one).
pub type ConnectionId = u64;
/// Identifies one consumer, unique for the life of the process (consumer tags are only unique per
/// channel, and a channel number can be reused after a close).
pub type ConsumerId = u64;

/// Errors of the queue model; the AMQP front end maps each to its reply code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// 404: the queue does not exist.
    #[error("no queue '{0}' in vhost '/'")]
    NotFound(String),
    /// 406: a redeclare with different properties, or another precondition.
    #[error("{0}")]
    PreconditionFailed(String),
    /// 405: the queue is exclusive to another connection.
    #[error("cannot obtain exclusive access to locked queue '{0}' in vhost '/'")]
    ResourceLocked(String),
    /// 403: e.g. a consumer wants exclusive use of a queue that already has consumers.
    #[error("{0}")]
    AccessRefused(String),
    /// An exchange or binding operation failed (403, 404, 406 by its own kind).
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
}

/// A published message. `properties` are the content-header properties as the protocol encoded them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    pub properties: Bytes,
    pub body: Bytes,
}

/// What a consumer's connection receives from a queue.
#[derive(Debug)]
pub enum QueueEvent {
    /// A message for consumer `consumer`.
    Deliver(Delivery),
    /// The queue was deleted: the consumer is gone (a server-initiated basic.cancel).
    Cancelled {
        consumer: ConsumerId,
        consumer_tag: String,
    },
}

/// One message handed to a consumer or to basic.get.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub queue: Arc<Queue>,
    /// `None` for basic.get.
    pub consumer: Option<ConsumerId>,
    pub consumer_tag: String,
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// Position in the queue, so a requeue puts the message back where it was.
    pub position: u64,
    /// Messages left ready in the queue (basic.get-ok's message-count).
    pub remaining: u32,
}

/// Where a consumer's deliveries go: its connection's event channel.
pub type DeliverySink = mpsc::UnboundedSender<(u16, QueueEvent)>;

/// The properties a queue is declared with; a redeclare must match them (else 406).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    /// A canonical rendering of the declare arguments, compared on redeclare. Arguments are kept but not
    /// acted on yet (TTL, length limits and dead-lettering are later increments).
    pub arguments: String,
}

/// A consumer as a queue sees it.
#[derive(Debug)]
struct Consumer {
    id: ConsumerId,
    tag: String,
    channel: u16,
    no_ack: bool,
    exclusive: bool,
    /// Most unacknowledged deliveries at once; 0 = unlimited.
    prefetch: u16,
    unacked: u32,
    sink: DeliverySink,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        self.no_ack || self.prefetch == 0 || self.unacked < u32::from(self.prefetch)
    }
}

/// A ready message and where it sits.
#[derive(Debug)]
struct Ready {
    position: u64,
    message: Arc<Message>,
    redelivered: bool,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Ordered by `position`.
    ready: VecDeque<Ready>,
    consumers: Vec<Consumer>,
    /// Round-robin cursor into `consumers`: dispatch starts after the last consumer served.
    next_consumer: usize,
    next_position: u64,
    /// Set once a consumer was added: an auto-delete queue is deleted when its last one goes.
    had_consumer: bool,
    deleted: bool,
}

/// One queue.
#[derive(Debug)]
pub struct Queue {
    name: String,
    spec: QueueSpec,
    /// The connection an exclusive queue belongs to.
    owner: Option<ConnectionId>,
    state: Mutex<QueueState>,
}

impl Queue {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn spec(&self) -> &QueueSpec {
        &self.spec
    }

    /// Ready messages and consumers.
    pub fn counts(&self) -> (u32, u32) {
        let s = self.state.lock();
        (
            u32::try_from(s.ready.len()).unwrap_or(u32::MAX),
            u32::try_from(s.consumers.len()).unwrap_or(u32::MAX),
        )
    }

    fn check_access(&self, connection: ConnectionId) -> Result<(), QueueError> {
        match self.owner {
            Some(owner) if owner != connection => {
                Err(QueueError::ResourceLocked(self.name.clone()))
            }
            _ => Ok(()),
        }
    }

    fn enqueue(self: &Arc<Self>, message: Arc<Message>) {
        let mut s = self.state.lock();
        let position = s.next_position;
        s.next_position += 1;
        s.ready.push_back(Ready {
            position,
            message,
            redelivered: false,
        });
        dispatch(self, &mut s);
    }

    /// Puts a delivered message back at its original position, marked redelivered, and releases the
    /// consumer's credit.
    pub fn requeue(
        self: &Arc<Self>,
        consumer: Option<ConsumerId>,
        position: u64,
        message: Arc<Message>,
    ) {
        let mut s = self.state.lock();
        release_credit(&mut s, consumer);
        if s.deleted {
            return;
        }
        let at = s.ready.partition_point(|r| r.position < position);
        s.ready.insert(
            at,
            Ready {
                position,
                message,
                redelivered: true,
            },
        );
        dispatch(self, &mut s);
    }

    /// A delivery was acknowledged (or rejected without requeue): release the consumer's credit.
    pub fn settle(self: &Arc<Self>, consumer: Option<ConsumerId>) {
        let mut s = self.state.lock();
        release_credit(&mut s, consumer);
        dispatch(self, &mut s);
    }
}

fn release_credit(s: &mut QueueState, consumer: Option<ConsumerId>) {
    if let Some(id) = consumer {
        if let Some(c) = s.consumers.iter_mut().find(|c| c.id == id) {
            c.unacked = c.unacked.saturating_sub(1);
        }
    }
}

/// Hands ready messages to consumers with credit, round-robin, until either runs out. A consumer whose
/// connection is gone is dropped and its message stays ready.
fn dispatch(queue: &Arc<Queue>, s: &mut QueueState) {
    while !s.ready.is_empty() && !s.consumers.is_empty() {
        let n = s.consumers.len();
        let start = s.next_consumer % n;
        let Some(index) = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| s.consumers.get(i).is_some_and(Consumer::has_credit))
        else {
            return;
        };
        let Some(ready) = s.ready.pop_front() else {
            return;
        };
        let remaining = u32::try_from(s.ready.len()).unwrap_or(u32::MAX);
        let Some(consumer) = s.consumers.get_mut(index) else {
            return;
        };
        let delivery = Delivery {
            queue: Arc::clone(queue),
            consumer: Some(consumer.id),
            consumer_tag: consumer.tag.clone(),
            message: Arc::clone(&ready.message),
            redelivered: ready.redelivered,
            position: ready.position,
            remaining,
        };
        if consumer
            .sink
            .send((consumer.channel, QueueEvent::Deliver(delivery)))
            .is_err()
        {
            // The connection is gone; its close will cancel the rest. Keep the message.
            s.consumers.remove(index);
            s.ready.push_front(ready);
            continue;
        }
        if !consumer.no_ack {
            consumer.unacked += 1;
        }
        s.next_consumer = index + 1;
    }
}

/// Options of basic.consume.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    pub consumer_tag: String,
    pub channel: u16,
    pub no_ack: bool,
    pub exclusive: bool,
    pub prefetch: u16,
}

/// The outcome of a declare.
#[derive(Debug, Clone)]
pub struct DeclareOk {
    pub queue: Arc<Queue>,
    pub message_count: u32,
    pub consumer_count: u32,
}

/// The queues, exchanges and bindings of one vhost (only `/` in this increment).
#[derive(Debug, Default)]
pub struct VHost {
    /// Taken before `queues` when both are needed (see the module docs).
    exchanges: RwLock<Exchanges>,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
    next_consumer: AtomicU64,
}

impl VHost {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// queue.declare. An empty name asks for a server-named `amq.gen-…` queue.
    pub fn declare_queue(
        &self,
        connection: ConnectionId,
        name: &str,
        passive: bool,
        spec: QueueSpec,
    ) -> Result<DeclareOk, QueueError> {
        if passive {
            let queue = self.lookup(connection, name)?;
            let (message_count, consumer_count) = queue.counts();
            return Ok(DeclareOk {
                queue,
                message_count,
                consumer_count,
            });
        }
        if name.starts_with("amq.") {
            return Err(QueueError::AccessRefused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let name = if name.is_empty() {
            server_name()
        } else {
            name.to_string()
        };
        let mut queues = self.queues.write();
        if let Some(existing) = queues.get(&name) {
            existing.check_access(connection)?;
            if existing.spec != spec {
                return Err(QueueError::PreconditionFailed(format!(
                    "inequivalent arg for queue '{name}' in vhost '/': declared {:?}, existing {:?}",
                    spec, existing.spec
                )));
            }
            let queue = Arc::clone(existing);
            drop(queues);
            let (message_count, consumer_count) = queue.counts();
            return Ok(DeclareOk {
                queue,
                message_count,
                consumer_count,
            });
        }
        let queue = Arc::new(Queue {
            name: name.clone(),
            owner: spec.exclusive.then_some(connection),
            spec,
            state: Mutex::new(QueueState::default()),
        });
        queues.insert(name, Arc::clone(&queue));
        Ok(DeclareOk {
            queue,
            message_count: 0,
            consumer_count: 0,
        })
    }

    /// The queue called `name`, if this connection may use it.
    pub fn lookup(&self, connection: ConnectionId, name: &str) -> Result<Arc<Queue>, QueueError> {
        let queue = self
            .queues
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| QueueError::NotFound(name.to_string()))?;
        queue.check_access(connection)?;
        Ok(queue)
    }

    /// queue.delete: returns the number of ready messages dropped. Its consumers are told
    /// ([`QueueEvent::Cancelled`]).
    pub fn delete_queue(
        &self,
        connection: ConnectionId,
        name: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<u32, QueueError> {
        let queue = match self.lookup(connection, name) {
            Ok(q) => q,
            // Deleting a missing queue succeeds, as in RabbitMQ.
            Err(QueueError::NotFound(_)) => return Ok(0),
            Err(e) => return Err(e),
        };
        {
            let s = queue.state.lock();
            if if_unused && !s.consumers.is_empty() {
                return Err(QueueError::PreconditionFailed(format!(
                    "queue '{name}' in vhost '/' in use"
                )));
            }
            if if_empty && !s.ready.is_empty() {
                return Err(QueueError::PreconditionFailed(format!(
                    "queue '{name}' in vhost '/' is not empty"
                )));
            }
        }
        Ok(self.remove(&queue))
    }

    /// Removes `queue` from the table and cancels its consumers; returns its ready count.
    fn remove(&self, queue: &Arc<Queue>) -> u32 {
        {
            let mut exchanges = self.exchanges.write();
            let mut queues = self.queues.write();
            if queues
                .get(queue.name())
                .is_some_and(|q| Arc::ptr_eq(q, queue))
            {
                queues.remove(queue.name());
                let gone =
                    exchanges.remove_destination(&Destination::Queue(queue.name().to_string()));
                if !gone.is_empty() {
                    debug!(queue = queue.name(), exchanges = ?gone, "auto-deleted with the queue's bindings");
                }
            }
        }
        let mut s = queue.state.lock();
        s.deleted = true;
        let count = u32::try_from(s.ready.len()).unwrap_or(u32::MAX);
        s.ready.clear();
        for c in s.consumers.drain(..) {
            let _ = c.sink.send((
                c.channel,
                QueueEvent::Cancelled {
                    consumer: c.id,
                    consumer_tag: c.tag,
                },
            ));
        }
        count
    }

    /// queue.purge: drops the ready messages (unacknowledged ones stay), returns how many.
    pub fn purge_queue(&self, connection: ConnectionId, name: &str) -> Result<u32, QueueError> {
        let queue = self.lookup(connection, name)?;
        let mut s = queue.state.lock();
        let count = u32::try_from(s.ready.len()).unwrap_or(u32::MAX);
        s.ready.clear();
        Ok(count)
    }

    /// basic.publish: routes `message` from `message.exchange` with `keys` (its routing key, then its `CC`
    /// and `BCC` keys) and `headers` (rendered only if a headers exchange asks), and enqueues one shared
    /// copy on every queue reached. Returns how many queues took it (0: the caller returns it if
    /// mandatory). A missing exchange is 404, an internal one 403.
    pub fn publish(
        &self,
        keys: &[&str],
        headers: &dyn Fn() -> Option<Headers>,
        message: Message,
    ) -> Result<usize, QueueError> {
        let names = self.route(&message.exchange, keys, headers)?;
        Ok(self.deliver(&names, Arc::new(message)))
    }

    /// The routing half of [`VHost::publish`]: the names of the queues `exchange` routes to. Split out so
    /// a transaction can route (and fail on a missing exchange) at publish time and enqueue at commit,
    /// as RabbitMQ does.
    pub fn route(
        &self,
        exchange: &str,
        keys: &[&str],
        headers: &dyn Fn() -> Option<Headers>,
    ) -> Result<Vec<String>, QueueError> {
        Ok(self.exchanges.read().route(exchange, keys, headers)?)
    }

    /// The enqueueing half of [`VHost::publish`]: one shared copy on every named queue that still exists
    /// (a queue deleted since routing is skipped). Returns how many queues took it.
    pub fn deliver(&self, names: &[String], message: Arc<Message>) -> usize {
        let targets: Vec<Arc<Queue>> = {
            let queues = self.queues.read();
            names
                .iter()
                .filter_map(|n| queues.get(n).cloned())
                .collect()
        };
        for queue in &targets {
            queue.enqueue(Arc::clone(&message));
        }
        targets.len()
    }

    /// exchange.declare.
    pub fn declare_exchange(
        &self,
        name: &str,
        spec: ExchangeSpec,
        passive: bool,
    ) -> Result<(), QueueError> {
        Ok(self.exchanges.write().declare(name, spec, passive)?)
    }

    /// exchange.delete (missing: succeeds).
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), QueueError> {
        let gone = self.exchanges.write().delete(name, if_unused)?;
        debug!(exchanges = ?gone, "deleted");
        Ok(())
    }

    /// queue.bind (`bind = true`) or queue.unbind. The queue must exist and be usable by `connection`;
    /// it is checked under the exchange lock so the binding cannot outlive a concurrent delete.
    pub fn bind_queue(
        &self,
        connection: ConnectionId,
        bind: bool,
        queue: &str,
        exchange: &str,
        key: &str,
        args: BindingArgs,
    ) -> Result<(), QueueError> {
        let binding = Binding {
            source: exchange.to_string(),
            destination: Destination::Queue(queue.to_string()),
            key: key.to_string(),
            args,
        };
        let mut exchanges = self.exchanges.write();
        if exchange == crate::exchanges::DEFAULT_EXCHANGE {
            // 403 before 404, as RabbitMQ checks them.
            return Err(ExchangeError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            )
            .into());
        }
        self.lookup(connection, queue)?;
        if bind {
            exchanges.bind(binding)?;
        } else {
            let gone = exchanges.unbind(&binding)?;
            if !gone.is_empty() {
                debug!(exchanges = ?gone, "auto-deleted after unbind");
            }
        }
        Ok(())
    }

    /// exchange.bind (`bind = true`) or exchange.unbind: messages reaching `source` also go where
    /// `destination` routes them.
    pub fn bind_exchange(
        &self,
        bind: bool,
        destination: &str,
        source: &str,
        key: &str,
        args: BindingArgs,
    ) -> Result<(), QueueError> {
        let binding = Binding {
            source: source.to_string(),
            destination: Destination::Exchange(destination.to_string()),
            key: key.to_string(),
            args,
        };
        let mut exchanges = self.exchanges.write();
        if bind {
            exchanges.bind(binding)?;
        } else {
            let gone = exchanges.unbind(&binding)?;
            if !gone.is_empty() {
                debug!(exchanges = ?gone, "auto-deleted after unbind");
            }
        }
        Ok(())
    }

    /// basic.consume: registers a consumer and starts dispatching to it.
    pub fn consume(
        &self,
        connection: ConnectionId,
        queue_name: &str,
        options: ConsumeOptions,
        sink: DeliverySink,
    ) -> Result<(Arc<Queue>, ConsumerId), QueueError> {
        let queue = self.lookup(connection, queue_name)?;
        let id = self.next_consumer.fetch_add(1, Ordering::Relaxed) + 1;
        let mut s = queue.state.lock();
        if s.deleted {
            return Err(QueueError::NotFound(queue_name.to_string()));
        }
        if s.consumers.iter().any(|c| c.exclusive) || (options.exclusive && !s.consumers.is_empty())
        {
            return Err(QueueError::AccessRefused(format!(
                "queue '{queue_name}' in vhost '/' in exclusive use"
            )));
        }
        s.consumers.push(Consumer {
            id,
            tag: options.consumer_tag,
            channel: options.channel,
            no_ack: options.no_ack,
            exclusive: options.exclusive,
            prefetch: options.prefetch,
            unacked: 0,
            sink,
        });
        s.had_consumer = true;
        dispatch(&queue, &mut s);
        drop(s);
        Ok((queue, id))
    }

    /// basic.cancel (or the consumer's channel closed). An auto-delete queue whose last consumer this was
    /// is deleted.
    pub fn cancel(&self, queue: &Arc<Queue>, consumer: ConsumerId) {
        let delete = {
            let mut s = queue.state.lock();
            s.consumers.retain(|c| c.id != consumer);
            queue.spec.auto_delete && s.had_consumer && s.consumers.is_empty() && !s.deleted
        };
        if delete {
            self.remove(queue);
        }
    }

    /// basic.get: the next ready message, if any.
    pub fn get(
        &self,
        connection: ConnectionId,
        queue_name: &str,
    ) -> Result<Option<Delivery>, QueueError> {
        let queue = self.lookup(connection, queue_name)?;
        let mut s = queue.state.lock();
        let Some(ready) = s.ready.pop_front() else {
            return Ok(None);
        };
        let remaining = u32::try_from(s.ready.len()).unwrap_or(u32::MAX);
        drop(s);
        Ok(Some(Delivery {
            queue: Arc::clone(&queue),
            consumer: None,
            consumer_tag: String::new(),
            message: ready.message,
            redelivered: ready.redelivered,
            position: ready.position,
            remaining,
        }))
    }

    /// A connection closed: its exclusive queues are deleted.
    pub fn connection_closed(&self, connection: ConnectionId) {
        let owned: Vec<Arc<Queue>> = self
            .queues
            .read()
            .values()
            .filter(|q| q.owner == Some(connection))
            .cloned()
            .collect();
        for queue in owned {
            self.remove(&queue);
        }
    }
}

/// `amq.gen-` and 22 random URL-safe characters, as RabbitMQ names server-named queues.
fn server_name() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let suffix: String = (0..22)
        .map(|_| {
            let i = rand::random::<usize>() % ALPHABET.len();
            char::from(ALPHABET.get(i).copied().unwrap_or(b'x'))
        })
        .collect();
    format!("amq.gen-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> QueueSpec {
        QueueSpec {
            durable: false,
            exclusive: false,
            auto_delete: false,
            arguments: String::new(),
        }
    }

    fn msg(body: &str) -> Message {
        Message {
            exchange: String::new(),
            routing_key: "q".into(),
            properties: Bytes::new(),
            body: Bytes::from(body.to_string()),
        }
    }

    impl VHost {
        fn counts_of(&self, name: &str) -> u32 {
            self.lookup(1, name).map(|q| q.counts().0).unwrap_or(0)
        }
    }

    fn consume(
        vhost: &VHost,
        prefetch: u16,
    ) -> (ConsumerId, mpsc::UnboundedReceiver<(u16, QueueEvent)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let options = ConsumeOptions {
            consumer_tag: "c".into(),
            channel: 1,
            no_ack: false,
            exclusive: false,
            prefetch,
        };
        let (_, id) = vhost.consume(1, "q", options, tx).unwrap();
        (id, rx)
    }

    fn next(rx: &mut mpsc::UnboundedReceiver<(u16, QueueEvent)>) -> Option<Delivery> {
        match rx.try_recv() {
            Ok((_, QueueEvent::Deliver(d))) => Some(d),
            _ => None,
        }
    }

    fn publish(vhost: &VHost, message: Message) -> bool {
        let key = message.routing_key.clone();
        vhost.publish(&[&key], &|| None, message).unwrap() > 0
    }

    #[test]
    fn routing_now_and_delivering_later_skips_a_queue_deleted_between() {
        // The split a transaction uses: routed at publish, enqueued at commit.
        let vhost = VHost::new();
        vhost.declare_queue(1, "q", false, spec()).unwrap();
        let names = vhost.route("", &["q"], &|| None).unwrap();
        assert_eq!(names, ["q"]);
        assert_eq!(vhost.deliver(&names, Arc::new(msg("a"))), 1);
        assert_eq!(vhost.counts_of("q"), 1);
        vhost.delete_queue(1, "q", false, false).unwrap();
        assert_eq!(vhost.deliver(&names, Arc::new(msg("b"))), 0);
    }

    #[test]
    fn bindings_need_the_queue_and_go_with_it() {
        let vhost = VHost::new();
        let bind = |queue: &str| {
            vhost.bind_queue(1, true, queue, "amq.fanout", "", BindingArgs::default())
        };
        assert_eq!(bind("q"), Err(QueueError::NotFound("q".into())));
        assert!(matches!(
            vhost.bind_queue(1, true, "q", "", "", BindingArgs::default()),
            Err(QueueError::Exchange(ExchangeError::AccessRefused(_)))
        ));
        vhost.declare_queue(1, "q", false, spec()).unwrap();
        vhost.declare_queue(1, "r", false, spec()).unwrap();
        bind("q").unwrap();
        bind("r").unwrap();
        let fanned = Message {
            exchange: "amq.fanout".into(),
            ..msg("f")
        };
        assert_eq!(vhost.publish(&["k"], &|| None, fanned.clone()), Ok(2));
        assert_eq!(
            vhost.get(1, "r").unwrap().unwrap().message.body,
            fanned.body
        );
        vhost.delete_queue(1, "q", false, false).unwrap();
        // A new queue of the same name is not bound: the old bindings went with the old queue.
        vhost.declare_queue(1, "q", false, spec()).unwrap();
        assert_eq!(vhost.publish(&["k"], &|| None, fanned), Ok(1));
        assert_eq!(vhost.counts_of("q"), 0);
    }

    #[test]
    fn redeclare_must_match_and_passive_needs_the_queue() {
        let vhost = VHost::new();
        assert_eq!(
            vhost.declare_queue(1, "q", true, spec()).unwrap_err(),
            QueueError::NotFound("q".into())
        );
        vhost.declare_queue(1, "q", false, spec()).unwrap();
        let durable = QueueSpec {
            durable: true,
            ..spec()
        };
        assert!(matches!(
            vhost.declare_queue(1, "q", false, durable),
            Err(QueueError::PreconditionFailed(_))
        ));
        let named = vhost.declare_queue(1, "", false, spec()).unwrap();
        assert!(named.queue.name().starts_with("amq.gen-"));
    }

    #[test]
    fn exclusive_queues_belong_to_their_connection() {
        let vhost = VHost::new();
        let exclusive = QueueSpec {
            exclusive: true,
            ..spec()
        };
        vhost.declare_queue(1, "q", false, exclusive).unwrap();
        assert!(matches!(
            vhost.lookup(2, "q"),
            Err(QueueError::ResourceLocked(_))
        ));
        vhost.connection_closed(1);
        assert!(matches!(vhost.lookup(1, "q"), Err(QueueError::NotFound(_))));
    }

    #[test]
    fn prefetch_spreads_work_and_requeue_keeps_position() {
        let vhost = VHost::new();
        vhost.declare_queue(1, "q", false, spec()).unwrap();
        let (_a, mut rx_a) = consume(&vhost, 1);
        let (_b, mut rx_b) = consume(&vhost, 1);
        for i in 0..4 {
            assert!(publish(&vhost, msg(&i.to_string())));
        }
        let da = next(&mut rx_a).unwrap();
        let db = next(&mut rx_b).unwrap();
        assert_eq!(
            (&da.message.body[..], &db.message.body[..]),
            (&b"0"[..], &b"1"[..])
        );
        assert!(next(&mut rx_a).is_none(), "prefetch 1 holds back the rest");
        // Requeue the first: it goes back to the head, redelivered, and to the consumer with credit.
        da.queue
            .requeue(da.consumer, da.position, Arc::clone(&da.message));
        let again = next(&mut rx_a).unwrap();
        assert_eq!(&again.message.body[..], b"0");
        assert!(again.redelivered);
        db.queue.settle(db.consumer);
        assert_eq!(&next(&mut rx_b).unwrap().message.body[..], b"2");
    }

    #[test]
    fn unroutable_and_get() {
        let vhost = VHost::new();
        assert!(!publish(&vhost, msg("x")));
        vhost.declare_queue(1, "q", false, spec()).unwrap();
        assert!(publish(&vhost, msg("x")));
        let got = vhost.get(1, "q").unwrap().unwrap();
        assert_eq!(got.remaining, 0);
        assert!(vhost.get(1, "q").unwrap().is_none());
        assert_eq!(vhost.purge_queue(1, "q").unwrap(), 0);
    }
}
