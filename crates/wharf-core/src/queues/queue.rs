//! One queue: its backlog, its consumers with their prefetch credit, dispatch (fair round-robin among the
//! consumers of the highest priority with credit, or the single active one), settlement, requeue at the
//! original position, expiry at the head and length limits.

use super::*;

/// A consumer as a queue sees it.
#[derive(Debug)]
pub(super) struct Consumer {
    pub(super) id: ConsumerId,
    pub(super) tag: Arc<str>,
    pub(super) channel: u16,
    pub(super) no_ack: bool,
    pub(super) exclusive: bool,
    /// `x-priority`: consumers of a higher priority are served first while they have credit.
    pub(super) priority: i32,
    /// Most unacknowledged deliveries at once; 0 = unlimited.
    pub(super) prefetch: u16,
    pub(super) unacked: u32,
    /// Its channel's and connection's say (channel.flow, global prefetch, outbound bytes).
    pub(super) gate: ConsumerGate,
    pub(super) sink: DeliverySink,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        (self.no_ack || self.prefetch == 0 || self.unacked < u32::from(self.prefetch))
            && self.gate.allows()
    }
}

#[derive(Debug)]
pub(super) struct QueueState {
    pub(super) backlog: Backlog,
    /// In registration order (the first is the active one of a single-active-consumer queue).
    pub(super) consumers: Vec<Consumer>,
    /// Round-robin cursor into `consumers`: dispatch starts after the last consumer served.
    pub(super) next_consumer: usize,
    /// Set once a consumer was added: an auto-delete queue is deleted when its last one goes.
    pub(super) had_consumer: bool,
    pub(super) deleted: bool,
}

impl QueueState {
    pub(super) fn new(backlog: Backlog) -> Self {
        Self {
            backlog,
            consumers: Vec::new(),
            next_consumer: 0,
            had_consumer: false,
            deleted: false,
        }
    }
}

/// One queue.
#[derive(Debug)]
pub struct Queue {
    pub(super) name: String,
    pub(super) spec: QueueSpec,
    /// The connection an exclusive queue belongs to.
    pub(super) owner: Option<ConnectionId>,
    /// For a queue on the log engine: the id naming its logs.
    pub(super) durable_id: Option<u64>,
    /// The vhost, for dead-lettering (weak: the vhost owns its queues).
    pub(super) vhost: Weak<VHost>,
    /// Wall-clock ms of the last use that renews an `x-expires` lease (declare, consume, get).
    pub(super) last_used_ms: AtomicI64,
    /// Set when a message with a TTL is enqueued or requeued, cleared by the timer once the queue holds no
    /// ready message: the expiry timer looks at this queue. Changed only under `state`'s lock.
    pub(super) may_expire: AtomicBool,
    /// In the vhost's list of journals to flush.
    pub(super) journal_queued: AtomicBool,
    pub(super) state: Mutex<QueueState>,
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
            u32::try_from(s.backlog.ready_count()).unwrap_or(u32::MAX),
            u32::try_from(s.consumers.len()).unwrap_or(u32::MAX),
        )
    }

    /// Whether this queue sits on the log engine.
    pub fn is_durable(&self) -> bool {
        self.durable_id.is_some()
    }

    /// The name of the vhost this queue belongs to (`/` once the vhost is gone), for error texts.
    fn vhost_name(&self) -> String {
        self.vhost
            .upgrade()
            .map_or_else(|| "/".to_string(), |v| v.name.clone())
    }

    pub(super) fn check_access(&self, connection: ConnectionId) -> Result<(), QueueError> {
        match self.owner {
            Some(owner) if owner != connection => Err(QueueError::ResourceLocked {
                name: self.name.clone(),
                vhost: self.vhost_name(),
            }),
            _ => Ok(()),
        }
    }

    pub(super) fn touch(&self) {
        if self.spec.arguments.expires_ms.is_some() {
            self.last_used_ms.store(crate::now_ms(), Ordering::Relaxed);
        }
    }

    /// How long a message entering this queue lives: the sooner of the queue's TTL and the message's.
    fn ttl_of(&self, message: &Message) -> Option<u64> {
        match (self.spec.arguments.message_ttl_ms, message.expiration_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The time to expire messages against, for a queue that may hold expiring ones (others skip the clock
    /// and the head check on every message).
    pub(super) fn expiry_clock(&self) -> Option<i64> {
        self.may_expire.load(Ordering::Relaxed).then(crate::now_ms)
    }

    /// Whether `message` would take the queue past a length limit.
    fn over_limit_with(&self, s: &QueueState, message: &Message) -> bool {
        let args = &self.spec.arguments;
        args.max_length
            .is_some_and(|max| s.backlog.ready_count() >= max)
            || args
                .max_length_bytes
                .is_some_and(|max| s.backlog.ready_bytes() + message.body.len() as u64 > max)
    }

    /// Enqueues `message`; returns what a publisher must wait for before confirming it, or `None` when a
    /// length limit with `reject-publish` refused it (the publisher gets basic.nack). Messages it pushes out
    /// (drop-head) or that expire at once go to `dead`.
    pub(super) fn enqueue(
        self: &Arc<Self>,
        message: Arc<Message>,
        dead: &mut Vec<DeadLetter>,
    ) -> Result<Option<Option<PendingSync>>, QueueError> {
        let mut s = self.state.lock();
        if s.deleted {
            return Ok(Some(None));
        }
        let args = &self.spec.arguments;
        if args.overflow != Overflow::DropHead && self.over_limit_with(&s, &message) {
            if args.overflow == Overflow::RejectPublishDlx {
                dead.push(DeadLetter {
                    message,
                    reason: DeathReason::MaxLen,
                });
            }
            return Ok(None);
        }
        let ttl = self.ttl_of(&message);
        if ttl.is_some() {
            self.may_expire.store(true, Ordering::Relaxed);
        }
        // One clock reading for the message's expiry and for the expiries checked around it: a TTL of 0 then
        // means "now or never" however long the dispatch takes — the message goes to a consumer that can take
        // it at once (dispatch expires only what expired before `now`), and is dropped below if none could.
        let now = self.expiry_clock();
        let expires_at = ttl
            .zip(now)
            .map(|(ttl, now)| now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)));
        let sync = s.backlog.push(message, expires_at)?;
        dispatch_at(self, &mut s, dead, now);
        if let Some(now) = now {
            expire_head(&mut s, now, dead);
        }
        if args.overflow == Overflow::DropHead {
            while args.max_length.is_some_and(|m| s.backlog.ready_count() > m)
                || args
                    .max_length_bytes
                    .is_some_and(|m| s.backlog.ready_bytes() > m)
            {
                let Some(ready) = s.backlog.pop() else { break };
                s.backlog.settle(ready.position);
                dead.push(DeadLetter {
                    message: ready.message,
                    reason: DeathReason::MaxLen,
                });
            }
        }
        let mut sync = sync;
        if let Some(sync) = &mut sync {
            // Consumers' acks can make the confirm safe before the fsync does only if there is a consumer to
            // ack it and nothing it becomes is kept elsewhere (a dead-lettered copy is only as safe as the
            // original's durability). A consumer that lags makes the settle waits time out, and then the queue's
            // next waits skip them (see `SettledProgress::skipping`). (Requiring the message to have gone
            // straight to a consumer, as first built, left out most messages at the maximum rate, where the
            // consumer's prefetch is full at enqueue and frees a moment later: with any consumer, broker CPU per
            // persistent confirmed message −3 % and −12 % in two interleaved runs, throughput +5 % / +21 %.)
            if s.consumers.is_empty() || args.dead_letter_exchange.is_some() {
                sync.durable_only();
            }
        }
        journal_later(self, &mut s);
        Ok(Some(sync))
    }

    /// Puts a delivered message back at its original position, marked redelivered, and releases the
    /// consumer's credit.
    pub fn requeue(
        self: &Arc<Self>,
        consumer: Option<ConsumerId>,
        position: u64,
        message: Arc<Message>,
        expires_at: Option<i64>,
    ) {
        let mut dead = Vec::new();
        {
            let mut s = self.state.lock();
            release_credit(&mut s, consumer);
            if s.deleted {
                return;
            }
            if expires_at.is_some() {
                self.may_expire.store(true, Ordering::Relaxed);
            }
            s.backlog.requeue(position, message, expires_at);
            dispatch(self, &mut s, &mut dead);
            journal_later(self, &mut s);
        }
        self.dead_letter(dead);
    }

    /// Deliveries were acknowledged or rejected: each `(consumer, position, message)` releases its
    /// consumer's credit and is settled for good (journaled, for a durable queue: one record for the lot);
    /// rejected ones are dead-lettered if the queue has a dead-letter exchange.
    pub fn settle(
        self: &Arc<Self>,
        how: Settle,
        settled: &[(Option<ConsumerId>, u64, Arc<Message>)],
    ) {
        let mut dead = Vec::new();
        {
            let mut s = self.state.lock();
            for (consumer, position, message) in settled {
                release_credit(&mut s, *consumer);
                if !s.deleted {
                    s.backlog.settle(*position);
                    if how == Settle::Reject {
                        dead.push(DeadLetter {
                            message: Arc::clone(message),
                            reason: DeathReason::Rejected,
                        });
                    }
                }
            }
            dispatch(self, &mut s, &mut dead);
            journal_later(self, &mut s);
        }
        self.dead_letter(dead);
    }

    /// Drops expired messages at the head (RabbitMQ expires messages only there); called by the vhost's
    /// timer.
    pub(super) fn expire(self: &Arc<Self>, now: i64) {
        if !self.may_expire.load(Ordering::Relaxed) {
            return;
        }
        let mut dead = Vec::new();
        {
            let mut s = self.state.lock();
            if s.deleted {
                return;
            }
            expire_head(&mut s, now, &mut dead);
            // Nothing left that could expire: the timer stops looking at this queue until a message with a
            // TTL comes in or back (`enqueue`, `requeue`; both set the flag under this lock). A vhost of many
            // idle queues then costs nothing per tick, also after a restart, which flags every durable queue.
            if s.backlog.ready_count() == 0 && self.spec.arguments.message_ttl_ms.is_none() {
                self.may_expire.store(false, Ordering::Relaxed);
            }
            journal_later(self, &mut s);
        }
        self.dead_letter(dead);
    }

    /// Dispatches again: a consumer's gate opened (its connection drained, its channel's flow or global
    /// prefetch allows more).
    pub fn kick(self: &Arc<Self>) {
        let mut dead = Vec::new();
        {
            let mut s = self.state.lock();
            if s.deleted {
                return;
            }
            dispatch(self, &mut s, &mut dead);
            journal_later(self, &mut s);
        }
        self.dead_letter(dead);
    }

    /// Hands `dead` to the vhost for dead-lettering (no lock may be held).
    pub(super) fn dead_letter(&self, dead: Vec<DeadLetter>) {
        if dead.is_empty() {
            return;
        }
        if let Some(vhost) = self.vhost.upgrade() {
            vhost.dead_letter(self, dead, 0);
        }
    }

    /// Journal flush and maintenance work for a durable queue (run outside the lock: it may fsync).
    pub(super) fn maintenance(&self) -> Option<Maintenance> {
        let mut s = self.state.lock();
        if s.deleted {
            return None;
        }
        match &mut s.backlog {
            Backlog::Log(l) => l.maintenance(),
            Backlog::Memory(_) => None,
        }
    }
}

fn release_credit(s: &mut QueueState, consumer: Option<ConsumerId>) {
    if let Some(id) = consumer {
        if let Some(c) = s.consumers.iter_mut().find(|c| c.id == id) {
            c.unacked = c.unacked.saturating_sub(1);
        }
    }
}

/// Queues `queue`'s new journal facts for the vhost's next journal flush (every [`TIMER_INTERVAL`], and at
/// shutdown). Nothing waits on the journal, so one record per queue per tick replaces one or two per message.
pub(super) fn journal_later(queue: &Arc<Queue>, s: &mut QueueState) {
    if s.backlog.journal_dirty() && !queue.journal_queued.swap(true, Ordering::Relaxed) {
        if let Some(vhost) = queue.vhost.upgrade() {
            vhost.dirty_journals.lock().push(Arc::clone(queue));
        }
    }
}

/// Drops every message at the head whose expiry has passed, into `dead` (reason `expired`).
pub(super) fn expire_head(s: &mut QueueState, now: i64, dead: &mut Vec<DeadLetter>) {
    while let Some(Some(at)) = s.backlog.head_expiry() {
        if at > now {
            return;
        }
        let Some(ready) = s.backlog.pop() else { return };
        s.backlog.settle(ready.position);
        dead.push(DeadLetter {
            message: ready.message,
            reason: DeathReason::Expired,
        });
    }
}

/// The consumer to serve next: among those with credit, the highest `x-priority`, round-robin from the
/// last one served; a single-active-consumer queue serves only its first consumer.
fn pick_consumer(s: &QueueState, single_active: bool) -> Option<usize> {
    if single_active {
        return s.consumers.first().filter(|c| c.has_credit()).map(|_| 0);
    }
    let top = s
        .consumers
        .iter()
        .filter(|c| c.has_credit())
        .map(|c| c.priority)
        .max()?;
    let n = s.consumers.len();
    let start = s.next_consumer % n;
    (0..n).map(|k| (start + k) % n).find(|&i| {
        s.consumers
            .get(i)
            .is_some_and(|c| c.has_credit() && c.priority == top)
    })
}

/// Hands ready messages to consumers with credit until either runs out, dropping expired ones on the way. A
/// consumer whose connection is gone is dropped and its message stays ready.
pub(super) fn dispatch(queue: &Arc<Queue>, s: &mut QueueState, dead: &mut Vec<DeadLetter>) {
    dispatch_at(queue, s, dead, queue.expiry_clock());
}

/// [`dispatch`] with the clock read by the caller (`None`: the queue holds nothing that expires).
fn dispatch_at(
    queue: &Arc<Queue>,
    s: &mut QueueState,
    dead: &mut Vec<DeadLetter>,
    now: Option<i64>,
) {
    if s.consumers.is_empty() {
        return;
    }
    let single_active = queue.spec.arguments.single_active_consumer;
    while s.backlog.ready_count() > 0 {
        let Some(index) = pick_consumer(s, single_active) else {
            return;
        };
        // Only what expired before `now`: a message whose TTL is 0 (its expiry is `now` of its enqueue) goes to
        // a consumer that can take it at once, and is dropped only if none can (RabbitMQ's "now or never";
        // `enqueue` expires it).
        if let Some(now) = now {
            expire_head(s, now.saturating_sub(1), dead);
        }
        let Some(ready) = s.backlog.pop() else {
            return;
        };
        let remaining = u32::try_from(s.backlog.ready_count()).unwrap_or(u32::MAX);
        let Some(consumer) = s.consumers.get_mut(index) else {
            s.backlog.unpop(ready);
            return;
        };
        let delivery = Delivery {
            queue: Arc::clone(queue),
            consumer: Some(consumer.id),
            consumer_tag: Arc::clone(&consumer.tag),
            message: Arc::clone(&ready.message),
            redelivered: ready.redelivered,
            position: ready.position,
            expires_at: ready.expires_at,
            remaining,
        };
        if consumer
            .sink
            .send((consumer.channel, QueueEvent::Deliver(delivery)))
            .is_err()
        {
            // The connection is gone; its close will cancel the rest. Keep the message.
            s.consumers.remove(index);
            s.backlog.unpop(ready);
            if s.consumers.is_empty() {
                return;
            }
            continue;
        }
        consumer
            .gate
            .delivered(ready.message.body.len() as u64, !consumer.no_ack);
        if consumer.no_ack {
            // Settled as it leaves: nothing will acknowledge it.
            s.backlog.settle(ready.position);
        } else {
            consumer.unacked += 1;
        }
        s.next_consumer = index + 1;
    }
}
