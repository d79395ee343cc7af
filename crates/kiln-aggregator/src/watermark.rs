//! Which `KILN_RESULTS` sequences the aggregator has accounted for: a watermark, and the
//! ranges seen above it.

use std::collections::BTreeMap;

/// The `KILN_RESULTS` sequences this aggregator has accounted for: every sequence at or below
/// `through` was delivered to it, acked before it started, or is known not to be in the
/// stream. A snapshot stored after folding them counts every one of them, so `through` is
/// what snapshots record as `results_through`, and how far a cumulative ack may go. (Not
/// merely the highest sequence folded: results a previous instance held unacked when it
/// stopped come back only after the ack wait, behind newer ones.)
#[derive(Debug, Default)]
pub(crate) struct Watermark {
    pub(crate) through: u64,
    /// Sequences accounted for above `through`: disjoint ranges, first → last, none touching
    /// another or `through`.
    above: BTreeMap<u64, u64>,
}

impl Watermark {
    /// Ranges above `through` kept at most; past it a range is not recorded, the watermark
    /// stops at it (and a restart may count some results twice rather than miss any).
    const MAX_RANGES: usize = 1 << 16;

    /// A watermark at `through`, nothing seen above it.
    pub(crate) fn at(through: u64) -> Self {
        Watermark {
            through,
            above: BTreeMap::new(),
        }
    }

    /// `sequence` is accounted for.
    pub(crate) fn see(&mut self, sequence: u64) {
        self.see_range(sequence, sequence);
    }

    /// Every sequence from `first` to `last` is accounted for.
    pub(crate) fn see_range(&mut self, first: u64, last: u64) {
        if last <= self.through || first > last {
            return;
        }
        let (mut first, mut last) = (first.max(self.through + 1), last);
        if let Some((&s, &e)) = self.above.range(..=first).next_back()
            && e.saturating_add(1) >= first
        {
            self.above.remove(&s);
            (first, last) = (s, last.max(e));
        }
        while let Some((&s, &e)) = self.above.range(first..).next() {
            if s > last.saturating_add(1) {
                break;
            }
            self.above.remove(&s);
            last = last.max(e);
        }
        if first == self.through + 1 {
            self.through = last;
        } else if self.above.len() < Self::MAX_RANGES {
            self.above.insert(first, last);
        }
    }

    /// The sequences above `through`, as ranges `[first, last]`.
    pub(crate) fn ranges(&self) -> Vec<[u64; 2]> {
        self.above.iter().map(|(&s, &e)| [s, e]).collect()
    }

    /// Up to `limit` sequences not accounted for below the highest one seen, or up to `owed`
    /// when that is higher, lowest first.
    pub(crate) fn holes(&self, limit: usize, owed: u64) -> Vec<u64> {
        let mut holes = Vec::new();
        let mut next = self.through + 1;
        for (&s, &e) in &self.above {
            holes.extend((next..s).take(limit - holes.len()));
            if holes.len() >= limit {
                return holes;
            }
            next = e + 1;
        }
        if next <= owed {
            holes.extend((next..=owed).take(limit - holes.len()));
        }
        holes
    }

    /// Every sequence at or below `floor` was acked, so counted in a stored snapshot: the
    /// watermark is at least there, whatever gaps below it it was waiting on (results a
    /// previous instance acked above its ack floor never come back, and without this the
    /// watermark would wait for them for ever).
    pub(crate) fn raise(&mut self, floor: u64) {
        if floor > self.through {
            self.see_range(self.through + 1, floor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_passes_gaps_once_the_ack_floor_does() {
        let mut w = Watermark::default();
        w.see(1);
        // 2 and 3 were acked by a previous instance: they never come back.
        w.see(4);
        w.see(5);
        assert_eq!(w.through, 1, "waits on the gap");
        assert_eq!(w.holes(10, 0), vec![2, 3]);
        w.raise(3);
        assert_eq!(w.through, 5, "past the gap, and on over what it had seen");
        assert!(w.ranges().is_empty());
        w.raise(2);
        assert_eq!(w.through, 5, "never back");
        w.see(7);
        w.raise(8);
        assert_eq!((w.through, w.ranges().len()), (8, 0));
    }

    #[test]
    fn ranges_merge_whichever_order_they_come_in() {
        let mut w = Watermark::at(10);
        for s in [15, 13, 20, 14, 12, 21, 19] {
            w.see(s);
        }
        assert_eq!(w.through, 10);
        assert_eq!(w.ranges(), vec![[12, 15], [19, 21]]);
        assert_eq!(w.holes(100, 0), vec![11, 16, 17, 18]);
        assert_eq!(w.holes(2, 0), vec![11, 16], "bounded");
        // Results delivered to an instance before this one, up to 23: read too.
        assert_eq!(w.holes(100, 23), vec![11, 16, 17, 18, 22, 23]);
        assert_eq!(w.holes(100, 20), vec![11, 16, 17, 18], "nothing owed above");
        w.see_range(16, 18);
        assert_eq!(w.ranges(), vec![[12, 21]]);
        w.see(11);
        assert_eq!((w.through, w.ranges().len()), (21, 0));
        assert!(w.holes(10, 0).is_empty());
        // Ranges overlapping what is there, and the watermark.
        w.see_range(30, 40);
        w.see_range(35, 50);
        w.see_range(25, 31);
        assert_eq!(w.ranges(), vec![[25, 50]]);
        w.see_range(5, 24);
        assert_eq!((w.through, w.ranges().len()), (50, 0));
    }

    #[test]
    fn a_range_past_the_bound_is_not_recorded_and_the_watermark_stops_there() {
        let mut w = Watermark::at(0);
        for i in 0..Watermark::MAX_RANGES as u64 {
            w.see(10 + 2 * i);
        }
        let past = 10 + 2 * Watermark::MAX_RANGES as u64 + 5;
        w.see(past);
        assert_eq!(w.ranges().len(), Watermark::MAX_RANGES);
        // Everything up to just below it is seen: the watermark stops at the unrecorded one.
        w.see_range(1, past - 1);
        assert_eq!(w.through, past - 1);
    }
}
