//! One log: an ordered set of segments with dense offsets, one writer at a time, any number of readers.
//!
//! Locking: `state` (one mutex per log) guards the segment list, the append position and the held tail (see
//! [`crate::tail`]). Appends hold it while they `pwritev` into the page cache; readers hold it only to plan which
//! file range to read and to copy the held bytes, then read without it. fdatasync never runs under it (see
//! [`crate::group_commit`]), except when a segment rolls under `always`: sealing syncs the old segment so that
//! every sealed segment is durable and fully indexed.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::{Durability, LogConfig};
use crate::crc_helper::CrcHelper;
use crate::error::{IoContext, LogError, Result};
use crate::file_cache::{next_file_id, FileCache};
use crate::frame::{FrameHeader, KnownCrc, FRAME_HEADER_LEN};
use crate::fsio::{now_ms, sync_dir, write_atomic};
use crate::group_commit::{GroupCommit, Step};
use crate::index::{IndexDecodeError, SegmentIndex, INDEX_VERSION};
use crate::meta::LogMeta;
use crate::segment::{
    find_time_in_span, parse_segment_name, read_span, scan, segment_paths, Batch, ReadSpan,
    ReadStop, SealedIndex, Segment, SegmentState,
};
use crate::tail::HeldTail;
use crate::tail_flush::TailFlusher;

/// Where an append landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Offset given to the batch's first record.
    pub base_offset: u64,
    /// Offset just past the batch (the log end right after this append). Pass it to
    /// [`Log::wait_durable`] / [`Log::wait_for_policy`].
    pub next_offset: u64,
}

/// Counters of one log, for metrics and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogStats {
    /// Batches appended since open.
    pub appends: u64,
    /// fdatasync rounds completed by group commit since open.
    pub syncs: u64,
    /// Number of segments.
    pub segments: usize,
    /// Bytes on disk in segment files.
    pub size_bytes: u64,
}

/// A point-in-time view of a log's offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// First readable offset.
    pub log_start: u64,
    /// Offset the next append gets.
    pub log_end: u64,
    /// Every offset below this is durable (fdatasync'ed).
    pub durable: u64,
}

/// A segmented, append-only commit log. See the crate docs.
#[derive(Debug)]
pub struct Log {
    name: String,
    dir: PathBuf,
    files: Arc<FileCache>,
    state: Mutex<LogState>,
    commit: GroupCommit,
    /// Serialises [`Log::finish_seals`]; taken before `state`, never while holding it.
    seal_lock: Mutex<()>,
    appends: AtomicU64,
    /// Wall-clock ms of the last successful sync round, whoever led it (the manager's background syncs under
    /// `Durability::Interval`, and under `Durability::Always` when nobody waited, go by it).
    pub(crate) last_flush_ms: AtomicI64,
    /// Set by [`Log::owe_sync`]: a wait was resolved without a sync, so the manager syncs the log within
    /// [`LogConfig::unsynced_age_max_ms`].
    pub(crate) sync_owed: AtomicBool,
    /// The background flush period the policy asks for, readable without the state lock (see [`FlushPeriod`]).
    flush_period: FlushPeriod,
    /// The manager's tail flusher; without one (a log opened on its own) appends hold nothing back.
    tail_hook: Option<TailHook>,
    /// The manager's CRC helper; without one (a log opened on its own) appends compute every CRC inline.
    crc_helper: Option<Arc<CrcHelper>>,
}

/// What a log needs to queue itself on the tail flusher.
#[derive(Debug)]
struct TailHook {
    flusher: Arc<TailFlusher>,
    me: Weak<Log>,
    /// The held tail's `dirty_since` as of the last append ([`TailFlusher::encode`]), readable without the
    /// log's lock. Between appends the real value is this or "clean" (writes only clear it), so the flusher can
    /// re-queue a busy log without contending for its lock; only a tail that looks due is checked under it.
    dirty_since: AtomicU64,
}

/// Why the manager's background pass syncs a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BackgroundSync {
    No,
    /// `Durability::Interval`: its period has passed since the last sync.
    Interval,
    /// `Durability::Always` with a sync owed ([`Log::owe_sync`]) for `unsynced_age_max_ms`.
    Owed,
}

/// A log's background flush period, kept beside its config in atomics so that the manager's pass (every few
/// ms, over every log of the node) reads it without the log's lock or a config clone: `Interval { ms }` is
/// `ms`; `Always` with `unsynced_age_max_ms` is that age, flagged as owed-only; anything else is 0 (none).
#[derive(Debug)]
struct FlushPeriod {
    ms: AtomicU64,
    owed_only: AtomicBool,
}

impl FlushPeriod {
    fn of(config: &LogConfig) -> FlushPeriod {
        let period = FlushPeriod {
            ms: AtomicU64::new(0),
            owed_only: AtomicBool::new(false),
        };
        period.set(config);
        period
    }

    fn set(&self, config: &LogConfig) {
        let (ms, owed_only) = match config.durability {
            Durability::Interval { ms } => (ms.max(1), false),
            Durability::Always => (config.unsynced_age_max_ms.map_or(0, |ms| ms.max(1)), true),
            Durability::Os => (0, false),
        };
        self.owed_only.store(owed_only, Ordering::Relaxed);
        self.ms.store(ms, Ordering::Relaxed);
    }

    /// `(period ms, owed only)`, or `None` when the policy needs no background flush.
    fn get(&self) -> Option<(u64, bool)> {
        let ms = self.ms.load(Ordering::Relaxed);
        (ms > 0).then(|| (ms, self.owed_only.load(Ordering::Relaxed)))
    }
}

#[derive(Debug)]
struct LogState {
    config: LogConfig,
    segments: BTreeMap<u64, Segment>,
    next_offset: u64,
    log_start: u64,
    /// Bumped whenever the active segment changes identity (roll, truncation): a checkpoint captured under an
    /// older generation must not overwrite the index file.
    generation: u64,
    /// Coverage position of the last index checkpoint of the active segment.
    checkpointed_position: u64,
    /// Segments rolled under `interval` / `os` whose fdatasync and index write are still to do.
    pending_seals: Vec<PendingSeal>,
    /// The active segment's bytes past its last aligned boundary, kept in memory (see [`crate::tail`]).
    tail: HeldTail,
    closed: bool,
}

/// A rolled segment waiting for its fdatasync and index file.
#[derive(Debug)]
struct PendingSeal {
    file_id: u64,
    path: PathBuf,
    index_path: PathBuf,
    index: SegmentIndex,
}

impl LogState {
    fn active(&self) -> &Segment {
        // Invariant: a log always has at least one segment and the last one is active.
        self.segments
            .values()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has an active segment")
    }

    /// The active segment and its held tail, borrowed together.
    fn active_and_tail(&mut self) -> (&mut Segment, &mut HeldTail) {
        let seg = self
            .segments
            .values_mut()
            .next_back()
            .expect("a log always has an active segment");
        (seg, &mut self.tail)
    }
}

fn active_index(seg: &Segment) -> &SegmentIndex {
    match &seg.state {
        SegmentState::Active { index, .. } => index,
        SegmentState::Sealed(_) => unreachable!("the last segment is always active"),
    }
}

/// Reports a sync round whose leader panicked as failed (see [`Log::lead_round`]).
struct RoundGuard<'a> {
    commit: &'a GroupCommit,
    armed: bool,
}

impl Drop for RoundGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.commit.finish(
                &Err("the sync round's leader panicked".to_string()),
                Duration::ZERO,
                false,
            );
        }
    }
}

impl Log {
    /// Opens (or creates) the log stored in `dir`, recovering its tail: the active segment is checked from its
    /// last index checkpoint on, and a torn or corrupt tail is truncated and logged.
    pub fn open(
        dir: impl Into<PathBuf>,
        name: impl Into<String>,
        config: LogConfig,
        files: Arc<FileCache>,
    ) -> Result<Log> {
        let dir = dir.into();
        let name = name.into();
        let config = config.clamped();
        if !dir.exists() {
            std::fs::create_dir_all(&dir).at(&dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let meta = LogMeta::load(&dir)?;
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            if file_name.ends_with(".tmp") {
                // An interrupted atomic write; the file it was replacing is still whole.
                let _ = std::fs::remove_file(entry.path());
            } else if let Some(base) = parse_segment_name(&file_name) {
                bases.push(base);
            }
        }
        bases.sort_unstable();

        let mut segments = BTreeMap::new();
        if bases.is_empty() {
            let base = meta.map_or(0, |m| m.log_start_offset);
            let seg = create_segment(&dir, base, &config, &files)?;
            segments.insert(base, seg);
        } else {
            let last = bases.len() - 1;
            for (i, &base) in bases.iter().enumerate() {
                let seg = if i == last {
                    recover_active(&dir, base, &config, &files)?
                } else {
                    let (path, index_path) = segment_paths(&dir, base);
                    let size = std::fs::metadata(&path).at(&path)?.len();
                    Segment {
                        base,
                        file_id: next_file_id(),
                        path,
                        index_path,
                        size,
                        state: SegmentState::Sealed(Arc::default()),
                    }
                };
                segments.insert(base, seg);
            }
        }
        let (first_base, last_seg) = match (segments.keys().next(), segments.values().next_back()) {
            (Some(&first), Some(last)) => (first, last),
            _ => unreachable!("at least one segment was created"),
        };
        let next_offset = active_index(last_seg).coverage().next_offset;
        let checkpointed_position = active_index(last_seg).coverage().position;
        let tail = HeldTail::at(last_seg.size);
        let log_start = meta
            .map_or(first_base, |m| m.log_start_offset)
            .max(first_base)
            .min(next_offset);
        let config_for_period = config.clone();
        let state = LogState {
            config,
            segments,
            next_offset,
            log_start,
            generation: 0,
            checkpointed_position,
            pending_seals: Vec::new(),
            tail,
            closed: false,
        };
        tracing::debug!(log = %name, start = log_start, end = next_offset, "log opened");
        Ok(Log {
            name,
            dir,
            files,
            state: Mutex::new(state),
            // Nothing recovered is known to be synced yet (the previous process may have died before syncing);
            // the first waiter syncs once.
            commit: GroupCommit::new(first_base.min(log_start)),
            seal_lock: Mutex::new(()),
            appends: AtomicU64::new(0),
            last_flush_ms: AtomicI64::new(now_ms()),
            sync_owed: AtomicBool::new(false),
            flush_period: FlushPeriod::of(&config_for_period),
            tail_hook: None,
            crc_helper: None,
        })
    }

    /// Lets the log hand the CRC of large payloads to `helper` while it writes them (see [`crate::crc_helper`]).
    pub(crate) fn with_crc_helper(mut self, helper: Arc<CrcHelper>) -> Log {
        self.crc_helper = Some(helper);
        self
    }

    /// Lets the log hold its tail back, with `flusher` writing it within its interval. `me` is the log's own
    /// `Arc` (the manager builds it with `Arc::new_cyclic`).
    pub(crate) fn with_tail_flusher(mut self, flusher: Arc<TailFlusher>, me: Weak<Log>) -> Log {
        self.tail_hook = Some(TailHook {
            flusher,
            me,
            dirty_since: AtomicU64::new(0),
        });
        self
    }

    /// The log's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directory holding the log's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log's current configuration.
    pub fn config(&self) -> LogConfig {
        self.state.lock().config.clone()
    }

    /// Changes the configuration; it applies to the next append, roll and retention pass.
    pub fn set_config(&self, config: LogConfig) {
        let config = config.clamped();
        self.flush_period.set(&config);
        self.state.lock().config = config;
    }

    /// Whether the manager's background pass should sync this log now (`now` in wall-clock ms), and why.
    /// Atomic loads only: a pass looks at every log of the node, most of them idle.
    pub(crate) fn background_sync_due(&self, now: i64) -> BackgroundSync {
        let since_flush = now.saturating_sub(self.last_flush_ms.load(Ordering::Relaxed));
        let due = |ms: u64| u64::try_from(since_flush).is_ok_and(|since| since >= ms);
        match self.flush_period.get() {
            Some((ms, false)) if due(ms) => BackgroundSync::Interval,
            Some((ms, true)) if self.sync_owed.load(Ordering::Relaxed) && due(ms) => {
                BackgroundSync::Owed
            }
            _ => BackgroundSync::No,
        }
    }

    /// How often the manager's pass must look at this log, if ever (see [`FlushPeriod`]).
    pub(crate) fn background_period_ms(&self) -> Option<u64> {
        self.flush_period.get().map(|(ms, _)| ms)
    }

    /// Start, end and durable offsets.
    pub fn offsets(&self) -> Offsets {
        let st = self.state.lock();
        let durable = self.commit.durable();
        Offsets {
            log_start: st.log_start,
            log_end: st.next_offset,
            durable: durable.min(st.next_offset),
        }
    }

    /// Bytes in the active segment (the one appends go to, which retention never deletes).
    pub fn active_segment_bytes(&self) -> u64 {
        self.state.lock().active().size
    }

    /// Counters since open.
    pub fn stats(&self) -> LogStats {
        let st = self.state.lock();
        LogStats {
            appends: self.appends.load(Ordering::Relaxed),
            syncs: self.commit.syncs.load(Ordering::Relaxed),
            segments: st.segments.len(),
            size_bytes: st.segments.values().map(|s| s.size).sum(),
        }
    }

    /// Appends one batch of `record_count` records and returns its offsets. The batch is in the page cache when
    /// this returns; call [`Log::wait_for_policy`] (or [`Log::wait_durable`]) before acknowledging it.
    pub fn append(
        &self,
        payload: &[u8],
        record_count: u32,
        max_timestamp: i64,
    ) -> Result<Appended> {
        let mut st = self.state.lock();
        self.check_append(&st, payload.len(), record_count)?;
        self.append_locked(&mut st, payload, record_count, max_timestamp, None)
    }

    /// Like [`Log::append`], but first calls `stamp(base_offset, payload)` under the log's lock so the caller
    /// can write the assigned offset into its own header (Kafka writes the base offset into the record batch).
    pub fn append_with(
        &self,
        payload: &mut [u8],
        record_count: u32,
        max_timestamp: i64,
        stamp: impl FnOnce(u64, &mut [u8]),
    ) -> Result<Appended> {
        let mut st = self.state.lock();
        self.check_append(&st, payload.len(), record_count)?;
        stamp(st.next_offset, payload);
        self.append_locked(&mut st, payload, record_count, max_timestamp, None)
    }

    /// Like [`Log::append_with`], for a caller that already holds the CRC32C of the end of the payload: the
    /// frame CRC is derived from `known` instead of re-reading those bytes (at 1 MiB that saves ~40 µs, about a
    /// sixth of the cost of an append). Kafka's record batches carry one over bytes 21.., which the Kafka layer
    /// verifies before appending anyway.
    ///
    /// The caller guarantees that `known.crc32c` is the CRC32C of `payload[known.from..]` as appended, and that
    /// `stamp` does not change those bytes. A wrong value is written as is: reads then refuse the batch as
    /// corrupt, and recovery truncates the active segment there. Debug builds check it and refuse the batch
    /// with [`LogError::InvalidBatch`]. `known.from` past the end of the payload is refused in every build.
    pub fn append_with_known_crc(
        &self,
        payload: &mut [u8],
        record_count: u32,
        max_timestamp: i64,
        known: KnownCrc,
        stamp: impl FnOnce(u64, &mut [u8]),
    ) -> Result<Appended> {
        if known.from > payload.len() {
            return Err(LogError::InvalidBatch(
                "the known CRC starts past the end of the payload",
            ));
        }
        let mut st = self.state.lock();
        self.check_append(&st, payload.len(), record_count)?;
        stamp(st.next_offset, payload);
        if cfg!(debug_assertions) && crc32c::crc32c(&payload[known.from..]) != known.crc32c {
            return Err(LogError::InvalidBatch(
                "the known CRC does not match the payload (checked in debug builds only)",
            ));
        }
        self.append_locked(&mut st, payload, record_count, max_timestamp, Some(known))
    }

    fn check_append(&self, st: &LogState, len: usize, record_count: u32) -> Result<()> {
        if st.closed {
            return Err(LogError::Closed(self.name.clone()));
        }
        if let (_, Some(reason)) = self.commit.snapshot() {
            return Err(LogError::Failed {
                name: self.name.clone(),
                reason,
            });
        }
        if record_count == 0 {
            return Err(LogError::InvalidBatch(
                "a batch must hold at least one record",
            ));
        }
        if len > st.config.max_batch_bytes as usize {
            return Err(LogError::BatchTooLarge {
                size: len,
                max: st.config.max_batch_bytes,
            });
        }
        if st
            .next_offset
            .checked_add(u64::from(record_count))
            .is_none()
        {
            return Err(LogError::InvalidBatch("offsets would overflow"));
        }
        Ok(())
    }

    /// Writes a batch that [`Log::check_append`] has accepted under the same lock.
    fn append_locked(
        &self,
        st: &mut LogState,
        payload: &[u8],
        record_count: u32,
        max_timestamp: i64,
        known: Option<KnownCrc>,
    ) -> Result<Appended> {
        let frame_len = FRAME_HEADER_LEN as u64 + payload.len() as u64;
        // One clock read per append, for the segment's age and the held tail's.
        let now = Instant::now();
        if self.should_roll(st, frame_len, record_count, now) {
            self.roll_locked(st)?;
        }
        let base_offset = st.next_offset;
        // A large payload without a known CRC has its CRC computed by the helper while it is written.
        let helper = self
            .crc_helper
            .as_deref()
            .filter(|h| known.is_none() && h.wants(payload.len()));
        // Holding is safe only while the flusher runs: it bounds how long held bytes stay out of the page cache.
        let hold = self
            .tail_hook
            .as_ref()
            .is_some_and(|h| h.flusher.is_running());
        let (seg, tail) = st.active_and_tail();
        let position = seg.size;
        debug_assert_eq!(position, tail.end());
        let file = self.files.get(seg.file_id, &seg.path)?;
        let written = match helper {
            None => {
                let header = FrameHeader::encode_with_known_crc(
                    base_offset,
                    record_count,
                    max_timestamp,
                    payload,
                    known,
                );
                tail.append(&file, &[&header, payload], hold, now)
            }
            Some(helper) => {
                let unsealed = FrameHeader::encode_unsealed(
                    base_offset,
                    record_count,
                    max_timestamp,
                    payload.len(),
                );
                helper.overlapped(payload, |crc| {
                    tail.append_header_last(&file, payload, hold, now, || {
                        FrameHeader::seal(unsealed, crc.crc32c())
                    })
                })
            }
        };
        if let Err(e) = written {
            // Cut off whatever part of the frame reached the file, so the file stays a prefix of the log.
            if let Err(e2) = file.set_len(tail.file_end()) {
                self.commit.fail(format!(
                    "write failed ({e}) and the partial frame could not be removed ({e2})"
                ));
            }
            return Err(LogError::Io {
                path: seg.path.clone(),
                source: e,
            });
        }
        seg.size += frame_len;
        if let Some(hook) = &self.tail_hook {
            let since = hook.flusher.encode(tail.dirty_since());
            hook.dirty_since.store(since, Ordering::Release);
        }
        if let SegmentState::Active {
            index,
            first_append,
        } = &mut seg.state
        {
            index.on_batch(
                base_offset,
                record_count,
                position,
                frame_len,
                max_timestamp,
            );
            first_append.get_or_insert(now);
        }
        st.next_offset = base_offset + u64::from(record_count);
        self.appends.fetch_add(1, Ordering::Relaxed);
        self.schedule_tail_flush(st)?;
        Ok(Appended {
            base_offset,
            next_offset: st.next_offset,
        })
    }

    /// Queues the log on the tail flusher if it now holds bytes that are not in the page cache and is not queued
    /// yet. If the flusher has stopped meanwhile, writes them at once instead.
    fn schedule_tail_flush(&self, st: &mut LogState) -> Result<()> {
        let (Some(hook), Some(since), false) =
            (&self.tail_hook, st.tail.dirty_since(), st.tail.queued)
        else {
            return Ok(());
        };
        if hook
            .flusher
            .enqueue(hook.me.clone(), since + hook.flusher.interval())
        {
            st.tail.queued = true;
            Ok(())
        } else {
            self.write_tail(st)
        }
    }

    /// Writes the active segment's held bytes that are not in the file yet (they stay held, so appends stay
    /// aligned). Called before anything is synced, sealed, checkpointed or cut. A failure fails the log: those
    /// bytes may belong to acknowledged appends, and they cannot reach the page cache.
    fn write_tail(&self, st: &mut LogState) -> Result<()> {
        if st.tail.dirty_since().is_none() {
            return Ok(());
        }
        let (seg, tail) = st.active_and_tail();
        let written = self
            .files
            .get(seg.file_id, &seg.path)
            .and_then(|file| tail.write_out(&file).at(&seg.path));
        if let Err(e) = &written {
            self.commit.fail(format!(
                "writing the held tail of {} failed: {e}",
                seg.path.display()
            ));
        }
        written.map(|_| ())
    }

    /// Called by the tail flusher when this log's entry is due. `now` is `None` when the flusher stops: write
    /// regardless. Otherwise a tail that appends have renewed since it was queued is queued again for its new due
    /// time; an older one is written and its buffer released (the log has been idle for the whole interval).
    pub(crate) fn flush_held_tail(&self, now: Option<Instant>) {
        if let (Some(now), Some(hook)) = (now, &self.tail_hook) {
            // The common case of a busy log: renewed by an append since it was queued. No lock needed.
            let since = hook
                .flusher
                .decode(hook.dirty_since.load(Ordering::Acquire));
            if let Some(due) = since.map(|t| t + hook.flusher.interval()) {
                if due > now && hook.flusher.enqueue(hook.me.clone(), due) {
                    return;
                }
            }
        }
        let mut st = self.state.lock();
        st.tail.queued = false;
        if let (Some(now), Some(since), Some(hook)) = (now, st.tail.dirty_since(), &self.tail_hook)
        {
            let due = since + hook.flusher.interval();
            if due > now && hook.flusher.enqueue(hook.me.clone(), due) {
                st.tail.queued = true;
                return;
            }
        }
        match self.write_tail(&mut st) {
            Ok(()) => st.tail.release(),
            Err(e) => {
                tracing::error!(log = %self.name, error = %e, "timed write of the held tail failed; the log refuses appends");
            }
        }
    }

    fn should_roll(&self, st: &LogState, frame_len: u64, record_count: u32, now: Instant) -> bool {
        let seg = st.active();
        if seg.size == 0 {
            return false;
        }
        let too_big = seg.size + frame_len > st.config.segment_bytes;
        let offsets_full =
            st.next_offset + u64::from(record_count) - seg.base > u64::from(u32::MAX);
        let too_old = match &seg.state {
            SegmentState::Active {
                first_append: Some(t),
                ..
            } => now.saturating_duration_since(*t) >= Duration::from_millis(st.config.segment_ms),
            _ => false,
        };
        too_big || offsets_full || too_old
    }

    /// Seals the active segment (fdatasync, full index written) and starts a new one at the log end.
    fn roll_locked(&self, st: &mut LogState) -> Result<()> {
        // The old segment's file must hold all of it before it is sealed (or queued for sealing).
        self.write_tail(st)?;
        let next_offset = st.next_offset;
        let sync_now = st.config.durability == Durability::Always;
        let seg = st.active_mut();
        let index = match std::mem::replace(&mut seg.state, SegmentState::Sealed(Arc::default())) {
            SegmentState::Active { index, .. } => index,
            SegmentState::Sealed(_) => unreachable!("the last segment is always active"),
        };
        let seal = PendingSeal {
            file_id: seg.file_id,
            path: seg.path.clone(),
            index_path: seg.index_path.clone(),
            index: index.clone(),
        };
        seg.state = SegmentState::Sealed(SealedIndex::with(index));
        if sync_now {
            // Under `always` nearly everything is synced already: this fdatasync is short.
            self.seal(&seal)?;
        } else {
            // Under `interval` and `os` the whole segment may be unsynced: seal it off the append path (the next
            // sync round or checkpoint does, before it may claim anything durable).
            st.pending_seals.push(seal);
        }
        let new = create_segment(&self.dir, next_offset, &st.config, &self.files)?;
        st.segments.insert(next_offset, new);
        st.tail.reset(0);
        st.generation += 1;
        st.checkpointed_position = 0;
        tracing::debug!(log = %self.name, base = next_offset, "rolled segment");
        Ok(())
    }

    /// fdatasyncs a sealed segment and writes its full index (only after the sync, so that an index never
    /// covers data that is not durable).
    fn seal(&self, seal: &PendingSeal) -> Result<()> {
        let file = match self.files.get(seal.file_id, &seal.path) {
            Ok(f) => f,
            // Deleted by retention or truncation before it was sealed: nothing left to make durable.
            Err(LogError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        if let Err(e) = file.sync_data() {
            self.commit
                .fail(format!("fdatasync of {} failed: {e}", seal.path.display()));
            return Err(LogError::Io {
                path: seal.path.clone(),
                source: e,
            });
        }
        self.commit.mark_durable(seal.index.coverage().next_offset);
        // The index is an optimisation: if writing it fails the segment is rescanned when first read.
        if let Err(e) = write_atomic(&seal.index_path, &seal.index.encode()) {
            tracing::warn!(log = %self.name, error = %e, "could not write the index of a sealed segment");
        }
        Ok(())
    }

    /// Seals the segments rolled without a sync, oldest first. Holding `seal_lock` throughout keeps a
    /// concurrent sync round from claiming durability past a segment still being sealed.
    fn finish_seals(&self) -> Result<()> {
        let _guard = self.seal_lock.lock();
        let pending = std::mem::take(&mut self.state.lock().pending_seals);
        for seal in &pending {
            self.seal(seal)?;
        }
        Ok(())
    }

    /// Forces the active segment to roll (for tests and for retention of an idle log).
    pub fn roll(&self) -> Result<()> {
        let mut st = self.state.lock();
        if st.active().size == 0 {
            return Ok(());
        }
        self.roll_locked(&mut st)
    }

    fn failed(&self, reason: String) -> LogError {
        LogError::Failed {
            name: self.name.clone(),
            reason,
        }
    }

    /// Blocks until every offset below `target` is durable, leading or joining a group-commit round.
    pub fn wait_durable(&self, target: u64) -> Result<()> {
        loop {
            match self.commit.wait_blocking(target) {
                Step::Done => return Ok(()),
                Step::Failed(reason) => return Err(self.failed(reason)),
                Step::Lead => {
                    let synced = self.lead_round(false)?;
                    if synced < target {
                        return Err(LogError::Truncated { target });
                    }
                }
                Step::Wait => unreachable!("wait_blocking never returns Wait"),
            }
        }
    }

    /// Async form of [`Log::wait_durable`]: the fdatasync runs on tokio's blocking pool, waiters park on a watch
    /// channel, so thousands of pending acknowledgements cost no threads.
    pub async fn wait_durable_async(self: &Arc<Self>, target: u64) -> Result<()> {
        loop {
            let mut rounds = self.commit.subscribe();
            match self.commit.step(target) {
                Step::Done => return Ok(()),
                Step::Failed(reason) => return Err(self.failed(reason)),
                Step::Lead => {
                    let this = Arc::clone(self);
                    let synced = tokio::task::spawn_blocking(move || this.lead_round(true))
                        .await
                        .map_err(|e| LogError::Failed {
                            name: self.name.clone(),
                            reason: format!("sync task failed: {e}"),
                        })??;
                    if synced < target {
                        return Err(LogError::Truncated { target });
                    }
                }
                Step::Wait => {
                    // An error means the log was dropped; the next step reports the state either way.
                    let _ = rounds.changed().await;
                }
            }
        }
    }

    /// Waits as the log's durability policy requires before an append at `next_offset` may be acknowledged:
    /// `Always` waits for fdatasync; `Interval` and `Os` return at once.
    pub fn wait_for_policy(&self, next_offset: u64) -> Result<()> {
        let policy = self.state.lock().config.durability;
        match policy {
            Durability::Always => self.wait_durable(next_offset),
            Durability::Interval { .. } | Durability::Os => Ok(()),
        }
    }

    /// Async form of [`Log::wait_for_policy`].
    pub async fn wait_for_policy_async(self: &Arc<Self>, next_offset: u64) -> Result<()> {
        let policy = self.state.lock().config.durability;
        match policy {
            Durability::Always => self.wait_durable_async(next_offset).await,
            Durability::Interval { .. } | Durability::Os => Ok(()),
        }
    }

    /// A caller let data go unsynced that it would otherwise have waited for (an AMQP confirm resolved by the
    /// consumer's ack): under `always` with [`LogConfig::unsynced_age_max_ms`], the manager now syncs it within
    /// that age, so that a later wait's sync does not have to write all of it at once. Logs nobody calls this
    /// for keep the plain `always` behaviour (synced only for waiters).
    pub fn owe_sync(&self) {
        self.sync_owed.store(true, Ordering::Relaxed);
    }

    /// Whether [`Log::wait_for_policy_async`] for `next_offset` would wait for an fdatasync: the policy is
    /// `always` and the offsets below are not durable yet.
    pub fn waits_for_sync(&self, next_offset: u64) -> bool {
        let always = matches!(self.state.lock().config.durability, Durability::Always);
        always && self.commit.durable() < next_offset
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> Result<()> {
        let end = self.state.lock().next_offset;
        self.wait_durable(end)
    }

    /// One group-commit round, run by its leader: capture the end, fdatasync, publish.
    /// `gather`: the leader may pause to gather appends under continuous load (see `group_commit`). Only async
    /// waiters' rounds do (on the blocking pool): a blocking caller may hold a lock of its own while it waits.
    fn lead_round(&self, gather: bool) -> Result<u64> {
        // Every way out of the round below reports to the group commit; a panic would not, and would leave the
        // round in progress with no leader, so that every later wait on this log hung. The guard reports it as a
        // failure instead (the log's state is unknown after it).
        let mut guard = RoundGuard {
            commit: &self.commit,
            armed: true,
        };
        let result = self.lead_round_unguarded(gather);
        guard.armed = false;
        result
    }

    fn lead_round_unguarded(&self, gather: bool) -> Result<u64> {
        // Let appenders released by the previous round append again before the end is captured; without this,
        // waiters split into two alternating halves and a round covers only about half of them. Under steady
        // load, also gather for a few sync times (see `group_commit`).
        let pause = if gather {
            self.commit.gather_pause(Instant::now())
        } else {
            Duration::ZERO
        };
        if pause.is_zero() {
            std::thread::yield_now();
        } else {
            // In steps, going on while appenders pour in (see `group_commit`).
            let may_go_on = self.commit.may_extend_pause();
            let (mut gathering, first) = crate::group_commit::Gathering::start(pause, may_go_on);
            let started = Instant::now();
            let mut sleep = Some(first);
            while let Some(duration) = sleep {
                let before = self.appends.load(Ordering::Relaxed);
                if !duration.is_zero() {
                    std::thread::sleep(duration);
                }
                let arrived = self.appends.load(Ordering::Relaxed).saturating_sub(before);
                sleep = gathering.next(arrived, started.elapsed());
            }
            if gathering.stalled() {
                self.commit.note_stall();
            }
        }
        // Seal rolled segments first, and capture the end only when none is pending: syncing the active segment
        // proves nothing about an older one that was rolled without a sync.
        let (file_id, path, end) = loop {
            if let Err(e) = self.finish_seals() {
                self.commit
                    .finish(&Err(e.to_string()), Duration::ZERO, false);
                return Err(e);
            }
            let mut st = self.state.lock();
            if st.pending_seals.is_empty() {
                // Held bytes go to the page cache before the sync that is to cover them.
                if let Err(e) = self.write_tail(&mut st) {
                    drop(st);
                    self.commit
                        .finish(&Err(e.to_string()), Duration::ZERO, false);
                    return Err(e);
                }
                let seg = st.active();
                break (seg.file_id, seg.path.clone(), st.next_offset);
            }
        };
        let sync_started = Instant::now();
        let result = self
            .files
            .get(file_id, &path)
            .and_then(|f| f.sync_data().at(&path))
            .map(|()| end);
        let sync_took = sync_started.elapsed();
        if result.is_ok() {
            self.last_flush_ms.store(now_ms(), Ordering::Relaxed);
        }
        let busy = self.state.lock().next_offset >= end + crate::group_commit::GATHER_BUSY_RECORDS;
        let shared = result
            .as_ref()
            .map(|e| *e)
            .map_err(|e| format!("fdatasync of {} failed: {e}", path.display()));
        self.commit.finish(&shared, sync_took, busy);
        result
    }

    /// Reads whole batches from `from_offset` (the batch holding it comes first) until about `max_bytes` of
    /// payload, never past `max_offset` (exclusive; `None` = log end). At least one batch is returned if any
    /// is available, however large. Payloads share one buffer per segment read: no copy per batch.
    pub fn read(
        &self,
        from_offset: u64,
        max_bytes: usize,
        max_offset: Option<u64>,
    ) -> Result<Vec<Batch>> {
        let mut out = Vec::new();
        let mut budget = max_bytes.max(1);
        let mut cursor = from_offset;
        let mut first = true;
        loop {
            let plan = {
                let st = self.state.lock();
                if first && (cursor < st.log_start || cursor > st.next_offset) {
                    return Err(LogError::OffsetOutOfRange {
                        offset: cursor,
                        start: st.log_start,
                        end: st.next_offset,
                    });
                }
                let limit = max_offset.map_or(st.next_offset, |m| m.min(st.next_offset));
                if cursor >= limit {
                    return Ok(out);
                }
                self.plan_segment(&st, cursor)
            };
            first = false;
            let (span, seg_end, file_id, limit) = match plan {
                Plan::Ready {
                    span,
                    seg_end,
                    file_id,
                } => {
                    let limit = max_offset.unwrap_or(u64::MAX);
                    (span, seg_end, file_id, limit)
                }
                Plan::Sealed(sealed) => {
                    let index = self.load_sealed(&sealed)?;
                    let cov = index.coverage();
                    if cursor >= cov.next_offset {
                        return Err(hole_error(&sealed, cov.position, cursor, cov.next_offset));
                    }
                    let (start_offset, start_pos) = index.lookup_offset(cursor);
                    let span = ReadSpan {
                        path: sealed.path.clone(),
                        start_pos,
                        start_offset,
                        end_pos: cov.position,
                        held: None,
                    };
                    (
                        span,
                        Some(sealed.next_base),
                        sealed.file_id,
                        max_offset.unwrap_or(u64::MAX),
                    )
                }
            };
            let file = self.files.get(file_id, &span.path)?;
            let stop = read_span(&file, &span, cursor, limit, &mut budget, &mut out)?;
            match (stop, seg_end) {
                (ReadStop::SegmentEnd, Some(next)) => cursor = next,
                _ => return Ok(out),
            }
        }
    }

    /// Plans the read of the segment holding `offset` (the caller checked it is in range).
    fn plan_segment(&self, st: &LogState, offset: u64) -> Plan {
        let Some((_, seg)) = st
            .segments
            .range(..=offset)
            .next_back()
            .or_else(|| st.segments.iter().next())
        else {
            unreachable!("a log always has a segment")
        };
        match &seg.state {
            SegmentState::Active { index, .. } => {
                let (start_offset, start_pos) = index.lookup_offset(offset);
                Plan::Ready {
                    span: ReadSpan {
                        path: seg.path.clone(),
                        start_pos,
                        start_offset,
                        end_pos: seg.size,
                        held: st.tail.snapshot_from(start_pos),
                    },
                    seg_end: None,
                    file_id: seg.file_id,
                }
            }
            SegmentState::Sealed(cell) => {
                let next_base = st
                    .segments
                    .range(seg.base + 1..)
                    .next()
                    .map_or(st.next_offset, |(b, _)| *b);
                Plan::Sealed(SealedRef {
                    base: seg.base,
                    file_id: seg.file_id,
                    path: seg.path.clone(),
                    index_path: seg.index_path.clone(),
                    file_len: seg.size,
                    next_base,
                    interval: st.config.index_interval_bytes,
                    cell: Arc::clone(cell),
                })
            }
        }
    }

    /// The verified index of a sealed segment: loaded from its file if that checks out (CRC, and coverage equal
    /// to the file length and the next segment's base), otherwise rebuilt by scanning the segment. A segment whose
    /// data ends early keeps a short index: the missing offsets are refused by reads, never served.
    fn load_sealed(&self, s: &SealedRef) -> Result<Arc<SegmentIndex>> {
        if let Some(index) = s.cell.loaded.lock().clone() {
            return Ok(index);
        }
        let from_file = match std::fs::read(&s.index_path) {
            Ok(bytes) => match SegmentIndex::decode(s.base, s.interval, &bytes) {
                Ok(ix)
                    if ix.coverage().position == s.file_len
                        && ix.coverage().next_offset == s.next_base =>
                {
                    Some(ix)
                }
                Ok(_) => {
                    tracing::warn!(file = %s.index_path.display(), "index does not match its segment; rebuilding");
                    None
                }
                Err(IndexDecodeError::Version(found)) => {
                    return Err(LogError::UnsupportedVersion {
                        path: s.index_path.clone(),
                        found,
                        supported: INDEX_VERSION,
                    })
                }
                Err(IndexDecodeError::Invalid(why)) => {
                    tracing::warn!(file = %s.index_path.display(), why, "index is damaged; rebuilding");
                    None
                }
            },
            Err(_) => {
                tracing::warn!(file = %s.index_path.display(), "index is missing; rebuilding");
                None
            }
        };
        let index = match from_file {
            Some(ix) => ix,
            None => {
                let file = self.files.get(s.file_id, &s.path)?;
                let (ix, stop) = scan(
                    &file,
                    &s.path,
                    s.file_len,
                    SegmentIndex::new(s.base, s.interval),
                )?;
                if stop.is_none() && ix.coverage().next_offset == s.next_base {
                    if let Err(e) = write_atomic(&s.index_path, &ix.encode()) {
                        tracing::warn!(file = %s.index_path.display(), error = %e, "could not store rebuilt index");
                    }
                } else {
                    let (position, reason) = stop.map_or(
                        (ix.coverage().position, "data ends early".to_string()),
                        |st| (st.position, st.reason),
                    );
                    tracing::error!(
                        file = %s.path.display(), position, reason,
                        refused_from = ix.coverage().next_offset, refused_to = s.next_base,
                        "sealed segment is damaged: the offsets after the damage are refused to readers"
                    );
                }
                ix
            }
        };
        let index = Arc::new(index);
        *s.cell.loaded.lock() = Some(Arc::clone(&index));
        Ok(index)
    }

    /// The first batch whose max timestamp is `>= timestamp`, as `(base_offset, max_timestamp)`; `None` if every
    /// batch is older. Kafka's ListOffsets refines within the batch; the log does not look into payloads.
    pub fn find_offset_by_timestamp(&self, timestamp: i64) -> Result<Option<(u64, i64)>> {
        let bases: Vec<u64> = self.state.lock().segments.keys().copied().collect();
        for base in bases {
            let plan = {
                let st = self.state.lock();
                if !st.segments.contains_key(&base) {
                    continue; // deleted meanwhile
                }
                match self.plan_segment(&st, base) {
                    Plan::Ready { span, file_id, .. } => {
                        let SegmentState::Active { index, .. } = &st.active().state else {
                            unreachable!("the last segment is always active")
                        };
                        if index.coverage().max_timestamp < timestamp {
                            continue;
                        }
                        let (start_offset, start_pos) = index.lookup_time(timestamp);
                        (
                            ReadSpan {
                                start_offset,
                                start_pos,
                                ..span
                            },
                            file_id,
                            st.log_start,
                        )
                    }
                    Plan::Sealed(sealed) => {
                        let log_start = st.log_start;
                        drop(st);
                        let index = self.load_sealed(&sealed)?;
                        if index.coverage().max_timestamp < timestamp {
                            continue;
                        }
                        let (start_offset, start_pos) = index.lookup_time(timestamp);
                        let span = ReadSpan {
                            path: sealed.path.clone(),
                            start_pos,
                            start_offset,
                            end_pos: index.coverage().position,
                            held: None,
                        };
                        (span, sealed.file_id, log_start)
                    }
                }
            };
            let (span, file_id, log_start) = plan;
            let file = self.files.get(file_id, &span.path)?;
            if let Some((offset, ts)) = find_time_in_span(&file, &span, timestamp, log_start)? {
                return Ok(Some((offset.max(log_start), ts)));
            }
        }
        Ok(None)
    }

    /// Moves the log start offset forward (Kafka DeleteRecords). Durable before it returns; segments wholly
    /// below the new start are deleted.
    pub fn advance_log_start(&self, offset: u64) -> Result<u64> {
        {
            let mut st = self.state.lock();
            if offset > st.next_offset {
                return Err(LogError::OffsetOutOfRange {
                    offset,
                    start: st.log_start,
                    end: st.next_offset,
                });
            }
            if offset <= st.log_start {
                return Ok(st.log_start);
            }
            LogMeta {
                log_start_offset: offset,
            }
            .store(&self.dir)?;
            st.log_start = offset;
        }
        self.delete_expired(i64::MIN)?;
        Ok(offset)
    }

    /// Applies retention by size and age (whole segments, oldest first) and deletes segments below the log
    /// start offset. `now_ms` is the wall clock in ms. Returns the number of segments deleted.
    pub fn apply_retention(&self, now_ms: i64) -> Result<usize> {
        self.delete_expired(now_ms)
    }

    fn delete_expired(&self, now_ms: i64) -> Result<usize> {
        // 1. Under the lock: decide by size and log start; roll an expired active segment so it can go too.
        let (candidates, config) = {
            let mut st = self.state.lock();
            if let Some(ms) = st.config.retention_ms {
                let cutoff = now_ms.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX));
                let ts = active_index(st.active()).coverage().max_timestamp;
                if st.active().size > 0 && ts < cutoff && now_ms != i64::MIN {
                    self.roll_locked(&mut st)?;
                }
            }
            let mut list = Vec::new();
            let bases: Vec<u64> = st.segments.keys().copied().collect();
            for (i, base) in bases.iter().enumerate() {
                let Some(next) = bases.get(i + 1) else { break };
                if let Plan::Sealed(s) = self.plan_segment(&st, *base) {
                    list.push((s, *next));
                }
            }
            let total: u64 = st.segments.values().map(|s| s.size).sum();
            (list, (st.config.clone(), total, st.log_start))
        };
        let (config, mut total, log_start) = config;
        // 2. Outside the lock: find how many leading segments expire (age needs their indexes).
        let mut doomed = Vec::new();
        for (seg, next_base) in candidates {
            let below_start = next_base <= log_start;
            let over_size = config
                .retention_bytes
                .is_some_and(|r| total > r && total - seg.file_len >= r);
            let too_old = match config.retention_ms {
                Some(ms) if now_ms != i64::MIN => {
                    let newest = self.segment_newest_ms(&seg)?;
                    newest < now_ms.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX))
                }
                _ => false,
            };
            if !(below_start || over_size || too_old) {
                break;
            }
            total -= seg.file_len;
            doomed.push(seg.base);
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        // 3. Under the lock: unlink them from the log (they are still the oldest: only retention deletes from
        // the front, and the manager runs it for one log at a time).
        let mut removed = Vec::new();
        {
            let mut st = self.state.lock();
            for base in &doomed {
                if st.segments.len() <= 1 {
                    break;
                }
                if let Some(seg) = st.segments.remove(base) {
                    removed.push(seg);
                }
            }
            if let Some(&first) = st.segments.keys().next() {
                st.log_start = st.log_start.max(first);
            }
        }
        // 4. Delete the files; readers that already hold the file keep reading the unlinked inode.
        for seg in &removed {
            self.files.remove(seg.file_id);
            remove_if_exists(&seg.path)?;
            remove_if_exists(&seg.index_path)?;
            tracing::info!(log = %self.name, base = seg.base, bytes = seg.size, "deleted segment by retention");
        }
        sync_dir(&self.dir)?;
        Ok(removed.len())
    }

    /// The newest timestamp of a sealed segment; the file's mtime when batches carry no timestamps.
    fn segment_newest_ms(&self, seg: &SealedRef) -> Result<i64> {
        let ts = self.load_sealed(seg)?.coverage().max_timestamp;
        if ts >= 0 {
            return Ok(ts);
        }
        let modified = std::fs::metadata(&seg.path)
            .and_then(|m| m.modified())
            .at(&seg.path)?;
        Ok(modified
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }

    /// Removes every batch whose last offset is `>= offset` (replication uses it to cut a diverged tail).
    /// Returns the new log end, which is the base offset of the first removed batch (`<= offset`).
    pub fn truncate_to(&self, offset: u64) -> Result<u64> {
        // No seal may be in flight while segments are cut (it would claim durability past the new end).
        let _seal_guard = self.seal_lock.lock();
        let mut st = self.state.lock();
        if offset >= st.next_offset {
            return Ok(st.next_offset);
        }
        // The rescan below reads the file, which must hold the whole active segment.
        self.write_tail(&mut st)?;
        if offset < st.log_start {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: st.log_start,
                end: st.next_offset,
            });
        }
        let Some((&keep_base, _)) = st.segments.range(..=offset).next_back() else {
            unreachable!("log_start is within the first segment")
        };
        // Seals of the kept and later segments are moot: the kept one is synced and indexed below.
        st.pending_seals.retain(|p| p.index.base() < keep_base);
        // Drop whole segments after the one holding `offset`.
        let later: Vec<u64> = st
            .segments
            .range(keep_base + 1..)
            .map(|(b, _)| *b)
            .collect();
        let mut removed = Vec::new();
        for b in later {
            if let Some(seg) = st.segments.remove(&b) {
                removed.push(seg);
            }
        }
        let interval = st.config.index_interval_bytes;
        let seg = st.active_mut();
        let file = self.files.get(seg.file_id, &seg.path)?;
        // Rescan the kept segment up to the cut: it finds the cut position on a batch boundary and rebuilds an
        // exact index (truncation is rare; correctness beats speed here).
        let (full, _) = scan(
            &file,
            &seg.path,
            std::fs::metadata(&seg.path).at(&seg.path)?.len(),
            SegmentIndex::new(seg.base, interval),
        )?;
        let (cut_offset, cut_pos) = find_cut(&file, &seg.path, &full, offset)?;
        let (index, _) = scan(
            &file,
            &seg.path,
            cut_pos,
            SegmentIndex::new(seg.base, interval),
        )?;
        file.set_len(cut_pos).at(&seg.path)?;
        file.sync_data().at(&seg.path)?;
        write_atomic(&seg.index_path, &index.encode())?;
        seg.size = cut_pos;
        seg.state = SegmentState::Active {
            index,
            first_append: None,
        };
        st.tail.reset(cut_pos);
        st.next_offset = cut_offset;
        if st.log_start > cut_offset {
            // The cut went below a start that lay inside a batch: the start follows the end down, durably.
            LogMeta {
                log_start_offset: cut_offset,
            }
            .store(&self.dir)?;
            st.log_start = cut_offset;
        }
        st.generation += 1;
        st.checkpointed_position = cut_pos;
        self.commit.truncated(cut_offset);
        drop(st);
        for seg in &removed {
            self.files.remove(seg.file_id);
            remove_if_exists(&seg.path)?;
            remove_if_exists(&seg.index_path)?;
        }
        sync_dir(&self.dir)?;
        tracing::info!(log = %self.name, end = cut_offset, "truncated log");
        Ok(cut_offset)
    }

    /// Writes the active segment's index with its coverage, after syncing the data it covers, so that recovery
    /// after a crash scans only what was appended since. Cheap when nothing changed.
    pub fn checkpoint(&self) -> Result<()> {
        let (generation, index, file_id, path, index_path) = loop {
            self.finish_seals()?;
            let mut st = self.state.lock();
            if !st.pending_seals.is_empty() {
                continue; // rolled again meanwhile; see `lead_round`
            }
            self.write_tail(&mut st)?;
            let seg = st.active();
            let index = active_index(seg);
            if index.coverage().position == st.checkpointed_position {
                return Ok(());
            }
            break (
                st.generation,
                index.clone(),
                seg.file_id,
                seg.path.clone(),
                seg.index_path.clone(),
            );
        };
        let file = self.files.get(file_id, &path)?;
        if let Err(e) = file.sync_data() {
            self.commit
                .fail(format!("fdatasync of {} failed: {e}", path.display()));
            return Err(LogError::Io { path, source: e });
        }
        self.commit.mark_durable(index.coverage().next_offset);
        let tmp = index_path.with_extension("index.tmp");
        {
            let f = std::fs::File::create(&tmp).at(&tmp)?;
            std::os::unix::fs::FileExt::write_all_at(&f, &index.encode(), 0).at(&tmp)?;
            f.sync_data().at(&tmp)?;
        }
        let mut st = self.state.lock();
        if st.generation != generation {
            drop(st);
            return remove_if_exists(&tmp);
        }
        std::fs::rename(&tmp, &index_path).at(&index_path)?;
        st.checkpointed_position = index.coverage().position;
        drop(st);
        sync_dir(&self.dir)
    }

    /// Syncs and checkpoints the log and refuses further appends. Reads keep working.
    pub fn close(&self) -> Result<()> {
        self.sync()?;
        self.checkpoint()?;
        self.state.lock().closed = true;
        Ok(())
    }

    /// Drops every segment file of this log from the shared file cache, so that deleting the log's directory
    /// frees its disk space and descriptors now rather than when the cache would have evicted them.
    pub(crate) fn release_files(&self) {
        let st = self.state.lock();
        for seg in st.segments.values() {
            self.files.remove(seg.file_id);
        }
        for seal in &st.pending_seals {
            self.files.remove(seal.file_id);
        }
    }

    /// Whether appended data is not yet durable (the manager flushes such logs under `Interval`).
    pub(crate) fn has_unsynced(&self) -> bool {
        let end = self.state.lock().next_offset;
        self.commit.durable() < end
    }
}

impl Drop for Log {
    /// Writes the held tail, so dropping a log without closing it loses nothing to a later process crash.
    fn drop(&mut self) {
        let st = self.state.get_mut();
        if st.tail.dirty_since().is_none() {
            return;
        }
        let Some(seg) = st.segments.values().next_back() else {
            return;
        };
        let written = self
            .files
            .get(seg.file_id, &seg.path)
            .and_then(|file| st.tail.write_out(&file).at(&seg.path));
        if let Err(e) = written {
            tracing::error!(log = %self.name, error = %e, "could not write the held tail when dropping the log");
        }
    }
}

enum Plan {
    Ready {
        span: ReadSpan,
        seg_end: Option<u64>,
        file_id: u64,
    },
    Sealed(SealedRef),
}

/// What is needed to load and read a sealed segment without holding the log's lock.
struct SealedRef {
    base: u64,
    file_id: u64,
    path: PathBuf,
    index_path: PathBuf,
    file_len: u64,
    next_base: u64,
    interval: u64,
    cell: Arc<SealedIndex>,
}

fn hole_error(s: &SealedRef, position: u64, offset: u64, data_end: u64) -> LogError {
    LogError::Corrupt {
        path: s.path.clone(),
        position,
        offset,
        reason: format!(
            "segment data is damaged after offset {data_end}; offsets {data_end}..{} are unreadable",
            s.next_base
        ),
    }
}

/// The `(base_offset, position)` of the batch holding `offset` in a segment whose verified index is `index`.
fn find_cut(
    file: &std::fs::File,
    path: &Path,
    index: &SegmentIndex,
    offset: u64,
) -> Result<(u64, u64)> {
    let (start_offset, start_pos) = index.lookup_offset(offset);
    let span = ReadSpan {
        path: path.to_path_buf(),
        start_pos,
        start_offset,
        end_pos: index.coverage().position,
        held: None,
    };
    let mut out = Vec::new();
    let mut budget = 1;
    read_span(file, &span, offset, u64::MAX, &mut budget, &mut out)?;
    match out.first() {
        Some(b) => {
            // Position of that batch: walk the frames from the index entry.
            let mut pos = start_pos;
            let mut at = start_offset;
            while at < b.base_offset {
                let mut h = [0u8; crate::frame::FRAME_HEADER_LEN];
                std::os::unix::fs::FileExt::read_exact_at(file, &mut h, pos).at(path)?;
                let header = FrameHeader::decode(&h).map_err(|r| LogError::Corrupt {
                    path: path.to_path_buf(),
                    position: pos,
                    offset: at,
                    reason: r.into(),
                })?;
                pos += header.frame_len();
                at = header.next_offset();
            }
            Ok((b.base_offset, pos))
        }
        None => Ok((index.coverage().next_offset, index.coverage().position)),
    }
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(path),
        _ => Ok(()),
    }
}

/// Creates an empty segment file at `base`, fsyncing the file and its directory.
fn create_segment(dir: &Path, base: u64, config: &LogConfig, files: &FileCache) -> Result<Segment> {
    let (path, index_path) = segment_paths(dir, base);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .at(&path)?;
    // The new file's inode and its directory entry are made durable before anything is appended to it, so a
    // later fdatasync of the data cannot leave an acknowledged batch in a file that vanishes after a crash.
    file.sync_all().at(&path)?;
    let _ = std::fs::remove_file(&index_path);
    sync_dir(dir)?;
    let file_id = next_file_id();
    files.insert(file_id, Arc::new(file));
    Ok(Segment {
        base,
        file_id,
        path,
        index_path,
        size: 0,
        state: SegmentState::Active {
            index: SegmentIndex::new(base, config.index_interval_bytes),
            first_append: None,
        },
    })
}

/// Opens the last segment of a log: trusts it up to its index checkpoint, scans the rest, truncates a bad tail.
fn recover_active(dir: &Path, base: u64, config: &LogConfig, files: &FileCache) -> Result<Segment> {
    let (path, index_path) = segment_paths(dir, base);
    let file_id = next_file_id();
    let file = files.get(file_id, &path)?;
    let file_len = file.metadata().at(&path)?.len();
    let fresh = || SegmentIndex::new(base, config.index_interval_bytes);
    let start = match std::fs::read(&index_path) {
        Ok(bytes) => match SegmentIndex::decode(base, config.index_interval_bytes, &bytes) {
            Ok(ix) if ix.coverage().position <= file_len => ix,
            Ok(_) => {
                tracing::warn!(file = %index_path.display(), "index covers more than the segment holds; rebuilding");
                fresh()
            }
            Err(IndexDecodeError::Version(found)) => {
                return Err(LogError::UnsupportedVersion {
                    path: index_path,
                    found,
                    supported: INDEX_VERSION,
                })
            }
            Err(IndexDecodeError::Invalid(why)) => {
                tracing::warn!(file = %index_path.display(), why, "index is damaged; rebuilding");
                fresh()
            }
        },
        Err(_) => fresh(),
    };
    let scanned_from = start.coverage().position;
    let (index, stop) = scan(&file, &path, file_len, start)?;
    let valid = index.coverage().position;
    if valid < file_len {
        let reason = stop.map_or_else(|| "unknown".to_string(), |s| s.reason);
        tracing::warn!(
            file = %path.display(), position = valid, dropped_bytes = file_len - valid, reason,
            "truncating the torn or corrupt tail of the log"
        );
        file.set_len(valid).at(&path)?;
        file.sync_data().at(&path)?;
    }
    tracing::debug!(file = %path.display(), scanned_bytes = file_len - scanned_from, "recovered active segment");
    Ok(Segment {
        base,
        file_id,
        path,
        index_path,
        size: valid,
        state: SegmentState::Active {
            index,
            first_append: None,
        },
    })
}

#[cfg(test)]
mod round_guard_tests {
    use super::*;

    #[test]
    fn a_leader_that_panics_fails_its_round_instead_of_leaving_it_in_progress() {
        let commit = GroupCommit::new(0);
        assert!(matches!(commit.step(10), Step::Lead));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = RoundGuard {
                commit: &commit,
                armed: true,
            };
            panic!("a bug in the round");
        }));
        assert!(panicked.is_err());
        // Without the guard this would be Step::Wait forever: the round in progress, nobody leading it.
        assert!(matches!(commit.step(10), Step::Failed(_)));
    }
}
