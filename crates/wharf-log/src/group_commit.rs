//! Group commit: many appenders waiting for durability share one `fdatasync`.
//!
//! The first waiter that finds no sync in flight becomes the *leader*: it captures the log end, syncs, and
//! publishes the new durable offset. Waiters that arrive while a sync is in flight wait for it to finish; if it
//! did not cover them (they appended after its capture) one of them leads the next round. Under load every round
//! therefore covers all appends made during the previous round — with 64 concurrent appenders, dozens of appends
//! per fdatasync — while a lone appender pays exactly one sync per append and no timer delay.
//!
//! Blocking waiters park on a condition variable; async waiters on a `tokio::sync::watch` of the round number.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

/// State shared by the leader and the waiters of one log.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    state: Mutex<SyncState>,
    cv: Condvar,
    rounds_tx: watch::Sender<u64>,
    /// Completed fdatasync rounds (for statistics and benchmarks).
    pub syncs: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct SyncState {
    /// Every offset below this is durable.
    pub durable: u64,
    /// A leader is syncing right now.
    pub in_progress: bool,
    /// The first sync failure; after it the log refuses to claim durability again.
    pub failed: Option<String>,
    rounds: u64,
}

/// What a waiter should do next.
pub(crate) enum Step {
    Done,
    Failed(String),
    Lead,
    Wait,
}

impl GroupCommit {
    pub fn new(durable: u64) -> GroupCommit {
        let (rounds_tx, _) = watch::channel(0);
        GroupCommit {
            state: Mutex::new(SyncState {
                durable,
                in_progress: false,
                failed: None,
                rounds: 0,
            }),
            cv: Condvar::new(),
            rounds_tx,
            syncs: AtomicU64::new(0),
        }
    }

    /// Decides the next step of a waiter for `target`; `Lead` also claims the leadership.
    pub fn step(&self, target: u64) -> Step {
        let mut st = self.state.lock();
        Self::step_locked(&mut st, target)
    }

    fn step_locked(st: &mut SyncState, target: u64) -> Step {
        if st.durable >= target {
            Step::Done
        } else if let Some(f) = &st.failed {
            Step::Failed(f.clone())
        } else if !st.in_progress {
            st.in_progress = true;
            Step::Lead
        } else {
            Step::Wait
        }
    }

    /// Blocks until the round in flight finishes, then decides again.
    pub fn wait_blocking(&self, target: u64) -> Step {
        let mut st = self.state.lock();
        loop {
            match Self::step_locked(&mut st, target) {
                Step::Wait => self.cv.wait(&mut st),
                other => return other,
            }
        }
    }

    /// A receiver that wakes when a round finishes; subscribe *before* calling [`GroupCommit::step`] so no
    /// wake-up is lost.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.rounds_tx.subscribe()
    }

    /// Ends the leader's round: `Ok(offset)` makes everything below `offset` durable.
    pub fn finish(&self, result: &Result<u64, String>) {
        let mut st = self.state.lock();
        st.in_progress = false;
        match result {
            Ok(offset) => {
                st.durable = st.durable.max(*offset);
                self.syncs.fetch_add(1, Ordering::Relaxed);
            }
            Err(reason) => {
                if st.failed.is_none() {
                    st.failed = Some(reason.clone());
                }
            }
        }
        st.rounds += 1;
        let rounds = st.rounds;
        drop(st);
        self.cv.notify_all();
        self.rounds_tx.send_replace(rounds);
    }

    /// Records that everything below `offset` is durable (after a roll or checkpoint synced it outside a round).
    pub fn mark_durable(&self, offset: u64) {
        let mut st = self.state.lock();
        st.durable = st.durable.max(offset);
    }

    /// Lowers the durable offset after a truncation to `end`.
    pub fn truncated(&self, end: u64) {
        let mut st = self.state.lock();
        st.durable = st.durable.min(end);
    }

    /// Records a write or sync failure outside a round.
    pub fn fail(&self, reason: String) {
        let mut st = self.state.lock();
        if st.failed.is_none() {
            st.failed = Some(reason);
        }
    }

    /// The durable offset and the first failure.
    pub fn snapshot(&self) -> (u64, Option<String>) {
        let st = self.state.lock();
        (st.durable, st.failed.clone())
    }
}
