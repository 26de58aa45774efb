//! Per-topic configuration with Kafka's names, on top of broker-wide defaults.
//!
//! A topic stores only its *overrides* (what CreateTopics or AlterConfigs set); every other key falls back to
//! the broker default at the time it is read, as in Kafka. Known keys are validated when set; unknown keys
//! are refused rather than silently ignored, so a client never believes a setting took effect when it did not.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wharf_log::{Durability, LogConfig, SEGMENT_BYTES_MAX};

use crate::error::{CoreError, Result};

/// Whose clock stamps a record batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    /// The producer's timestamps are kept (Kafka's default).
    CreateTime,
    /// The broker writes its own clock into each batch when it appends it.
    LogAppendTime,
}

/// What happens to old data. Only deletion is implemented; compaction is refused with a clear error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CleanupPolicy {
    /// Whole segments are deleted by `retention.ms` / `retention.bytes`.
    Delete,
}

/// The broker-wide defaults a topic falls back to (Kafka's `log.*` / `num.partitions` broker settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicDefaults {
    /// Partitions of a topic created without a count (auto-creation, or CreateTopics with -1).
    pub partitions: i32,
    /// `retention.ms`; -1 keeps data forever.
    pub retention_ms: i64,
    /// `retention.bytes` per partition; -1 means no size limit.
    pub retention_bytes: i64,
    /// `segment.bytes`.
    pub segment_bytes: i64,
    /// `segment.ms`.
    pub segment_ms: i64,
    /// `max.message.bytes`: the largest record batch a producer may send.
    pub max_message_bytes: i64,
    /// `message.timestamp.type`.
    pub timestamp_type: TimestampType,
    /// Index density of the log engine (not a Kafka topic config).
    pub index_interval_bytes: u64,
    /// When appends are durable (Wharf's storage policy, not a Kafka topic config).
    pub durability: Durability,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        TopicDefaults {
            partitions: 1,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * 24 * 3600 * 1000,
            max_message_bytes: 1_048_588,
            timestamp_type: TimestampType::CreateTime,
            index_interval_bytes: 4096,
            durability: Durability::Always,
        }
    }
}

/// The topic configs Wharf implements, in the order DescribeConfigs lists them.
pub const TOPIC_CONFIG_KEYS: [&str; 7] = [
    "cleanup.policy",
    "max.message.bytes",
    "message.timestamp.type",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
];

/// A topic's overrides. Serialized into the topic's metadata file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TopicConfig {
    overrides: BTreeMap<String, String>,
}

/// One line of a described configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    /// Kafka's config name.
    pub name: &'static str,
    /// The effective value.
    pub value: String,
    /// True when the topic has no override and the broker default applies.
    pub is_default: bool,
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> CoreError {
    CoreError::InvalidConfig {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn parse_long(key: &str, value: &str, min: i64, max: i64) -> Result<i64> {
    let v: i64 = value
        .trim()
        .parse()
        .map_err(|_| invalid(key, value, "not an integer"))?;
    if v < min || v > max {
        return Err(invalid(key, value, format!("must be in [{min}, {max}]")));
    }
    Ok(v)
}

/// Checks one key/value pair the way Kafka's broker does, returning the normalized value.
pub fn validate(key: &str, value: &str) -> Result<String> {
    let v = value.trim();
    match key {
        "cleanup.policy" => {
            let policies: Vec<&str> = v.split(',').map(str::trim).collect();
            if policies.iter().all(|p| *p == "delete") && !policies.is_empty() {
                Ok("delete".into())
            } else if policies.iter().all(|p| *p == "delete" || *p == "compact") {
                Err(invalid(
                    key,
                    value,
                    "log compaction is not supported by Wharf yet; only 'delete' is",
                ))
            } else {
                Err(invalid(key, value, "expected 'delete' or 'compact'"))
            }
        }
        "message.timestamp.type" => match v {
            "CreateTime" | "LogAppendTime" => Ok(v.to_string()),
            _ => Err(invalid(key, value, "expected CreateTime or LogAppendTime")),
        },
        "retention.ms" | "retention.bytes" => {
            parse_long(key, v, -1, i64::MAX).map(|n| n.to_string())
        }
        "segment.bytes" => {
            parse_long(key, v, 14, SEGMENT_BYTES_MAX as i64 - 1).map(|n| n.to_string())
        }
        "segment.ms" => parse_long(key, v, 1, i64::MAX).map(|n| n.to_string()),
        "max.message.bytes" => parse_long(key, v, 0, i64::from(i32::MAX)).map(|n| n.to_string()),
        _ => Err(CoreError::UnknownConfig(key.to_string())),
    }
}

impl TopicConfig {
    /// Builds overrides from key/value pairs, validating each; `None` values are skipped.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Result<Self> {
        let mut config = TopicConfig::default();
        for (key, value) in pairs {
            if let Some(value) = value {
                config.set(key, value)?;
            }
        }
        Ok(config)
    }

    /// Sets one override after validating it.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let normalized = validate(key, value)?;
        self.overrides.insert(key.to_string(), normalized);
        Ok(())
    }

    /// Removes one override (the broker default applies again). Unknown keys are refused.
    pub fn delete(&mut self, key: &str) -> Result<()> {
        if !TOPIC_CONFIG_KEYS.contains(&key) {
            return Err(CoreError::UnknownConfig(key.to_string()));
        }
        self.overrides.remove(key);
        Ok(())
    }

    /// The overrides as stored.
    pub fn overrides(&self) -> &BTreeMap<String, String> {
        &self.overrides
    }

    fn long(&self, key: &str, default: i64) -> i64 {
        self.overrides
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// Effective `max.message.bytes`.
    pub fn max_message_bytes(&self, d: &TopicDefaults) -> i64 {
        self.long("max.message.bytes", d.max_message_bytes)
    }

    /// Effective `message.timestamp.type`.
    pub fn timestamp_type(&self, d: &TopicDefaults) -> TimestampType {
        match self
            .overrides
            .get("message.timestamp.type")
            .map(String::as_str)
        {
            Some("LogAppendTime") => TimestampType::LogAppendTime,
            Some(_) => TimestampType::CreateTime,
            None => d.timestamp_type,
        }
    }

    /// The log-engine settings this topic's partitions use.
    pub fn log_config(&self, d: &TopicDefaults) -> LogConfig {
        let non_negative = |v: i64| u64::try_from(v).ok();
        let max_message = self.max_message_bytes(d);
        LogConfig {
            segment_bytes: non_negative(self.long("segment.bytes", d.segment_bytes))
                .unwrap_or(SEGMENT_BYTES_MAX),
            segment_ms: non_negative(self.long("segment.ms", d.segment_ms)).unwrap_or(u64::MAX),
            index_interval_bytes: d.index_interval_bytes,
            retention_bytes: non_negative(self.long("retention.bytes", d.retention_bytes)),
            retention_ms: non_negative(self.long("retention.ms", d.retention_ms)),
            durability: d.durability,
            // The log's own frame limit sits above the Kafka limit so that the Kafka layer, which knows the
            // error code, is the one that refuses oversized batches.
            max_batch_bytes: u32::try_from(max_message.max(0))
                .unwrap_or(u32::MAX)
                .saturating_add(64 * 1024),
            // Every acks=all produce waits for its sync; acks=0/1 data is left to the OS, as in Kafka.
            unsynced_age_max_ms: None,
        }
        .clamped()
    }

    /// Every implemented key with its effective value, for DescribeConfigs.
    pub fn describe(&self, d: &TopicDefaults) -> Vec<ConfigEntry> {
        TOPIC_CONFIG_KEYS
            .iter()
            .map(|&name| {
                let default = match name {
                    "cleanup.policy" => "delete".to_string(),
                    "max.message.bytes" => d.max_message_bytes.to_string(),
                    "message.timestamp.type" => match d.timestamp_type {
                        TimestampType::CreateTime => "CreateTime".into(),
                        TimestampType::LogAppendTime => "LogAppendTime".into(),
                    },
                    "retention.bytes" => d.retention_bytes.to_string(),
                    "retention.ms" => d.retention_ms.to_string(),
                    "segment.bytes" => d.segment_bytes.to_string(),
                    _ => d.segment_ms.to_string(),
                };
                match self.overrides.get(name) {
                    Some(v) => ConfigEntry {
                        name,
                        value: v.clone(),
                        is_default: false,
                    },
                    None => ConfigEntry {
                        name,
                        value: default,
                        is_default: true,
                    },
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_like_kafka() {
        assert_eq!(validate("retention.ms", " -1 ").unwrap(), "-1");
        assert!(validate("retention.ms", "-2").is_err());
        assert!(validate("segment.bytes", "13").is_err());
        assert!(validate("segment.bytes", "abc").is_err());
        assert!(matches!(
            validate("cleanup.policy", "compact"),
            Err(CoreError::InvalidConfig { .. })
        ));
        assert_eq!(validate("cleanup.policy", "delete").unwrap(), "delete");
        assert!(matches!(
            validate("no.such.key", "1"),
            Err(CoreError::UnknownConfig(_))
        ));
        assert!(validate("message.timestamp.type", "LogAppendTime").is_ok());
        assert!(validate("message.timestamp.type", "Now").is_err());
    }

    #[test]
    fn overrides_map_onto_the_log_config() {
        let d = TopicDefaults::default();
        let c = TopicConfig::from_pairs([
            ("retention.ms", Some("-1")),
            ("retention.bytes", Some("1000000")),
            ("segment.bytes", Some("65536")),
        ])
        .unwrap();
        let log = c.log_config(&d);
        assert_eq!(log.retention_ms, None);
        assert_eq!(log.retention_bytes, Some(1_000_000));
        assert_eq!(log.segment_bytes, 65536);
        let described = c.describe(&d);
        let seg = described
            .iter()
            .find(|e| e.name == "segment.bytes")
            .unwrap();
        assert!(!seg.is_default);
        let ts = described
            .iter()
            .find(|e| e.name == "message.timestamp.type")
            .unwrap();
        assert!(ts.is_default);
        assert_eq!(ts.value, "CreateTime");
    }
}
