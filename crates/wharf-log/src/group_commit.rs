//! Group commit: many appenders waiting for durability share one `fdatasync`.
//!
//! The first waiter that finds no sync in flight becomes the *leader*: it captures the log end, syncs, and
//! publishes the new durable offset. Waiters that arrive while a sync is in flight wait for it to finish; if it
//! did not cover them (they appended after its capture) one of them leads the next round. Under load every round
//! therefore covers all appends made during the previous round — with 64 concurrent appenders, dozens of appends
//! per fdatasync — while a lone appender pays exactly one sync per append and no timer delay.
//!
//! Under steady load the rounds run back to back, and each costs much the same whatever it covers (on a virtual
//! disk an fdatasync costs the broker ~100 µs of CPU in the kernel: the queue notification and the interrupts of
//! its writes and its cache flush). So when at least [`GATHER_BUSY_RECORDS`] records were appended while the
//! previous round was syncing (the load is continuous), the next leader first pauses until [`GATHER_PAUSE_SYNCS`] sync times after that round ended
//! ([`GroupCommit::gather_pause`], at most [`GATHER_PAUSE_MAX`]): its round covers several times the appends, at
//! the price of that much more latency (measured with AMQP confirms at 30 k msg/s, 1 KiB, on the project's VM:
//! pausing one sync time cut the broker's CPU per message ~10 %, three sync times ~20 %, adding 0.4 ms to the
//! confirm p50). An appender that waits for each append before the next (a synchronous publisher, a Kafka
//! producer with one request in flight) appends nothing during a sync, so it never pauses.
//!
//! The pause is slept in two halves, and while the last step still saw [`GATHER_EXTEND_RECORDS`] or more
//! appends (appenders are pouring in, not waiting for this round) it goes on step by step, up to
//! [`GATHER_EXTENDED_MAX`] in all ([`Gathering`]). A publisher whose window of unconfirmed messages fills stops
//! appending: the step after it sees nothing, the round starts, and since the flow *stopped* (a step with appends
//! followed by one without) the next [`GATHER_QUIET_ROUNDS`] rounds do not go on past the plain pause, so such a
//! publisher keeps nearly the throughput it had with the plain pause. Measured (AMQP, 1 KiB, confirms +
//! persistent, 2 vCPU VM): a flat 8 ms pause cut broker CPU per message 22 % at 40 k msg/s and 8 % at the maximum
//! rate, but a publisher with a window of 100 fell from 48 k to 17 k msg/s; going on only while appends pour in
//! kept 9-11 % of the saving and lost 23 % of that publisher's throughput, which remembering stalls wins back.

//! Blocking waiters park on a condition variable; async waiters on a `tokio::sync::watch` of the round number.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    /// When the last successful round ended, and how long its fdatasync took, if the load was continuous (see `finish`).
    last_busy_round: Option<(Instant, Duration)>,
    /// Rounds left whose pause stays plain, after a stall (see [`Gathering`]).
    quiet_rounds: u32,
}

/// How many of the last round's sync times a leader waits after it under continuous load (see the module
/// documentation).
pub(crate) const GATHER_PAUSE_SYNCS: u32 = 3;
/// Records appended during a sync that mark the load as continuous. Fewer — one publisher at 1 000 msg/s
/// against a 0.7 ms sync sees one now and then — pause nothing, so occasional appenders keep their latency.
pub(crate) const GATHER_BUSY_RECORDS: u64 = 4;
/// Longest pause of a leader gathering appends before its round: bounds the latency added on a slow disk.
pub(crate) const GATHER_PAUSE_MAX: Duration = Duration::from_millis(2);
/// Shortest step of a pause that goes on (each step is a sleep and a wake-up of the leader): a pause shorter than
/// two is slept in one go.
pub(crate) const GATHER_STEP_MIN: Duration = Duration::from_micros(200);
/// Appends (calls, not records: a Kafka batch is one) during the last step of a pause that show appenders still
/// pouring in (see [`Gathering`]).
pub(crate) const GATHER_EXTEND_RECORDS: u64 = 16;
/// Longest pause, extensions included: bounds the confirm latency added under the heaviest load (RabbitMQ's
/// persistent confirms take tens of milliseconds there).
pub(crate) const GATHER_EXTENDED_MAX: Duration = Duration::from_millis(8);
/// Rounds after a stall (the flow stopped during a pause) whose pauses do not go on past the plain pause.
pub(crate) const GATHER_QUIET_ROUNDS: u32 = 8;

/// One leader's pause before its round, in steps: [`Gathering::start`] gives the first sleep, and after each
/// sleep [`Gathering::next`] is told how many appends arrived during it and how long the pause has lasted, and
/// says how long to sleep next, if at all (see the module documentation). The plain pause is the first sleep and
/// one step; a pause shorter than two [`GATHER_STEP_MIN`] is slept in one go and never goes on.
#[derive(Debug)]
pub(crate) struct Gathering {
    step: Duration,
    steps: u32,
    may_go_on: bool,
    /// Appends seen during the previous sleep.
    previous: Option<u64>,
    stalled: bool,
}

impl Gathering {
    /// For a plain pause of `pause` (not zero); `may_go_on`: whether it may go on past it.
    pub fn start(pause: Duration, may_go_on: bool) -> (Gathering, Duration) {
        let short = pause < GATHER_STEP_MIN.saturating_mul(2);
        let step = if short { pause } else { pause / 2 };
        let gathering = Gathering {
            step,
            steps: 0,
            may_go_on: may_go_on && !short,
            previous: None,
            stalled: false,
        };
        (gathering, pause.saturating_sub(step))
    }

    /// `arrived` appends came during the sleep just ended, and the pause has lasted `elapsed` (measured, since
    /// sleeps overshoot on a busy machine): the next sleep, or `None` for the round to start.
    pub fn next(&mut self, arrived: u64, elapsed: Duration) -> Option<Duration> {
        let pouring = arrived >= GATHER_EXTEND_RECORDS;
        if !pouring && self.previous.is_some_and(|p| p >= GATHER_EXTEND_RECORDS) {
            self.stalled = true;
        }
        self.previous = Some(arrived);
        let go_on = self.steps == 0
            || (self.may_go_on
                && pouring
                && elapsed.saturating_add(self.step) <= GATHER_EXTENDED_MAX);
        if !go_on {
            return None;
        }
        self.steps += 1;
        Some(self.step)
    }

    /// Whether the flow stopped during this pause (a sleep with appends followed by one without).
    pub fn stalled(&self) -> bool {
        self.stalled
    }
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
                last_busy_round: None,
                quiet_rounds: 0,
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

    /// How long a leader starting a round now should wait for more appends first: after a round under
    /// continuous load (see [`GroupCommit::finish`]), what is left of [`GATHER_PAUSE_SYNCS`] times its sync time (at most
    /// [`GATHER_PAUSE_MAX`]) since it ended; otherwise nothing.
    pub fn gather_pause(&self, now: Instant) -> Duration {
        let st = self.state.lock();
        match st.last_busy_round {
            Some((ended, took)) => (ended
                + took
                    .saturating_mul(GATHER_PAUSE_SYNCS)
                    .min(GATHER_PAUSE_MAX))
            .saturating_duration_since(now),
            None => Duration::ZERO,
        }
    }

    /// Whether this round's pause may go on past the plain pause (no stall in the last
    /// [`GATHER_QUIET_ROUNDS`] rounds).
    pub fn may_extend_pause(&self) -> bool {
        self.state.lock().quiet_rounds == 0
    }

    /// The leader's pause saw the flow stop ([`Gathering::stalled`]): keep the next pauses plain. (Called
    /// before the same round's [`GroupCommit::finish`], which counts that round off.)
    pub fn note_stall(&self) {
        self.state.lock().quiet_rounds = GATHER_QUIET_ROUNDS + 1;
    }

    /// Ends the leader's round: `Ok(offset)` makes everything below `offset` durable; `sync_took` is how long
    /// its fdatasync took and `busy` whether [`GATHER_BUSY_RECORDS`] or more records were appended meanwhile
    /// (for the next leader's [`GroupCommit::gather_pause`]).
    pub fn finish(&self, result: &Result<u64, String>, sync_took: Duration, busy: bool) {
        let mut st = self.state.lock();
        st.in_progress = false;
        st.quiet_rounds = st.quiet_rounds.saturating_sub(1);
        match result {
            Ok(offset) => {
                st.durable = st.durable.max(*offset);
                st.last_busy_round = busy.then(|| (Instant::now(), sync_took));
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

    /// Every offset below is durable (without cloning the failure, as `snapshot` does).
    pub fn durable(&self) -> u64 {
        self.state.lock().durable
    }

    /// The durable offset and the first failure.
    pub fn snapshot(&self) -> (u64, Option<String>) {
        let st = self.state.lock();
        (st.durable, st.failed.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_pauses_only_after_a_round_during_which_appends_arrived() {
        let commit = GroupCommit::new(0);
        assert_eq!(commit.gather_pause(Instant::now()), Duration::ZERO);
        // Nothing appended during the sync (a lone, synchronous appender): no pause.
        commit.finish(&Ok(10), Duration::from_micros(600), false);
        assert_eq!(commit.gather_pause(Instant::now()), Duration::ZERO);
        // Appends during the sync: pause up to three sync times after the round.
        commit.finish(&Ok(20), Duration::from_micros(500), true);
        let pause = commit.gather_pause(Instant::now());
        assert!(pause > Duration::from_micros(1000) && pause <= Duration::from_micros(1500));
        assert_eq!(
            commit.gather_pause(Instant::now() + Duration::from_millis(2)),
            Duration::ZERO
        );
        // A slow disk's pause is capped.
        commit.finish(&Ok(30), Duration::from_secs(1), true);
        assert!(commit.gather_pause(Instant::now()) <= GATHER_PAUSE_MAX);
        assert_eq!(commit.snapshot().0, 30);
    }

    #[test]
    fn a_pause_goes_on_only_while_appends_pour_in_and_never_past_its_bound() {
        let pause = Duration::from_millis(2);
        let ms = Duration::from_millis;
        // The plain pause: a first sleep and one step, whatever arrives.
        let (mut g, first) = Gathering::start(pause, true);
        assert_eq!(first, ms(1));
        assert_eq!(g.next(0, ms(1)), Some(ms(1)));
        assert_eq!(g.next(0, ms(2)), None, "nothing arriving: the round starts");
        assert!(!g.stalled());
        // Appends pouring in: steps go on up to the bound, never past it.
        let (mut g, first) = Gathering::start(pause, true);
        let mut elapsed = first;
        while let Some(step) = g.next(GATHER_EXTEND_RECORDS, elapsed) {
            elapsed += step;
        }
        assert!(elapsed <= GATHER_EXTENDED_MAX && elapsed > GATHER_EXTENDED_MAX / 2);
        assert!(!g.stalled());
        // Sleeps that overshoot end the pause sooner: the bound is on the time measured.
        let (mut g, _) = Gathering::start(pause, true);
        assert!(g.next(50, ms(1)).is_some());
        assert_eq!(g.next(50, ms(7) + ms(1) / 2), None);
        // A window fills: the flow stops, the round starts, and the stall is reported.
        let (mut g, _) = Gathering::start(pause, true);
        assert!(g.next(50, ms(1)).is_some());
        assert!(g.next(50, ms(2)).is_some());
        assert_eq!(g.next(0, ms(3)), None);
        assert!(g.stalled());
        // After a stall (may_go_on false) the pause stays plain, however busy.
        let (mut g, _) = Gathering::start(pause, false);
        assert!(g.next(u64::MAX, ms(1)).is_some());
        assert_eq!(g.next(u64::MAX, ms(2)), None);
        // A short pause is slept in one go and never goes on.
        let short = Duration::from_micros(90);
        let (mut g, first) = Gathering::start(short, true);
        assert_eq!(first, Duration::ZERO);
        assert_eq!(g.next(u64::MAX, Duration::ZERO), Some(short));
        assert_eq!(g.next(u64::MAX, short), None);
    }

    #[test]
    fn a_stall_keeps_the_next_pauses_plain() {
        let commit = GroupCommit::new(0);
        assert!(commit.may_extend_pause());
        // The stalled round itself, then the quiet ones.
        commit.note_stall();
        commit.finish(&Ok(1), Duration::from_micros(500), true);
        for _ in 0..GATHER_QUIET_ROUNDS {
            assert!(!commit.may_extend_pause());
            commit.finish(&Ok(1), Duration::from_micros(500), true);
        }
        assert!(commit.may_extend_pause());
    }
}
