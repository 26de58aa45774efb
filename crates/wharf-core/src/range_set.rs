//! A set of `u64` positions kept as disjoint, non-adjacent half-open ranges. Queues use it for the positions
//! of their log that are settled (acknowledged, dropped, dead-lettered) and for those that held transient
//! messages: consumers settle mostly in order, so millions of settled positions collapse into a few ranges —
//! per-message bookkeeping of a backlog stays a few bytes, not a map entry per message.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent `[start, end)` ranges, keyed by start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangeSet {
    ranges: BTreeMap<u64, u64>,
    /// Positions held, kept so that counting is O(1).
    len: u64,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of positions in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of ranges (the memory cost: one map entry each).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    pub fn contains(&self, position: u64) -> bool {
        self.ranges
            .range(..=position)
            .next_back()
            .is_some_and(|(_, &end)| position < end)
    }

    /// The ranges in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    /// The first range, if any.
    pub fn first(&self) -> Option<(u64, u64)> {
        self.ranges.first_key_value().map(|(&s, &e)| (s, e))
    }

    pub fn insert(&mut self, position: u64) {
        self.insert_range(position, position.saturating_add(1));
    }

    /// Adds `[start, end)`, merging with neighbours it overlaps or touches.
    pub fn insert_range(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut start = start;
        let mut end = end;
        // A range starting at or before `start` that reaches it absorbs the new one's front.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                if e >= end {
                    return;
                }
                // The usual case, positions settled in order: nothing starts between that range and `end`, so it
                // grows in place (lookups only; no removal and re-insertion in the map).
                let next_start = self
                    .ranges
                    .range(s.saturating_add(1)..)
                    .next()
                    .map(|(&n, _)| n);
                if next_start.is_none_or(|n| n > end) {
                    if let Some(range_end) = self.ranges.get_mut(&s) {
                        *range_end = end;
                        self.len += end - e;
                        return;
                    }
                }
                start = s;
                end = end.max(e);
                self.ranges.remove(&s);
                self.len -= e - s;
            }
        }
        // Ranges starting inside (or right at the end of) the new one are absorbed.
        while let Some((&s, &e)) = self.ranges.range(start..=end).next() {
            self.ranges.remove(&s);
            self.len -= e - s;
            end = end.max(e);
        }
        self.ranges.insert(start, end);
        self.len += end - start;
    }

    /// Removes every position below `bound`.
    pub fn remove_below(&mut self, bound: u64) {
        while let Some((&s, &e)) = self.ranges.first_key_value() {
            if s >= bound {
                return;
            }
            self.ranges.remove(&s);
            self.len -= e - s;
            if e > bound {
                self.ranges.insert(bound, e);
                self.len += e - bound;
                return;
            }
        }
    }

    /// Number of positions in `[start, end)` that are in the set.
    pub fn count_in(&self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        let mut n = 0;
        if let Some((_, &e)) = self.ranges.range(..start).next_back() {
            n += e.clamp(start, end) - start;
        }
        for (&s, &e) in self.ranges.range(start..end) {
            n += e.min(end) - s;
        }
        n
    }

    /// Adds every range of `other`.
    pub fn union_with(&mut self, other: &RangeSet) {
        for (s, e) in other.iter() {
            self.insert_range(s, e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn merges_touching_and_overlapping_ranges() {
        let mut set = RangeSet::new();
        set.insert(5);
        set.insert(7);
        assert_eq!(set.range_count(), 2);
        set.insert(6);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![(5, 8)]);
        set.insert_range(0, 5);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![(0, 8)]);
        set.insert_range(10, 20);
        set.insert_range(3, 12);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![(0, 20)]);
        assert_eq!(set.len(), 20);
        set.remove_below(15);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![(15, 20)]);
        assert_eq!(set.len(), 5);
        assert_eq!(set.count_in(0, 17), 2);
    }

    proptest! {
        #[test]
        fn agrees_with_a_set_of_positions(
            ops in proptest::collection::vec((0u8..3, 0u64..64, 1u64..8), 1..80),
            probe in (0u64..80, 0u64..80),
        ) {
            let mut set = RangeSet::new();
            let mut model: BTreeSet<u64> = BTreeSet::new();
            for (op, at, width) in ops {
                match op {
                    0 => { set.insert(at); model.insert(at); }
                    1 => { set.insert_range(at, at + width); model.extend(at..at + width); }
                    _ => { set.remove_below(at); model.retain(|&p| p >= at); }
                }
            }
            prop_assert_eq!(set.len(), model.len() as u64);
            for p in 0..80 {
                prop_assert_eq!(set.contains(p), model.contains(&p));
            }
            let (a, b) = probe;
            prop_assert_eq!(set.count_in(a, b), model.range(a..b.max(a)).count() as u64);
            // Disjoint and non-adjacent.
            let ranges: Vec<_> = set.iter().collect();
            for w in ranges.windows(2) {
                prop_assert!(w[0].1 < w[1].0);
            }
        }
    }
}
