//! Limits of the AMQP front end, named after RabbitMQ's settings and defaulting to RabbitMQ's values.

/// Settings of the AMQP listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpConfig {
    /// Largest frame (header, payload and end byte) the server accepts and offers in connection.tune
    /// (`frame_max`, RabbitMQ 131072). A bigger frame is refused before its payload is read.
    pub frame_max: u32,
    /// Highest channel number a connection may open (`channel_max`, RabbitMQ 2047).
    pub channel_max: u16,
    /// Heartbeat interval offered in connection.tune, in seconds; 0 disables heartbeats (`heartbeat`, 60).
    /// A peer is disconnected at the second check in a row (one per interval) that saw nothing from it, as
    /// RabbitMQ does it.
    pub heartbeat_s: u16,
    /// Most client connections at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// Largest message body a publisher may send (`max_message_size`, RabbitMQ 128 MiB); checked against
    /// the content header's body size before any body frame is buffered.
    pub max_message_bytes: u64,
    /// Time a new connection has to finish the handshake (protocol header to connection.open-ok)
    /// (`handshake_timeout`, RabbitMQ 10 s).
    pub handshake_timeout_ms: u64,
    /// Bytes of deliveries a connection may have waiting to be written; past it, its consumers get nothing
    /// more until it drains (a slow consumer is throttled, not allowed to grow memory).
    pub connection_pending_bytes_max: u64,
    /// How long the confirm of persistent messages in a durable queue with consumers (and without
    /// dead-lettering) waits for those consumers' acks before it asks for an fsync instead: a message
    /// consumed and acknowledged on every queue it reached is confirmed without one, as RabbitMQ does. 0: every
    /// confirm waits for the fsync.
    pub confirm_ack_wait_ms: u64,
    /// How long a delivery may stay unacknowledged before its channel is closed with 406 PRECONDITION_FAILED
    /// and its unacknowledged messages go back to their queues (`consumer_timeout`, RabbitMQ 30 min); 0: never.
    /// Checked eight times per timeout (at least once a minute), so a delivery times out up to two check
    /// periods late (a quarter of the timeout, two minutes at the default), never early.
    pub consumer_timeout_ms: u64,
    /// Users besides `guest` (who logs in from loopback addresses only, as in RabbitMQ).
    pub users: Vec<User>,
}

/// A user who may log in (PLAIN or AMQPLAIN) from anywhere.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password: String,
    /// The vhosts this user may open; empty = all.
    pub vhosts: Vec<String>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password, not even in debug logs of the configuration.
        f.debug_struct("User")
            .field("name", &self.name)
            .field("vhosts", &self.vhosts)
            .finish_non_exhaustive()
    }
}

/// Smallest `frame_max` a client may negotiate: the 0-9-1 specification's `frame-min-size`, 4096, which RabbitMQ
/// 3.x accepts. (`amq-protocol`'s generated `FRAME_MIN_SIZE` says 8192, RabbitMQ 4.1's newer floor; amqplib before
/// 0.10.6 asks for 4096 by default, the Java and Ruby clients can be told to, and all of them were refused.)
pub const FRAME_MAX_MIN: u32 = 4096;

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat_s: 60,
            max_connections: 10_000,
            max_message_bytes: 128 * 1024 * 1024,
            handshake_timeout_ms: 10_000,
            connection_pending_bytes_max: 16 * 1024 * 1024,
            confirm_ack_wait_ms: 2,
            consumer_timeout_ms: 30 * 60 * 1000,
            users: Vec::new(),
        }
    }
}
