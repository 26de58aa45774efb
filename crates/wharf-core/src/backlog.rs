//! The ready messages of one queue, in memory or on the log engine.
//!
//! A non-durable queue keeps its messages in memory ([`MemoryBacklog`]: one FIFO, or one per priority level
//! for `x-max-priority`). A durable queue keeps them in its message log ([`LogBacklog`], layout in
//! [`crate::queue_log`]) and holds in memory only:
//! - for a plain queue, a read-ahead **window** of the next messages (bounded by [`WINDOW_MESSAGES_MAX`] /
//!   [`WINDOW_BYTES_MAX`]); while consumers keep up, a published message goes straight into it and is never
//!   read back. So a backlog of millions of messages costs nothing per message in memory: it waits in the log;
//! - for a priority queue, an index of ready positions per priority level (16 bytes a message), the
//!   messages themselves being read from the log one at a time as they are delivered;
//! - the **requeued** messages (rejected or returned by a closed channel), which go out first;
//! - range sets of **settled** and **transient** positions, and three watermarks.
//!
//! Every change that must survive a restart is journaled (see [`LogBacklog::flush_journal`]); recovery
//! replays the journal and starts reading at the low watermark.
//!
//! Positions: a message's position is its offset in the message log (or a counter, in memory). Everything
//! below the **low watermark** is settled; a position at or above it is exactly one of: unread in the log
//! (at or past the cursor), in the window or index, requeued, out with a consumer, or settled.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::{info, warn};
use wharf_log::{Appended, Log};

use crate::flow::MemoryGauge;
use crate::queue_log::{decode_message, encode_message, JournalRecord, QueueLogs};
use crate::queues::Message;
use crate::range_set::RangeSet;

/// Most messages read ahead into a durable queue's window.
pub const WINDOW_MESSAGES_MAX: usize = 1024;
/// Most body bytes held in a durable queue's window (one larger message is always admitted).
pub const WINDOW_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Bytes asked of the log per read-ahead.
const READ_BYTES: usize = 256 * 1024;
/// Journal bytes after which the next maintenance writes a snapshot and drops older records.
const JOURNAL_COMPACT_BYTES: u64 = 1024 * 1024;
/// A scratch encoding buffer larger than this is dropped after use instead of kept for the next message.
const SCRATCH_KEEP_BYTES: usize = 256 * 1024;

/// A message ready for delivery.
#[derive(Debug)]
pub(crate) struct Ready {
    pub position: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// When it expires in this queue (ms since the epoch).
    pub expires_at: Option<i64>,
}

/// The level a message goes to in a queue with `max_priority` levels above 0 (RabbitMQ caps priorities
/// above the maximum at the maximum).
fn level_of(priority: u8, max_priority: Option<u8>) -> usize {
    max_priority.map_or(0, |max| usize::from(priority.min(max)))
}

fn body_len(message: &Message) -> u64 {
    message.body.len() as u64
}

/// What a publisher must wait for before its message counts as safe: the message log up to an offset,
/// made durable as the log's policy says — or, where the queue allows it, every message below that offset
/// settled first (consumed and acknowledged: RabbitMQ's rule, "a persistent message is confirmed when it is on
/// disk or consumed on every queue it reached"). Merged over all queues a message reached.
///
/// The first log is held inline: nearly every persistent message reaches one durable queue, and a list per
/// message was an allocation per publish.
#[derive(Debug, Default, Clone)]
pub struct PendingSync {
    first: Option<SyncTarget>,
    rest: Vec<SyncTarget>,
}

/// One queue log's part of a [`PendingSync`].
#[derive(Debug, Clone)]
struct SyncTarget {
    log: Arc<Log>,
    /// Every offset below must be durable (or settled, see `settled`).
    next_offset: u64,
    /// The queue's settled progress, when settling everything below `next_offset` also makes the messages
    /// safe (a queue without dead-lettering that had a consumer when they were enqueued): the wait first
    /// gives the consumers' acks a chance to resolve it without an fsync.
    settled: Option<Arc<SettledProgress>>,
}

impl PendingSync {
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn add_target(&mut self, target: SyncTarget) {
        let Some(first) = &mut self.first else {
            self.first = Some(target);
            return;
        };
        match std::iter::once(first)
            .chain(self.rest.iter_mut())
            .find(|t| Arc::ptr_eq(&t.log, &target.log))
        {
            Some(t) => {
                t.next_offset = t.next_offset.max(target.next_offset);
                // Settling can resolve the merged wait only if it could resolve both.
                if target.settled.is_none() {
                    t.settled = None;
                }
            }
            None => self.rest.push(target),
        }
    }

    /// Folds `other` in (the furthest target per log).
    pub fn merge(&mut self, other: PendingSync) {
        for target in other.first.into_iter().chain(other.rest) {
            self.add_target(target);
        }
    }

    /// From now on only durability resolves this wait (a message of it is still waiting in its queue, or the
    /// queue dead-letters: a dead-lettered copy is not safe before the original is durable).
    pub(crate) fn durable_only(&mut self) {
        for target in self.first.iter_mut().chain(self.rest.iter_mut()) {
            target.settled = None;
        }
    }

    /// Waits until every target is as durable as its log's policy requires (`always`: fdatasync'ed,
    /// group-committed with every other waiter of the log) — or, for a target whose queue had consumers for
    /// its messages, until they are all settled, if that happens within `settle_wait` (then no fsync is
    /// started for it: a consumer that keeps up acks a message well before a group-commit round would end).
    /// A zero `settle_wait` waits for durability only.
    pub async fn wait(self, settle_wait: std::time::Duration) -> crate::Result<()> {
        let now = tokio::time::Instant::now();
        let deadline = now.checked_add(settle_wait).unwrap_or(now);
        for target in self.first.into_iter().chain(self.rest) {
            if let Some(settled) = &target.settled {
                if !settle_wait.is_zero()
                    && target.log.waits_for_sync(target.next_offset)
                    && !settled.skipping()
                    && settled.wait_through(target.next_offset, deadline).await
                {
                    // Unsynced and confirmed: the log manager syncs it soon, so a later wait's sync stays short.
                    target.log.owe_sync();
                    continue;
                }
            }
            target.log.wait_for_policy_async(target.next_offset).await?;
        }
        Ok(())
    }
}

/// A durable queue's low watermark (every position below it settled), readable without the queue's lock, and
/// the confirm waits watching it (see [`PendingSync::wait`]). Each wait registers the position it needs and is
/// woken once, when the watermark passes it: a queue with many publishing connections must not wake all their
/// waits on every ack.
#[derive(Debug)]
pub(crate) struct SettledProgress {
    low: AtomicU64,
    /// The smallest position a registered wait needs (`u64::MAX`: none), so that an ack that reaches none of
    /// them costs one atomic read, not the lock.
    next_wake: AtomicU64,
    /// Registered waits: the position each needs, and its wake-up.
    waiting: Mutex<Vec<(u64, Arc<Notify>)>>,
    /// Settle waits that ran out of time in a row (reset by one that did not).
    timeouts: AtomicU32,
    /// Waits still to go straight to the sync: consumers that hold messages (slow work, out-of-order acks) would
    /// otherwise add the whole settle wait to every confirm (see [`SETTLE_TIMEOUTS_BEFORE_SKIPPING`]).
    skip: AtomicU32,
}

/// Settle waits timed out in a row after which a queue's next [`SETTLE_WAITS_SKIPPED`] confirm waits go straight
/// to the sync; the one after that tries again.
const SETTLE_TIMEOUTS_BEFORE_SKIPPING: u32 = 2;
/// See [`SETTLE_TIMEOUTS_BEFORE_SKIPPING`].
const SETTLE_WAITS_SKIPPED: u32 = 32;

impl SettledProgress {
    fn new(low: u64) -> Self {
        SettledProgress {
            low: AtomicU64::new(low),
            next_wake: AtomicU64::new(u64::MAX),
            waiting: Mutex::new(Vec::new()),
            timeouts: AtomicU32::new(0),
            skip: AtomicU32::new(0),
        }
    }

    /// The low watermark moved up to `low` (called under the queue's lock): wakes the waits it passed.
    fn advance(&self, low: u64) {
        // SeqCst here and in `wait_through_inner`: the store of `low` and the read of `next_wake` must not pass
        // each other, or a wait registering just then could miss both the new value and its wake-up.
        self.low.store(low, Ordering::SeqCst);
        if self.next_wake.load(Ordering::SeqCst) > low {
            return;
        }
        let mut waiting = self.waiting.lock();
        let mut next = u64::MAX;
        waiting.retain(|(needs, wake)| {
            if *needs <= low {
                // A permit if the wait is not parked yet: it cannot miss this.
                wake.notify_one();
                false
            } else {
                next = next.min(*needs);
                true
            }
        });
        self.next_wake.store(next, Ordering::SeqCst);
    }

    /// Whether this wait should go straight to the sync (recent settle waits of the queue timed out); counts it.
    fn skipping(&self) -> bool {
        self.skip
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Records how a settle wait ended (see [`SETTLE_TIMEOUTS_BEFORE_SKIPPING`]).
    fn record(&self, settled: bool) -> bool {
        if settled {
            self.timeouts.store(0, Ordering::Relaxed);
        } else if self.timeouts.fetch_add(1, Ordering::Relaxed) + 1
            >= SETTLE_TIMEOUTS_BEFORE_SKIPPING
        {
            self.timeouts.store(0, Ordering::Relaxed);
            self.skip.store(SETTLE_WAITS_SKIPPED, Ordering::Relaxed);
        }
        settled
    }

    /// Waits until every position below `end` is settled (true) or `deadline` passes (false).
    async fn wait_through(&self, end: u64, deadline: tokio::time::Instant) -> bool {
        let settled = self.wait_through_inner(end, deadline).await;
        self.record(settled)
    }

    async fn wait_through_inner(&self, end: u64, deadline: tokio::time::Instant) -> bool {
        if self.low.load(Ordering::SeqCst) >= end {
            return true;
        }
        let wake = Arc::new(Notify::new());
        {
            let mut waiting = self.waiting.lock();
            waiting.push((end, Arc::clone(&wake)));
            self.next_wake.fetch_min(end, Ordering::SeqCst);
        }
        let _registered = Registered {
            progress: self,
            wake: &wake,
        };
        // Checked after registering: an advance before it is seen here, one after it wakes this wait.
        if self.low.load(Ordering::SeqCst) >= end {
            return true;
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
        self.low.load(Ordering::SeqCst) >= end
    }
}

/// Takes a wait off [`SettledProgress::waiting`] however it ends (done, timed out or dropped). `next_wake` may
/// stay below what is left: the next advance past it takes the lock once and recomputes it.
struct Registered<'a> {
    progress: &'a SettledProgress,
    wake: &'a Arc<Notify>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.progress
            .waiting
            .lock()
            .retain(|(_, wake)| !Arc::ptr_eq(wake, self.wake));
    }
}

/// A queue's ready messages.
#[derive(Debug)]
pub(crate) enum Backlog {
    Memory(MemoryBacklog),
    Log(Box<LogBacklog>),
}

impl Backlog {
    /// An in-memory backlog whose bytes count against `gauge` (if any).
    pub fn memory(max_priority: Option<u8>, gauge: Option<Arc<MemoryGauge>>) -> Self {
        Backlog::Memory(MemoryBacklog::new(max_priority, gauge))
    }

    /// Enqueues a message that expires at `expires_at`; returns what a publisher must wait for (nothing for
    /// memory or transient).
    pub fn push(
        &mut self,
        message: Arc<Message>,
        expires_at: Option<i64>,
    ) -> crate::Result<Option<PendingSync>> {
        match self {
            Backlog::Memory(m) => {
                m.push(message, expires_at);
                Ok(None)
            }
            Backlog::Log(l) => l.push(message, expires_at),
        }
    }

    /// The next message to deliver; it counts as delivered from now on (use [`Backlog::unpop`] if it
    /// could not be handed out).
    pub fn pop(&mut self) -> Option<Ready> {
        match self {
            Backlog::Memory(m) => m.pop(),
            Backlog::Log(l) => l.pop(),
        }
    }

    /// Puts back a message [`Backlog::pop`] gave that could not be delivered after all.
    pub fn unpop(&mut self, ready: Ready) {
        match self {
            Backlog::Memory(m) => m.unpop(ready),
            Backlog::Log(l) => l.unpop(ready),
        }
    }

    /// When the next message to deliver expires: `None` if there is none, `Some(None)` if it never does.
    pub fn head_expiry(&mut self) -> Option<Option<i64>> {
        match self {
            Backlog::Memory(m) => m.head().map(|r| r.expires_at),
            Backlog::Log(l) => l.head_expiry(),
        }
    }

    /// A delivered message comes back (nack / reject with requeue, channel closed): it goes out again
    /// before the rest (of its priority), at its original position, marked redelivered.
    pub fn requeue(&mut self, position: u64, message: Arc<Message>, expires_at: Option<i64>) {
        match self {
            Backlog::Memory(m) => m.requeue(position, message, expires_at),
            Backlog::Log(l) => l.requeue(position, message, expires_at),
        }
    }

    /// A delivered message is done with (acknowledged, rejected without requeue, expired, dropped).
    pub fn settle(&mut self, position: u64) {
        if let Backlog::Log(l) = self {
            l.settle(position);
        }
    }

    pub fn ready_count(&self) -> u64 {
        match self {
            Backlog::Memory(m) => m.count,
            Backlog::Log(l) => l.ready_count(),
        }
    }

    /// Body bytes of the ready messages.
    pub fn ready_bytes(&self) -> u64 {
        match self {
            Backlog::Memory(m) => m.bytes,
            Backlog::Log(l) => l.bytes,
        }
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&mut self) -> u64 {
        match self {
            Backlog::Memory(m) => {
                let n = m.count;
                for level in &mut m.levels {
                    level.clear();
                }
                m.count = 0;
                m.set_bytes(0);
                n
            }
            Backlog::Log(l) => l.purge(),
        }
    }

    /// Whether there are facts to journal.
    pub fn journal_dirty(&self) -> bool {
        matches!(self, Backlog::Log(l) if l.journal_dirty)
    }

    /// Writes what changed since the last call to the journal (durable queues only).
    pub fn flush_journal(&mut self) {
        if let Backlog::Log(l) = self {
            l.flush_journal();
        }
    }
}

/// Ready messages of a non-durable queue: one FIFO per priority level, each ordered by position.
#[derive(Debug)]
pub(crate) struct MemoryBacklog {
    levels: Vec<VecDeque<Ready>>,
    max_priority: Option<u8>,
    count: u64,
    /// Body bytes held; mirrored into `gauge`.
    bytes: u64,
    gauge: Option<Arc<MemoryGauge>>,
    next_position: u64,
}

impl Drop for MemoryBacklog {
    fn drop(&mut self) {
        self.set_bytes(0);
    }
}

impl MemoryBacklog {
    fn new(max_priority: Option<u8>, gauge: Option<Arc<MemoryGauge>>) -> Self {
        let levels = max_priority.map_or(1, |m| usize::from(m) + 1);
        Self {
            levels: (0..levels).map(|_| VecDeque::new()).collect(),
            max_priority,
            count: 0,
            bytes: 0,
            gauge,
            next_position: 0,
        }
    }

    /// Sets the bytes held, telling the gauge the difference.
    fn set_bytes(&mut self, bytes: u64) {
        if let Some(gauge) = &self.gauge {
            if bytes > self.bytes {
                gauge.add(bytes - self.bytes);
            } else {
                gauge.sub(self.bytes - bytes);
            }
        }
        self.bytes = bytes;
    }

    fn level(&mut self, message: &Message) -> &mut VecDeque<Ready> {
        let at = level_of(message.priority, self.max_priority).min(self.levels.len() - 1);
        &mut self.levels[at]
    }

    fn push(&mut self, message: Arc<Message>, expires_at: Option<i64>) {
        let position = self.next_position;
        self.next_position += 1;
        self.count += 1;
        self.set_bytes(self.bytes + body_len(&message));
        self.level(&message).push_back(Ready {
            position,
            message,
            redelivered: false,
            expires_at,
        });
    }

    fn head(&self) -> Option<&Ready> {
        self.levels.iter().rev().find_map(|l| l.front())
    }

    fn pop(&mut self) -> Option<Ready> {
        let ready = self.levels.iter_mut().rev().find_map(|l| l.pop_front())?;
        self.count -= 1;
        self.set_bytes(self.bytes.saturating_sub(body_len(&ready.message)));
        Some(ready)
    }

    fn unpop(&mut self, ready: Ready) {
        self.count += 1;
        self.set_bytes(self.bytes + body_len(&ready.message));
        self.level(&ready.message).push_front(ready);
    }

    fn requeue(&mut self, position: u64, message: Arc<Message>, expires_at: Option<i64>) {
        self.count += 1;
        self.set_bytes(self.bytes + body_len(&message));
        let level = self.level(&message);
        let at = level.partition_point(|r| r.position < position);
        level.insert(
            at,
            Ready {
                position,
                message,
                redelivered: true,
                expires_at,
            },
        );
    }
}

/// A ready message of a durable priority queue: position, expiry, and whether it was delivered before (a
/// requeued message goes back into its own level, as in RabbitMQ, and comes out marked redelivered).
type IndexEntry = (u64, Option<i64>, bool);

/// How a durable queue finds its next message.
#[derive(Debug)]
enum Order {
    /// In log order: messages past `cursor` are read ahead into a bounded window.
    Fifo {
        window: VecDeque<Ready>,
        window_bytes: usize,
    },
    /// By priority: every ready position is indexed, with its expiry, by level.
    Priority {
        levels: Vec<VecDeque<IndexEntry>>,
        max_priority: u8,
        count: u64,
    },
}

/// What [`LogBacklog::open`] needs to know about the queue.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OpenOptions {
    /// `x-max-priority`: index by priority.
    pub max_priority: Option<u8>,
    /// The queue has a byte limit: count the bytes of a recovered backlog (reads it once at open).
    pub count_bytes: bool,
}

/// Ready messages of a durable queue: see the module docs.
#[derive(Debug)]
pub(crate) struct LogBacklog {
    messages: Arc<Log>,
    journal: Arc<Log>,
    order: Order,
    /// Next position to read from the message log (FIFO order; the log end in priority order).
    cursor: u64,
    /// The message log's end as of the last append.
    end: u64,
    /// The log end at open: transient messages below it are from before the restart and are dropped.
    recovered_end: u64,
    requeued: BTreeMap<u64, (Arc<Message>, Option<i64>)>,
    /// Body bytes of ready messages (after a restart, exact only if counted at open).
    bytes: u64,
    /// Settled positions at or above `low`.
    settled: RangeSet,
    /// How many of `settled` are at or above `cursor` (settled before a restart and not read since).
    settled_ahead: u64,
    /// Positions holding transient messages, at or above `low`.
    transient: RangeSet,
    /// Every position below is settled.
    low: u64,
    /// Every position below was delivered at least once.
    delivered_high: u64,
    /// Unsettled positions below this were delivered before the restart: they come back redelivered.
    redelivered_below: u64,
    /// Facts not journaled yet.
    pending: JournalRecord,
    journal_dirty: bool,
    journal_bytes_since_snapshot: u64,
    /// Set when reading the log failed: the queue stops reading (and says so once) rather than spin.
    stalled: bool,
    scratch: Vec<u8>,
    /// `low`, shared with confirm waits (see [`PendingSync::wait`]).
    progress: Arc<SettledProgress>,
}

/// Work a durable queue's maintenance does outside the queue's lock (it fsyncs).
#[derive(Debug)]
pub(crate) struct Maintenance {
    messages: Arc<Log>,
    journal: Arc<Log>,
    low: u64,
    snapshot: Option<Appended>,
    /// The queue was drained with at least [`DRAINED_ROLL_BYTES`] in the active message segment: roll it, so
    /// that its space comes back now instead of after another segment's worth of traffic.
    roll: bool,
}

/// A drained durable queue whose active message segment holds this much rolls it, so that a queue that is
/// empty keeps at most this much of consumed messages on disk (segments are [`crate::queue_log::MESSAGE_SEGMENT_BYTES`]).
/// Maintenance runs once a second, so a busy queue that keeps draining rolls at most once a second.
pub(crate) const DRAINED_ROLL_BYTES: u64 = 1024 * 1024;

impl Maintenance {
    /// Makes the snapshot durable, drops the journal records before it, and gives back the space of message
    /// segments wholly below the low watermark.
    pub fn run(self) -> crate::Result<()> {
        if let Some(snapshot) = self.snapshot {
            self.journal.wait_durable(snapshot.next_offset)?;
            self.journal.advance_log_start(snapshot.base_offset)?;
        }
        if self.roll {
            self.messages.roll()?;
        }
        if self.low > self.messages.offsets().log_start {
            self.messages.advance_log_start(self.low)?;
        } else if self.roll {
            // The start was already at `low`: only the segment just sealed is newly below it.
            self.messages.apply_retention(crate::now_ms())?;
        }
        Ok(())
    }
}

/// Keeps the ranges of `set` below `end` only.
fn cut_at(set: &mut RangeSet, end: u64) {
    if set.count_in(end, u64::MAX) == 0 {
        return;
    }
    let kept: Vec<(u64, u64)> = set
        .iter()
        .filter(|&(s, _)| s < end)
        .map(|(s, e)| (s, e.min(end)))
        .collect();
    *set = RangeSet::new();
    for (s, e) in kept {
        set.insert_range(s, e);
    }
}

impl LogBacklog {
    /// Opens queue `id`'s logs and rebuilds its state from the journal (and, for priority queues or byte
    /// limits, from one read of the backlog).
    pub fn open(logs: &QueueLogs, id: u64, options: OpenOptions) -> crate::Result<Self> {
        let (messages, journal) = logs.open(id)?;
        let offsets = messages.offsets();
        let end = offsets.log_end;
        let mut facts = JournalRecord::default();
        let mut from = journal.offsets().log_start;
        let journal_end = journal.offsets().log_end;
        while from < journal_end {
            let batches = journal.read(from, 1024 * 1024, None)?;
            let Some(last) = batches.last() else { break };
            from = last.next_offset();
            for batch in &batches {
                match JournalRecord::decode(&batch.payload) {
                    Ok(record) => facts.absorb(&record),
                    Err(e) => warn!(
                        log = journal.name(),
                        offset = batch.base_offset,
                        "skipping a journal record: {e}"
                    ),
                }
            }
        }
        // The journal may know positions the message log lost (an unsynced tail lost in a crash): those
        // positions will be reused by new messages, so facts about them are dropped here, and the snapshot
        // written below replaces every older record.
        let mut low = facts.low.max(offsets.log_start).min(end);
        let mut settled = facts.settled;
        settled.union_with(&facts.transient);
        let mut transient = facts.transient;
        for set in [&mut settled, &mut transient] {
            set.remove_below(low);
            cut_at(set, end);
        }
        while let Some((s, e)) = settled.first() {
            if s != low {
                break;
            }
            low = e;
            settled.remove_below(e);
        }
        transient.remove_below(low);
        let delivered_high = facts.delivered_high.min(end);
        let order = match options.max_priority {
            Some(max_priority) => Order::Priority {
                levels: (0..=max_priority).map(|_| VecDeque::new()).collect(),
                max_priority,
                count: 0,
            },
            None => Order::Fifo {
                window: VecDeque::new(),
                window_bytes: 0,
            },
        };
        let mut backlog = LogBacklog {
            order,
            cursor: low,
            end,
            recovered_end: end,
            requeued: BTreeMap::new(),
            bytes: 0,
            settled_ahead: settled.len(),
            settled,
            transient,
            low,
            delivered_high,
            redelivered_below: delivered_high,
            pending: JournalRecord::default(),
            journal_dirty: false,
            journal_bytes_since_snapshot: 0,
            stalled: false,
            scratch: Vec::new(),
            progress: Arc::new(SettledProgress::new(low)),
            messages,
            journal,
        };
        if options.max_priority.is_some() || options.count_bytes {
            backlog.scan()?;
        }
        if end > offsets.log_start || journal_end > 0 {
            let maintenance = backlog.snapshot();
            if maintenance.snapshot.is_none() {
                // The snapshot must replace every older record (some may describe positions a torn tail
                // lost, which new messages will reuse): without it, refuse to open rather than risk that.
                return Err(crate::CoreError::Log(wharf_log::LogError::Failed {
                    name: backlog.journal.name().to_string(),
                    reason: "cannot write the journal snapshot at open".into(),
                }));
            }
            maintenance.run()?;
            info!(
                queue_log = backlog.messages.name(),
                ready = backlog.ready_count(),
                "durable queue recovered"
            );
        }
        Ok(backlog)
    }

    /// Reads the recovered backlog once: counts its bytes and, in priority order, indexes it.
    fn scan(&mut self) -> crate::Result<()> {
        let mut at = self.cursor;
        while at < self.end {
            let batches = self.messages.read(at, READ_BYTES, None)?;
            let Some(last) = batches.last() else { break };
            at = last.next_offset();
            for batch in batches {
                let position = batch.base_offset;
                if position < self.cursor || self.settled.contains(position) {
                    continue;
                }
                match decode_message(&batch.payload) {
                    Ok((m, _)) if !m.persistent => self.settle(position),
                    Ok((m, expires_at)) => {
                        self.bytes += body_len(&m);
                        if let Order::Priority {
                            levels,
                            max_priority,
                            count,
                        } = &mut self.order
                        {
                            let level = level_of(m.priority, Some(*max_priority));
                            if let Some(l) = levels.get_mut(level) {
                                l.push_back((position, expires_at, false));
                                *count += 1;
                            }
                        }
                    }
                    Err(e) => {
                        warn!(
                            log = self.messages.name(),
                            position, "dropping a message record that does not decode: {e}"
                        );
                        self.settle(position);
                    }
                }
            }
        }
        if matches!(self.order, Order::Priority { .. }) {
            // Everything is indexed: nothing is left to read in log order.
            self.cursor = self.end;
            self.settled_ahead = 0;
        } else {
            // The scan may have settled positions past the cursor (transient messages from before the
            // restart, records that do not decode): count them as `refill` will skip them.
            self.settled_ahead = self.settled.count_in(self.cursor, self.end);
        }
        Ok(())
    }

    fn push(
        &mut self,
        message: Arc<Message>,
        expires_at: Option<i64>,
    ) -> crate::Result<Option<PendingSync>> {
        encode_message(&message, expires_at, &mut self.scratch);
        let appended = self.messages.append(&self.scratch, 1, crate::now_ms());
        if self.scratch.capacity() > SCRATCH_KEEP_BYTES {
            self.scratch = Vec::new();
        }
        let appended = appended?;
        let position = appended.base_offset;
        self.end = appended.next_offset;
        self.bytes += body_len(&message);
        if !message.persistent {
            self.transient.insert(position);
            self.pending.transient.insert(position);
            self.journal_dirty = true;
        }
        let persistent = message.persistent;
        match &mut self.order {
            Order::Fifo {
                window,
                window_bytes,
            } => {
                if self.cursor == position
                    && window.len() < WINDOW_MESSAGES_MAX
                    && (*window_bytes < WINDOW_BYTES_MAX || window.is_empty())
                {
                    *window_bytes += message.body.len();
                    window.push_back(Ready {
                        position,
                        message,
                        redelivered: false,
                        expires_at,
                    });
                    self.cursor = appended.next_offset;
                }
            }
            Order::Priority {
                levels,
                max_priority,
                count,
            } => {
                let level = level_of(message.priority, Some(*max_priority));
                if let Some(l) = levels.get_mut(level) {
                    l.push_back((position, expires_at, false));
                    *count += 1;
                }
                self.cursor = appended.next_offset;
            }
        }
        Ok(persistent.then(|| {
            let mut sync = PendingSync::default();
            sync.add_target(SyncTarget {
                log: Arc::clone(&self.messages),
                next_offset: appended.next_offset,
                settled: Some(Arc::clone(&self.progress)),
            });
            sync
        }))
    }

    fn head_expiry(&mut self) -> Option<Option<i64>> {
        if let Some((_, (_, expires_at))) = self.requeued.first_key_value() {
            return Some(*expires_at);
        }
        if let Order::Fifo { window, .. } = &self.order {
            if window.is_empty() {
                self.refill();
            }
        }
        match &self.order {
            Order::Fifo { window, .. } => window.front().map(|r| r.expires_at),
            Order::Priority { levels, .. } => levels
                .iter()
                .rev()
                .find_map(|l| l.front())
                .map(|&(_, e, _)| e),
        }
    }

    fn pop(&mut self) -> Option<Ready> {
        let ready = if let Some((position, (message, expires_at))) = self.requeued.pop_first() {
            Ready {
                position,
                message,
                redelivered: true,
                expires_at,
            }
        } else {
            match &mut self.order {
                Order::Fifo { window, .. } => {
                    if window.is_empty() {
                        self.refill();
                    }
                    let Order::Fifo {
                        window,
                        window_bytes,
                    } = &mut self.order
                    else {
                        return None;
                    };
                    let ready = window.pop_front()?;
                    *window_bytes = window_bytes.saturating_sub(ready.message.body.len());
                    ready
                }
                Order::Priority { .. } => self.pop_indexed()?,
            }
        };
        self.bytes = self.bytes.saturating_sub(body_len(&ready.message));
        if ready.position >= self.delivered_high {
            self.delivered_high = ready.position + 1;
            self.journal_dirty = true;
        }
        Some(ready)
    }

    /// Priority order: the oldest message of the highest non-empty level, read from the log.
    fn pop_indexed(&mut self) -> Option<Ready> {
        loop {
            let Order::Priority { levels, count, .. } = &mut self.order else {
                return None;
            };
            let level = levels.iter().rposition(|l| !l.is_empty())?;
            let (position, expires_at, again) = levels.get_mut(level)?.pop_front()?;
            *count -= 1;
            let batch = match self.messages.read(position, 1, Some(position + 1)) {
                Ok(mut batches) => batches.pop(),
                Err(e) => {
                    // Possibly passing (an I/O error): keep the message where it was and stop here rather
                    // than drop a confirmed message for good; the next dispatch tries again.
                    warn!(
                        log = self.messages.name(),
                        position, "cannot read a queued message now: {e}"
                    );
                    if let Order::Priority { levels, count, .. } = &mut self.order {
                        if let Some(l) = levels.get_mut(level) {
                            l.push_front((position, expires_at, again));
                            *count += 1;
                        }
                    }
                    return None;
                }
            };
            // A record that is missing or does not decode cannot become readable: it is dropped.
            let read = batch
                .ok_or_else(|| "no such record".to_string())
                .and_then(|b| decode_message(&b.payload).map_err(|e| e.to_string()));
            match read {
                Ok((message, _)) => {
                    return Some(Ready {
                        position,
                        message: Arc::new(message),
                        redelivered: again || position < self.redelivered_below,
                        expires_at,
                    })
                }
                Err(e) => {
                    warn!(
                        log = self.messages.name(),
                        position, "dropping a message that cannot be read: {e}"
                    );
                    self.settle(position);
                }
            }
        }
    }

    /// A delivered message comes back: FIFO order keeps it aside to go out first; priority order puts it
    /// back into its level at its position.
    fn requeue(&mut self, position: u64, message: Arc<Message>, expires_at: Option<i64>) {
        if position < self.low || self.settled.contains(position) {
            // Settled as it left (a no-ack delivery whose channel closed or whose consumer went before the
            // connection wrote it): settlement is final — it may be journaled, and it may have confirmed the
            // message to its publisher without a sync — so it is not put back (RabbitMQ too counts a no-ack
            // message consumed once the queue hands it out).
            return;
        }
        self.bytes += body_len(&message);
        match &mut self.order {
            Order::Priority {
                levels,
                max_priority,
                count,
            } => {
                let level = level_of(message.priority, Some(*max_priority));
                if let Some(l) = levels.get_mut(level) {
                    let at = l.partition_point(|&(p, _, _)| p < position);
                    l.insert(at, (position, expires_at, true));
                    *count += 1;
                }
            }
            Order::Fifo { .. } => {
                self.requeued.insert(position, (message, expires_at));
            }
        }
    }

    fn unpop(&mut self, ready: Ready) {
        self.bytes += body_len(&ready.message);
        match &mut self.order {
            Order::Fifo {
                window,
                window_bytes,
            } if !ready.redelivered => {
                *window_bytes += ready.message.body.len();
                window.push_front(ready);
            }
            Order::Priority {
                levels,
                max_priority,
                count,
            } => {
                let level = level_of(ready.message.priority, Some(*max_priority));
                if let Some(l) = levels.get_mut(level) {
                    l.push_front((ready.position, ready.expires_at, ready.redelivered));
                    *count += 1;
                }
            }
            _ => {
                self.requeued
                    .insert(ready.position, (ready.message, ready.expires_at));
            }
        }
    }

    /// Reads the next messages from the log into the window, skipping settled positions and transient
    /// messages from before the restart.
    fn refill(&mut self) {
        loop {
            let Order::Fifo {
                window,
                window_bytes,
            } = &mut self.order
            else {
                return;
            };
            if !window.is_empty() || self.cursor >= self.end || self.stalled {
                return;
            }
            let batches = match self.messages.read(self.cursor, READ_BYTES, None) {
                Ok(b) => b,
                Err(e) => {
                    warn!(
                        log = self.messages.name(),
                        position = self.cursor,
                        "cannot read the queue's messages, delivery from it stops: {e}"
                    );
                    self.stalled = true;
                    return;
                }
            };
            if batches.is_empty() {
                return;
            }
            let mut drop_positions = Vec::new();
            for batch in batches {
                let position = batch.base_offset;
                if position < self.cursor {
                    continue;
                }
                self.cursor = batch.next_offset();
                if position < self.low {
                    // Settled (the cursor normally stays at or above `low`; belt and braces).
                    continue;
                }
                if self.settled.contains(position) {
                    self.settled_ahead = self.settled_ahead.saturating_sub(1);
                    continue;
                }
                match decode_message(&batch.payload) {
                    // Transient: it does not outlive a restart.
                    Ok((m, _)) if !m.persistent && position < self.recovered_end => {
                        drop_positions.push(position)
                    }
                    Ok((m, expires_at)) => {
                        *window_bytes += m.body.len();
                        window.push_back(Ready {
                            position,
                            message: Arc::new(m),
                            redelivered: position < self.redelivered_below,
                            expires_at,
                        });
                    }
                    Err(e) => {
                        warn!(
                            log = self.messages.name(),
                            position, "dropping a message record that does not decode: {e}"
                        );
                        drop_positions.push(position);
                    }
                }
                if window.len() >= WINDOW_MESSAGES_MAX || *window_bytes >= WINDOW_BYTES_MAX {
                    break;
                }
            }
            for p in drop_positions {
                self.settle(p);
            }
        }
    }

    fn settle(&mut self, position: u64) {
        if position < self.low {
            return;
        }
        self.pending.settled.insert(position);
        self.journal_dirty = true;
        let next = position.saturating_add(1);
        if position == self.low && self.settled.first().is_none_or(|(start, _)| start > next) {
            // The usual ack, of the oldest message, with nothing settled right after it: `low` moves past it
            // without the position entering `settled` and leaving it again (two map updates per message).
            self.move_low_to(next);
        } else {
            self.settled.insert(position);
            self.raise_low();
        }
    }

    fn raise_low(&mut self) {
        while let Some((s, e)) = self.settled.first() {
            if s != self.low {
                break;
            }
            self.move_low_to(e);
        }
    }

    /// Moves the low watermark up to `to`, everything below it being settled: the settled and transient sets
    /// keep only positions at or above it.
    fn move_low_to(&mut self, to: u64) {
        // Settled positions past the cursor (settled before a restart and not read since) leave `settled`
        // here, so the cursor must move past them too, or `refill` would read and deliver them again.
        // Keeps `cursor >= low` (in priority order the cursor is the log end, so this never fires).
        if to > self.cursor {
            self.settled_ahead = self
                .settled_ahead
                .saturating_sub(self.settled.count_in(self.cursor, to));
            self.cursor = to;
        }
        self.low = to;
        self.settled.remove_below(to);
        self.transient.remove_below(to);
        self.progress.advance(to);
    }

    fn ready_count(&self) -> u64 {
        let unread = self
            .end
            .saturating_sub(self.cursor)
            .saturating_sub(self.settled_ahead);
        let held = match &self.order {
            Order::Fifo { window, .. } => window.len() as u64,
            Order::Priority { count, .. } => *count,
        };
        self.requeued.len() as u64 + held + unread
    }

    fn purge(&mut self) -> u64 {
        let count = self.ready_count();
        let mut positions: Vec<u64> = self.requeued.keys().copied().collect();
        self.requeued.clear();
        match &mut self.order {
            Order::Fifo {
                window,
                window_bytes,
            } => {
                positions.extend(window.drain(..).map(|r| r.position));
                *window_bytes = 0;
            }
            Order::Priority { levels, count, .. } => {
                for l in levels.iter_mut() {
                    positions.extend(l.drain(..).map(|(p, _, _)| p));
                }
                *count = 0;
            }
        }
        self.bytes = 0;
        for p in positions {
            self.settle(p);
        }
        if self.cursor < self.end {
            self.settled.insert_range(self.cursor, self.end);
            self.pending.settled.insert_range(self.cursor, self.end);
            self.settled_ahead = 0;
            self.cursor = self.end;
            self.journal_dirty = true;
            self.raise_low();
        }
        count
    }

    /// Appends one journal record with the facts gathered since the last one (cheap: the journal's policy
    /// is `os`, nothing waits).
    pub fn flush_journal(&mut self) {
        if !self.journal_dirty {
            return;
        }
        self.journal_dirty = false;
        let record = JournalRecord {
            low: self.low,
            delivered_high: self.delivered_high,
            settled: std::mem::take(&mut self.pending.settled),
            transient: std::mem::take(&mut self.pending.transient),
        };
        self.append_journal(&record);
    }

    fn append_journal(&mut self, record: &JournalRecord) -> Option<Appended> {
        let mut buf = Vec::with_capacity(64);
        record.encode(&mut buf);
        match self.journal.append(&buf, 1, crate::now_ms()) {
            Ok(appended) => {
                self.journal_bytes_since_snapshot += buf.len() as u64;
                Some(appended)
            }
            Err(e) => {
                // A lost settlement means a redelivery after a restart, never a lost message.
                warn!(log = self.journal.name(), "cannot journal settlements: {e}");
                None
            }
        }
    }

    /// Writes the whole state as one journal record; [`Maintenance::run`] then drops the records before it.
    fn snapshot(&mut self) -> Maintenance {
        self.journal_dirty = false;
        self.pending = JournalRecord::default();
        let record = JournalRecord {
            low: self.low,
            delivered_high: self.delivered_high,
            settled: self.settled.clone(),
            transient: self.transient.clone(),
        };
        let snapshot = self.append_journal(&record);
        self.journal_bytes_since_snapshot = 0;
        Maintenance {
            messages: Arc::clone(&self.messages),
            journal: Arc::clone(&self.journal),
            low: self.low,
            snapshot,
            roll: self.drained_with_a_big_segment(),
        }
    }

    /// Every message in the log is settled and the active segment holds at least [`DRAINED_ROLL_BYTES`].
    fn drained_with_a_big_segment(&self) -> bool {
        self.low >= self.messages.offsets().log_end
            && self.messages.active_segment_bytes() >= DRAINED_ROLL_BYTES
    }

    /// What periodic maintenance should do now, if anything: compact a journal that grew, give back consumed
    /// message segments.
    pub fn maintenance(&mut self) -> Option<Maintenance> {
        self.flush_journal();
        if self.journal_bytes_since_snapshot >= JOURNAL_COMPACT_BYTES {
            return Some(self.snapshot());
        }
        let roll = self.drained_with_a_big_segment();
        (roll || self.low > self.messages.offsets().log_start).then(|| Maintenance {
            messages: Arc::clone(&self.messages),
            journal: Arc::clone(&self.journal),
            low: self.low,
            snapshot: None,
            roll,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Lets spawned waits run until they block.
    async fn settle_tasks() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn each_wait_is_woken_once_the_watermark_passes_its_own_position() {
        let progress = Arc::new(SettledProgress::new(0));
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let wait = |end: u64| {
            let progress = Arc::clone(&progress);
            tokio::spawn(async move { progress.wait_through_inner(end, far).await })
        };
        let (five, ten, fifteen) = (wait(5), wait(10), wait(15));
        settle_tasks().await;
        assert_eq!(progress.waiting.lock().len(), 3);
        assert_eq!(progress.next_wake.load(Ordering::SeqCst), 5);
        // Below every wait's position: nobody is woken, the lock is not even taken.
        progress.advance(4);
        settle_tasks().await;
        assert!(!five.is_finished());
        progress.advance(5);
        assert!(tokio::time::timeout(Duration::from_secs(10), five)
            .await
            .unwrap()
            .unwrap());
        assert_eq!(progress.waiting.lock().len(), 2);
        assert_eq!(progress.next_wake.load(Ordering::SeqCst), 10);
        progress.advance(12);
        assert!(tokio::time::timeout(Duration::from_secs(10), ten)
            .await
            .unwrap()
            .unwrap());
        assert!(!fifteen.is_finished());
        // A wait that goes away (its connection closed) takes its registration with it.
        fifteen.abort();
        settle_tasks().await;
        assert!(progress.waiting.lock().is_empty());
        // Already past: no registration at all; and a deadline ends a wait with `false`.
        assert!(progress.wait_through_inner(12, far).await);
        let soon = tokio::time::Instant::now() + Duration::from_millis(10);
        assert!(!progress.wait_through_inner(13, soon).await);
        assert!(progress.waiting.lock().is_empty());
    }
}
