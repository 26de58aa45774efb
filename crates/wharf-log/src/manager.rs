//! The node-wide set of logs: one shared file-descriptor cache, one background thread for interval flushes,
//! index checkpoints and retention, one for timed writes of held tails, one computing the CRC of large payloads
//! while they are written, and name-to-directory mapping.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::config::{LogConfig, ManagerConfig};
use crate::crc_helper::CrcHelperThread;
use crate::error::{IoContext, LogError, Result};
use crate::file_cache::FileCache;
use crate::fsio::{now_ms, sync_dir};
use crate::log::{BackgroundSync, Log};
use crate::tail_flush::TailFlusher;

/// Longest name of a log: it is a directory name, and file systems allow 255 bytes. Kafka caps topic names at
/// 249 so that `<topic>-<partition>` fits.
pub const LOG_NAME_MAX_LEN: usize = 255;

/// Opens, owns and maintains every log of a node.
#[derive(Debug)]
pub struct LogManager {
    inner: Arc<Inner>,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// The held-tail writer and its thread; `None` when `tail_flush_interval` is zero (logs hold nothing).
    tail_flusher: Option<TailFlushThread>,
    /// The thread computing the CRC of large payloads while they are written; `None` on a single-CPU machine.
    crc_helper: Option<CrcHelperThread>,
}

/// The tail flusher and the thread running it.
#[derive(Debug)]
struct TailFlushThread {
    flusher: Arc<TailFlusher>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    config: ManagerConfig,
    files: Arc<FileCache>,
    logs: RwLock<HashMap<String, Arc<Log>>>,
    stop: Mutex<bool>,
    wake: Condvar,
}

impl LogManager {
    /// Opens the manager over `root` (created if missing) and starts its background thread. Logs are opened
    /// on demand with [`LogManager::open_log`]; [`LogManager::existing`] lists those on disk.
    pub fn open(root: impl Into<PathBuf>, config: ManagerConfig) -> Result<LogManager> {
        let root = root.into();
        std::fs::create_dir_all(&root).at(&root)?;
        let inner = Arc::new(Inner {
            root,
            files: Arc::new(FileCache::new(config.max_open_files)),
            config,
            logs: RwLock::new(HashMap::new()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let worker_inner = Arc::clone(&inner);
        // The tail flusher has its own thread, not the maintenance one: checkpoints and retention can take
        // seconds, and the held-tail window must not stretch with them.
        let tail_flusher = if inner.config.tail_flush_interval.is_zero() {
            None
        } else {
            let flusher = Arc::new(TailFlusher::new(inner.config.tail_flush_interval));
            let thread_flusher = Arc::clone(&flusher);
            let handle = std::thread::Builder::new()
                .name("wharf-log-tail-flush".into())
                .spawn(move || thread_flusher.run())
                .at(Path::new("<thread>"))?;
            Some(TailFlushThread {
                flusher,
                handle: Mutex::new(Some(handle)),
            })
        };
        // Dropping `tail_flusher` on this error leaves its thread running until the process ends: stop it.
        let crc_helper = match CrcHelperThread::start() {
            Ok(helper) => helper,
            Err(e) => {
                if let Some(t) = &tail_flusher {
                    t.stop();
                }
                return Err(e).at(Path::new("<thread>"));
            }
        };
        let manager = LogManager {
            inner: Arc::clone(&inner),
            worker: Mutex::new(None),
            tail_flusher,
            crc_helper,
        };
        // Dropping `manager` on this error stops the flusher thread again.
        let worker = std::thread::Builder::new()
            .name("wharf-log-maintenance".into())
            .spawn(move || worker_inner.run())
            .at(Path::new("<thread>"))?;
        *manager.worker.lock() = Some(worker);
        Ok(manager)
    }

    /// The shared file cache (for metrics).
    pub fn files(&self) -> &FileCache {
        &self.inner.files
    }

    /// Names of the logs stored under the root.
    pub fn existing(&self) -> Result<Vec<String>> {
        let root = &self.inner.root;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(root).at(root)? {
            let entry = entry.at(root)?;
            if entry.file_type().at(root)?.is_dir() {
                if let Some(name) = entry.file_name().to_str() {
                    if validate_name(name).is_ok() {
                        names.push(name.to_string());
                    }
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Opens the log `name`, creating it if it does not exist; returns the open one if it is already open
    /// (with its configuration updated to `config`).
    pub fn open_log(&self, name: &str, config: LogConfig) -> Result<Arc<Log>> {
        validate_name(name)?;
        if let Some(log) = self.inner.logs.read().get(name) {
            log.set_config(config);
            return Ok(Arc::clone(log));
        }
        let mut logs = self.inner.logs.write();
        if let Some(log) = logs.get(name) {
            log.set_config(config);
            return Ok(Arc::clone(log));
        }
        let log = Log::open(
            self.inner.root.join(name),
            name,
            config,
            Arc::clone(&self.inner.files),
        )?;
        let log = match &self.crc_helper {
            Some(h) => log.with_crc_helper(Arc::clone(&h.helper)),
            None => log,
        };
        let log = match &self.tail_flusher {
            Some(TailFlushThread { flusher, .. }) => {
                Arc::new_cyclic(|me| log.with_tail_flusher(Arc::clone(flusher), me.clone()))
            }
            None => Arc::new(log),
        };
        logs.insert(name.to_string(), Arc::clone(&log));
        Ok(log)
    }

    /// The open log `name`, if any.
    pub fn get(&self, name: &str) -> Option<Arc<Log>> {
        self.inner.logs.read().get(name).cloned()
    }

    /// Number of open logs.
    pub fn len(&self) -> usize {
        self.inner.logs.read().len()
    }

    /// Whether no log is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes the log `name` and deletes all its files.
    pub fn delete_log(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        let log = self.inner.logs.write().remove(name);
        if let Some(log) = log {
            log.close()?;
            log.release_files();
        }
        let dir = self.inner.root.join(name);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(&dir),
            _ => {}
        }
        sync_dir(&self.inner.root)
    }

    /// Runs one maintenance pass now (interval flushes, checkpoints, retention) — for tests and tools.
    pub fn maintain_now(&self) -> Result<()> {
        let logs: Vec<Arc<Log>> = self.inner.logs.read().values().cloned().collect();
        for log in logs {
            log.sync()?;
            log.checkpoint()?;
            log.apply_retention(now_ms())?;
        }
        Ok(())
    }

    /// Stops the background threads, then syncs and checkpoints every log so the next open scans nothing.
    pub fn close(&self) -> Result<()> {
        self.stop_threads();
        let logs: Vec<Arc<Log>> = self.inner.logs.read().values().cloned().collect();
        let mut first_error = None;
        for log in logs {
            if let Err(e) = log.close() {
                tracing::error!(log = log.name(), error = %e, "closing log failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl LogManager {
    /// Stops the maintenance thread and the tail flusher, which writes every queued held tail before it ends
    /// (logs still open afterwards hold nothing back).
    fn stop_threads(&self) {
        *self.inner.stop.lock() = true;
        self.inner.wake.notify_all();
        if let Some(worker) = self.worker.lock().take() {
            let _ = worker.join();
        }
        if let Some(t) = &self.tail_flusher {
            t.stop();
        }
        if let Some(helper) = &self.crc_helper {
            helper.stop();
        }
    }

    /// Changes the smallest payload whose CRC the helper thread computes while it is written (`usize::MAX`
    /// turns the helper off). For benchmarks and tests only; the default is measured.
    #[doc(hidden)]
    pub fn set_parallel_crc_min_bytes(&self, bytes: usize) {
        if let Some(helper) = &self.crc_helper {
            helper.helper.set_min_bytes(bytes);
        }
    }

    /// Payload pieces the CRC helper thread has computed since the manager opened (tests check that the helper
    /// path ran). For tests only.
    #[doc(hidden)]
    pub fn parallel_crc_pieces(&self) -> u64 {
        self.crc_helper
            .as_ref()
            .map_or(0, |h| h.helper.helper_chunks())
    }
}

impl TailFlushThread {
    /// Stops the flusher, which writes every queued held tail first, and waits for its thread.
    fn stop(&self) {
        self.flusher.stop();
        if let Some(handle) = self.handle.lock().take() {
            let _ = handle.join();
        }
    }
}

impl Drop for LogManager {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Longest a maintenance pass spends on owed syncs (each a blocking fdatasync on this one thread), so that a node
/// with many such logs still runs its `interval` flushes, checkpoints and retention on time.
const OWED_SYNCS_PASS_BUDGET: Duration = Duration::from_millis(50);

impl Inner {
    /// The maintenance loop: wakes every few milliseconds for interval flushes, less often for checkpoints and
    /// retention. Errors are logged; a failing log does not stop the others from being maintained.
    fn run(&self) {
        let mut last_checkpoint = Instant::now();
        let mut last_retention = Instant::now();
        loop {
            let tick = self.tick();
            {
                let mut stop = self.stop.lock();
                if *stop {
                    return;
                }
                self.wake.wait_for(&mut stop, tick);
                if *stop {
                    return;
                }
            }
            // Under the read lock only atomic loads per log, collecting the few that are due: a node with
            // thousands of idle logs must not pay a lock and a config clone per log every few milliseconds.
            let now = now_ms();
            let (mut interval_due, mut owed_due) = (Vec::new(), Vec::new());
            for log in self.logs.read().values() {
                match log.background_sync_due(now) {
                    BackgroundSync::Interval => interval_due.push(Arc::clone(log)),
                    BackgroundSync::Owed => owed_due.push(Arc::clone(log)),
                    BackgroundSync::No => {}
                }
            }
            // `interval` flushes first: they are the policy's promise. Then the syncs owed to `always` logs
            // (see `LogConfig::unsynced_age_max_ms`), for at most `OWED_SYNCS_PASS_BUDGET` per pass; those not
            // reached stay owed for the next pass.
            let pass_started = Instant::now();
            for (log, owed) in interval_due
                .iter()
                .map(|log| (log, false))
                .chain(owed_due.iter().map(|log| (log, true)))
            {
                if owed && pass_started.elapsed() >= OWED_SYNCS_PASS_BUDGET {
                    break;
                }
                if !log.has_unsynced() {
                    continue;
                }
                log.last_flush_ms.store(now, Ordering::Relaxed);
                log.sync_owed.store(false, Ordering::Relaxed);
                if let Err(e) = log.sync() {
                    tracing::error!(log = log.name(), error = %e, "background flush failed");
                }
            }
            let logs: Vec<Arc<Log>> = if last_checkpoint.elapsed()
                >= self.config.checkpoint_interval
                || last_retention.elapsed() >= self.config.retention_check_interval
            {
                self.logs.read().values().cloned().collect()
            } else {
                Vec::new()
            };
            if last_checkpoint.elapsed() >= self.config.checkpoint_interval {
                last_checkpoint = Instant::now();
                for log in &logs {
                    if let Err(e) = log.checkpoint() {
                        tracing::error!(log = log.name(), error = %e, "checkpoint failed");
                    }
                }
            }
            if last_retention.elapsed() >= self.config.retention_check_interval {
                last_retention = Instant::now();
                for log in &logs {
                    if let Err(e) = log.apply_retention(now_ms()) {
                        tracing::error!(log = log.name(), error = %e, "retention failed");
                    }
                }
            }
        }
    }

    /// How long to sleep: the shortest flush interval of any log (for `always`, the unsynced age bound),
    /// bounded to [5 ms, 1 s].
    fn tick(&self) -> Duration {
        let logs = self.logs.read();
        let shortest = logs
            .values()
            .filter_map(|l| l.background_period_ms())
            .min()
            .unwrap_or(1000);
        Duration::from_millis(shortest.clamp(5, 1000))
    }
}

/// Checks that `name` is a safe directory name: 1–255 of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= LOG_NAME_MAX_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(LogError::InvalidName(name.to_string()))
    }
}
