//! Token buckets (governor GCRA, keyed) and in-flight caps, with bounded memory.
//!
//! Each rule owns its own keyed store: no lock is shared between rules, and within
//! a rule the store is a sharded `DashMap`.
//!
//! **Memory bound and its approximation.** A rule tracks at most `max_keys` keys
//! (plus a tenth more for coarser keys, plus one overflow key). When the store is
//! full, a key it does not know yet is not given a fresh full bucket: it is counted
//! against a coarser key instead — an IPv4 address against its /24 (IPv6: /48), a
//! prefix against its /16 (IPv6: /32) — and when that coarser key is new too and the
//! headroom is used up, against one shared overflow bucket of the rule. So under a
//! flood of fresh addresses, new sources share buckets (they get *less*, never
//! more, than their own bucket would give), while every source already tracked
//! keeps its own bucket. The background sweep ([`RateRule::sweep`]) drops keys whose
//! bucket has refilled (indistinguishable from a fresh one), which is lossless.
//! The count of keys is kept with relaxed atomics, so concurrent inserts can pass
//! the cap by at most the number of worker threads.

use crate::geo::{CountryCode, GeoInfo};
use crate::ja4::Ja4;
use dashmap::DashMap;

/// The stores' hasher: aHash with per-process random keys. Keys are chosen by
/// clients (addresses), so the hash must resist collision flooding; aHash does,
/// for less than SipHash costs on these short keys (callgrind figures in
/// benches/PROFILE.md).
type KeyHasher = ahash::RandomState;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rampart_config::{ConcurrencyConfig, KeyKind, LimitConfig};
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a bucket is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// One client address.
    Ip(IpAddr),
    /// A network.
    Net(IpNet),
    /// An autonomous system (0: unknown).
    Asn(u32),
    /// A country (`??`: unknown).
    Country(CountryCode),
    /// A header value, hashed with the rule's own random hasher.
    Hashed(u64),
    /// A TLS client's JA4 fingerprint (public, kept in clear: 22 bytes, so
    /// the key stays as small as an address's).
    Ja4(Ja4),
    /// The whole route.
    Whole,
    /// The shared bucket of keys that found the store full.
    Overflow,
}

impl LimitKey {
    /// A text form that [`LimitKey::parse_text`] reads back: the address, the
    /// network, `AS64500`, the country code, `h` and 16 hex digits for a
    /// hashed value, the JA4 fingerprint, `all` for a whole route, `overflow`.
    pub fn text(&self) -> String {
        match self {
            LimitKey::Ip(ip) => ip.to_string(),
            LimitKey::Net(net) => net.to_string(),
            LimitKey::Asn(n) => format!("AS{n}"),
            LimitKey::Country(c) => c.to_string(),
            LimitKey::Hashed(h) => format!("h{h:016x}"),
            LimitKey::Ja4(j) => j.to_string(),
            LimitKey::Whole => "all".into(),
            LimitKey::Overflow => "overflow".into(),
        }
    }

    /// Reads [`LimitKey::text`] back (AS numbers in any case).
    pub fn parse_text(text: &str) -> Option<LimitKey> {
        let t = text.trim();
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Some(LimitKey::Ip(rampart_config::canonical_ip(ip)));
        }
        if let Ok(net) = t.parse::<IpNet>() {
            return Some(LimitKey::Net(net.trunc()));
        }
        if let Some(n) = t
            .get(..2)
            .filter(|p| p.eq_ignore_ascii_case("as"))
            .and_then(|_| t[2..].parse::<u32>().ok())
        {
            return Some(LimitKey::Asn(n));
        }
        if let Some(hex) = t.strip_prefix('h').filter(|h| h.len() == 16) {
            return u64::from_str_radix(hex, 16).ok().map(LimitKey::Hashed);
        }
        if t.len() == rampart_config::JA4_TEXT_LEN {
            if let Ok(j) = Ja4::parse(t) {
                return Some(LimitKey::Ja4(j));
            }
        }
        match t {
            "all" => Some(LimitKey::Whole),
            "overflow" => Some(LimitKey::Overflow),
            "??" => Some(LimitKey::Country(crate::geo::UNKNOWN_COUNTRY)),
            _ => CountryCode::parse(t).map(LimitKey::Country),
        }
    }
}

/// Size in bytes of one tracked key's entry, not counting the map's own overhead
/// (measured per key in the `limiter` bench).
pub const ENTRY_SIZE: usize = std::mem::size_of::<(LimitKey, AtomicU64)>();

impl LimitKey {
    /// The coarser key a new key falls back to when the store is full.
    fn coarser(&self) -> LimitKey {
        match *self {
            LimitKey::Ip(IpAddr::V4(a)) => LimitKey::Net(IpNet::V4(
                Ipv4Net::new(a, 24).map(|n| n.trunc()).unwrap_or_default(),
            )),
            LimitKey::Ip(IpAddr::V6(a)) => LimitKey::Net(IpNet::V6(
                Ipv6Net::new(a, 48).map(|n| n.trunc()).unwrap_or_default(),
            )),
            LimitKey::Net(IpNet::V4(n)) if n.prefix_len() > 16 => LimitKey::Net(IpNet::V4(
                Ipv4Net::new(n.network(), 16)
                    .map(|n| n.trunc())
                    .unwrap_or_default(),
            )),
            LimitKey::Net(IpNet::V6(n)) if n.prefix_len() > 32 => LimitKey::Net(IpNet::V6(
                Ipv6Net::new(n.network(), 32)
                    .map(|n| n.trunc())
                    .unwrap_or_default(),
            )),
            _ => LimitKey::Overflow,
        }
    }
}

/// The request facts a key is made from.
#[derive(Debug, Clone, Copy)]
pub struct KeyFacts<'a> {
    /// Resolved client address.
    pub ip: IpAddr,
    /// Its country and ASN.
    pub geo: GeoInfo,
    /// The value of the rule's header, when the rule is keyed by a header.
    pub header: Option<&'a [u8]>,
    /// The normalised body field, when the rule is keyed by one.
    pub body: Option<&'a [u8]>,
    /// The claim of the verified bearer token, when the rule is keyed by one.
    pub jwt: Option<&'a [u8]>,
    /// The JA4 of the client's TLS hello, when it has one.
    pub ja4: Option<Ja4>,
}

/// The fleet's shared secret for hashing header and body values of fleet-scoped
/// rules (every node must name a client's bucket alike, so a per-process random
/// key cannot serve); zero keys until [`set_fleet_hash_key`] is called.
static FLEET_HASH_KEY: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

/// Sets the fleet's hash key from a secret shared by every node (start-up only;
/// later calls are ignored). Without it, fleet-scoped header and body keys are
/// hashed with a public key: Redis then holds hashes anyone can recompute.
pub fn set_fleet_hash_key(secret: &[u8]) {
    #[allow(deprecated)] // SipHash-2-4 with chosen keys: exactly what is needed here
    let derive = |k: u64| {
        use std::hash::Hasher;
        let mut h = std::hash::SipHasher::new_with_keys(k, !k);
        h.write(secret);
        h.finish()
    };
    let _ = FLEET_HASH_KEY.set((derive(0x7261_6d70_6172_7431), derive(0x7261_6d70_6172_7432)));
}

/// Keyed SipHash with the fleet's key.
#[derive(Debug, Clone, Copy)]
struct FleetHasher(u64, u64);

impl FleetHasher {
    fn current() -> Self {
        let (k0, k1) = FLEET_HASH_KEY.get().copied().unwrap_or((0, 0));
        FleetHasher(k0, k1)
    }
}

impl BuildHasher for FleetHasher {
    #[allow(deprecated)]
    type Hasher = std::hash::SipHasher;

    #[allow(deprecated)]
    fn build_hasher(&self) -> Self::Hasher {
        std::hash::SipHasher::new_with_keys(self.0, self.1)
    }
}

/// The key of `kind` for a request.
pub fn key_for(kind: &KeyKind, facts: &KeyFacts<'_>, hasher: &impl BuildHasher) -> LimitKey {
    match kind {
        KeyKind::Ip => LimitKey::Ip(facts.ip),
        KeyKind::Prefix { v4, v6 } => LimitKey::Net(prefix_of(facts.ip, *v4, *v6)),
        KeyKind::Asn => LimitKey::Asn(facts.geo.asn.unwrap_or(0)),
        KeyKind::Country => {
            LimitKey::Country(facts.geo.country.unwrap_or(crate::geo::UNKNOWN_COUNTRY))
        }
        KeyKind::Header(_) => match facts.header {
            Some(value) => LimitKey::Hashed(hasher.hash_one(value)),
            // Without the header the client is counted by address, so leaving the
            // header out is no way around the rule.
            None => LimitKey::Ip(facts.ip),
        },
        KeyKind::Ja4 => match facts.ja4 {
            Some(ja4) => LimitKey::Ja4(ja4),
            // Plaintext, or a hello that could not be fingerprinted: counted by
            // address, so no fingerprint is no way around the rule.
            None => LimitKey::Ip(facts.ip),
        },
        KeyKind::Route => LimitKey::Whole,
        // Hashed, never kept in clear. A request only gets here with its field
        // read (the proxy refuses bodies it cannot read first); the address is
        // the fallback all the same.
        KeyKind::Body(_) => match facts.body {
            Some(value) => LimitKey::Hashed(hasher.hash_one(value)),
            None => LimitKey::Ip(facts.ip),
        },
        // Hashed like a header value. A request whose token did not verify
        // (or lacks the claim) is counted by address: sending a forged or no
        // token is no way around the rule.
        KeyKind::Jwt { .. } => match facts.jwt {
            Some(value) => LimitKey::Hashed(hasher.hash_one(value)),
            None => LimitKey::Ip(facts.ip),
        },
    }
}

/// The network of `ip` at the given prefix lengths.
pub fn prefix_of(ip: IpAddr, v4: u8, v6: u8) -> IpNet {
    match ip {
        IpAddr::V4(a) => IpNet::V4(
            Ipv4Net::new(a, v4.min(32))
                .map(|n| n.trunc())
                .unwrap_or_default(),
        ),
        IpAddr::V6(a) => IpNet::V6(
            Ipv6Net::new(a, v6.min(128))
                .map(|n| n.trunc())
                .unwrap_or_default(),
        ),
    }
}

/// A keyed GCRA state store that counts its keys, shared between the governor
/// limiter and the rule (which needs to see whether a key is tracked).
#[derive(Debug, Clone, Default)]
pub struct CountingStore {
    inner: Arc<StoreInner>,
}

#[derive(Debug, Default)]
struct StoreInner {
    map: DashMap<LimitKey, AtomicU64, KeyHasher>,
    len: AtomicUsize,
}

impl CountingStore {
    fn contains(&self, key: &LimitKey) -> bool {
        self.inner.map.contains_key(key)
    }

    fn count(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
    }

    /// The theoretical arrival time stored for `key`, in nanoseconds since the
    /// limiter started; `None` when the key is not tracked.
    fn tat(&self, key: &LimitKey) -> Option<u64> {
        self.inner.map.get(key).map(|v| v.load(Ordering::Relaxed))
    }
}

fn measure<T, E>(
    cell: &AtomicU64,
    f: impl Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
) -> Result<T, E> {
    let mut prev = cell.load(Ordering::Acquire);
    loop {
        let current = (prev != 0).then(|| Nanos::from(prev));
        let (result, next) = f(current)?;
        match cell.compare_exchange_weak(prev, next.as_u64(), Ordering::Release, Ordering::Relaxed)
        {
            Ok(_) => return Ok(result),
            Err(actual) => prev = actual,
        }
    }
}

impl StateStore for CountingStore {
    type Key = LimitKey;

    fn measure_and_replace<T, F, E>(&self, key: &LimitKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(cell) = self.inner.map.get(key) {
            return measure(&cell, f);
        }
        let entry = self.inner.map.entry(*key).or_insert_with(|| {
            self.inner.len.fetch_add(1, Ordering::Relaxed);
            AtomicU64::new(0)
        });
        measure(&entry, f)
    }
}

impl ShrinkableKeyedStateStore<LimitKey> for CountingStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let limit = drop_below.as_u64();
        let mut removed = 0;
        self.inner.map.retain(|_, v| {
            let keep = v.load(Ordering::Relaxed) > limit;
            if !keep {
                removed += 1;
            }
            keep
        });
        self.inner.len.fetch_sub(removed, Ordering::Relaxed);
    }

    fn shrink_to_fit(&self) {
        self.inner.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.count()
    }

    fn is_empty(&self) -> bool {
        self.count() == 0
    }
}

/// The outcome of one rule for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOutcome {
    /// The request fits.
    Allowed,
    /// The bucket is empty; a request of the same cost fits after this long.
    Limited {
        /// Time until the request would conform.
        retry_after: Duration,
    },
}

/// What one rule's bucket looks like for a key, for explanations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    /// Whether the key has its own entry (otherwise it is full).
    pub tracked: bool,
    /// Requests of the rule's cost that fit right now.
    pub remaining: u32,
    /// Cells free right now.
    pub cells: u32,
}

/// One `[[limits]]` rule: a keyed GCRA limiter with a key cap.
pub struct RateRule<C: Clock + Clone = DefaultClock> {
    /// Its config.
    pub config: LimitConfig,
    store: CountingStore,
    limiter: RateLimiter<LimitKey, CountingStore, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    created: C::Instant,
    interval: Nanos,
    hasher: std::hash::RandomState,
    fallbacks: AtomicU64,
    evicted: AtomicU64,
}

impl<C: Clock + Clone> std::fmt::Debug for RateRule<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateRule")
            .field("name", &self.config.name)
            .field("keys", &self.store.count())
            .finish()
    }
}

/// Headroom above `max_keys` for coarser keys: a tenth, at least one.
fn headroom(max_keys: usize) -> usize {
    max_keys / 10 + 1
}

impl<C: Clock + Clone> RateRule<C> {
    /// A rule with an empty store, timed by `clock`.
    pub fn new(config: LimitConfig, clock: C) -> Self {
        let interval = config.rate.interval().max(Duration::from_nanos(1));
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(config.burst);
        let store = CountingStore::default();
        // governor records its own start at construction; `created` is taken just
        // before it, so explanations are off by at most the few nanoseconds between.
        let created = clock.now();
        let limiter = RateLimiter::new(quota, store.clone(), clock.clone());
        Self {
            config,
            store,
            limiter,
            clock,
            created,
            interval: Nanos::from(interval),
            hasher: std::hash::RandomState::new(),
            fallbacks: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    /// Whether this rule can keep the state of `other` (same key, quota and cap).
    pub fn same_shape(&self, other: &LimitConfig) -> bool {
        let c = &self.config;
        c.key == other.key
            && c.rate == other.rate
            && c.burst == other.burst
            && c.max_keys == other.max_keys
    }

    /// The key for a request, before the cap is applied. Fleet rules hash header
    /// values with fixed keys so that every node names a client's bucket alike.
    pub fn key(&self, facts: &KeyFacts<'_>) -> LimitKey {
        if matches!(self.config.scope, rampart_config::LimitScope::Fleet { .. }) {
            key_for(&self.config.key, facts, &FleetHasher::current())
        } else {
            key_for(&self.config.key, facts, &self.hasher)
        }
    }

    /// The key actually charged: `key` itself, or a coarser one when the store is full.
    fn admitted(&self, key: LimitKey) -> LimitKey {
        let admitted = self.admitted_quietly(key);
        if admitted != key {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// [`RateRule::admitted`] without counting the fallback (dry runs).
    fn admitted_quietly(&self, key: LimitKey) -> LimitKey {
        let max = self.config.max_keys.get() as usize;
        let count = self.store.count();
        if count < max || self.store.contains(&key) {
            return key;
        }
        let coarse = key.coarser();
        if coarse != LimitKey::Overflow
            && (count < max + headroom(max) || self.store.contains(&coarse))
        {
            return coarse;
        }
        LimitKey::Overflow
    }

    /// Charges the rule's cost to `key`.
    pub fn check(&self, key: LimitKey) -> RuleOutcome {
        self.check_cost(key, self.config.cost)
    }

    /// The rule's cost scaled for a lockdown that tightens buckets by `scale`
    /// (0 < scale <= 1): `ceil(cost / scale)`, at most the burst. Charging more
    /// cells per request is the same as a bucket `scale` times the size refilling
    /// `scale` times as fast, and keeps the bucket's state.
    pub fn scaled_cost(&self, scale: f64) -> NonZeroU32 {
        let cost = (f64::from(self.config.cost.get()) / scale).ceil();
        let cost = cost.min(f64::from(self.config.burst.get())).max(1.0) as u32;
        NonZeroU32::new(cost).unwrap_or(NonZeroU32::MIN)
    }

    /// Charges `cost` cells to `key`.
    pub fn check_cost(&self, key: LimitKey, cost: NonZeroU32) -> RuleOutcome {
        self.check_cost_charged(key, cost).0
    }

    /// [`RateRule::check_cost`], with the key actually charged: `key`, or the
    /// coarser or overflow key it shared because the store was full.
    pub fn check_cost_charged(&self, key: LimitKey, cost: NonZeroU32) -> (RuleOutcome, LimitKey) {
        let key = self.admitted(key);
        (self.charge(key, cost), key)
    }

    fn charge(&self, key: LimitKey, cost: NonZeroU32) -> RuleOutcome {
        match self.limiter.check_key_n(&key, cost) {
            Ok(Ok(())) => RuleOutcome::Allowed,
            Ok(Err(not_until)) => RuleOutcome::Limited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
            // Validation keeps cost <= burst, so this cannot happen; stay safe anyway.
            Err(_) => RuleOutcome::Limited {
                retry_after: self.config.rate.per,
            },
        }
    }

    /// What [`RateRule::check_cost`] would answer now, without charging: the
    /// same GCRA test on the stored arrival time (governor's, with
    /// `tau = t × (burst − 1)`), so a dry run and a real charge agree.
    pub fn peek_cost(&self, key: LimitKey, cost: NonZeroU32) -> RuleOutcome {
        let key = self.admitted_quietly(key);
        let Some(tat) = self.store.tat(&key).filter(|&t| t != 0) else {
            return RuleOutcome::Allowed;
        };
        let t = self.interval.as_u64().max(1);
        let tau = t.saturating_mul(u64::from(self.config.burst.get().saturating_sub(1)));
        let additional = t.saturating_mul(u64::from(cost.get().saturating_sub(1)));
        let earliest = tat.saturating_add(additional).saturating_sub(tau);
        let now = self.clock.now().duration_since(self.created).as_u64();
        if now < earliest {
            RuleOutcome::Limited {
                retry_after: Duration::from_nanos(earliest - now),
            }
        } else {
            RuleOutcome::Allowed
        }
    }

    /// The bucket of `key` without charging it.
    pub fn peek(&self, key: &LimitKey) -> BucketState {
        let burst = u64::from(self.config.burst.get());
        let cost = u64::from(self.config.cost.get());
        let Some(tat) = self.store.tat(key).filter(|&t| t != 0) else {
            return BucketState {
                tracked: false,
                remaining: (burst / cost) as u32,
                cells: burst as u32,
            };
        };
        let now = self.clock.now().duration_since(self.created).as_u64();
        let t = self.interval.as_u64().max(1);
        let tau = t.saturating_mul(burst);
        // Cells free = (now + tau - tat) / t, between 0 and burst.
        let free = (now.saturating_add(tau).saturating_sub(tat) / t).min(burst);
        BucketState {
            tracked: true,
            remaining: (free / cost) as u32,
            cells: free as u32,
        }
    }

    /// Drops keys whose bucket is full again and returns how many were dropped.
    pub fn sweep(&self) -> usize {
        let before = self.store.count();
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        let dropped = before.saturating_sub(self.store.count());
        self.evicted.fetch_add(dropped as u64, Ordering::Relaxed);
        dropped
    }

    /// Keys tracked now.
    pub fn tracked_keys(&self) -> usize {
        self.store.count()
    }

    /// Requests charged to a coarser key because the store was full, so far.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Keys dropped by sweeps so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// One `[[concurrency]]` rule: a counter of requests in flight per key.
#[derive(Debug)]
pub struct ConcurrencyRule {
    /// Its config.
    pub config: ConcurrencyConfig,
    in_flight: DashMap<LimitKey, u32, KeyHasher>,
    hasher: std::hash::RandomState,
    fallbacks: AtomicU64,
}

/// A slot held by one in-flight request; released when dropped.
#[derive(Debug)]
pub struct ConcurrencyPermit {
    rule: Arc<ConcurrencyRule>,
    key: LimitKey,
}

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        let map = &self.rule.in_flight;
        if let Some(mut n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
        map.remove_if(&self.key, |_, n| *n == 0);
    }
}

impl ConcurrencyRule {
    /// A rule with nobody in flight.
    pub fn new(config: ConcurrencyConfig) -> Self {
        Self {
            config,
            in_flight: DashMap::default(),
            hasher: std::hash::RandomState::new(),
            fallbacks: AtomicU64::new(0),
        }
    }

    /// The key for a request.
    pub fn key(&self, facts: &KeyFacts<'_>) -> LimitKey {
        key_for(&self.config.key, facts, &self.hasher)
    }

    /// Takes a slot for `key`, or `None` when `max_in_flight` are already taken.
    /// At the key cap, a new key shares its coarser key's slots (see the module doc).
    pub fn acquire(self: &Arc<Self>, key: LimitKey) -> Option<ConcurrencyPermit> {
        let max_keys = self.config.max_keys.get() as usize;
        let key = if self.in_flight.len() < max_keys || self.in_flight.contains_key(&key) {
            key
        } else {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            key.coarser()
        };
        let max = self.config.max_in_flight.get();
        let mut slot = self.in_flight.entry(key).or_insert(0);
        if *slot >= max {
            return None;
        }
        *slot += 1;
        drop(slot);
        Some(ConcurrencyPermit {
            rule: self.clone(),
            key,
        })
    }

    /// Keys with a request in flight now.
    pub fn tracked_keys(&self) -> usize {
        self.in_flight.len()
    }

    /// Requests in flight for `key` now.
    pub fn in_flight(&self, key: &LimitKey) -> u32 {
        self.in_flight.get(key).map(|n| *n).unwrap_or(0)
    }

    /// Requests counted against a coarser key because the table was full, so far.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use rampart_config::{parse_rate, Rate};

    fn rule(
        rate: &str,
        burst: u32,
        cost: u32,
        max_keys: u32,
    ) -> (RateRule<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let config = LimitConfig {
            name: "t".into(),
            key: KeyKind::Ip,
            rate: parse_rate(rate).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
            cost: NonZeroU32::new(cost).unwrap(),
            routes: None,
            max_keys: NonZeroU32::new(max_keys).unwrap(),
            shadow: false,
            only_with_flag: None,
            scope: rampart_config::LimitScope::Local,
            clients: Default::default(),
            ban: None,
        };
        (RateRule::new(config, clock.clone()), clock)
    }

    fn ip(s: &str) -> LimitKey {
        LimitKey::Ip(s.parse().unwrap())
    }

    #[test]
    fn burst_then_refill_at_the_configured_rate() {
        // 2/s = one cell every 500 ms, bucket of 3.
        let (r, clock) = rule("2/s", 3, 1, 100);
        let k = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(r.check(k), RuleOutcome::Allowed);
        }
        assert_eq!(
            r.check(k),
            RuleOutcome::Limited {
                retry_after: Duration::from_millis(500)
            }
        );
        clock.advance(Duration::from_millis(200));
        assert_eq!(
            r.check(k),
            RuleOutcome::Limited {
                retry_after: Duration::from_millis(300)
            }
        );
        clock.advance(Duration::from_millis(300));
        assert_eq!(r.check(k), RuleOutcome::Allowed);
        assert_eq!(
            r.check(k),
            RuleOutcome::Limited {
                retry_after: Duration::from_millis(500)
            }
        );
        // Another key has its own full bucket.
        assert_eq!(r.check(ip("192.0.2.2")), RuleOutcome::Allowed);
    }

    #[test]
    fn cost_takes_several_cells_and_peek_reports_what_is_left() {
        // 10/min = one cell every 6 s, bucket of 6, cost 2: three requests.
        let (r, clock) = rule("10/min", 6, 2, 100);
        let k = ip("198.51.100.1");
        assert_eq!(
            r.peek(&k),
            BucketState {
                tracked: false,
                remaining: 3,
                cells: 6
            }
        );
        assert_eq!(r.check(k), RuleOutcome::Allowed);
        assert_eq!(
            r.peek(&k),
            BucketState {
                tracked: true,
                remaining: 2,
                cells: 4
            }
        );
        assert_eq!(r.check(k), RuleOutcome::Allowed);
        assert_eq!(r.check(k), RuleOutcome::Allowed);
        assert_eq!(r.peek(&k).remaining, 0);
        assert_eq!(
            r.check(k),
            RuleOutcome::Limited {
                retry_after: Duration::from_secs(12)
            }
        );
        clock.advance(Duration::from_secs(12));
        assert_eq!(r.peek(&k).remaining, 1);
    }

    #[test]
    fn at_the_key_cap_new_keys_fall_back_to_their_prefix_then_overflow() {
        let (r, _clock) = rule("1/s", 1, 1, 2);
        assert_eq!(r.check(ip("10.0.0.1")), RuleOutcome::Allowed);
        assert_eq!(r.check(ip("10.0.1.1")), RuleOutcome::Allowed);
        assert_eq!(r.tracked_keys(), 2);
        // Full: 10.0.0.2 is charged to 10.0.0.0/24 (a fresh coarse key within headroom).
        assert_eq!(r.check(ip("10.0.0.2")), RuleOutcome::Allowed);
        // 10.0.0.3 shares that /24 bucket, which is now empty.
        assert!(matches!(
            r.check(ip("10.0.0.3")),
            RuleOutcome::Limited { .. }
        ));
        // Headroom (2/10 + 1 = 1) used up: another new /24 goes to the overflow bucket.
        assert_eq!(r.check(ip("10.9.9.9")), RuleOutcome::Allowed);
        assert!(matches!(
            r.check(ip("10.8.8.8")),
            RuleOutcome::Limited { .. }
        ));
        // Keys tracked before the cap keep their own buckets.
        assert!(matches!(
            r.check(ip("10.0.0.1")),
            RuleOutcome::Limited { .. }
        ));
        assert_eq!(r.tracked_keys(), 4); // two addresses, one /24, overflow
        assert_eq!(r.fallbacks(), 4);
    }

    #[test]
    fn sweep_drops_refilled_keys_only() {
        let (r, clock) = rule("1/s", 2, 1, 100);
        r.check(ip("10.0.0.1"));
        r.check(ip("10.0.0.2"));
        r.check(ip("10.0.0.2"));
        // governor drops a key once its theoretical arrival time is one interval in
        // the past: 10.0.0.1 (TAT 1 s) goes at 2 s, 10.0.0.2 (TAT 2 s) at 3 s.
        clock.advance(Duration::from_millis(1999));
        assert_eq!(r.sweep(), 0);
        clock.advance(Duration::from_millis(1));
        assert_eq!(r.sweep(), 1);
        assert_eq!(r.tracked_keys(), 1);
        clock.advance(Duration::from_secs(1));
        assert_eq!(r.sweep(), 1);
        assert_eq!(r.tracked_keys(), 0);
        assert_eq!(r.evicted(), 2);
    }

    #[test]
    fn ipv6_prefix_keys_group_a_64() {
        let facts = |s: &str| KeyFacts {
            ip: s.parse().unwrap(),
            geo: GeoInfo::default(),
            header: None,
            body: None,
            jwt: None,
            ja4: None,
        };
        let kind = KeyKind::Prefix { v4: 24, v6: 64 };
        let h = std::hash::RandomState::new();
        let a = key_for(&kind, &facts("2001:db8:1:2::1"), &h);
        let b = key_for(&kind, &facts("2001:db8:1:2:ffff::9"), &h);
        let c = key_for(&kind, &facts("2001:db8:1:3::1"), &h);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, LimitKey::Net("2001:db8:1:2::/64".parse().unwrap()));
        assert_eq!(
            key_for(&kind, &facts("192.0.2.77"), &h),
            LimitKey::Net("192.0.2.0/24".parse().unwrap())
        );
    }

    #[test]
    fn concurrency_slots_are_released_on_drop() {
        let rule = Arc::new(ConcurrencyRule::new(ConcurrencyConfig {
            name: "c".into(),
            key: KeyKind::Ip,
            max_in_flight: NonZeroU32::new(2).unwrap(),
            routes: None,
            max_keys: NonZeroU32::new(10).unwrap(),
            shadow: false,
        }));
        let k = ip("192.0.2.1");
        let a = rule.acquire(k).unwrap();
        let b = rule.acquire(k).unwrap();
        assert!(rule.acquire(k).is_none());
        drop(a);
        let _c = rule.acquire(k).unwrap();
        drop(b);
        assert_eq!(rule.in_flight(&k), 1);
        drop(_c);
        assert_eq!(rule.tracked_keys(), 0);
    }

    #[test]
    fn rate_interval_is_period_over_count() {
        let r: Rate = parse_rate("300/min").unwrap();
        assert_eq!(r.interval(), Duration::from_millis(200));
    }
}

#[cfg(test)]
mod fleet_hash_tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn the_fleet_key_changes_every_hash_and_is_the_same_for_every_node() {
        let public = FleetHasher(0, 0).hash_one(b"victim@example.com");
        set_fleet_hash_key(b"0123456789abcdef-fleet-secret");
        let keyed = FleetHasher::current().hash_one(b"victim@example.com");
        assert_ne!(public, keyed);
        // Deterministic: another process with the same secret names it alike.
        assert_eq!(
            keyed,
            FleetHasher::current().hash_one(b"victim@example.com")
        );
    }

    #[test]
    fn ja4_keys_are_the_fingerprint_or_the_address_and_stay_small() {
        let ja4 = Ja4::parse("t13d1516h2_8daaf6152771_e5627efa2ab1").unwrap();
        let facts = |ja4: Option<Ja4>| KeyFacts {
            ip: "192.0.2.7".parse().unwrap(),
            geo: GeoInfo::default(),
            header: None,
            body: None,
            jwt: None,
            ja4,
        };
        let h = std::hash::RandomState::new();
        let key = key_for(&KeyKind::Ja4, &facts(Some(ja4)), &h);
        assert_eq!(key, LimitKey::Ja4(ja4));
        assert_eq!(key.text(), "t13d1516h2_8daaf6152771_e5627efa2ab1");
        assert_eq!(LimitKey::parse_text(&key.text()), Some(key));
        // No fingerprint: counted by address.
        assert_eq!(
            key_for(&KeyKind::Ja4, &facts(None), &h),
            LimitKey::Ip("192.0.2.7".parse().unwrap())
        );
        // A JA4 key costs no more memory per tracked key than an address.
        assert_eq!(std::mem::size_of::<LimitKey>(), 24);
    }
}
