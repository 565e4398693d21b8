//! Top offenders without high-cardinality metric labels: a Space-Saving summary
//! (Metwally et al.) per key kind, over two rotating epochs.
//!
//! Each summary keeps at most `capacity` keys. A new key, when the summary is
//! full, replaces the key with the smallest count and inherits that count (its
//! `error`). So a reported count over-estimates by at most `error`, and any key
//! with more than `total / capacity` hits in the window is guaranteed to be
//! listed. Memory is fixed: `capacity` entries per kind per epoch.

use std::collections::HashMap;
use std::hash::Hash;

/// One Space-Saving summary.
#[derive(Debug, Clone)]
pub struct SpaceSaving<K> {
    capacity: usize,
    counts: HashMap<K, (u64, u64), ahash::RandomState>,
    /// Keys that had the smallest count, `low_count`, when last looked for:
    /// the next ones to replace. A key whose count grew since is skipped.
    /// Once full, the summary only replaces keys and a replacement starts
    /// above `low_count`, so a key still at `low_count` is a smallest one:
    /// a flood of new keys costs one scan per `capacity` of them, not one each.
    low: Vec<K>,
    low_count: u64,
}

impl<K: Hash + Eq + Clone> SpaceSaving<K> {
    /// A summary of at most `capacity` keys (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            counts: HashMap::with_capacity_and_hasher(capacity.max(1), ahash::RandomState::new()),
            low: Vec::new(),
            low_count: 0,
        }
    }

    /// Counts one hit for `key`.
    pub fn add(&mut self, key: K) {
        if let Some(c) = self.counts.get_mut(&key) {
            c.0 += 1;
            return;
        }
        if self.counts.len() < self.capacity {
            self.counts.insert(key, (1, 0));
            return;
        }
        loop {
            let victim = match self.low.pop() {
                Some(victim) => victim,
                None => {
                    self.find_low();
                    match self.low.pop() {
                        Some(victim) => victim,
                        None => return,
                    }
                }
            };
            if self
                .counts
                .get(&victim)
                .is_some_and(|c| c.0 == self.low_count)
            {
                let min = self.low_count;
                self.counts.remove(&victim);
                self.counts.insert(key, (min + 1, min));
                return;
            }
        }
    }

    /// Collects the keys with the smallest count.
    fn find_low(&mut self) {
        let Some(min) = self.counts.values().map(|c| c.0).min() else {
            return;
        };
        self.low_count = min;
        self.low.clear();
        self.low.extend(
            self.counts
                .iter()
                .filter(|(_, c)| c.0 == min)
                .map(|(k, _)| k.clone()),
        );
    }

    /// Keys with their (count, error), largest count first.
    pub fn top(&self, n: usize) -> Vec<(K, u64, u64)> {
        let mut all: Vec<_> = self
            .counts
            .iter()
            .map(|(k, c)| (k.clone(), c.0, c.1))
            .collect();
        all.sort_by_key(|e| std::cmp::Reverse(e.1));
        all.truncate(n);
        all
    }
}

/// A summary over a sliding window made of two epochs of `epoch_secs` each.
#[derive(Debug, Clone)]
pub struct WindowedTop<K> {
    epoch_secs: u64,
    epoch: u64,
    current: SpaceSaving<K>,
    previous: SpaceSaving<K>,
}

impl<K: Hash + Eq + Clone> WindowedTop<K> {
    /// A windowed summary of `capacity` keys per epoch.
    pub fn new(capacity: usize, epoch_secs: u64) -> Self {
        Self {
            epoch_secs: epoch_secs.max(1),
            epoch: 0,
            current: SpaceSaving::new(capacity),
            previous: SpaceSaving::new(capacity),
        }
    }

    fn rotate(&mut self, now_secs: u64) {
        let epoch = now_secs / self.epoch_secs;
        if epoch == self.epoch {
            return;
        }
        let capacity = self.current.capacity;
        self.previous = if epoch == self.epoch + 1 {
            std::mem::replace(&mut self.current, SpaceSaving::new(capacity))
        } else {
            self.current = SpaceSaving::new(capacity);
            SpaceSaving::new(capacity)
        };
        self.epoch = epoch;
    }

    /// Counts one hit for `key` at `now_secs`.
    pub fn add(&mut self, key: K, now_secs: u64) {
        self.rotate(now_secs);
        self.current.add(key);
    }

    /// The `n` keys with the most hits over the last one to two epochs.
    pub fn top(&mut self, n: usize, now_secs: u64) -> Vec<(K, u64)> {
        self.rotate(now_secs);
        let mut merged: HashMap<K, u64> = HashMap::new();
        for summary in [&self.previous, &self.current] {
            for (k, c, _) in summary.top(usize::MAX) {
                *merged.entry(k).or_default() += c;
            }
        }
        let mut all: Vec<_> = merged.into_iter().collect();
        all.sort_by_key(|e| std::cmp::Reverse(e.1));
        all.truncate(n);
        all
    }

    /// The window covered, in seconds.
    pub fn window_secs(&self) -> u64 {
        2 * self.epoch_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_hitters_survive_a_flood_of_one_off_keys() {
        let mut t = SpaceSaving::new(4);
        for i in 0..1000u32 {
            t.add(7u32);
            t.add(10_000 + i); // a thousand keys seen once each
        }
        let top = t.top(1);
        assert_eq!(top[0].0, 7);
        // The count over-estimates by at most its error.
        assert!(top[0].1 >= 1000 && top[0].1 - top[0].2 <= 1000);
        assert_eq!(t.top(10).len(), 4);
    }

    /// Space-Saving's guarantees on a skewed stream with many one-off keys:
    /// every reported count bounds the true count from above, and from below
    /// once its error is taken off; every key seen more than total / capacity
    /// times is listed; the counts add up to the stream's length.
    #[test]
    fn counts_keep_their_bounds_under_replacement() {
        let mut t = SpaceSaving::new(16);
        let mut truth: HashMap<u32, u64> = HashMap::new();
        let mut x: u64 = 7;
        let total = 50_000u64;
        for _ in 0..total {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let r = (x >> 33) % 100;
            // A few heavy keys, a long tail of rare ones.
            let key = if r < 30 {
                (r % 3) as u32
            } else {
                1_000 + ((x >> 40) % 20_000) as u32
            };
            t.add(key);
            *truth.entry(key).or_default() += 1;
        }
        let top = t.top(usize::MAX);
        assert_eq!(top.len(), 16);
        assert_eq!(top.iter().map(|e| e.1).sum::<u64>(), total);
        for (key, count, error) in &top {
            let real = truth.get(key).copied().unwrap_or(0);
            assert!(
                real <= *count && count - error <= real,
                "{key}: {real} vs {count}-{error}"
            );
        }
        for (key, real) in &truth {
            if *real > total / 16 {
                assert!(
                    top.iter().any(|e| e.0 == *key),
                    "heavy key {key} ({real}) missing"
                );
            }
        }
    }

    #[test]
    fn windows_rotate_and_forget() {
        let mut w = WindowedTop::new(4, 60);
        w.add("a", 0);
        w.add("a", 61);
        w.add("b", 61);
        w.add("b", 62);
        w.add("b", 63);
        assert_eq!(w.top(5, 63), vec![("b", 3), ("a", 2)]);
        // At 125 s epoch 1 is the previous one; the hit of epoch 0 is forgotten.
        assert_eq!(w.top(5, 125), vec![("b", 3), ("a", 1)]);
        assert!(w.top(5, 400).is_empty());
        assert_eq!(w.window_secs(), 120);
    }
}
