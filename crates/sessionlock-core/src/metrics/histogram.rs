//! Fixed log-spaced histograms of relaxed atomics: recording allocates nothing, takes no
//! lock and calls no Python.

use std::sync::atomic::{AtomicU64, Ordering};

use super::clock::{raw_ticks, ticks_to_ns};

/// Upper bounds of the histogram buckets in nanoseconds: 50 µs to 60 s, three steps a decade
/// (1-2.5-5, like Prometheus' own defaults). Observations above the last land in `+Inf`.
pub const BOUNDS_NS: [u64; 19] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    25_000_000_000,
    60_000_000_000,
];
/// Buckets including `+Inf`.
pub const BUCKETS: usize = BOUNDS_NS.len() + 1;

/// Bucket counts (not cumulative) and the sum of observations, all relaxed atomics: a
/// snapshot may see a record's bucket without its sum, never a count that goes down.
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: [const { AtomicU64::new(0) }; BUCKETS],
            sum_ns: AtomicU64::new(0),
        }
    }
}

#[inline]
fn bucket(ns: u64) -> usize {
    BOUNDS_NS
        .iter()
        .position(|&b| ns <= b)
        .unwrap_or(BUCKETS - 1)
}

impl Histogram {
    #[inline]
    pub fn record_ns(&self, ns: u64) {
        self.counts[bucket(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Records the time since `since` (a `stamp()`); nothing if it was taken while off.
    #[inline]
    pub fn record_since(&self, since: u64) {
        if since != 0 {
            self.record_ns(ticks_to_ns(raw_ticks().saturating_sub(since)));
        }
    }

    /// `record_since` for a histogram whose recorders never run at once (they all hold
    /// the GIL): plain loads and stores instead of locked read-modify-writes, which cost
    /// more than the rest of the record. Concurrent snapshots are fine (they only load); a
    /// recorder that broke the rule would lose a count, never corrupt one.
    #[inline]
    pub fn record_since_serialized(&self, since: u64) {
        if since != 0 {
            let ns = ticks_to_ns(raw_ticks().saturating_sub(since));
            // a sampled hold stands for HOLD_SAMPLE holds (see `hold_stamp`)
            let weight = if since & super::clock::SAMPLED != 0 {
                super::clock::HOLD_SAMPLE
            } else {
                1
            };
            let add = |a: &AtomicU64, v: u64| {
                a.store(a.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
            };
            add(&self.counts[bucket(ns)], weight);
            add(&self.sum_ns, ns.saturating_mul(weight));
        }
    }

    #[must_use]
    pub fn snapshot(&self) -> HistSnap {
        HistSnap {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistSnap {
    pub counts: [u64; BUCKETS],
    pub sum_ns: u64,
}

impl HistSnap {
    #[must_use]
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Puts the waits that were never timed (an uncontended acquire, a zero-timeout try) into
/// the first bucket: `total` is the matching `stats()` counter, which counts every such
/// outcome, timed or not. Sound only if each timed `waited` and its `stats()` bump happen in
/// one GIL hold and the snapshot is read under the GIL too (so the two never disagree).
#[must_use]
pub fn wait_with_uncontended(timed: HistSnap, total: u64) -> HistSnap {
    let mut h = timed;
    h.counts[0] += total.saturating_sub(timed.count());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds() {
        let h = Histogram::default();
        h.record_ns(0);
        h.record_ns(50_000);
        h.record_ns(50_001);
        h.record_ns(60_000_000_001);
        let s = h.snapshot();
        assert_eq!((s.counts[0], s.counts[1], s.counts[BUCKETS - 1]), (2, 1, 1));
        assert_eq!(s.count(), 4);
        assert_eq!(s.sum_ns, 50_000 + 50_001 + 60_000_000_001);
    }

    #[test]
    fn untimed_waits_go_to_the_first_bucket() {
        let h = Histogram::default();
        h.record_ns(3_000_000);
        let s = wait_with_uncontended(h.snapshot(), 5);
        assert_eq!((s.counts[0], s.count(), s.sum_ns), (4, 5, 3_000_000));
        // never fewer than were timed
        assert_eq!(wait_with_uncontended(h.snapshot(), 0).count(), 1);
    }

    #[test]
    fn bounds_are_increasing_and_span_50us_to_60s() {
        assert!(BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((BOUNDS_NS[0], BOUNDS_NS[18]), (50_000, 60_000_000_000));
    }
}
