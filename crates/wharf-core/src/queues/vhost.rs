//! The vhost: its exchange table and queue table, publish (route, enqueue, dead-letter), declare / bind /
//! delete / purge, consumers, the timers (TTL, `x-expires`) and, for a vhost with a store, the durable
//! topology and the queue logs that bring it back after a restart.

use super::equivalence::inequivalent;
use super::queue::{dispatch, expire_head, journal_later};
use super::*;

/// Where a vhost keeps what must survive a restart.
#[derive(Debug)]
struct Store {
    logs: QueueLogs,
    definitions: DefinitionsLog,
    next_queue_id: AtomicU64,
    /// Serializes saves of topology changes, each of which reads the live state it records: records are
    /// then in the order of the states they describe (see [`crate::definitions_log`]).
    save_lock: Mutex<()>,
}

/// What a topology operation changed, by name: [`VHost::save_changes`] records their state as it then is.
#[derive(Debug, Default)]
struct Touched {
    exchanges: Vec<String>,
    queues: Vec<String>,
    bindings: Vec<Binding>,
}

/// How often queue timers run: the precision of TTL expiry and `x-expires`.
pub const TIMER_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Most dead-letter hops one publish can cause in a row (a cycle the codec did not break stops here).
const DEAD_LETTER_DEPTH_MAX: u32 = 16;

/// The queues, exchanges and bindings of one vhost.
#[derive(Debug)]
pub struct VHost {
    /// Its name (`/` for the default vhost), for error texts.
    pub(super) name: String,
    /// Itself, handed to its queues for dead-lettering.
    me: Weak<VHost>,
    /// Taken before `queues` when both are needed (see the module docs).
    exchanges: RwLock<Exchanges>,
    queues: RwLock<crate::NameMap<Arc<Queue>>>,
    next_consumer: AtomicU64,
    /// `None`: nothing survives a restart (tests of the model); durable queues then live in memory too.
    store: Option<Store>,
    /// Set by the protocol front end; without it dead-lettered messages keep their properties.
    codec: OnceLock<Arc<dyn MessageCodec>>,
    /// Bytes of messages waiting in memory (non-durable queues), against the memory limit.
    memory: Arc<MemoryGauge>,
    /// Durable queues with journal facts not written yet ([`VHost::flush_journals`]).
    pub(super) dirty_journals: Mutex<Vec<Arc<Queue>>>,
}

impl VHost {
    /// A vhost that keeps everything in memory.
    pub fn new() -> Arc<Self> {
        Self::build("/", Exchanges::new(), None, MemoryGauge::unlimited())
    }

    fn build(
        name: &str,
        exchanges: Exchanges,
        store: Option<Store>,
        memory: Arc<MemoryGauge>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            name: name.to_string(),
            me: me.clone(),
            exchanges: RwLock::new(exchanges),
            queues: RwLock::new(crate::NameMap::default()),
            next_consumer: AtomicU64::new(0),
            store,
            codec: OnceLock::new(),
            memory,
            dirty_journals: Mutex::new(Vec::new()),
        })
    }

    /// The vhost's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn queue_not_found(&self, name: &str) -> QueueError {
        QueueError::NotFound {
            name: name.to_string(),
            vhost: self.name.clone(),
        }
    }

    /// The memory gauge of in-memory messages (its alarm blocks publishers).
    pub fn memory(&self) -> &Arc<MemoryGauge> {
        &self.memory
    }

    /// Installs the protocol's message codec (once; later calls are ignored).
    pub fn set_codec(&self, codec: Arc<dyn MessageCodec>) {
        let _ = self.codec.set(codec);
    }

    fn new_queue(
        &self,
        name: String,
        spec: QueueSpec,
        owner: Option<ConnectionId>,
        durable_id: Option<u64>,
        backlog: Backlog,
    ) -> Arc<Queue> {
        Arc::new(Queue {
            name,
            spec,
            owner,
            durable_id,
            vhost: self.me.clone(),
            last_used_ms: AtomicI64::new(crate::now_ms()),
            may_expire: AtomicBool::new(false),
            journal_queued: AtomicBool::new(false),
            state: Mutex::new(QueueState::new(backlog)),
        })
    }

    /// A vhost whose durable topology lives in `dir` and whose durable queues live in `logs` (message logs
    /// under `durability`); restores what a previous run left: exchanges, queues with their messages (in
    /// order; those delivered and not acknowledged marked redelivered), bindings.
    pub fn open(
        name: &str,
        dir: &Path,
        logs: Arc<LogManager>,
        durability: Durability,
        memory: Arc<MemoryGauge>,
    ) -> crate::Result<Arc<Self>> {
        let prefix = crate::queue_log::log_prefix(name);
        let (definitions, defs) = DefinitionsLog::open(
            &logs,
            &format!("{prefix}definitions"),
            &DefinitionsFile::new(dir),
        )?;
        let logs = QueueLogs::new(logs, durability, prefix);
        let known: HashSet<u64> = defs.queues.iter().map(|q| q.id).collect();
        logs.delete_orphans(&|id| known.contains(&id))?;
        let next_id = defs
            .queues
            .iter()
            .map(|q| q.id + 1)
            .max()
            .unwrap_or(1)
            .max(defs.next_queue_id);
        let mut exchanges = Exchanges::in_vhost(name);
        for x in &defs.exchanges {
            match x.spec() {
                Some(spec) => {
                    if let Err(e) = exchanges.declare(&x.name, spec, false) {
                        warn!(exchange = %x.name, "not restored: {e}");
                    }
                }
                None => warn!(exchange = %x.name, kind = %x.kind, "not restored: unknown type"),
            }
        }
        let mut backlogs = Vec::with_capacity(defs.queues.len());
        for q in &defs.queues {
            let options = OpenOptions {
                max_priority: q.arguments.max_priority,
                count_bytes: q.arguments.max_length_bytes.is_some(),
            };
            backlogs.push(LogBacklog::open(&logs, q.id, options)?);
        }
        let vhost = Self::build(
            name,
            exchanges,
            Some(Store {
                logs,
                definitions,
                next_queue_id: AtomicU64::new(next_id),
                save_lock: Mutex::new(()),
            }),
            memory,
        );
        let mut queues = crate::NameMap::default();
        for (q, backlog) in defs.queues.iter().zip(backlogs) {
            let spec = QueueSpec {
                durable: true,
                exclusive: false,
                auto_delete: q.auto_delete,
                arguments: q.arguments.clone(),
            };
            let queue = vhost.new_queue(
                q.name.clone(),
                spec,
                None,
                Some(q.id),
                Backlog::Log(Box::new(backlog)),
            );
            queue.may_expire.store(true, Ordering::Relaxed);
            queues.insert(q.name.clone(), queue);
        }
        {
            let mut exchanges = vhost.exchanges.write();
            for b in &defs.bindings {
                let Some(destination) = b.destination() else {
                    continue;
                };
                if let Destination::Queue(q) = &destination {
                    if !queues.contains_key(q) {
                        continue;
                    }
                }
                let binding = Binding {
                    source: b.source.clone(),
                    destination,
                    key: b.routing_key.clone(),
                    args: b.args(),
                };
                if let Err(e) = exchanges.bind(binding) {
                    warn!(source = %b.source, destination = %b.destination, "binding not restored: {e}");
                }
            }
        }
        info!(
            exchanges = defs.exchanges.len(),
            queues = queues.len(),
            bindings = defs.bindings.len(),
            "AMQP definitions restored"
        );
        *vhost.queues.write() = queues;
        Ok(vhost)
    }

    /// Records the state of what `touched` names, as it is now, in the definitions log, and writes a
    /// snapshot when the records outgrew the last one (no-op without a store).
    fn save_changes(&self, touched: Touched) -> Result<(), QueueError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let _guard = store.save_lock.lock();
        let delta = {
            let exchanges = self.exchanges.read();
            let queues = self.queues.read();
            let mut delta = Delta::new(store.next_queue_id.load(Ordering::Relaxed));
            delta.exchanges = touched
                .exchanges
                .into_iter()
                .map(|name| {
                    let def = exchanges
                        .saved_spec(&name)
                        .map(|spec| ExchangeDef::new(&name, spec));
                    (name, def)
                })
                .collect();
            delta.queues = touched
                .queues
                .into_iter()
                .map(|name| {
                    let def = queues.get(&name).and_then(|q| queue_def(q));
                    (name, def)
                })
                .collect();
            delta.bindings = touched
                .bindings
                .into_iter()
                .filter_map(|b| {
                    let present = exchanges.has_binding(&b);
                    // A binding with a transient end is not saved, so neither is its removal.
                    binding_def(&exchanges, &queues, b).map(|def| (def, present))
                })
                .collect();
            delta
        };
        store.definitions.append(&delta)?;
        if store.definitions.wants_snapshot() {
            store
                .definitions
                .snapshot(&self.current_definitions(store))?;
        }
        Ok(())
    }

    /// The durable topology as the next snapshot would save it (`None` without a store): for tests.
    #[cfg(test)]
    pub(super) fn durable_topology(&self) -> Option<Definitions> {
        let store = self.store.as_ref()?;
        let mut defs = self.current_definitions(store);
        defs.bindings.sort_by_cached_key(|b| format!("{b:?}"));
        Some(defs)
    }

    /// The whole durable topology, for a snapshot of the definitions log.
    fn current_definitions(&self, store: &Store) -> Definitions {
        let exchanges = self.exchanges.read();
        let queues = self.queues.read();
        let (durable_exchanges, bindings) = exchanges.durable_view();
        let mut queue_defs: Vec<QueueDef> = queues.values().filter_map(|q| queue_def(q)).collect();
        queue_defs.sort_by_key(|q| q.id);
        let binding_defs = bindings
            .into_iter()
            .filter_map(|b| binding_def(&exchanges, &queues, b))
            .collect();
        Definitions {
            version: 0,
            next_queue_id: store.next_queue_id.load(Ordering::Relaxed),
            exchanges: durable_exchanges
                .iter()
                .map(|(name, spec)| ExchangeDef::new(name, spec))
                .collect(),
            queues: queue_defs,
            bindings: binding_defs,
        }
    }

    /// Writes the journal facts of every durable queue that has some (settlements, deliveries, transient
    /// messages since the last flush). Runs every timer tick and at shutdown.
    pub fn flush_journals(&self) {
        let dirty = std::mem::take(&mut *self.dirty_journals.lock());
        for queue in dirty {
            let mut s = queue.state.lock();
            queue.journal_queued.store(false, Ordering::Relaxed);
            if !s.deleted {
                s.backlog.flush_journal();
            }
        }
    }

    /// Periodic work of durable queues: journal compaction and giving back consumed segments. Blocking
    /// (fsyncs): call it from a blocking thread.
    pub fn maintain(&self) {
        let queues: Vec<Arc<Queue>> = self
            .queues
            .read()
            .values()
            .filter(|q| q.is_durable())
            .cloned()
            .collect();
        for queue in queues {
            if let Some(work) = queue.maintenance() {
                if let Err(e) = work.run() {
                    // A queue deleted while its maintenance ran has lost its files on purpose.
                    if !queue.state.lock().deleted {
                        warn!(queue = queue.name(), "queue maintenance failed: {e}");
                    }
                }
            }
        }
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
            queue.touch();
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
            server_name("amq.gen-")
        } else {
            name.to_string()
        };
        self.create_queue(connection, name, spec)
    }

    /// Direct reply-to: a private queue, `amq.rabbitmq.reply-to.<random>`, exclusive to `connection` and
    /// deleted with its consumer, whose name a requester's `reply_to` is rewritten to. Anyone may publish to
    /// it through the default exchange, as RabbitMQ routes replies.
    pub fn declare_reply_queue(&self, connection: ConnectionId) -> Result<Arc<Queue>, QueueError> {
        let spec = QueueSpec {
            durable: false,
            exclusive: true,
            auto_delete: true,
            arguments: QueueArgs::default(),
        };
        let name = server_name(&format!("{REPLY_TO}."));
        Ok(self.create_queue(connection, name, spec)?.queue)
    }

    /// Declares `name` (already checked) or checks a redeclare against the existing queue.
    fn create_queue(
        &self,
        connection: ConnectionId,
        name: String,
        spec: QueueSpec,
    ) -> Result<DeclareOk, QueueError> {
        let mut queues = self.queues.write();
        if let Some(existing) = queues.get(&name) {
            existing.check_access(connection)?;
            // RabbitMQ checks the exclusive flag as it checks ownership: a redeclare that disagrees on it is
            // 405, not an inequivalent argument.
            if spec.exclusive != existing.spec.exclusive {
                return Err(QueueError::ResourceLocked {
                    name: name.clone(),
                    vhost: self.name.clone(),
                });
            }
            if let Some(reason) = inequivalent(&spec, &existing.spec, &name, &self.name) {
                return Err(QueueError::PreconditionFailed(format!(
                    "inequivalent arg {reason}"
                )));
            }
            let queue = Arc::clone(existing);
            queue.touch();
            drop(queues);
            let (message_count, consumer_count) = queue.counts();
            return Ok(DeclareOk {
                queue,
                message_count,
                consumer_count,
            });
        }
        let (backlog, durable_id) = match &self.store {
            Some(store) if spec.on_log() => {
                let id = store.next_queue_id.fetch_add(1, Ordering::Relaxed);
                let options = OpenOptions {
                    max_priority: spec.arguments.max_priority,
                    count_bytes: false,
                };
                let backlog = LogBacklog::open(&store.logs, id, options)?;
                (Backlog::Log(Box::new(backlog)), Some(id))
            }
            _ => (
                Backlog::memory(spec.arguments.max_priority, Some(Arc::clone(&self.memory))),
                None,
            ),
        };
        let owner = spec.exclusive.then_some(connection);
        let queue = self.new_queue(name.clone(), spec, owner, durable_id, backlog);
        queues.insert(name.clone(), Arc::clone(&queue));
        drop(queues);
        if durable_id.is_some() {
            let touched = Touched {
                queues: vec![name.clone()],
                ..Touched::default()
            };
            if let Err(e) = self.save_changes(touched) {
                self.remove(&queue);
                return Err(e);
            }
        }
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
            .ok_or_else(|| self.queue_not_found(name))?;
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
            Err(QueueError::NotFound { .. }) => return Ok(0),
            Err(e) => return Err(e),
        };
        {
            let s = queue.state.lock();
            if if_unused && !s.consumers.is_empty() {
                return Err(QueueError::PreconditionFailed(format!(
                    "queue '{name}' in vhost '{}' in use",
                    self.name
                )));
            }
            if if_empty && s.backlog.ready_count() > 0 {
                return Err(QueueError::PreconditionFailed(format!(
                    "queue '{name}' in vhost '{}' not empty",
                    self.name
                )));
            }
        }
        Ok(self.remove(&queue))
    }

    /// Removes `queue` from the table, cancels its consumers and (for a durable queue) forgets it on disk;
    /// returns its ready count.
    fn remove(&self, queue: &Arc<Queue>) -> u32 {
        let mut save = queue.is_durable();
        let mut touched = Touched {
            queues: vec![queue.name().to_string()],
            ..Touched::default()
        };
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
                    save = true;
                    debug!(queue = queue.name(), exchanges = ?gone, "auto-deleted with the queue's bindings");
                    touched.exchanges = gone;
                }
            }
        }
        if save {
            // The definitions stop naming the queue before its logs go (see `definitions`).
            if let Err(e) = self.save_changes(touched) {
                warn!(
                    queue = queue.name(),
                    "definitions not saved after a delete: {e}"
                );
            }
        }
        let mut s = queue.state.lock();
        s.deleted = true;
        let count = u32::try_from(s.backlog.ready_count()).unwrap_or(u32::MAX);
        s.backlog = Backlog::memory(None, None);
        if let (Some(store), Some(id)) = (&self.store, queue.durable_id) {
            if let Err(e) = store.logs.delete(id) {
                warn!(queue = queue.name(), "cannot delete the queue's logs: {e}");
            }
        }
        for c in s.consumers.drain(..) {
            let _ = c.sink.send((
                c.channel,
                QueueEvent::Cancelled {
                    consumer: c.id,
                    consumer_tag: c.tag.to_string(),
                },
            ));
        }
        count
    }

    /// queue.purge: drops the ready messages (unacknowledged ones stay), returns how many.
    pub fn purge_queue(&self, connection: ConnectionId, name: &str) -> Result<u32, QueueError> {
        let queue = self.lookup(connection, name)?;
        let mut s = queue.state.lock();
        let count = u32::try_from(s.backlog.purge()).unwrap_or(u32::MAX);
        journal_later(&queue, &mut s);
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
    ) -> Result<Delivered, QueueError> {
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
    /// (a queue deleted since routing is skipped).
    pub fn deliver(&self, names: &[String], message: Arc<Message>) -> Delivered {
        self.deliver_at_depth(names, message, 0)
    }

    fn deliver_at_depth(&self, names: &[String], message: Arc<Message>, depth: u32) -> Delivered {
        let mut out = Delivered::default();
        let mut dead_by_queue: Vec<(Arc<Queue>, Vec<DeadLetter>)> = Vec::new();
        {
            let queues = self.queues.read();
            for queue in names.iter().filter_map(|n| queues.get(n)) {
                out.queues += 1;
                let mut dead = Vec::new();
                match queue.enqueue(Arc::clone(&message), &mut dead) {
                    Ok(Some(Some(sync))) => out.sync.merge(sync),
                    Ok(Some(None)) => {}
                    // Refused by a length limit (reject-publish): nack.
                    Ok(None) => out.failed = true,
                    Err(e) => {
                        warn!(queue = queue.name(), "message not stored: {e}");
                        out.failed = true;
                    }
                }
                if !dead.is_empty() {
                    dead_by_queue.push((Arc::clone(queue), dead));
                }
            }
        }
        // Routed only once the queue table's lock is released: a dead-letter exchange may lead back here.
        for (queue, dead) in dead_by_queue {
            self.dead_letter(&queue, dead, depth + 1);
        }
        out
    }

    /// Publishes messages that left `queue` to its dead-letter exchange, as its codec rewrites them. A
    /// missing exchange drops them, as in RabbitMQ.
    pub(super) fn dead_letter(&self, queue: &Queue, dead: Vec<DeadLetter>, depth: u32) {
        let args = &queue.spec.arguments;
        let Some(exchange) = args.dead_letter_exchange.as_deref() else {
            return;
        };
        if depth > DEAD_LETTER_DEPTH_MAX {
            warn!(
                queue = queue.name(),
                "dead-letter chain too long; messages dropped"
            );
            return;
        }
        let now = crate::now_ms();
        let codec = self.codec.get();
        for DeadLetter { message, reason } in dead {
            let routing_key = args.dead_letter_routing_key.as_deref();
            let rewritten = match codec {
                Some(codec) => {
                    match codec.dead_letter(&message, reason, queue.name(), routing_key, now) {
                        // Republished through the dead-letter exchange: deliveries name it, as in RabbitMQ
                        // (`x-death` keeps the exchange it was first published to).
                        Some(m) => Message {
                            exchange: exchange.to_string(),
                            ..m
                        },
                        None => continue,
                    }
                }
                None => Message {
                    exchange: exchange.to_string(),
                    routing_key: routing_key.unwrap_or(&message.routing_key).to_string(),
                    expiration_ms: None,
                    ..(*message).clone()
                },
            };
            let keys: Vec<String> = match (routing_key, codec) {
                (Some(key), _) => vec![key.to_string()],
                (None, Some(codec)) => codec.routing_keys(&message),
                (None, None) => vec![message.routing_key.clone()],
            };
            let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let rendered = || codec.and_then(|c| c.headers(&rewritten));
            let names = match self.exchanges.read().route(exchange, &key_refs, &rendered) {
                Ok(names) => names,
                Err(e) => {
                    debug!(queue = queue.name(), "dead letter dropped: {e}");
                    continue;
                }
            };
            self.deliver_at_depth(&names, Arc::new(rewritten), depth);
        }
    }

    /// Timers: expires messages past their TTL at the heads of queues and deletes queues whose `x-expires`
    /// lease ran out. Called every [`TIMER_INTERVAL`] by [`VHost::run_timers`].
    pub fn tick(&self) {
        self.flush_journals();
        let now = crate::now_ms();
        // Only queues with something timed: a vhost of many plain queues pays nothing here.
        let queues: Vec<Arc<Queue>> = self
            .queues
            .read()
            .values()
            .filter(|q| {
                q.may_expire.load(Ordering::Relaxed) || q.spec.arguments.expires_ms.is_some()
            })
            .cloned()
            .collect();
        for queue in queues {
            queue.expire(now);
            if let Some(expires) = queue.spec.arguments.expires_ms {
                let idle = now.saturating_sub(queue.last_used_ms.load(Ordering::Relaxed));
                let unused = queue.state.lock().consumers.is_empty();
                if unused && idle >= i64::try_from(expires).unwrap_or(i64::MAX) {
                    debug!(queue = queue.name(), "deleted: x-expires lease ran out");
                    self.remove(&queue);
                }
            }
        }
    }

    /// Runs [`VHost::tick`] every [`TIMER_INTERVAL`] until the vhost is gone.
    pub async fn run_timers(vhost: Weak<VHost>) {
        let mut interval = tokio::time::interval(TIMER_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let Some(vhost) = vhost.upgrade() else {
                return;
            };
            vhost.tick();
        }
    }

    /// exchange.declare.
    pub fn declare_exchange(
        &self,
        name: &str,
        spec: ExchangeSpec,
        passive: bool,
    ) -> Result<(), QueueError> {
        let created = {
            let mut exchanges = self.exchanges.write();
            let existed = exchanges.exists(name);
            exchanges.declare(name, spec.clone(), passive)?;
            !existed && !passive
        };
        if created && spec.durable {
            self.save_changes(Touched {
                exchanges: vec![name.to_string()],
                ..Touched::default()
            })?;
        }
        Ok(())
    }

    /// exchange.delete (missing: succeeds).
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), QueueError> {
        let gone = self.exchanges.write().delete(name, if_unused)?;
        debug!(exchanges = ?gone, "deleted");
        if !gone.is_empty() {
            self.save_changes(Touched {
                exchanges: gone,
                ..Touched::default()
            })?;
        }
        Ok(())
    }

    /// Whether a binding change between these ends must be saved: both ends durable, or exchanges were
    /// auto-deleted by it.
    fn binding_is_durable(&self, source: &str, destination: &Destination) -> bool {
        if self.store.is_none() {
            return false;
        }
        let exchanges = self.exchanges.read();
        let durable_exchange = |name: &str| exchanges.spec(name).is_some_and(|x| x.durable);
        durable_exchange(source)
            && match destination {
                Destination::Queue(q) => self.queues.read().get(q).is_some_and(|q| q.is_durable()),
                Destination::Exchange(x) => durable_exchange(x),
            }
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
        let durable = self.binding_is_durable(exchange, &binding.destination);
        let exchanges = self.exchanges.write();
        if exchange == crate::exchanges::DEFAULT_EXCHANGE {
            // 403 before 404, as RabbitMQ checks them.
            return Err(ExchangeError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            )
            .into());
        }
        match self.lookup(connection, queue) {
            Ok(_) => {}
            // Unbinding a queue that is not there succeeds, as in RabbitMQ (another connection's exclusive
            // queue is still 405).
            Err(QueueError::NotFound { .. }) if !bind => return Ok(()),
            Err(e) => return Err(e),
        }
        self.change_binding(exchanges, bind, binding, durable)
    }

    /// Binds or unbinds under the exchange lock the caller holds, then saves the definitions if a durable
    /// binding changed or exchanges were auto-deleted by an unbind.
    fn change_binding(
        &self,
        mut exchanges: parking_lot::RwLockWriteGuard<'_, Exchanges>,
        bind: bool,
        binding: Binding,
        durable: bool,
    ) -> Result<(), QueueError> {
        let mut touched = Touched::default();
        let save = if bind {
            exchanges.bind(binding.clone())?;
            durable
        } else {
            let gone = exchanges.unbind(&binding)?;
            if !gone.is_empty() {
                debug!(exchanges = ?gone, "auto-deleted after unbind");
            }
            let save = durable || !gone.is_empty();
            touched.exchanges = gone;
            save
        };
        drop(exchanges);
        if save {
            touched.bindings.push(binding);
            self.save_changes(touched)?;
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
        let durable = self.binding_is_durable(source, &binding.destination);
        let exchanges = self.exchanges.write();
        self.change_binding(exchanges, bind, binding, durable)
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
        queue.touch();
        let id = self.next_consumer.fetch_add(1, Ordering::Relaxed) + 1;
        let mut dead = Vec::new();
        let mut s = queue.state.lock();
        if s.deleted {
            return Err(self.queue_not_found(queue_name));
        }
        if s.consumers.iter().any(|c| c.exclusive) || (options.exclusive && !s.consumers.is_empty())
        {
            return Err(QueueError::AccessRefused(format!(
                "queue '{queue_name}' in vhost '{}' in exclusive use",
                self.name
            )));
        }
        s.consumers.push(Consumer {
            id,
            tag: Arc::from(options.consumer_tag.as_str()),
            channel: options.channel,
            no_ack: options.no_ack,
            exclusive: options.exclusive,
            priority: options.priority,
            prefetch: options.prefetch,
            unacked: 0,
            gate: options.gate,
            sink,
        });
        s.had_consumer = true;
        dispatch(&queue, &mut s, &mut dead);
        journal_later(&queue, &mut s);
        drop(s);
        queue.dead_letter(dead);
        Ok((queue, id))
    }

    /// basic.cancel (or the consumer's channel closed). An auto-delete queue whose last consumer this was
    /// is deleted.
    pub fn cancel(&self, queue: &Arc<Queue>, consumer: ConsumerId) {
        let mut dead = Vec::new();
        let delete = {
            let mut s = queue.state.lock();
            s.consumers.retain(|c| c.id != consumer);
            if s.consumers.is_empty() {
                queue.touch();
            }
            // A single active consumer's successor takes over at once.
            dispatch(queue, &mut s, &mut dead);
            journal_later(queue, &mut s);
            queue.spec.auto_delete && s.had_consumer && s.consumers.is_empty() && !s.deleted
        };
        queue.dead_letter(dead);
        if delete {
            self.remove(queue);
        }
    }

    /// basic.get: the next ready message, if any (`no_ack`: settled as it leaves).
    pub fn get(
        &self,
        connection: ConnectionId,
        queue_name: &str,
        no_ack: bool,
    ) -> Result<Option<Delivery>, QueueError> {
        let queue = self.lookup(connection, queue_name)?;
        queue.touch();
        let mut dead = Vec::new();
        let got: Option<(Ready, u32)> = {
            let mut s = queue.state.lock();
            if let Some(now) = queue.expiry_clock() {
                expire_head(&mut s, now, &mut dead);
            }
            let got = s.backlog.pop().map(|ready| {
                if no_ack {
                    s.backlog.settle(ready.position);
                }
                let remaining = u32::try_from(s.backlog.ready_count()).unwrap_or(u32::MAX);
                (ready, remaining)
            });
            journal_later(&queue, &mut s);
            got
        };
        queue.dead_letter(dead);
        Ok(got.map(|(ready, remaining)| Delivery {
            queue: Arc::clone(&queue),
            consumer: None,
            consumer_tag: Arc::from(""),
            message: ready.message,
            redelivered: ready.redelivered,
            position: ready.position,
            expires_at: ready.expires_at,
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

/// The pseudo-queue a client consumes from for direct reply-to, and the `reply_to` it puts on requests.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// `prefix` and 22 random URL-safe characters, as RabbitMQ names server-named queues (`amq.gen-…`).
fn server_name(prefix: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let suffix: String = (0..22)
        .map(|_| {
            let i = rand::random::<usize>() % ALPHABET.len();
            char::from(ALPHABET.get(i).copied().unwrap_or(b'x'))
        })
        .collect();
    format!("{prefix}{suffix}")
}

/// What the definitions save of `queue`: `None` for a transient queue.
fn queue_def(queue: &Queue) -> Option<QueueDef> {
    queue.durable_id.map(|id| QueueDef {
        name: queue.name.clone(),
        id,
        auto_delete: queue.spec.auto_delete,
        arguments: queue.spec.arguments.clone(),
    })
}

/// What the definitions save of `binding`: `None` unless both its ends are durable.
fn binding_def(
    exchanges: &Exchanges,
    queues: &crate::NameMap<Arc<Queue>>,
    binding: Binding,
) -> Option<BindingDef> {
    exchanges.spec(&binding.source).filter(|x| x.durable)?;
    let (destination, destination_type) = match binding.destination {
        Destination::Queue(q) => {
            queues.get(&q).filter(|q| q.is_durable())?;
            (q, "queue")
        }
        Destination::Exchange(x) => {
            exchanges.spec(&x).filter(|x| x.durable)?;
            (x, "exchange")
        }
    };
    Some(BindingDef {
        source: binding.source,
        destination,
        destination_type: destination_type.to_string(),
        routing_key: binding.key,
        arguments: binding.args.entries,
    })
}
