//! A channel's deliveries awaiting ack / nack / reject, by delivery tag.
//!
//! Why not a `BTreeMap`: tags are handed out in increasing order and consumers mostly settle the oldest first,
//! so a deque sorted by tag settles the usual ack at its front in a few instructions, where the map's removal
//! was ~280 instructions per message (callgrind). A tag settled out of order leaves a hole (`None`) behind,
//! found by binary search; holes at the front are dropped at once, and once holes outnumber the live entries
//! (past [`HOLES_KEPT_MAX`]) they are swept, so memory stays proportional to what is unacknowledged however the
//! client acks. Deliveries of no-ack consumers are never entered, so their tags leave no holes.

use std::collections::VecDeque;

/// Holes tolerated before a sweep, on top of one per live entry (few in unit tests, so that they sweep often).
const HOLES_KEPT_MAX: usize = if cfg!(test) { 4 } else { 1024 };

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

    /// Adds delivery `tag`. Tags normally come in increasing order; an older one (a transaction rolled back
    /// puts its acks back) takes its place in order. A tag already present is replaced.
    pub(crate) fn insert(&mut self, tag: u64, value: T) {
        if self.entries.back().is_none_or(|(last, _)| *last < tag) {
            self.entries.push_back((tag, Some(value)));
            self.live += 1;
            return;
        }
        match self.position(tag) {
            Ok(i) => {
                if self.entries[i].1.replace(value).is_none() {
                    self.live += 1;
                }
            }
            Err(i) => {
                self.entries.insert(i, (tag, Some(value)));
                self.live += 1;
            }
        }
    }

    pub(crate) fn contains(&self, tag: u64) -> bool {
        self.position(tag)
            .is_ok_and(|i| self.entries[i].1.is_some())
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

    /// Drops holes at the front, and sweeps all of them once they outnumber the live entries.
    fn tidy(&mut self) {
        while self.entries.front().is_some_and(|(_, v)| v.is_none()) {
            self.entries.pop_front();
        }
        let holes = self.entries.len() - self.live;
        if holes > self.live.saturating_add(HOLES_KEPT_MAX) {
            self.entries.retain(|(_, v)| v.is_some());
        }
        debug_assert_eq!(
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
            for _ in 0..2_000 {
                match next(10) {
                    0..=3 => {
                        tag += 1 + next(3);
                        set.insert(tag, tag);
                        model.insert(tag, tag);
                    }
                    4 => {
                        let old = next(tag + 1);
                        set.insert(old, old + 1);
                        model.insert(old, old + 1);
                    }
                    5..=7 => {
                        let t = if next(2) == 0 {
                            model.keys().next().copied().unwrap_or(0)
                        } else {
                            next(tag + 2)
                        };
                        assert_eq!(set.contains(t), model.contains_key(&t));
                        assert_eq!(set.remove(t), model.remove(&t));
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
            }
        }
    }
}
