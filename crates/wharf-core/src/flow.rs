//! Flow control: the bounds that keep a fast publisher or a slow consumer from growing the broker's memory.
//!
//! - [`MemoryGauge`]: bytes of messages waiting in memory (the ready messages of non-durable queues; durable
//!   queues wait in their log). Over its limit it raises an alarm; the protocol layer then stops reading from
//!   publishing connections and tells them (AMQP connection.blocked) until the gauge is back under the limit —
//!   RabbitMQ's memory alarm, with the bound on what can be held rather than on the whole process.
//! - [`Outbound`]: bytes handed to one connection and not yet written to its socket. Over its cap, the
//!   connection's consumers get nothing more until it drains (a slow no-ack consumer is throttled, never
//!   allowed to grow memory; nats-server's slow-consumer rule, without the disconnect).
//! - [`ChannelGate`]: a channel's consumers may receive (channel.flow) and the channel-wide prefetch
//!   (basic.qos with `global`, as RabbitMQ interprets it).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// Bytes of messages held in memory, against a limit.
#[derive(Debug)]
pub struct MemoryGauge {
    used: AtomicU64,
    limit: u64,
    alarm: watch::Sender<bool>,
}

impl MemoryGauge {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicU64::new(0),
            limit,
            alarm: watch::Sender::new(false),
        })
    }

    /// A gauge that never alarms (tests of the model).
    pub fn unlimited() -> Arc<Self> {
        Self::new(u64::MAX)
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Follows the alarm: `true` while over the limit.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.alarm.subscribe()
    }

    pub fn alarmed(&self) -> bool {
        *self.alarm.borrow()
    }

    pub(crate) fn add(&self, bytes: u64) {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if used > self.limit && !self.alarmed() {
            self.alarm
                .send_if_modified(|on| !std::mem::replace(on, true));
            tracing::warn!(
                used,
                limit = self.limit,
                "memory alarm: publishers are blocked until queued messages are consumed"
            );
        }
    }

    pub(crate) fn sub(&self, bytes: u64) {
        let used = self
            .used
            .fetch_sub(bytes, Ordering::Relaxed)
            .saturating_sub(bytes);
        if used <= self.limit
            && self.alarmed()
            && self
                .alarm
                .send_if_modified(|on| std::mem::replace(on, false))
        {
            tracing::info!(used, limit = self.limit, "memory alarm cleared");
        }
    }
}

/// Bytes handed to one connection and not yet taken by its writer.
#[derive(Debug)]
pub struct Outbound {
    pending: AtomicU64,
    cap: u64,
    /// Set when a consumer was skipped for lack of room: the connection kicks its consumers once it drains.
    starved: AtomicBool,
}

impl Outbound {
    pub fn new(cap: u64) -> Arc<Self> {
        Arc::new(Self {
            pending: AtomicU64::new(0),
            cap: cap.max(1),
            starved: AtomicBool::new(false),
        })
    }

    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    fn has_room(&self) -> bool {
        let room = self.pending() < self.cap;
        if !room {
            self.starved.store(true, Ordering::Relaxed);
        }
        room
    }

    pub(crate) fn charge(&self, bytes: u64) {
        self.pending.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The connection took `bytes` off its queue; returns true when consumers were held back for room and
    /// there is room again (the caller then kicks them).
    pub fn release(&self, bytes: u64) -> bool {
        let pending = self
            .pending
            .fetch_sub(bytes, Ordering::Relaxed)
            .saturating_sub(bytes);
        pending < self.cap && self.starved.swap(false, Ordering::Relaxed)
    }
}

/// What a channel says about all of its consumers.
#[derive(Debug, Default)]
pub struct ChannelGate {
    /// channel.flow: `false` stops deliveries to the channel.
    paused: AtomicBool,
    /// basic.qos with `global`: most unacknowledged deliveries over the whole channel (0 = no limit).
    prefetch: AtomicU32,
    unacked: AtomicU32,
}

impl ChannelGate {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn set_active(&self, active: bool) {
        self.paused.store(!active, Ordering::Relaxed);
    }

    pub fn set_prefetch(&self, prefetch: u16) {
        self.prefetch.store(u32::from(prefetch), Ordering::Relaxed);
    }

    /// The channel-wide prefetch (0: none).
    pub fn prefetch(&self) -> u32 {
        self.prefetch.load(Ordering::Relaxed)
    }

    /// An acknowledged delivery of this channel was settled or requeued.
    pub fn released(&self) {
        let _ = self
            .unacked
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    fn open(&self) -> bool {
        if self.paused.load(Ordering::Relaxed) {
            return false;
        }
        let prefetch = self.prefetch.load(Ordering::Relaxed);
        prefetch == 0 || self.unacked.load(Ordering::Relaxed) < prefetch
    }
}

/// What a consumer must ask before each delivery, besides its own prefetch.
#[derive(Debug, Clone)]
pub struct ConsumerGate {
    pub outbound: Arc<Outbound>,
    pub channel: Arc<ChannelGate>,
}

impl ConsumerGate {
    /// Gates that never close (tests of the model).
    pub fn open() -> Self {
        Self {
            outbound: Outbound::new(u64::MAX),
            channel: ChannelGate::new(),
        }
    }

    pub(crate) fn allows(&self) -> bool {
        self.channel.open() && self.outbound.has_room()
    }

    /// A delivery of `bytes` left for this consumer (`acked`: it will be acknowledged later).
    pub(crate) fn delivered(&self, bytes: u64, acked: bool) {
        self.outbound.charge(bytes);
        if acked {
            self.channel.unacked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_alarm_follows_the_limit() {
        let gauge = MemoryGauge::new(100);
        let alarm = gauge.subscribe();
        gauge.add(60);
        assert!(!*alarm.borrow());
        gauge.add(60);
        assert!(*alarm.borrow());
        gauge.sub(20);
        assert!(!*alarm.borrow());
        assert_eq!(gauge.used(), 100);
    }

    #[test]
    fn outbound_reports_when_a_starved_connection_drains() {
        let out = Outbound::new(10);
        out.charge(10);
        assert!(!out.has_room());
        assert!(!out.release(0), "still full");
        assert!(out.release(5), "room again after starving");
        assert!(!out.release(1), "no one starved since");
    }

    #[test]
    fn channel_gate_pauses_and_counts_global_prefetch() {
        let gate = ConsumerGate::open();
        gate.channel.set_prefetch(2);
        gate.delivered(1, true);
        assert!(gate.allows());
        gate.delivered(1, true);
        assert!(!gate.allows());
        gate.channel.released();
        assert!(gate.allows());
        gate.channel.set_active(false);
        assert!(!gate.allows());
    }
}
