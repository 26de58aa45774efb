//! Limits and switches of the Kafka front end, each named after the Kafka broker setting it mirrors.

/// Settings of the Kafka listener. Defaults are Kafka's where Kafka has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Largest request accepted, in bytes, checked before the request is buffered
    /// (`socket.request.max.bytes`). A larger size prefix closes the connection.
    pub request_max_bytes: usize,
    /// Largest request of any API other than Produce, checked from the size prefix and API key before the
    /// request is buffered. Decoding multiplies a request of many tiny array elements 15–40 times in memory
    /// (every element becomes a struct), so only Produce — whose bulk is record bytes, kept as slices — may use
    /// the full `request_max_bytes`; real clients send the other APIs in kilobytes.
    pub non_produce_request_max_bytes: usize,
    /// A connection with no request for this long is closed (`connections.max.idle.ms`).
    pub connections_max_idle_ms: u64,
    /// Most client connections at once (`max.connections`); further ones wait in the accept queue.
    pub max_connections: usize,
    /// Requests of one connection being processed or awaiting their response at once. Responses always
    /// leave in request order; a client with more in flight waits for the oldest.
    pub max_inflight_requests: usize,
    /// Create unknown topics on Metadata and Produce (`auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// Host and port clients are told to connect to in Metadata (`advertised.listeners`); `None` uses the
    /// address the listener is bound to.
    pub advertised_address: Option<(String, u16)>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            request_max_bytes: 100 * 1024 * 1024,
            non_produce_request_max_bytes: 8 * 1024 * 1024,
            connections_max_idle_ms: 10 * 60 * 1000,
            max_connections: 10_000,
            max_inflight_requests: 128,
            auto_create_topics: true,
            advertised_address: None,
        }
    }
}
