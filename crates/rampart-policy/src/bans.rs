//! The penalty box of a `[[limits]]` rule: a key the rule keeps refusing is
//! banned, and refused before any bucket is charged until the ban ends.
//!
//! **State machine, per key.** Refusals are counted in a window that starts at
//! the first refusal and lasts `within`; the `after`-th refusal in it bans the
//! key for `duration × increment^n` (at most `max`), where `n` counts the bans
//! of that key in the last `memory` (fail2ban's `bantime.increment`). A banned
//! key is not counted further (its requests never reach the bucket). When the
//! ban ends the key starts a fresh window; its past bans are remembered for
//! `memory`.
//!
//! **Memory bound and its approximation.** At most `max_keys` keys are tracked.
//! When the table is full, a key it does not know is not counted: it can still
//! be refused by the rule's bucket but cannot be banned until a sweep frees
//! room. Banned keys are never dropped before their ban ends, so a flood of
//! fresh keys cannot free a banned one. Keys that only remember a past ban are
//! kept for `memory`, except when the table is 90 % full: then the sweep (every
//! 5 s) drops them, so keys banned once cannot hold the table full for a day
//! (their next ban starts from the first length again). The sweep drops keys with no ban, no remembered ban and no refusal in
//! the current window. The count of keys uses relaxed atomics, like the
//! limiter stores: concurrent inserts can pass the cap by the number of
//! worker threads.

use crate::limits::LimitKey;
use dashmap::DashMap;
use governor::clock::{Clock, Reference};
use rampart_config::BanConfig;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// One key's record.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// Start of the current counting window (ns since the table started).
    window_start: u64,
    /// Refusals in the current window.
    strikes: u32,
    /// End of the current ban (0: none).
    banned_until: u64,
    /// Bans within `memory` of the last one.
    offenses: u32,
    /// When the last ban started.
    last_ban: u64,
}

/// One active ban, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveBan {
    /// The banned key.
    pub key: LimitKey,
    /// Time left.
    pub remaining: Duration,
    /// Bans of this key within the memory window, this one included.
    pub offenses: u32,
}

/// The bans of one rule.
#[derive(Debug)]
pub struct BanTable<C: Clock + Clone> {
    /// Its config.
    pub config: BanConfig,
    clock: C,
    start: C::Instant,
    entries: DashMap<LimitKey, Entry, ahash::RandomState>,
    len: AtomicUsize,
    bans_total: AtomicU64,
    untracked: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl<C: Clock + Clone> BanTable<C> {
    /// An empty table timed by `clock`.
    pub fn new(config: BanConfig, clock: C) -> Self {
        let start = clock.now();
        Self {
            config,
            clock,
            start,
            entries: DashMap::with_hasher(ahash::RandomState::new()),
            len: AtomicUsize::new(0),
            bans_total: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.clock.now().duration_since(self.start).as_u64()
    }

    /// The time left on `key`'s ban, if it is banned.
    pub fn banned(&self, key: &LimitKey) -> Option<Duration> {
        let now = self.now();
        let e = self.entries.get(key)?;
        (e.banned_until > now).then(|| Duration::from_nanos(e.banned_until - now))
    }

    /// The ban length for a key with `offenses` earlier bans in memory.
    fn ban_length(&self, offenses: u32) -> u64 {
        let c = &self.config;
        let grown = c.duration.as_secs_f64() * c.increment.powi(offenses.min(64) as i32);
        nanos(Duration::from_secs_f64(grown.min(c.max.as_secs_f64())))
    }

    /// Counts one refusal of `key` by the rule; returns the ban's length when
    /// this refusal bans it.
    pub fn strike(&self, key: LimitKey) -> Option<Duration> {
        self.strike_counted(key).map(|(length, _)| length)
    }

    /// [`BanTable::strike`], with the key's bans in memory (this one included).
    pub fn strike_counted(&self, key: LimitKey) -> Option<(Duration, u32)> {
        let now = self.now();
        let max = self.config.max_keys.get() as usize;
        if !self.entries.contains_key(&key) && self.len.load(Ordering::Relaxed) >= max {
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut entry = self.entries.entry(key).or_insert_with(|| {
            self.len.fetch_add(1, Ordering::Relaxed);
            Entry::default()
        });
        let e = entry.value_mut();
        if e.banned_until > now {
            return None;
        }
        let within = nanos(self.config.within);
        if e.strikes == 0 || now.saturating_sub(e.window_start) >= within {
            e.window_start = now;
            e.strikes = 0;
        }
        e.strikes += 1;
        if e.strikes < self.config.after.get() {
            return None;
        }
        if e.last_ban == 0 || now.saturating_sub(e.last_ban) > nanos(self.config.memory) {
            e.offenses = 0;
        }
        let length = self.ban_length(e.offenses);
        e.offenses += 1;
        e.last_ban = now.max(1);
        e.banned_until = now.saturating_add(length);
        e.strikes = 0;
        self.bans_total.fetch_add(1, Ordering::Relaxed);
        Some((Duration::from_nanos(length), e.offenses))
    }

    /// Lifts `key`'s ban (its memory of past bans too); whether it was banned.
    pub fn lift(&self, key: &LimitKey) -> bool {
        let now = self.now();
        match self.entries.remove(key) {
            Some((_, e)) => {
                self.len.fetch_sub(1, Ordering::Relaxed);
                e.banned_until > now
            }
            None => false,
        }
    }

    /// Bans a key for `length` from outside (a ban learned from the fleet).
    pub fn impose(&self, key: LimitKey, length: Duration, offenses: u32) {
        let now = self.now();
        let mut entry = self.entries.entry(key).or_insert_with(|| {
            self.len.fetch_add(1, Ordering::Relaxed);
            Entry::default()
        });
        let e = entry.value_mut();
        e.banned_until = e.banned_until.max(now.saturating_add(nanos(length)));
        e.offenses = e.offenses.max(offenses);
        e.last_ban = now.max(1);
        e.strikes = 0;
    }

    /// Active bans, longest remaining first, at most `n`.
    pub fn active(&self, n: usize) -> Vec<ActiveBan> {
        let now = self.now();
        let mut out: Vec<ActiveBan> = self
            .entries
            .iter()
            .filter(|e| e.banned_until > now)
            .map(|e| ActiveBan {
                key: *e.key(),
                remaining: Duration::from_nanos(e.banned_until - now),
                offenses: e.offenses,
            })
            .collect();
        out.sort_by_key(|b| std::cmp::Reverse(b.remaining));
        out.truncate(n);
        out
    }

    /// Keys banned now.
    pub fn active_count(&self) -> usize {
        let now = self.now();
        self.entries.iter().filter(|e| e.banned_until > now).count()
    }

    /// Bans so far.
    pub fn bans_total(&self) -> u64 {
        self.bans_total.load(Ordering::Relaxed)
    }

    /// Refusals not counted because the table was full, so far.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    /// Keys tracked now.
    pub fn tracked_keys(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Drops keys with no ban, no remembered ban and no refusal in the current
    /// window; returns how many. When the table is 90 % full, keys that only
    /// remember a past ban go too (their next ban starts from the first
    /// length), so keys banned once and gone cannot keep the table full.
    pub fn sweep(&self) -> usize {
        let now = self.now();
        let within = nanos(self.config.within);
        let memory = nanos(self.config.memory);
        let pressed = self.len.load(Ordering::Relaxed)
            >= (self.config.max_keys.get() as usize).saturating_mul(9) / 10;
        let mut dropped = 0;
        self.entries.retain(|_, e| {
            let remembered =
                !pressed && e.last_ban != 0 && now.saturating_sub(e.last_ban) <= memory;
            let keep = e.banned_until > now
                || remembered
                || (e.strikes > 0 && now.saturating_sub(e.window_start) < within);
            if !keep {
                dropped += 1;
            }
            keep
        });
        self.len.fetch_sub(dropped, Ordering::Relaxed);
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::num::NonZeroU32;

    fn table(max_keys: u32) -> (BanTable<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let config = BanConfig {
            after: NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN),
            within: Duration::from_secs(10),
            duration: Duration::from_secs(60),
            increment: 2.0,
            max: Duration::from_secs(300),
            memory: Duration::from_secs(3600),
            max_keys: NonZeroU32::new(max_keys).unwrap_or(NonZeroU32::MIN),
        };
        (BanTable::new(config, clock.clone()), clock)
    }

    fn key(n: u32) -> LimitKey {
        LimitKey::Asn(n)
    }

    #[test]
    fn the_nth_refusal_within_the_window_bans() {
        let (t, clock) = table(100);
        assert_eq!(t.strike(key(1)), None);
        assert_eq!(t.strike(key(1)), None);
        assert_eq!(t.strike(key(1)), Some(Duration::from_secs(60)));
        assert_eq!(t.banned(&key(1)), Some(Duration::from_secs(60)));
        clock.advance(Duration::from_secs(59));
        assert_eq!(t.banned(&key(1)), Some(Duration::from_secs(1)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(t.banned(&key(1)), None);
        assert_eq!(t.bans_total(), 1);
        // Refusals spread wider than the window never ban.
        for _ in 0..10 {
            assert_eq!(t.strike(key(2)), None);
            clock.advance(Duration::from_secs(6));
            assert_eq!(t.strike(key(2)), None);
            clock.advance(Duration::from_secs(11));
        }
    }

    #[test]
    fn repeat_offenders_get_longer_bans_up_to_the_max_and_memory_forgets() {
        let (t, clock) = table(100);
        let ban = |t: &BanTable<FakeRelativeClock>| {
            t.strike(key(7));
            t.strike(key(7));
            t.strike(key(7))
        };
        let mut lengths = Vec::new();
        for _ in 0..4 {
            let length = ban(&t).unwrap_or_default();
            lengths.push(length.as_secs());
            clock.advance(length);
        }
        assert_eq!(lengths, vec![60, 120, 240, 300]);
        // Past the memory window, the next ban is the first length again.
        clock.advance(Duration::from_secs(3601));
        assert_eq!(ban(&t), Some(Duration::from_secs(60)));
    }

    #[test]
    fn a_banned_key_is_not_counted_and_lifting_forgets_it() {
        let (t, _clock) = table(100);
        for _ in 0..3 {
            t.strike(key(1));
        }
        assert_eq!(t.strike(key(1)), None, "banned keys do not accumulate");
        assert_eq!(t.active(10).len(), 1);
        assert_eq!(t.active_count(), 1);
        assert!(t.lift(&key(1)));
        assert_eq!(t.banned(&key(1)), None);
        assert!(!t.lift(&key(1)));
        // Lifted, its memory went too: the next ban is a first one.
        for _ in 0..2 {
            t.strike(key(1));
        }
        assert_eq!(t.strike(key(1)), Some(Duration::from_secs(60)));
    }

    #[test]
    fn a_full_table_counts_no_new_key_and_the_sweep_keeps_bans() {
        let (t, clock) = table(3);
        for _ in 0..3 {
            t.strike(key(1));
        }
        t.strike(key(2));
        t.strike(key(3));
        // Full: key 4 is not counted, however often it is refused.
        for _ in 0..10 {
            assert_eq!(t.strike(key(4)), None);
        }
        assert_eq!(t.untracked(), 10);
        assert_eq!(t.tracked_keys(), 3);
        clock.advance(Duration::from_secs(11));
        // Keys 2 and 3 had a refusal each in a window now over: dropped. Key 1
        // is banned: kept.
        assert_eq!(t.sweep(), 2);
        assert_eq!(t.tracked_keys(), 1);
        assert!(t.banned(&key(1)).is_some());
        for _ in 0..2 {
            t.strike(key(4));
        }
        assert!(t.strike(key(4)).is_some(), "room again after the sweep");
        // After the ban and the memory window, key 1 is swept too.
        clock.advance(Duration::from_secs(3700));
        t.sweep();
        assert_eq!(t.tracked_keys(), 0);
    }
}

#[cfg(test)]
mod pressure_tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::num::NonZeroU32;

    #[test]
    fn keys_banned_once_cannot_hold_a_full_table() {
        let clock = FakeRelativeClock::default();
        let config = BanConfig {
            after: NonZeroU32::MIN,
            within: Duration::from_secs(10),
            duration: Duration::from_secs(1),
            increment: 2.0,
            max: Duration::from_secs(10),
            memory: Duration::from_secs(86_400),
            max_keys: NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN),
        };
        let t = BanTable::new(config, clock.clone());
        for n in 0..4 {
            assert!(t.strike(LimitKey::Asn(n)).is_some());
        }
        clock.advance(Duration::from_secs(600));
        assert_eq!(t.strike(LimitKey::Asn(99)), None, "full");
        t.sweep();
        assert_eq!(t.tracked_keys(), 0);
        assert!(
            t.strike(LimitKey::Asn(99)).is_some(),
            "a real offender is banned again"
        );
    }
}
