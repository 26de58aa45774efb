//! The CRC32C of a large payload, computed by a helper thread while the appending thread writes the payload.
//!
//! Why: a frame's CRC32C covers its whole payload, and reading 1 MiB for it takes ~38 µs with the CPU's CRC
//! instruction (`crc32c`, ~27 GB/s), against 170–200 µs for the buffered write of that MiB. Done on the appending
//! thread before the write, it held plain `Log::append` of 1 MiB batches at 78–84 % of the raw write bandwidth.
//! Under a [`crate::LogManager`], an append of a payload of at least [`PARALLEL_CRC_MIN_BYTES`] (and without a
//! [`crate::KnownCrc`]) therefore hands the CRC to one helper thread per manager, and
//! [`crate::tail::HeldTail::append_header_last`] writes
//! 1. the held bytes, a zeroed placeholder for the frame header and the payload up to the write boundary, as one
//!    `pwritev`, while the helper computes the CRC on the other core; then
//! 2. the 32-byte header over its placeholder, once the CRC is known.
//!
//! The CRC is still computed by the log over the very bytes it writes (the payload slice is not changed while
//! either thread reads it), so every frame carries a correct CRC32C. Between the two writes the frame's header
//! reads as zeros, which never passes the header checks (version 0; the CRC field is zero too): a process crash
//! there leaves a torn tail that recovery truncates, exactly as for a frame written only in part. Nothing is
//! served meanwhile: the append holds the log's lock throughout.
//!
//! Designs measured on the 2-vCPU benchmark VM (KVM, kernel 6.18), 5 × 512 MiB of 1 MiB writes each, same run,
//! in % of a plain loop of 1 MiB writes (a scratch program; the log's own figures are in the README):
//! - CRC on the appending thread, then the write (as before): 82–87 %;
//! - CRC split between the appending thread and a helper woken per append, before the write: 79 %. Waking a
//!   sleeping thread costs the waker ~9 µs here (the idle vCPU halts at once, and the wake-up is a paravirtual
//!   IPI) and reaches the helper only after ~30 µs (p50; p99 ~50 µs), when the appending thread has done most of
//!   the CRC itself;
//! - the CRC overlapped with the write, the frame's blocks past its header written first and the header's block
//!   last: 80 %. Writing past the end of the file and then the hole before it costs the kernel more than the
//!   same bytes in order (91 % for the two writes alone, without any CRC);
//! - the CRC overlapped with one in-order write, then the 32-byte header written over a placeholder: 93–94 %
//!   with a helper woken per append (the header write alone, ~3 µs: 95–100 %), 99 % when the helper polls for
//!   the next job instead of sleeping between appends ([`POLL_AFTER_JOB`]). This is the design here.
//!
//! A faster CRC32C kernel (carry-less multiply folding with AVX-512) would need a new dependency or a large
//! unsafe kernel of our own.
//!
//! Robustness: the payload is split into [`CHUNK_BYTES`] pieces that the helper and the appending thread claim
//! from one counter. Once done writing, the appending thread computes every piece the helper has not started (a
//! busy, stopped or descheduled helper therefore never delays an append by more than the piece it is working on)
//! and combines the pieces' CRCs with [`crate::crc::combine`]. Appends of several logs share the helper in FIFO
//! order; at most [`MAX_QUEUED`] jobs wait, beyond which appenders compute their CRC inline as before. A machine
//! with one CPU gets no helper.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Smallest payload whose CRC is computed by the helper while it is written. Measured with `log_bench` (`os`
/// rows, threshold forced to zero, against the helper turned off, same runs): 256 KiB and 512 KiB batches gained
/// 9–14 points of the raw bandwidth in every run; 128 KiB gained 8–15 points in three runs of four but lost 5 in
/// the fourth; 64 KiB gained 2–5; 32 KiB lost 20 (a frame shorter than a write boundary is held, not written,
/// so there is no write to overlap the CRC with).
pub(crate) const PARALLEL_CRC_MIN_BYTES: usize = 256 * 1024;
/// Size of the pieces the helper and the appending thread claim: ~5 µs of CRC each.
const CHUNK_BYTES: usize = 128 * 1024;
/// Most jobs waiting for the helper; beyond this, appenders compute their CRC themselves.
const MAX_QUEUED: usize = 64;
/// How long an appender spins for the helper's last piece before it parks.
const SPIN: Duration = Duration::from_micros(20);
/// How long the helper thread polls for the next job (yielding the CPU to any other runnable thread) before it
/// sleeps. Waking a sleeping thread cost the waker ~9 µs on the benchmark VM (a paravirtual IPI: the idle vCPU
/// halts at once), 4–5 % of a 1 MiB append; while large batches stream (one every ~200 µs at 1 MiB), a
/// polling helper takes each job without that wake-up. The price is up to this much CPU time of an otherwise
/// idle core after each large append.
const POLL_AFTER_JOB: Duration = Duration::from_micros(500);

/// The helper's queue and settings; one per [`crate::LogManager`], run by one thread ([`CrcHelper::run`]).
#[derive(Debug)]
pub(crate) struct CrcHelper {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Payloads at least this long use the helper ([`PARALLEL_CRC_MIN_BYTES`] unless a benchmark changed it).
    min_bytes: AtomicUsize,
    /// Pieces computed by the helper thread (tests check that the helper path really ran).
    helper_chunks: AtomicU64,
    /// Mirrors `queue.jobs.len()` and `queue.stopped` (as `usize::MAX`) for the helper's lock-free polling.
    queued: AtomicUsize,
}

#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<Arc<Job>>,
    stopped: bool,
    /// Whether the helper thread waits on `wake` (only then does a new job need a wake-up).
    asleep: bool,
}

/// The CRC of one payload, in pieces.
struct Job {
    /// The payload. Dereferenced only for a piece claimed through `next` below `chunks`: the owner (the
    /// appending thread, in [`CrcHelper::overlapped`]) keeps the payload borrowed until it has claimed every
    /// remaining piece and seen `done == chunks`, after which no claim can succeed.
    data: *const u8,
    len: usize,
    chunks: usize,
    /// Next piece to claim.
    next: AtomicUsize,
    /// Pieces computed; each increment (Release) follows the last read of its piece.
    done: AtomicUsize,
    /// CRC32C of each piece.
    crcs: Box<[AtomicU32]>,
    /// The appending thread, unparked when the helper finishes the last piece.
    owner: Thread,
}

// SAFETY: `data` is only read, and only for a piece claimed while the owner keeps the payload borrowed (see the
// field's comment); every other field is thread-safe.
unsafe impl Send for Job {}
// SAFETY: as for `Send`: shared access never writes through `data`.
unsafe impl Sync for Job {}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("len", &self.len)
            .field("chunks", &self.chunks)
            .finish_non_exhaustive()
    }
}

impl Job {
    fn new(data: &[u8]) -> Job {
        let chunks = data.len().div_ceil(CHUNK_BYTES);
        Job {
            data: data.as_ptr(),
            len: data.len(),
            chunks,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            crcs: (0..chunks).map(|_| AtomicU32::new(0)).collect(),
            owner: std::thread::current(),
        }
    }

    /// Claims and computes the next piece; `false` when none is left to claim. `by_helper`: called by the
    /// helper thread, which unparks the owner after the last piece.
    fn work_one(&self, by_helper: bool) -> bool {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= self.chunks {
            return false;
        }
        let start = i * CHUNK_BYTES;
        let len = CHUNK_BYTES.min(self.len - start);
        // SAFETY: piece `i < chunks` was claimed above, so the owner has not finished yet and keeps the `len`
        // bytes at `data` borrowed (immutably) until `done` counts this piece; `start + len <= self.len`.
        let piece = unsafe { std::slice::from_raw_parts(self.data.add(start), len) };
        let crc = crc32c::crc32c(piece);
        if let Some(slot) = self.crcs.get(i) {
            slot.store(crc, Ordering::Relaxed);
        }
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.chunks && by_helper {
            self.owner.unpark();
        }
        true
    }

    /// Computes every piece nobody has claimed, waits for those in progress, and returns the payload's CRC32C.
    /// After it returns, nothing reads the payload through this job any more.
    fn finish(&self) -> u32 {
        while self.work_one(false) {}
        let started = Instant::now();
        while self.done.load(Ordering::Acquire) < self.chunks {
            if started.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                // The helper unparks this thread after its last piece (spurious wake-ups loop again).
                std::thread::park_timeout(Duration::from_millis(1));
            }
        }
        let mut crc = 0;
        for (i, slot) in self.crcs.iter().enumerate() {
            let piece = slot.load(Ordering::Relaxed);
            if i == 0 {
                crc = piece;
            } else {
                let len = CHUNK_BYTES.min(self.len - i * CHUNK_BYTES);
                // A piece is at most CHUNK_BYTES, far below u32::MAX.
                crc = crate::crc::combine(crc, piece, len as u32);
            }
        }
        crc
    }
}

/// The CRC of a payload being computed by [`CrcHelper::overlapped`]; [`PendingCrc::crc32c`] waits for it.
/// `work` only ever gets a shared reference, so it cannot swap two of them (the guard in
/// [`CrcHelper::overlapped`] must finish the job of the payload that call borrowed).
#[derive(Debug)]
pub(crate) struct PendingCrc<'a> {
    data: &'a [u8],
    /// `None` when the helper did not take the job (stopped or too busy): computed inline.
    job: Option<Arc<Job>>,
    crc: Cell<Option<u32>>,
}

impl PendingCrc<'_> {
    /// The CRC32C of the payload (as `crc32c::crc32c` computes it), computing whatever the helper has not.
    pub fn crc32c(&self) -> u32 {
        if let Some(crc) = self.crc.get() {
            return crc;
        }
        let crc = match &self.job {
            Some(job) => job.finish(),
            None => crc32c::crc32c(self.data),
        };
        self.crc.set(Some(crc));
        crc
    }
}

/// Makes sure the helper has stopped reading the payload before [`CrcHelper::overlapped`] returns or unwinds.
struct FinishOnDrop<'a>(PendingCrc<'a>);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.0.crc32c();
    }
}

impl CrcHelper {
    pub fn new() -> CrcHelper {
        CrcHelper {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            min_bytes: AtomicUsize::new(PARALLEL_CRC_MIN_BYTES),
            helper_chunks: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
        }
    }

    /// Whether a payload of `len` bytes should have its CRC computed alongside its write.
    pub fn wants(&self, len: usize) -> bool {
        len >= self.min_bytes.load(Ordering::Relaxed) && u32::try_from(len).is_ok()
    }

    /// Changes the threshold of [`CrcHelper::wants`] (benchmarks and tests).
    pub fn set_min_bytes(&self, bytes: usize) {
        self.min_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Pieces the helper thread has computed so far.
    pub fn helper_chunks(&self) -> u64 {
        self.helper_chunks.load(Ordering::Relaxed)
    }

    /// Runs `work` while the helper thread computes the CRC32C of `data`; `work` gets the pending CRC and may
    /// ask for it ([`PendingCrc::crc32c`]) at any point. However `work` ends, the helper has stopped reading
    /// `data` when this returns.
    pub fn overlapped<R>(&self, data: &[u8], work: impl FnOnce(&PendingCrc<'_>) -> R) -> R {
        let job = Arc::new(Job::new(data));
        let job = self.submit(&job).then_some(job);
        let guard = FinishOnDrop(PendingCrc {
            data,
            job,
            crc: Cell::new(None),
        });
        work(&guard.0)
    }

    /// Queues `job` for the helper thread; `false` if it has stopped or has too much queued already.
    fn submit(&self, job: &Arc<Job>) -> bool {
        let mut q = self.queue.lock();
        if q.stopped || q.jobs.len() >= MAX_QUEUED {
            return false;
        }
        q.jobs.push_back(Arc::clone(job));
        self.queued.store(q.jobs.len(), Ordering::Release);
        let asleep = q.asleep;
        drop(q);
        if asleep {
            self.wake.notify_one();
        }
        true
    }

    /// The helper thread's loop: computes the pieces of queued jobs that their appenders have not claimed yet,
    /// until [`CrcHelper::stop`]. After each job it polls for the next one for [`POLL_AFTER_JOB`] before it
    /// sleeps (see there).
    pub fn run(&self) {
        let mut idle_since = Instant::now();
        loop {
            if self.queued.load(Ordering::Acquire) == 0 && idle_since.elapsed() < POLL_AFTER_JOB {
                std::thread::yield_now();
                continue;
            }
            let job = {
                let mut q = self.queue.lock();
                loop {
                    if q.stopped {
                        return;
                    }
                    if let Some(job) = q.jobs.pop_front() {
                        self.queued.store(q.jobs.len(), Ordering::Release);
                        break job;
                    }
                    q.asleep = true;
                    self.wake.wait(&mut q);
                    q.asleep = false;
                }
            };
            let mut pieces = 0;
            while job.work_one(true) {
                pieces += 1;
            }
            self.helper_chunks.fetch_add(pieces, Ordering::Relaxed);
            idle_since = Instant::now();
        }
    }

    /// Stops the helper thread after the piece it is computing; appenders compute queued jobs themselves, and
    /// later appends compute their CRC inline.
    pub fn stop(&self) {
        let mut q = self.queue.lock();
        q.stopped = true;
        q.jobs.clear();
        self.queued.store(usize::MAX, Ordering::Release);
        drop(q);
        self.wake.notify_all();
    }
}

/// A [`CrcHelper`] and the thread running it, owned by a [`crate::LogManager`].
#[derive(Debug)]
pub(crate) struct CrcHelperThread {
    pub helper: Arc<CrcHelper>,
    handle: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl CrcHelperThread {
    /// Starts the helper thread, unless this machine runs one thread at a time (nothing to overlap with).
    pub fn start() -> std::io::Result<Option<CrcHelperThread>> {
        if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
            return Ok(None);
        }
        let helper = Arc::new(CrcHelper::new());
        let thread_helper = Arc::clone(&helper);
        let handle = std::thread::Builder::new()
            .name("wharf-log-crc".into())
            .spawn(move || thread_helper.run())?;
        Ok(Some(CrcHelperThread {
            helper,
            handle: Mutex::new(Some(handle)),
        }))
    }

    /// Stops the thread and waits for it.
    pub fn stop(&self) {
        self.helper.stop();
        if let Some(handle) = self.handle.lock().take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect()
    }

    fn with_thread<T>(f: impl FnOnce(&Arc<CrcHelper>) -> T) -> T {
        let helper = Arc::new(CrcHelper::new());
        let h = Arc::clone(&helper);
        let thread = std::thread::spawn(move || h.run());
        let out = f(&helper);
        helper.stop();
        thread.join().unwrap();
        out
    }

    #[test]
    fn every_split_gives_the_crc_of_the_whole() {
        let d = data(5 * CHUNK_BYTES + 4321);
        with_thread(|helper| {
            for len in [
                0,
                1,
                CHUNK_BYTES - 1,
                CHUNK_BYTES,
                CHUNK_BYTES + 1,
                2 * CHUNK_BYTES,
                3 * CHUNK_BYTES + 17,
                d.len(),
            ] {
                let part = &d[..len];
                let expected = crc32c::crc32c(part);
                // The appender asks at once (it computes most pieces itself) ...
                let now = helper.overlapped(part, |p| p.crc32c());
                assert_eq!(now, expected, "len {len}, asked at once");
                // ... or after the helper has had time for every piece.
                let late = helper.overlapped(part, |p| {
                    std::thread::sleep(Duration::from_millis(20));
                    p.crc32c()
                });
                assert_eq!(late, expected, "len {len}, asked late");
            }
        });
    }

    #[test]
    fn the_helper_computes_pieces_while_the_appender_is_busy() {
        let d = data(8 * CHUNK_BYTES);
        with_thread(|helper| {
            let before = helper.helper_chunks();
            let crc = helper.overlapped(&d, |p| {
                std::thread::sleep(Duration::from_millis(50));
                p.crc32c()
            });
            assert_eq!(crc, crc32c::crc32c(&d));
            assert_eq!(helper.helper_chunks() - before, 8, "the helper did all");
        });
    }

    #[test]
    fn without_asking_the_helper_is_done_when_overlapped_returns() {
        // `work` never asks for the CRC (an append whose first write failed): the guard still waits.
        let d = data(6 * CHUNK_BYTES);
        with_thread(|helper| {
            for _ in 0..50 {
                helper.overlapped(&d, |_| ());
            }
        });
    }

    #[test]
    fn a_stopped_helper_leaves_the_crc_to_the_appender() {
        let helper = CrcHelper::new();
        helper.stop();
        let d = data(3 * CHUNK_BYTES + 5);
        assert_eq!(helper.overlapped(&d, |p| p.crc32c()), crc32c::crc32c(&d));
        assert_eq!(helper.helper_chunks(), 0);
    }

    #[test]
    fn appenders_of_many_threads_share_one_helper() {
        let d = Arc::new(data(4 * CHUNK_BYTES + 99));
        let expected = crc32c::crc32c(&d);
        with_thread(|helper| {
            std::thread::scope(|s| {
                for t in 0..4 {
                    let (d, helper) = (Arc::clone(&d), Arc::clone(helper));
                    s.spawn(move || {
                        for i in 0..100 {
                            let crc = helper.overlapped(&d, |p| {
                                if (i + t) % 3 == 0 {
                                    std::thread::sleep(Duration::from_micros(200));
                                }
                                p.crc32c()
                            });
                            assert_eq!(crc, expected);
                        }
                    });
                }
            });
        });
    }
}
