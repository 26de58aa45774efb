//! Topics and their partitions: names, partition counts, per-topic configs, and the log behind each partition.
//!
//! A partition is one log of the log engine, named `<topic>-<partition>` as Kafka names its directories. The
//! registry keeps one small JSON file per topic (`<meta dir>/<topic>.json`: id, partition count, config
//! overrides), written atomically. Order of writes makes crashes harmless: a topic's file is written *before*
//! its logs are created and removed *before* its logs are deleted, and at open any log that looks like a
//! partition of no known topic is deleted — the remains of an interrupted DeleteTopics.
//!
//! Admin changes (create, delete, grow, alter) are serialized by one mutex; the data path (looking up a
//! partition) takes only read locks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{info, warn};
use wharf_log::{Log, LogConfig, LogManager};

use crate::error::{CoreError, Result};
use crate::persist::{remove_durably, write_atomic};
use crate::producers::{load_snapshot, save_snapshot, BatchProducer, ProducerTable};
use crate::topic_config::{TopicConfig, TopicDefaults};

/// Kafka's limit on topic name length (so that `<topic>-<partition>` fits a 255-byte file name).
pub const TOPIC_NAME_MAX_LEN: usize = 249;
/// Most partitions one topic may have: keeps `<topic>-<partition>` within 255 bytes and bounds the work
/// one CreateTopics can ask for.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 10_000;

/// Version of the per-topic metadata file format.
const TOPIC_META_VERSION: u32 = 1;

/// Checks a topic name against Kafka's rules: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("the name is empty")
    } else if name == "." || name == ".." {
        Some("'.' and '..' are not allowed")
    } else if name.len() > TOPIC_NAME_MAX_LEN {
        Some("longer than 249 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        Some("only ASCII letters, digits, '.', '_' and '-' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CoreError::InvalidTopicName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Reads the idempotent-producer fields out of a stored batch (`None` for batches without a producer id).
/// Supplied by the protocol layer, which knows the batch format.
pub type ProducerFields = fn(&[u8]) -> Option<BatchProducer>;

/// One partition: a log, a signal that wakes long-polling readers when it grows, and the idempotence state
/// of its producers.
#[derive(Debug)]
pub struct Partition {
    index: i32,
    log: Arc<Log>,
    appended: Notify,
    producers: Mutex<ProducerTable>,
    producers_dirty: std::sync::atomic::AtomicBool,
    snapshot_path: PathBuf,
}

impl Partition {
    /// The partition number within its topic.
    pub fn index(&self) -> i32 {
        self.index
    }

    /// The log that stores this partition's record batches.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// Wakes every reader waiting in [`Partition::appended`]; call after each append.
    pub fn notify_appended(&self) {
        self.appended.notify_waiters();
    }

    /// The idempotence state, locked: hold the guard across check, append and record, so that two retries of
    /// one batch cannot both be appended.
    pub fn producers(&self) -> parking_lot::MutexGuard<'_, ProducerTable> {
        self.producers_dirty
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.producers.lock()
    }

    /// Writes the producer snapshot if the state changed since the last one.
    pub fn snapshot_producers(&self) -> Result<()> {
        if !self
            .producers_dirty
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(());
        }
        let table = self.producers.lock();
        // Under the table lock no idempotent append is in flight, so the log end matches the table.
        let log_end = self.log.offsets().log_end;
        save_snapshot(&self.snapshot_path, log_end, &table)
    }

    /// Rebuilds the idempotence state from the snapshot and the batches appended after it.
    fn rebuild_producers(&self, fields: ProducerFields) -> Result<()> {
        let offsets = self.log.offsets();
        let (mut from, mut table) = match load_snapshot(&self.snapshot_path) {
            Some((end, table)) if end <= offsets.log_end && end >= offsets.log_start => {
                (end, table)
            }
            _ => (offsets.log_start, ProducerTable::default()),
        };
        while from < offsets.log_end {
            let batches = self.log.read(from, 4 * 1024 * 1024, None)?;
            let Some(last) = batches.last() else { break };
            from = last.next_offset();
            for b in &batches {
                if let Some(p) = fields(&b.payload) {
                    table.record(&p, b.base_offset);
                }
            }
        }
        *self.producers.lock() = table;
        Ok(())
    }

    /// A future that completes at the next [`Partition::notify_appended`]. Create it (and `enable` it) before
    /// checking the log end, so no append can slip between the check and the wait.
    pub fn appended(&self) -> tokio::sync::futures::Notified<'_> {
        self.appended.notified()
    }
}

/// A topic: its id, config overrides and partitions.
#[derive(Debug)]
pub struct Topic {
    name: String,
    id: [u8; 16],
    config: RwLock<TopicConfig>,
    partitions: RwLock<Arc<Vec<Arc<Partition>>>>,
}

impl Topic {
    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic's id (Kafka's topic UUID), random at creation and kept across restarts.
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// Internal topics (names starting with `__`) are hidden from auto-creation and flagged in metadata.
    pub fn is_internal(&self) -> bool {
        self.name.starts_with("__")
    }

    /// What the produce path needs from the config — `max.message.bytes` and `message.timestamp.type` — read
    /// under the lock, without cloning the overrides on every request.
    pub fn produce_settings(&self, defaults: &TopicDefaults) -> (i64, crate::TimestampType) {
        let config = self.config.read();
        (
            config.max_message_bytes(defaults),
            config.timestamp_type(defaults),
        )
    }

    /// The topic's config overrides.
    pub fn config(&self) -> TopicConfig {
        self.config.read().clone()
    }

    /// All partitions, in index order.
    pub fn partitions(&self) -> Arc<Vec<Arc<Partition>>> {
        Arc::clone(&self.partitions.read())
    }

    /// Partition `index`, if it exists.
    pub fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        let parts = self.partitions.read();
        usize::try_from(index)
            .ok()
            .and_then(|i| parts.get(i))
            .cloned()
    }
}

#[derive(Serialize, Deserialize)]
struct TopicMeta {
    version: u32,
    name: String,
    id: String,
    partitions: i32,
    config: TopicConfig,
}

/// Every topic of the node.
#[derive(Debug)]
pub struct TopicRegistry {
    logs: Arc<LogManager>,
    dir: PathBuf,
    defaults: TopicDefaults,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// The same topics by id, for requests that name topics by id (every fetch of current clients).
    by_id: RwLock<std::collections::HashMap<[u8; 16], Arc<Topic>>>,
    admin: Mutex<()>,
    producer_fields: ProducerFields,
    /// Producer snapshots, one file per partition log (`<log name>.json`), beside the topics directory.
    producers_dir: PathBuf,
}

fn log_name(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(id)
}

impl TopicRegistry {
    /// Loads every topic from `dir` (created if missing), opens their partition logs, and deletes partition
    /// logs that belong to no topic.
    pub fn open(
        logs: Arc<LogManager>,
        dir: impl Into<PathBuf>,
        defaults: TopicDefaults,
        producer_fields: ProducerFields,
    ) -> Result<Self> {
        let dir = dir.into();
        let producers_dir = dir.with_file_name("producers");
        for d in [&dir, &producers_dir] {
            std::fs::create_dir_all(d).map_err(|source| CoreError::Meta {
                path: d.clone(),
                source,
            })?;
        }
        let registry = TopicRegistry {
            logs,
            dir,
            producers_dir,
            defaults,
            topics: RwLock::new(BTreeMap::new()),
            by_id: RwLock::new(std::collections::HashMap::new()),
            admin: Mutex::new(()),
            producer_fields,
        };
        registry.load()?;
        registry.delete_orphans()?;
        for topic in registry.list() {
            for partition in topic.partitions().iter() {
                partition.rebuild_producers(registry.producer_fields)?;
            }
        }
        Ok(registry)
    }

    fn load(&self) -> Result<()> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| CoreError::Meta {
            path: self.dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| CoreError::Meta {
                path: self.dir.clone(),
                source,
            })?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let meta = read_meta(&path)?;
            let topic = self.open_topic(
                &meta.name,
                meta.id_bytes(&path)?,
                meta.partitions,
                meta.config,
            )?;
            self.insert(topic);
        }
        info!(topics = self.topics.read().len(), "topics loaded");
        Ok(())
    }

    fn delete_orphans(&self) -> Result<()> {
        let topics = self.topics.read().clone();
        for name in self.logs.existing()? {
            let Some((topic, partition)) = name.rsplit_once('-') else {
                continue;
            };
            let Ok(partition) = partition.parse::<i32>() else {
                continue;
            };
            if validate_topic_name(topic).is_err() {
                continue;
            }
            let owned = topics
                .get(topic)
                .is_some_and(|t| partition < t.partitions().len() as i32);
            if !owned {
                warn!(log = %name, "deleting a partition log that belongs to no topic");
                self.logs.delete_log(&name)?;
            }
        }
        Ok(())
    }

    fn open_topic(
        &self,
        name: &str,
        id: [u8; 16],
        partitions: i32,
        config: TopicConfig,
    ) -> Result<Arc<Topic>> {
        let log_config = config.log_config(&self.defaults);
        let parts = (0..partitions)
            .map(|index| self.open_partition(name, index, &log_config))
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Topic {
            name: name.to_string(),
            id,
            config: RwLock::new(config),
            partitions: RwLock::new(Arc::new(parts)),
        }))
    }

    /// Adds a topic to both maps.
    fn insert(&self, topic: Arc<Topic>) {
        self.by_id.write().insert(topic.id, Arc::clone(&topic));
        self.topics.write().insert(topic.name.clone(), topic);
    }

    /// Opens (creating if needed) the log of one partition.
    fn open_partition(
        &self,
        topic: &str,
        index: i32,
        config: &LogConfig,
    ) -> Result<Arc<Partition>> {
        let name = log_name(topic, index);
        let log = self.logs.open_log(&name, config.clone())?;
        Ok(Arc::new(Partition {
            index,
            log,
            appended: Notify::new(),
            producers: Mutex::new(ProducerTable::default()),
            producers_dirty: std::sync::atomic::AtomicBool::new(false),
            snapshot_path: self.producers_dir.join(format!("{name}.json")),
        }))
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    fn write_meta(
        &self,
        name: &str,
        id: [u8; 16],
        partitions: i32,
        config: &TopicConfig,
    ) -> Result<()> {
        let meta = TopicMeta {
            version: TOPIC_META_VERSION,
            name: name.to_string(),
            id: hex(&id),
            partitions,
            config: config.clone(),
        };
        let path = self.meta_path(name);
        let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| CoreError::CorruptMeta {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &bytes)
    }

    /// Writes the producer snapshot of every partition whose idempotence state changed (periodically and at
    /// shutdown), so that the next start scans only the batches appended after it.
    pub fn snapshot_producers(&self) -> Result<()> {
        for topic in self.list() {
            for partition in topic.partitions().iter() {
                partition.snapshot_producers()?;
            }
        }
        Ok(())
    }

    /// The broker defaults topics fall back to.
    pub fn defaults(&self) -> &TopicDefaults {
        &self.defaults
    }

    /// The topic `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    /// The topic with Kafka topic id `id`, if any (requests of newer versions name topics by id).
    pub fn get_by_id(&self, id: &[u8; 16]) -> Option<Arc<Topic>> {
        self.by_id.read().get(id).cloned()
    }

    /// Every topic, by name.
    pub fn list(&self) -> Vec<Arc<Topic>> {
        self.topics.read().values().cloned().collect()
    }

    /// Creates a topic with `partitions` (broker default when `None`) and the given overrides.
    pub fn create(
        &self,
        name: &str,
        partitions: Option<i32>,
        config: TopicConfig,
    ) -> Result<Arc<Topic>> {
        validate_topic_name(name)?;
        let count = partitions.unwrap_or(self.defaults.partitions);
        check_partition_count(count)?;
        let _admin = self.admin.lock();
        if self.topics.read().contains_key(name) {
            return Err(CoreError::TopicExists(name.to_string()));
        }
        let id: [u8; 16] = rand::random();
        self.write_meta(name, id, count, &config)?;
        let topic = self.open_topic(name, id, count, config)?;
        self.insert(Arc::clone(&topic));
        info!(topic = name, partitions = count, "topic created");
        Ok(topic)
    }

    /// The topic `name`, created with the broker defaults if it does not exist (Kafka's auto-creation).
    pub fn get_or_create(&self, name: &str) -> Result<Arc<Topic>> {
        if let Some(topic) = self.get(name) {
            return Ok(topic);
        }
        match self.create(name, None, TopicConfig::default()) {
            Err(CoreError::TopicExists(_)) => self
                .get(name)
                .ok_or_else(|| CoreError::UnknownTopic(name.to_string())),
            other => other,
        }
    }

    /// Deletes a topic and all its data.
    pub fn delete(&self, name: &str) -> Result<()> {
        let _admin = self.admin.lock();
        let Some(topic) = self.topics.write().remove(name) else {
            return Err(CoreError::UnknownTopic(name.to_string()));
        };
        self.by_id.write().remove(&topic.id);
        remove_durably(&self.meta_path(name))?;
        for partition in topic.partitions().iter() {
            self.logs.delete_log(&log_name(name, partition.index))?;
            remove_durably(&partition.snapshot_path)?;
            // Wake long-polling readers so they notice the partition is gone.
            partition.notify_appended();
        }
        info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Grows a topic to `count` partitions (CreatePartitions). Shrinking is refused, as in Kafka.
    pub fn grow(&self, name: &str, count: i32) -> Result<()> {
        check_partition_count(count)?;
        let _admin = self.admin.lock();
        let topic = self
            .get(name)
            .ok_or_else(|| CoreError::UnknownTopic(name.to_string()))?;
        let current = topic.partitions();
        let have = current.len() as i32;
        if count <= have {
            return Err(CoreError::InvalidPartitions {
                count: i64::from(count),
                reason: format!(
                    "topic '{name}' already has {have} partitions; the count can only grow"
                ),
            });
        }
        let config = topic.config();
        self.write_meta(name, topic.id, count, &config)?;
        let log_config = config.log_config(&self.defaults);
        let mut parts: Vec<Arc<Partition>> = current.iter().cloned().collect();
        for index in have..count {
            parts.push(self.open_partition(name, index, &log_config)?);
        }
        *topic.partitions.write() = Arc::new(parts);
        info!(topic = name, partitions = count, "partitions added");
        Ok(())
    }

    /// Changes a topic's overrides through `change`, persists them and applies them to its logs.
    pub fn alter_config(
        &self,
        name: &str,
        change: impl FnOnce(&mut TopicConfig) -> Result<()>,
    ) -> Result<()> {
        let _admin = self.admin.lock();
        let topic = self
            .get(name)
            .ok_or_else(|| CoreError::UnknownTopic(name.to_string()))?;
        let mut config = topic.config();
        change(&mut config)?;
        self.write_meta(name, topic.id, topic.partitions().len() as i32, &config)?;
        let log_config = config.log_config(&self.defaults);
        for partition in topic.partitions().iter() {
            partition.log.set_config(log_config.clone());
        }
        *topic.config.write() = config;
        Ok(())
    }
}

fn check_partition_count(count: i32) -> Result<()> {
    if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&count) {
        return Err(CoreError::InvalidPartitions {
            count: i64::from(count),
            reason: format!("must be between 1 and {PARTITIONS_PER_TOPIC_MAX}"),
        });
    }
    Ok(())
}

fn read_meta(path: &Path) -> Result<TopicMeta> {
    let bytes = std::fs::read(path).map_err(|source| CoreError::Meta {
        path: path.to_path_buf(),
        source,
    })?;
    let meta: TopicMeta = serde_json::from_slice(&bytes).map_err(|e| CoreError::CorruptMeta {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let corrupt = |reason: String| CoreError::CorruptMeta {
        path: path.to_path_buf(),
        reason,
    };
    if meta.version != TOPIC_META_VERSION {
        return Err(corrupt(format!(
            "format version {} is not {TOPIC_META_VERSION}",
            meta.version
        )));
    }
    validate_topic_name(&meta.name).map_err(|e| corrupt(e.to_string()))?;
    check_partition_count(meta.partitions).map_err(|e| corrupt(e.to_string()))?;
    for (key, value) in meta.config.overrides() {
        crate::topic_config::validate(key, value).map_err(|e| corrupt(e.to_string()))?;
    }
    Ok(meta)
}

impl TopicMeta {
    fn id_bytes(&self, path: &Path) -> Result<[u8; 16]> {
        unhex(&self.id).ok_or_else(|| CoreError::CorruptMeta {
            path: path.to_path_buf(),
            reason: format!("bad topic id '{}'", self.id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_log::ManagerConfig;

    fn registry(dir: &Path) -> TopicRegistry {
        let logs = Arc::new(LogManager::open(dir.join("logs"), ManagerConfig::default()).unwrap());
        TopicRegistry::open(logs, dir.join("topics"), TopicDefaults::default(), |_| None).unwrap()
    }

    #[test]
    fn names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_A-b").is_ok());
        for bad in ["", ".", "..", "a b", "tópico", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
    }

    #[test]
    fn topics_survive_reopen_and_deletion_removes_logs() {
        let dir = tempfile::tempdir().unwrap();
        let id;
        {
            let r = registry(dir.path());
            let config = TopicConfig::from_pairs([("retention.ms", Some("1000"))]).unwrap();
            let t = r.create("a", Some(3), config).unwrap();
            id = t.id();
            t.partition(2).unwrap().log().append(b"x", 1, 0).unwrap();
            r.create("b", None, TopicConfig::default()).unwrap();
            assert!(matches!(
                r.create("a", Some(1), TopicConfig::default()),
                Err(CoreError::TopicExists(_))
            ));
            r.grow("b", 2).unwrap();
            assert!(r.grow("b", 2).is_err());
            r.delete("b").unwrap();
            r.logs.close().unwrap();
        }
        let r = registry(dir.path());
        let a = r.get("a").unwrap();
        assert_eq!(a.id(), id);
        assert_eq!(a.partitions().len(), 3);
        assert_eq!(a.partition(2).unwrap().log().offsets().log_end, 1);
        assert_eq!(a.config().overrides().get("retention.ms").unwrap(), "1000");
        assert!(r.get("b").is_none());
        assert!(!r
            .logs
            .existing()
            .unwrap()
            .iter()
            .any(|n| n.starts_with("b-")));
    }

    #[test]
    fn orphan_partition_logs_are_deleted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let r = registry(dir.path());
            r.create("gone", Some(2), TopicConfig::default()).unwrap();
            // Simulate a crash between removing the metadata file and deleting the logs.
            remove_durably(&r.meta_path("gone")).unwrap();
            r.logs.close().unwrap();
        }
        let r = registry(dir.path());
        assert!(r.get("gone").is_none());
        assert!(r.logs.existing().unwrap().is_empty());
    }
}
