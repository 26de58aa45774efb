//! The delivery acknowledgement timeout (RabbitMQ's `consumer_timeout`): a channel whose oldest
//! unacknowledged delivery is older than the timeout is closed with 406 PRECONDITION_FAILED, so that its
//! messages go back to their queues for other consumers instead of waiting on a stuck one forever.
//!
//! Why marks and not a time per delivery: stamping every delivery would put a clock read and 16 bytes on the
//! per-message path for a check that fires after half an hour. Delivery tags grow with time instead, so the
//! connection notes, at each periodic check, the channel's latest tag at that moment ([`TagMarks::note`]). A
//! delivery whose tag is at most the tag noted at some time `t` was delivered at or before `t`; if `t` lies a
//! whole timeout back, that delivery is overdue. With a check every eighth of the timeout, a delivery is found
//! overdue between one timeout and one timeout plus two check periods (a quarter of the timeout, or two minutes
//! once the period is capped) after it went out: late, never early.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Checks per timeout: a delivery is found overdue at most two check periods past the timeout.
pub(crate) const CHECKS_PER_TIMEOUT: u32 = 8;
/// The shortest check period, whatever the timeout (a test's timeout of a few ms must not spin).
const CHECK_PERIOD_MIN: Duration = Duration::from_millis(10);
/// The longest check period: RabbitMQ checks about once a minute.
const CHECK_PERIOD_MAX: Duration = Duration::from_secs(60);
/// Marks kept per channel at most. With checks every period, one timeout spans `CHECKS_PER_TIMEOUT` marks (or
/// timeout / 60 s once the period is capped, 30 for the default 30 min); a longer timeout only coarsens the
/// answer (later, never earlier).
const MARKS_MAX: usize = 64;

/// How often a connection checks its channels for overdue deliveries, for a timeout of `timeout`.
pub(crate) fn check_period(timeout: Duration) -> Duration {
    (timeout / CHECKS_PER_TIMEOUT).clamp(CHECK_PERIOD_MIN, CHECK_PERIOD_MAX)
}

/// The (time, latest delivery tag) pairs a channel noted at its recent checks, oldest first.
#[derive(Debug, Default)]
pub(crate) struct TagMarks {
    marks: VecDeque<(Instant, u64)>,
}

impl TagMarks {
    /// Notes that every tag up to `latest_tag` had been delivered by `now`, then answers whether a delivery
    /// still unacknowledged with tag `oldest_unacked` went out at least `timeout` before `now`.
    pub(crate) fn note(
        &mut self,
        now: Instant,
        latest_tag: u64,
        oldest_unacked: Option<u64>,
        timeout: Duration,
    ) -> bool {
        debug_assert!(
            self.marks
                .back()
                .is_none_or(|&(t, tag)| t <= now && tag <= latest_tag),
            "marks are noted in time and tag order"
        );
        // A mark with the same tag as the last adds nothing: the older one bounds those tags more tightly. (An
        // idle or publish-only channel keeps a single mark.)
        if self.marks.back().is_none_or(|&(_, tag)| tag < latest_tag) {
            self.marks.push_back((now, latest_tag));
        }
        if self.marks.len() > MARKS_MAX {
            // Dropping the oldest leaves a newer, larger bound in front: answers come later, never earlier.
            self.marks.pop_front();
        }
        let Some(cutoff) = now.checked_sub(timeout) else {
            // The clock has not run a whole timeout since boot: nothing can be overdue yet.
            return false;
        };
        // Keep only the newest mark at or before the cutoff (the tightest bound), and the marks after it.
        while self.marks.get(1).is_some_and(|&(t, _)| t <= cutoff) {
            self.marks.pop_front();
        }
        match (self.marks.front(), oldest_unacked) {
            (Some(&(t, tag)), Some(oldest)) => t <= cutoff && oldest <= tag,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(80);

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn a_delivery_is_overdue_only_once_a_whole_timeout_has_passed_since_a_check_saw_it() {
        let start = Instant::now();
        let mut marks = TagMarks::default();
        // Tags 1..=5 go out before the check at 0 s; 6..=9 between 0 s and 10 s.
        assert!(!marks.note(at(start, 0), 5, Some(1), TIMEOUT));
        for s in (10..80).step_by(10) {
            assert!(
                !marks.note(at(start, s), 9, Some(1), TIMEOUT),
                "early at {s} s"
            );
        }
        // 80 s after the check that saw tag 1: overdue.
        assert!(marks.note(at(start, 80), 9, Some(1), TIMEOUT));
        // Tags 1..=5 acked; tag 6 went out after the check at 0 s, so it is not known overdue until the check
        // at 10 s lies a whole timeout back.
        assert!(!marks.note(at(start, 85), 9, Some(6), TIMEOUT));
        assert!(marks.note(at(start, 90), 9, Some(6), TIMEOUT));
    }

    #[test]
    fn nothing_unacked_or_only_recent_deliveries_are_never_overdue() {
        let start = Instant::now();
        let mut marks = TagMarks::default();
        let mut tag = 0;
        for s in (0..1000).step_by(10) {
            tag += 3;
            // Everything older than the last check is acked at once.
            assert!(!marks.note(at(start, s), tag, None, TIMEOUT));
            assert!(!marks.note(at(start, s + 5), tag, Some(tag), TIMEOUT));
        }
        assert!(marks.marks.len() <= MARKS_MAX);
    }

    #[test]
    fn an_idle_channel_keeps_one_mark_and_still_times_out_from_it() {
        let start = Instant::now();
        let mut marks = TagMarks::default();
        for s in (0..80).step_by(10) {
            assert!(!marks.note(at(start, s), 4, Some(4), TIMEOUT));
            assert_eq!(marks.marks.len(), 1);
        }
        assert!(marks.note(at(start, 80), 4, Some(4), TIMEOUT));
    }

    #[test]
    fn marks_stay_bounded_when_checks_come_far_more_often_than_the_timeout() {
        let start = Instant::now();
        let mut marks = TagMarks::default();
        for ms in 0..10_000u64 {
            let now = start + Duration::from_millis(ms);
            assert!(!marks.note(now, ms, Some(ms), Duration::from_secs(3600)));
        }
        assert_eq!(marks.marks.len(), MARKS_MAX);
        // Bounded means coarser, not wrong: the front mark is still a true bound for its time.
        let &(t, tag) = marks.marks.front().unwrap();
        assert_eq!(tag, (t - start).as_millis() as u64);
    }

    #[test]
    fn the_check_period_is_an_eighth_of_the_timeout_within_bounds() {
        assert_eq!(
            check_period(Duration::from_secs(80)),
            Duration::from_secs(10)
        );
        assert_eq!(check_period(Duration::from_millis(1)), CHECK_PERIOD_MIN);
        assert_eq!(check_period(Duration::from_secs(30 * 60)), CHECK_PERIOD_MAX);
    }
}
