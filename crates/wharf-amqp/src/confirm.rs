//! Publisher confirms on one channel: sequence numbers counted from 1 and the outcomes (basic.ack or
//! basic.nack) waiting to be sent. Outcomes are collected while the frames already read are handled and
//! sent together afterwards, so a burst of publishes is confirmed by a few frames with `multiple` set
//! rather than one frame per message. The same shape will serve durable queues, whose confirms wait for
//! the log's group-committed fsync and may settle out of order.

use std::collections::{BTreeMap, BTreeSet};

/// One basic.ack (`ok`) or basic.nack to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub delivery_tag: u64,
    pub multiple: bool,
    pub ok: bool,
}

/// The confirm state of a channel in confirm mode.
#[derive(Debug, Default)]
pub struct Confirms {
    last_tag: u64,
    /// Tags handed out whose outcome is not known yet: a `multiple` frame may not cover them.
    unsettled: BTreeSet<u64>,
    /// Outcomes known and not yet sent.
    settled: BTreeMap<u64, bool>,
}

impl Confirms {
    /// The sequence number of the next publish (the first is 1).
    pub fn next_tag(&mut self) -> u64 {
        self.last_tag += 1;
        self.unsettled.insert(self.last_tag);
        self.last_tag
    }

    /// Records the outcome of publish `tag`: accepted by every queue it reached (`ok`), or refused.
    pub fn settle(&mut self, tag: u64, ok: bool) {
        if self.unsettled.remove(&tag) {
            self.settled.insert(tag, ok);
        }
    }

    /// Whether outcomes are known and not yet sent.
    pub fn has_settled(&self) -> bool {
        !self.settled.is_empty()
    }

    /// The frames for every outcome known, as few as `multiple` allows: a run of consecutive tags with
    /// the same outcome becomes one frame when no unsettled tag lies below its end (a `multiple` frame
    /// confirms everything up to its tag).
    pub fn drain(&mut self) -> Vec<Outcome> {
        let lowest_unsettled = self.unsettled.first().copied().unwrap_or(u64::MAX);
        let mut out: Vec<Outcome> = Vec::new();
        let mut run: Option<(u64, u64, bool)> = None; // (first, last, ok)
        let emit = |run: (u64, u64, bool), out: &mut Vec<Outcome>| {
            let (first, last, ok) = run;
            if first != last && last < lowest_unsettled {
                out.push(Outcome {
                    delivery_tag: last,
                    multiple: true,
                    ok,
                });
            } else {
                out.extend((first..=last).map(|delivery_tag| Outcome {
                    delivery_tag,
                    multiple: false,
                    ok,
                }));
            }
        };
        for (tag, ok) in std::mem::take(&mut self.settled) {
            run = match run {
                Some((first, last, run_ok)) if tag == last + 1 && ok == run_ok => {
                    Some((first, tag, ok))
                }
                Some(previous) => {
                    emit(previous, &mut out);
                    Some((tag, tag, ok))
                }
                None => Some((tag, tag, ok)),
            };
        }
        if let Some(last) = run {
            emit(last, &mut out);
        }
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
}
