//! The lease table of fleet buckets: per (rule, key), requests' worth of tokens
//! taken from Redis in one round trip and spent locally, plus what Redis said
//! about an empty bucket, so that refused requests do not each cost a call.
//!
//! No I/O here: the fleet client asks the table what to do ([`LeaseTable::begin`]),
//! does the Redis call when told to, and reports its result
//! ([`LeaseTable::finish`]). Time comes from a [`Clock`], so tests advance a fake
//! one instead of sleeping.
//!
//! **Memory bound.** At most [`MAX_LEASES`] entries; when full, spent and expired
//! entries are dropped before a new one is added, and the background sweep drops
//! them too. Entries being refilled are never dropped (their waiters need them).
//! A table full of live entries still admits new keys: it may exceed the cap by
//! the number of live leases, which are at most one second old.

use rampart_policy::limits::LimitKey;
use rampart_policy::FleetAnswer;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a lease may be spent.
pub const LEASE_LIFETIME: Duration = Duration::from_secs(1);
/// Most leases kept per node before spent and expired ones are dropped.
pub const MAX_LEASES: usize = 100_000;

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

#[derive(Debug)]
struct Lease {
    left: u32,
    until: Instant,
    /// Set while one request refills this lease from Redis; the others wait
    /// for it instead of all asking Redis at once.
    refill: Option<Arc<Notify>>,
    /// Requests waiting for the refill, so that it asks for enough for all.
    waiting: u32,
    /// Redis said the bucket is empty until then: refuse locally till then.
    empty_until: Option<Instant>,
}

impl Lease {
    fn idle(&self, now: Instant) -> bool {
        self.refill.is_none()
            && (self.until <= now || self.left == 0)
            && self.empty_until.is_none_or(|t| t <= now)
    }
}

/// What a request should do next.
#[derive(Debug)]
pub enum Begin {
    /// Decided without Redis.
    Answered(FleetAnswer),
    /// Another request is refilling: wait for it (at most the fleet timeout),
    /// then call [`LeaseTable::begin`] again with `waited = true`.
    Wait(std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>),
    /// Ask Redis for `want` requests' worth; report with [`LeaseTable::finish`]
    /// (`owner`: whether waiters are woken then).
    Refill {
        /// Requests' worth to ask for.
        want: u32,
        /// Whether this request owns the refill others wait for.
        owner: bool,
    },
}

/// The leases of one node (see the module doc).
#[derive(Debug)]
pub struct LeaseTable<C: Clock = SystemClock> {
    clock: C,
    leases: Mutex<HashMap<(usize, LimitKey), Lease>>,
}

impl Default for LeaseTable<SystemClock> {
    fn default() -> Self {
        Self::new(SystemClock)
    }
}

impl<C: Clock> LeaseTable<C> {
    /// An empty table timed by `clock`.
    pub fn new(clock: C) -> Self {
        Self {
            clock,
            leases: Mutex::new(HashMap::new()),
        }
    }

    /// Starts charging rule `rule` for `key`: spends a lease, refuses from a
    /// known-empty bucket, or says who asks Redis (for `batch` requests, more
    /// when others wait).
    pub fn begin(&self, rule: usize, key: LimitKey, batch: u32, waited: bool) -> Begin {
        let now = self.clock.now();
        let Ok(mut leases) = self.leases.lock() else {
            return Begin::Refill {
                want: batch,
                owner: false,
            };
        };
        if leases.len() >= MAX_LEASES {
            leases.retain(|_, l| !l.idle(now));
        }
        let lease = leases.entry((rule, key)).or_insert(Lease {
            left: 0,
            until: now,
            refill: None,
            waiting: 0,
            empty_until: None,
        });
        if lease.left > 0 && lease.until > now {
            lease.left -= 1;
            return Begin::Answered(FleetAnswer::Allowed);
        }
        if let Some(until) = lease.empty_until.filter(|&t| t > now) {
            return Begin::Answered(FleetAnswer::Limited {
                retry_after: until - now,
            });
        }
        match &lease.refill {
            Some(notify) if !waited => {
                lease.waiting += 1;
                // Registered before the lock is released, so the refill's
                // wake-up cannot be missed.
                let mut notified = Box::pin(notify.clone().notified_owned());
                notified.as_mut().enable();
                Begin::Wait(notified)
            }
            // Waited once already and another refill is under way: refill for
            // itself, leaving that refill (and its waiters) alone.
            Some(_) => Begin::Refill {
                want: batch,
                owner: false,
            },
            None => {
                lease.refill = Some(Arc::new(Notify::new()));
                let want = batch.max(lease.waiting + 1);
                lease.waiting = 0;
                Begin::Refill { want, owner: true }
            }
        }
    }

    /// Records what Redis answered a refill: `granted` requests' worth (one of
    /// them is this request's), or the bucket's wait when it had none; `None`
    /// when Redis did not answer. The owner of the refill wakes its waiters.
    pub fn finish(&self, rule: usize, key: LimitKey, answer: Option<(u32, Duration)>, owner: bool) {
        let now = self.clock.now();
        let Ok(mut leases) = self.leases.lock() else {
            return;
        };
        let Some(lease) = leases.get_mut(&(rule, key)) else {
            return;
        };
        match answer {
            Some((0, wait)) => lease.empty_until = Some(now + wait),
            Some((granted, _)) => {
                lease.left = granted - 1;
                lease.until = now + LEASE_LIFETIME;
                lease.empty_until = None;
            }
            None => {}
        }
        if owner {
            // The waiters come back to `begin` themselves.
            lease.waiting = 0;
            if let Some(notify) = lease.refill.take() {
                notify.notify_waiters();
            }
        }
    }

    /// Drops spent and expired leases (not those being refilled) and
    /// known-empty marks that have passed.
    pub fn sweep(&self) {
        let now = self.clock.now();
        if let Ok(mut leases) = self.leases.lock() {
            leases.retain(|_, l| !l.idle(now));
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.leases.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock that moves only when told to.
    #[derive(Debug)]
    struct FakeClock {
        start: Instant,
        offset: Mutex<Duration>,
    }

    impl FakeClock {
        fn new() -> Self {
            Self {
                start: Instant::now(),
                offset: Mutex::new(Duration::ZERO),
            }
        }
    }

    impl Clock for Arc<FakeClock> {
        fn now(&self) -> Instant {
            self.start + *self.offset.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    fn advance(clock: &FakeClock, by: Duration) {
        *clock.offset.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }

    fn key() -> LimitKey {
        LimitKey::Asn(64500)
    }

    fn table() -> (LeaseTable<Arc<FakeClock>>, Arc<FakeClock>) {
        let clock = Arc::new(FakeClock::new());
        (LeaseTable::new(clock.clone()), clock)
    }

    fn refill_want(b: Begin) -> (u32, bool) {
        match b {
            Begin::Refill { want, owner } => (want, owner),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_lease_is_spent_locally_and_expires_after_its_lifetime() {
        let (t, clock) = table();
        assert_eq!(refill_want(t.begin(0, key(), 5, false)), (5, true));
        t.finish(0, key(), Some((5, Duration::ZERO)), true);
        for _ in 0..4 {
            assert!(matches!(
                t.begin(0, key(), 5, false),
                Begin::Answered(FleetAnswer::Allowed)
            ));
        }
        // Spent: the next request asks Redis again.
        assert!(refill_want(t.begin(0, key(), 5, false)).1);
        t.finish(0, key(), Some((5, Duration::ZERO)), true);
        // Not spent but expired.
        advance(&clock, LEASE_LIFETIME);
        assert!(matches!(t.begin(0, key(), 5, false), Begin::Refill { .. }));
    }

    #[test]
    fn an_empty_bucket_is_refused_locally_until_redis_said_it_refills() {
        let (t, clock) = table();
        refill_want(t.begin(1, key(), 5, false));
        t.finish(1, key(), Some((0, Duration::from_millis(1_500))), true);
        for _ in 0..1_000 {
            match t.begin(1, key(), 5, false) {
                Begin::Answered(FleetAnswer::Limited { retry_after }) => {
                    assert!(retry_after <= Duration::from_millis(1_500))
                }
                other => panic!("{other:?}"),
            }
        }
        advance(&clock, Duration::from_millis(1_499));
        assert!(matches!(
            t.begin(1, key(), 5, false),
            Begin::Answered(FleetAnswer::Limited { .. })
        ));
        advance(&clock, Duration::from_millis(1));
        assert!(matches!(t.begin(1, key(), 5, false), Begin::Refill { .. }));
    }

    #[test]
    fn concurrent_requests_wait_for_one_refill_that_asks_for_all_of_them() {
        let (t, _clock) = table();
        let (_, owner) = refill_want(t.begin(2, key(), 2, false));
        assert!(owner);
        let waiters: Vec<_> = (0..4)
            .map(|_| match t.begin(2, key(), 2, false) {
                Begin::Wait(w) => w,
                other => panic!("{other:?}"),
            })
            .collect();
        // A request that already waited once does not wait again.
        assert_eq!(refill_want(t.begin(2, key(), 2, true)), (2, false));
        t.finish(2, key(), Some((5, Duration::ZERO)), true);
        // The owner woke everyone.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            for w in waiters {
                tokio::time::timeout(Duration::from_secs(1), w)
                    .await
                    .unwrap_or_else(|_| panic!("a waiter was not woken"));
            }
        });
        // The four waiters' tokens are in the lease.
        for _ in 0..4 {
            assert!(matches!(
                t.begin(2, key(), 2, true),
                Begin::Answered(FleetAnswer::Allowed)
            ));
        }
        // The waiters were served: the next refill asks for the batch again.
        let (want, _) = refill_want(t.begin(2, key(), 2, false));
        assert_eq!(want, 2);
    }

    #[test]
    fn a_failed_refill_wakes_waiters_and_changes_nothing() {
        let (t, _clock) = table();
        refill_want(t.begin(3, key(), 5, false));
        let w = match t.begin(3, key(), 5, false) {
            Begin::Wait(w) => w,
            other => panic!("{other:?}"),
        };
        t.finish(3, key(), None, true);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), w)
                .await
                .unwrap_or_else(|_| panic!("not woken"));
        });
        assert!(matches!(t.begin(3, key(), 5, true), Begin::Refill { .. }));
    }

    #[test]
    fn sweeps_drop_spent_expired_and_passed_entries_only() {
        let (t, clock) = table();
        for rule in 0..10 {
            refill_want(t.begin(rule, key(), 5, false));
            t.finish(rule, key(), Some((5, Duration::ZERO)), true);
        }
        refill_want(t.begin(10, key(), 5, false)); // being refilled
        refill_want(t.begin(11, key(), 5, false));
        t.finish(11, key(), Some((0, Duration::from_secs(3))), true);
        t.sweep();
        assert_eq!(t.len(), 12, "live leases are kept");
        advance(&clock, Duration::from_secs(2));
        t.sweep();
        assert_eq!(t.len(), 2, "the refill in progress and the empty mark stay");
        advance(&clock, Duration::from_secs(1));
        t.sweep();
        assert_eq!(t.len(), 1);
    }
}
