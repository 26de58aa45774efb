//! The tail flusher: writes each log's held tail (see [`crate::tail`]) into the page cache within
//! `tail_flush_interval` of its oldest byte being appended, so that under `interval` and `os` a process crash
//! loses at most the held bytes appended within that window (under 128 KiB per log).
//!
//! Only logs that hold unwritten bytes are queued (once each, by the append that made them dirty), in a heap
//! ordered by due time, on one thread per manager that sleeps until the earliest due time. Thousands of idle logs
//! cost nothing; a busy log is written by its own appends (each sends the held bytes in front of its frame), so
//! when its entry comes due the flusher usually finds the tail younger than the interval and re-queues it instead
//! of writing, from an atomic copy of the tail's age, without taking the log's lock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Weak;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::log::Log;

/// The queue of logs with held bytes not yet in the page cache, and the thread's wake-up.
#[derive(Debug)]
pub(crate) struct TailFlusher {
    interval: Duration,
    /// Base of [`TailFlusher::encode`]; earlier than every held tail's `dirty_since`.
    epoch: Instant,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Mirrors `!queue.stopped` for a lock-free check on the append path.
    running: AtomicBool,
}

#[derive(Debug, Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Entry>>,
    /// Breaks ties between equal due times (and makes `Entry` totally ordered without comparing logs).
    seq: u64,
    stopped: bool,
}

#[derive(Debug)]
struct Entry {
    due: Instant,
    seq: u64,
    log: Weak<Log>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

impl TailFlusher {
    /// A flusher writing held tails within `interval` (greater than zero; the manager holds no tails at zero).
    pub fn new(interval: Duration) -> TailFlusher {
        TailFlusher {
            interval,
            epoch: Instant::now(),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            running: AtomicBool::new(true),
        }
    }

    /// How long a held byte may stay out of the page cache.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// `t` as a `u64` for an atomic: 0 for `None`, else nanoseconds since the flusher's start plus one.
    pub fn encode(&self, t: Option<Instant>) -> u64 {
        t.map_or(0, |t| {
            let nanos = t.saturating_duration_since(self.epoch).as_nanos();
            u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1
        })
    }

    /// The inverse of [`TailFlusher::encode`].
    pub fn decode(&self, v: u64) -> Option<Instant> {
        v.checked_sub(1)
            .map(|nanos| self.epoch + Duration::from_nanos(nanos))
    }

    /// Whether the thread still runs (appends may hold tails only while it does).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Queues `log` to have its tail written at `due`. `false` once the flusher has stopped: the caller must
    /// write the tail itself.
    pub fn enqueue(&self, log: Weak<Log>, due: Instant) -> bool {
        let mut q = self.queue.lock();
        if q.stopped {
            return false;
        }
        let earliest = q.heap.peek().is_none_or(|Reverse(e)| due < e.due);
        q.seq += 1;
        let seq = q.seq;
        q.heap.push(Reverse(Entry { due, seq, log }));
        drop(q);
        if earliest {
            self.wake.notify_one();
        }
        true
    }

    /// Stops the thread; it writes every queued tail before it returns.
    pub fn stop(&self) {
        self.running.store(false, Ordering::Release);
        self.queue.lock().stopped = true;
        self.wake.notify_one();
    }

    /// The thread's body: sleeps until the earliest due time, then lets each due log write (or re-queue) its tail.
    pub fn run(&self) {
        let mut q = self.queue.lock();
        loop {
            let now = Instant::now();
            let stopping = q.stopped;
            let due = take_due(&mut q, now, stopping);
            if !due.is_empty() {
                // Logs take their own lock and may re-queue (lock order: log state, then this queue).
                MutexGuard::unlocked(&mut q, || {
                    for entry in due {
                        if let Some(log) = entry.log.upgrade() {
                            log.flush_held_tail((!stopping).then_some(now));
                        }
                    }
                });
                continue;
            }
            if stopping {
                return;
            }
            match q.heap.peek().map(|Reverse(e)| e.due) {
                Some(due) => {
                    self.wake.wait_until(&mut q, due);
                }
                None => self.wake.wait(&mut q),
            }
        }
    }
}

/// Removes the entries due at `now` (all of them when stopping).
fn take_due(q: &mut Queue, now: Instant, all: bool) -> Vec<Entry> {
    let mut due = Vec::new();
    while q.heap.peek().is_some_and(|Reverse(e)| all || e.due <= now) {
        if let Some(Reverse(e)) = q.heap.pop() {
            due.push(e);
        }
    }
    due
}
