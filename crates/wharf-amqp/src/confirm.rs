//! Publisher confirms on one channel: sequence numbers counted from 1 and the outcomes (basic.ack or
//! basic.nack) waiting to be sent. Outcomes are collected while the frames already read are handled and
//! sent together afterwards, so a burst of publishes is confirmed by a few frames with `multiple` set
//! rather than one frame per message. The same shape will serve durable queues, whose confirms wait for
//! the log's group-committed fsync and may settle out of order.

use std::collections::VecDeque;

/// One basic.ack (`ok`) or basic.nack to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub delivery_tag: u64,
    pub multiple: bool,
    pub ok: bool,
}

/// Where one publish's confirm stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Its outcome is not known yet: a `multiple` frame may not cover it.
    Unsettled,
    /// Known (accepted by every queue it reached, or not) and not yet sent.
    Settled {
        ok: bool,
    },
    Sent,
}

/// The confirm state of a channel in confirm mode.
///
/// Tags are handed out in sequence and nearly always settle in order, so their states sit in a ring indexed by
/// tag (one byte or two each, no allocation per publish; sorted sets cost ~1 500 instructions per confirmed
/// message), trimmed at the front as confirms are sent.
#[derive(Debug, Default)]
pub struct Confirms {
    last_tag: u64,
    /// States of the tags `last_tag - window.len() + 1 ..= last_tag`; every tag below was sent.
    window: VecDeque<State>,
    /// Tags settled and not yet sent.
    settled: usize,
    /// Window index just past the highest tag settled since the last drain (drain looks no further).
    settled_end: usize,
}

impl Confirms {
    /// The sequence number of the next publish (the first is 1).
    pub fn next_tag(&mut self) -> u64 {
        self.last_tag += 1;
        self.window.push_back(State::Unsettled);
        self.last_tag
    }

    /// Window index of `tag`, if it is in the window.
    fn index(&self, tag: u64) -> Option<usize> {
        let first = self.last_tag + 1 - self.window.len() as u64;
        let index = usize::try_from(tag.checked_sub(first)?).ok()?;
        (index < self.window.len()).then_some(index)
    }

    /// Records the outcome of publish `tag`: accepted by every queue it reached (`ok`), or refused.
    pub fn settle(&mut self, tag: u64, ok: bool) {
        let Some(index) = self.index(tag) else {
            return;
        };
        if self.window[index] == State::Unsettled {
            self.window[index] = State::Settled { ok };
            self.settled += 1;
            self.settled_end = self.settled_end.max(index + 1);
        }
    }

    /// Whether outcomes are known and not yet sent.
    pub fn has_settled(&self) -> bool {
        self.settled > 0
    }

    /// The frames for every outcome known, as few as `multiple` allows: a run of consecutive tags with
    /// the same outcome becomes one frame when no unsettled tag lies below its end (a `multiple` frame
    /// confirms everything up to its tag).
    pub fn drain(&mut self) -> Vec<Outcome> {
        let mut out: Vec<Outcome> = Vec::new();
        if self.settled == 0 {
            return out;
        }
        let first_tag = self.last_tag + 1 - self.window.len() as u64;
        let mut unsettled_below = false;
        // The run being gathered: (first index, last index, ok).
        let mut run: Option<(usize, usize, bool)> = None;
        let emit = |(first, last, ok): (usize, usize, bool),
                    unsettled_below: bool,
                    out: &mut Vec<Outcome>| {
            let tag = |index: usize| first_tag + index as u64;
            if first != last && !unsettled_below {
                out.push(Outcome {
                    delivery_tag: tag(last),
                    multiple: true,
                    ok,
                });
            } else {
                out.extend((first..=last).map(|index| Outcome {
                    delivery_tag: tag(index),
                    multiple: false,
                    ok,
                }));
            }
        };
        for index in 0..self.settled_end.min(self.window.len()) {
            match self.window[index] {
                State::Settled { ok } => {
                    self.window[index] = State::Sent;
                    run = match run {
                        Some((first, last, run_ok)) if index == last + 1 && ok == run_ok => {
                            Some((first, index, ok))
                        }
                        Some(previous) => {
                            emit(previous, unsettled_below, &mut out);
                            Some((index, index, ok))
                        }
                        None => Some((index, index, ok)),
                    };
                }
                State::Unsettled => {
                    if let Some(previous) = run.take() {
                        emit(previous, unsettled_below, &mut out);
                    }
                    unsettled_below = true;
                }
                State::Sent => {}
            }
        }
        if let Some(last) = run {
            emit(last, unsettled_below, &mut out);
        }
        self.settled = 0;
        while self.window.front() == Some(&State::Sent) {
            self.window.pop_front();
        }
        self.settled_end = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(delivery_tag: u64, multiple: bool, ok: bool) -> Outcome {
        Outcome {
            delivery_tag,
            multiple,
            ok,
        }
    }

    #[test]
    fn a_burst_is_one_multiple_ack() {
        let mut c = Confirms::default();
        for _ in 0..3 {
            let tag = c.next_tag();
            c.settle(tag, true);
        }
        assert_eq!(c.drain(), vec![outcome(3, true, true)]);
        let tag = c.next_tag();
        assert_eq!(tag, 4);
        c.settle(tag, true);
        assert_eq!(c.drain(), vec![outcome(4, false, true)]);
        assert!(c.drain().is_empty());
    }

    #[test]
    fn nacks_split_runs() {
        let mut c = Confirms::default();
        for ok in [true, true, false, true, true] {
            let tag = c.next_tag();
            c.settle(tag, ok);
        }
        assert_eq!(
            c.drain(),
            vec![
                outcome(2, true, true),
                outcome(3, false, false),
                outcome(5, true, true)
            ]
        );
    }

    #[test]
    fn multiple_never_covers_an_unsettled_tag() {
        let mut c = Confirms::default();
        let (a, b, d) = (c.next_tag(), c.next_tag(), c.next_tag());
        c.settle(b, true);
        c.settle(d, true);
        assert_eq!(
            c.drain(),
            vec![outcome(2, false, true), outcome(3, false, true)]
        );
        c.settle(a, true);
        assert_eq!(c.drain(), vec![outcome(1, false, true)]);
    }

    #[test]
    fn out_of_order_settles_and_unknown_tags() {
        let mut c = Confirms::default();
        let tags: Vec<u64> = (0..6).map(|_| c.next_tag()).collect();
        c.settle(99, true); // never handed out: ignored
        c.settle(0, true);
        c.settle(tags[4], false);
        c.settle(tags[5], false);
        c.settle(tags[1], true);
        assert_eq!(
            c.drain(),
            vec![
                outcome(2, false, true),
                outcome(5, false, false),
                outcome(6, false, false)
            ]
        );
        c.settle(tags[1], false); // settled twice: the first outcome stands
        assert!(!c.has_settled());
        c.settle(tags[0], true);
        c.settle(tags[2], true);
        c.settle(tags[3], true);
        assert_eq!(
            c.drain(),
            vec![outcome(1, false, true), outcome(4, true, true)]
        );
        assert!(c.window.is_empty());
        let tag = c.next_tag();
        assert_eq!(tag, 7);
        c.settle(tag, true);
        assert_eq!(c.drain(), vec![outcome(7, false, true)]);
    }
}
