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
    counts: HashMap<K, (u64, u64)>,
}

impl<K: Hash + Eq + Clone> SpaceSaving<K> {
    /// A summary of at most `capacity` keys (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            counts: HashMap::with_capacity(capacity.max(1)),
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
        let Some((victim, &(min, _))) = self.counts.iter().min_by_key(|(_, c)| c.0) else {
            return;
        };
        let victim = victim.clone();
        self.counts.remove(&victim);
        self.counts.insert(key, (min + 1, min));
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
