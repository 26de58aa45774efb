//! Errors of the broker model. Each maps onto one protocol error code at the protocol boundary.

/// What the broker model can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A topic name that breaks Kafka's rules (characters, length, `.` / `..`).
    #[error("invalid topic name '{name}': {reason}")]
    InvalidTopicName {
        /// The refused name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The topic does not exist.
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    /// The topic exists already.
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    /// A partition count outside `1..=PARTITIONS_PER_TOPIC_MAX`, or one that would shrink a topic.
    #[error("invalid partition count {count}: {reason}")]
    InvalidPartitions {
        /// The refused count.
        count: i64,
        /// Why.
        reason: String,
    },
    /// A topic config key Wharf does not know.
    #[error("unknown topic config '{0}'")]
    UnknownConfig(String),
    /// A topic config value that does not parse or is out of range.
    #[error("invalid value '{value}' for topic config '{key}': {reason}")]
    InvalidConfig {
        /// The config key.
        key: String,
        /// The refused value.
        value: String,
        /// Why.
        reason: String,
    },
    /// The log engine failed.
    #[error(transparent)]
    Log(#[from] wharf_log::LogError),
    /// Reading or writing the model's own metadata files failed.
    #[error("metadata I/O on {path}: {source}")]
    Meta {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A metadata file exists but does not parse.
    #[error("corrupt metadata file {path}: {reason}")]
    CorruptMeta {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Result alias of the broker model.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;
