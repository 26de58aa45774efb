//! Consensus and replication through `openraft`: the metadata group, partition and queue replication, and the
//! node-to-node transport.
//!
//! Filled by the clustering issue. It must not know the client wire protocols; it replicates log entries and
//! metadata commands produced by `wharf-core`.
