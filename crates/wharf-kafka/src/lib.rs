//! Kafka wire-protocol front end: one handler per API key with its version range, over the `kafka-protocol`
//! codec.
//!
//! Filled by the Kafka issue (issue 3). It depends on `wharf-core` and never touches files; record batches are
//! handed to the log engine as received and served back without re-encoding.
