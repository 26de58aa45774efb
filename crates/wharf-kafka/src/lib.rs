//! Kafka wire-protocol front end: one handler per API key with its version range, over the `kafka-protocol`
//! codec.
//!
//! - [`server`] accepts connections; [`connection`] frames requests (size checked before buffering),
//!   dispatches them in order and answers in order;
//! - [`codec`] turns frames into typed requests and typed responses into frames — all message encoding is the
//!   `kafka-protocol` crate's;
//! - [`apis`] is the table of served APIs and versions that ApiVersions advertises;
//! - [`handlers`] holds one module per API;
//! - [`batch`] reads and checks record-batch headers; batches are stored as received and served back without
//!   re-encoding.
//!
//! It depends on `wharf-core` (topics, partitions) and never touches files itself.

pub mod apis;
pub mod batch;
pub mod codec;
pub mod config;
pub mod connection;
pub mod handlers;
pub mod server;

pub use config::KafkaConfig;
pub use handlers::{Broker, NodeInfo};
