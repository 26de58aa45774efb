//! A channel's deliveries awaiting ack / nack / reject, by delivery tag.
//!
//! Why not a `BTreeMap`: tags are handed out in increasing order and consumers mostly settle the oldest first,
//! so a deque sorted by tag settles the usual ack at its front in a few instructions, where the map's removal
//! was ~280 instructions per message (callgrind). A tag settled out of order leaves a hole (`None`) behind,
//! found by binary search; holes at the front are dropped at once, and once holes outnumber the live entries
//! (past [`HOLES_KEPT_MAX`]) they are swept, so memory stays proportional to what is unacknowledged however the
//! client acks (the deque's capacity shrinks too once it is mostly unused). Deliveries of no-ack consumers are
//! never entered, so their tags leave no holes.

use std::collections::VecDeque;

/// Holes tolerated before a sweep, on top of one per live entry (few in unit tests, so that they sweep often).
const HOLES_KEPT_MAX: usize = if cfg!(test) { 4 } else { 1024 };
/// Capacity kept however little is in use (below it, shrinking would only churn allocations).
const CAPACITY_KEPT: usize = if cfg!(test) { 16 } else { 4096 };

#[derive(Debug)]
pub(crate) struct Unsettled<T> {
    /// Sorted by tag, strictly increasing; `None` is a settled tag not yet swept.
    entries: VecDeque<(u64, Option<T>)>,
    live: usize,
}

impl<T> Default for Unsettled<T> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            live: 0,
        }
    }
}

impl<T> Unsettled<T> {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.live
    }

    /// Adds delivery `tag`. Tags are handed out in increasing order, so it normally goes at the back; anything
    /// else takes its place through [`restore`](Self::restore).
    pub(crate) fn insert(&mut self, tag: u64, value: T) {
        if self.entries.back().is_none_or(|(last, _)| *last < tag) {
            self.entries.push_back((tag, Some(value)));
            self.live += 1;
        } else {
            self.restore([(tag, value)]);
        }
    }

    /// Puts back deliveries taken earlier (a transaction rolled back), in any order: one merge, where inserting
    /// them one by one into the middle would move the entries after each (quadratic in a large rollback). A tag
    /// already present is replaced, as by [`insert`](Self::insert).
    pub(crate) fn restore(&mut self, taken: impl IntoIterator<Item = (u64, T)>) {
        let mut back: Vec<(u64, T)> = taken.into_iter().collect();
        if back.is_empty() {
            return;
        }
        back.sort_by_key(|(tag, _)| *tag);
        let mut merged = VecDeque::with_capacity(self.live + back.len());
        let mut old = std::mem::take(&mut self.entries)
            .into_iter()
            .filter(|(_, value)| value.is_some())
            .peekable();
        for (tag, value) in back {
            while let Some(entry) = old.next_if(|(t, _)| *t < tag) {
                merged.push_back(entry);
            }
            // One already unsettled under that tag is replaced.
            let _ = old.next_if(|(t, _)| *t == tag);
            match merged.back_mut() {
                Some((last, slot)) if *last == tag => *slot = Some(value),
                _ => merged.push_back((tag, Some(value))),
            }
        }
        merged.extend(old);
        // Holes were left out: every entry is live.
        self.live = merged.len();
        self.entries = merged;
    }

    pub(crate) fn contains(&self, tag: u64) -> bool {
        self.position(tag)
            .is_ok_and(|i| self.entries[i].1.is_some())
    }

    /// The oldest unsettled delivery tag (tags grow with time, so: the delivery waiting longest).
    pub(crate) fn first_tag(&self) -> Option<u64> {
        self.entries
            .iter()
            .find(|(_, value)| value.is_some())
            .map(|(tag, _)| *tag)
    }

    /// Removes delivery `tag`, if it is unsettled.
    pub(crate) fn remove(&mut self, tag: u64) -> Option<T> {
        let taken = match self.entries.front_mut() {
            Some((first, value)) if *first == tag => value.take(),
            _ => {
                let i = self.position(tag).ok()?;
                self.entries[i].1.take()
            }
        };
        if taken.is_some() {
            self.live -= 1;
            self.tidy();
        }
        taken
    }

    /// Removes every delivery up to and including `tag`, oldest first.
    pub(crate) fn take_through(&mut self, tag: u64) -> Vec<(u64, T)> {
        let mut taken = Vec::new();
        while let Some((first, _)) = self.entries.front() {
            if *first > tag {
                break;
            }
            if let Some((first, Some(value))) = self.entries.pop_front() {
                taken.push((first, value));
            }
        }
        self.live -= taken.len();
        self.tidy();
        taken
    }

    /// Removes every delivery, oldest first.
    pub(crate) fn take_all(&mut self) -> Vec<(u64, T)> {
        self.live = 0;
        std::mem::take(&mut self.entries)
            .into_iter()
            .filter_map(|(tag, value)| Some((tag, value?)))
            .collect()
    }

    fn position(&self, tag: u64) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&tag, |(t, _)| *t)
    }

    /// Drops holes at the front, sweeps all of them once they outnumber the live entries, and gives back
    /// capacity once it is mostly unused.
    fn tidy(&mut self) {
        while self.entries.front().is_some_and(|(_, v)| v.is_none()) {
            self.entries.pop_front();
        }
        debug_assert!(self.live <= self.entries.len());
        let holes = self.entries.len().saturating_sub(self.live);
        if holes > self.live.saturating_add(HOLES_KEPT_MAX) {
            self.entries.retain(|(_, v)| v.is_some());
        }
        let capacity = self.entries.capacity();
        if capacity > CAPACITY_KEPT && self.entries.len() < capacity / 4 {
            self.entries
                .shrink_to(self.entries.len().saturating_mul(2).max(CAPACITY_KEPT));
        }
        // Counting is linear: only in unit tests (a debug broker acking one by one would go quadratic).
        #[cfg(test)]
        assert_eq!(
            self.entries.iter().filter(|(_, v)| v.is_some()).count(),
            self.live
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn acks_in_order_leave_nothing_behind() {
        let mut set = Unsettled::default();
        for tag in 1..=100 {
            set.insert(tag, tag * 10);
        }
        for tag in 1..=100 {
            assert_eq!(set.remove(tag), Some(tag * 10));
        }
        assert_eq!(set.len(), 0);
        assert!(set.entries.is_empty());
    }

    #[test]
    fn holes_are_swept_once_they_outnumber_the_live_entries() {
        let mut set = Unsettled::default();
        set.insert(1, ());
        for tag in 2..=100_000 {
            set.insert(tag, ());
            assert_eq!(set.remove(tag), Some(()));
        }
        // Tag 1 is held for ever; everything after it was acked out of order.
        assert_eq!(set.len(), 1);
        assert!(set.entries.len() <= 2 + HOLES_KEPT_MAX + 1);
        assert!(set.contains(1) && !set.contains(2));
    }

    #[test]
    fn a_large_rollback_is_put_back_in_order_in_one_merge() {
        let mut set = Unsettled::default();
        for tag in 1..=20_000u64 {
            set.insert(tag, tag);
        }
        // A transaction acks the older half one by one, then rolls back.
        let taken: Vec<(u64, u64)> = (1..=10_000u64)
            .filter_map(|t| set.remove(t).map(|v| (t, v)))
            .collect();
        assert_eq!(set.len(), 10_000);
        set.restore(taken);
        assert_eq!(set.len(), 20_000);
        assert_eq!(
            set.take_all(),
            (1..=20_000u64).map(|t| (t, t)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn capacity_is_given_back_once_mostly_unused() {
        let mut set = Unsettled::default();
        for tag in 1..=10_000u64 {
            set.insert(tag, ());
        }
        for tag in 1..=9_990u64 {
            set.remove(tag);
        }
        assert!(set.entries.capacity() <= 4 * CAPACITY_KEPT.max(set.len()));
    }

    /// Random inserts (mostly increasing, sometimes older tags as a rollback does), removals, ranges and
    /// clears, checked step by step against a `BTreeMap`.
    #[test]
    fn behaves_as_a_sorted_map() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..50 {
            let mut set = Unsettled::default();
            let mut model = BTreeMap::new();
            let mut tag = 0u64;
            let mut taken: Vec<(u64, u64)> = Vec::new();
            for _ in 0..2_000 {
                match next(10) {
                    0..=3 => {
                        tag += 1 + next(3);
                        set.insert(tag, tag);
                        model.insert(tag, tag);
                    }
                    4 => {
                        if next(2) == 0 {
                            let old = next(tag + 1);
                            set.insert(old, old + 1);
                            model.insert(old, old + 1);
                        } else {
                            // A rollback puts back what earlier acks took, in the order they were taken.
                            let back = std::mem::take(&mut taken);
                            model.extend(back.iter().copied());
                            set.restore(back);
                        }
                    }
                    5..=7 => {
                        let t = if next(2) == 0 {
                            model.keys().next().copied().unwrap_or(0)
                        } else {
                            next(tag + 2)
                        };
                        assert_eq!(set.contains(t), model.contains_key(&t));
                        let removed = set.remove(t);
                        assert_eq!(removed, model.remove(&t));
                        taken.extend(removed.map(|v| (t, v)));
                    }
                    8 => {
                        let t = next(tag + 2);
                        let rest = model.split_off(&(t + 1));
                        let expected: Vec<_> =
                            std::mem::replace(&mut model, rest).into_iter().collect();
                        assert_eq!(set.take_through(t), expected);
                    }
                    _ => {
                        if next(20) == 0 {
                            let expected: Vec<_> = std::mem::take(&mut model).into_iter().collect();
                            assert_eq!(set.take_all(), expected);
                        }
                    }
                }
                assert_eq!(set.len(), model.len());
                assert!(
                    set.entries.capacity() <= (4 * set.entries.len() + 4).max(4 * CAPACITY_KEPT),
                    "capacity {} for {} entries",
                    set.entries.capacity(),
                    set.entries.len()
                );
            }
        }
    }
}
