//! The broker model: vhosts, exchanges and bindings, queues (ready / unacknowledged sets, consumers, prefetch
//! credit, redelivery, TTL, dead-lettering, length limits), topics and partitions, consumer groups and committed
//! offsets, idempotent-producer state.
//!
//! Filled by the Kafka (issue 3) and AMQP (issue 4) issues. It depends on `wharf-log` for storage and must not
//! know about sockets or wire formats: protocol crates translate their frames into calls on this model.
