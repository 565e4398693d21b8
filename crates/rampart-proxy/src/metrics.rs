//! The Prometheus registry. Labels come from closed sets only: route and pool
//! names from config, verdict labels from [`rampart_policy::Rejection::label`],
//! status classes. Never a client address or a raw path.

use crate::state::Snapshot;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use rampart_policy::{GeoDb, GeoInfo};

/// Route label for requests that matched no route.
pub use rampart_policy::escalation::UNMATCHED_ROUTE;

/// Verdict label of a request that went to the origin.
pub const PROXIED_VERDICT: &str = rampart_policy::engine::PROXIED;

/// How an attempt (a reload, a GeoIP swap) ended: the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// It was applied.
    Success,
    /// It was refused; the old state keeps serving.
    Error,
}

impl Attempt {
    /// The label.
    pub fn as_label(self) -> &'static str {
        match self {
            Attempt::Success => "success",
            Attempt::Error => "error",
        }
    }
}

/// The kind of a limiter store: the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimiterKind {
    /// A `[[limits]]` rule's buckets.
    Rate,
    /// A `[[concurrency]]` rule's slots.
    Concurrency,
    /// The local fallback buckets of a fleet rule (failure mode `local`).
    FleetFallback,
    /// A rule's penalty box (keys counting refusals or banned).
    Ban,
}

impl LimiterKind {
    /// The label.
    pub fn as_label(self) -> &'static str {
        match self {
            LimiterKind::Rate => "rate",
            LimiterKind::Concurrency => "concurrency",
            LimiterKind::FleetFallback => "fleet_fallback",
            LimiterKind::Ban => "ban",
        }
    }
}

/// A Redis operation of fleet mode: the `op` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetOp {
    /// Charging a fleet bucket (a lease refill).
    Quota,
    /// Peeking at a fleet bucket (explain).
    Peek,
    /// Reading every flag.
    Resync,
    /// Writing or deleting a flag.
    FlagWrite,
    /// Removing an expired flag.
    FlagExpire,
    /// Announcing, lifting or reading bans.
    Ban,
    /// Reporting this node in the fleet's node list, or reading the list.
    Node,
}

impl FleetOp {
    /// The label.
    pub fn as_label(self) -> &'static str {
        match self {
            FleetOp::Quota => "quota",
            FleetOp::Peek => "peek",
            FleetOp::Resync => "resync",
            FleetOp::FlagWrite => "flag_write",
            FleetOp::FlagExpire => "flag_expire",
            FleetOp::Ban => "ban",
            FleetOp::Node => "node",
        }
    }
}

/// The `reason` labels of `rampart_client_connections_dropped_at_accept_total`:
/// the labels of the refusals [`rampart_policy::Policy::refusal_at_accept`]
/// gives (the same as the request path's verdicts).
pub const ACCEPT_DROP_REASONS: [&str; 6] = [
    "denied_network",
    "denied_asn",
    "denied_country",
    "unknown_country",
    "unknown_asn",
    "banned",
];

/// Status class labels, indexed by [`status_class`].
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

fn status_class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

/// The series one refused request counts in (see [`Metrics::refused`]).
struct RefusedHandles {
    /// The `Metrics` they belong to.
    owner: usize,
    class: usize,
    verdict: &'static str,
    route: Box<str>,
    rule: Box<str>,
    requests: prometheus::IntCounter,
    duration: prometheus::Histogram,
    rejections: prometheus::IntCounter,
}

/// A route's proxied-request series, resolved once per snapshot rather than by a
/// label lookup per request. A status class's counter is created on its first
/// request, so the exposition only lists classes that happened.
#[derive(Debug)]
pub struct ProxiedHandles {
    route: String,
    by_class: [std::sync::OnceLock<IntCounter>; 6],
    duration: prometheus::Histogram,
}

/// A pool's origin series, resolved once per snapshot. Both connection series
/// exist from the start (0 is a meaningful value for new connections).
#[derive(Debug)]
pub struct PoolHandles {
    connects_new: IntCounter,
    connects_reused: IntCounter,
    upstream_duration: prometheus::Histogram,
}

impl PoolHandles {
    /// Counts one origin connection handed to a request.
    pub fn connect(&self, reused: bool) {
        if reused {
            self.connects_reused.inc();
        } else {
            self.connects_new.inc();
        }
    }

    /// Records the time an origin took to answer with its header.
    pub fn upstream_response(&self, seconds: f64) {
        self.upstream_duration.observe(seconds);
    }
}

/// All metrics Rampart exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    reloads: IntCounterVec,
    config_generation: IntGauge,
    upstream_healthy: IntGaugeVec,
    rejections: IntCounterVec,
    shadow: IntCounterVec,
    limiter_keys: IntGaugeVec,
    limiter_max_keys: IntGaugeVec,
    limiter_evictions: IntCounterVec,
    limiter_fallbacks: IntCounterVec,
    bans_active: IntGaugeVec,
    bans_total: IntCounterVec,
    escalation_signal: prometheus::GaugeVec,
    escalation_entered: IntGaugeVec,
    escalation_transitions: IntCounterVec,
    geo_build: IntGaugeVec,
    geo_reloads: IntCounterVec,
    /// [country found, country unknown, asn found, asn unknown]
    geo_lookups: [IntCounter; 4],
    flag_active: IntGaugeVec,
    flag_changes: IntCounterVec,
    flag_preview: IntCounterVec,
    lockdown_state_errors: IntCounter,
    upstream_duration: HistogramVec,
    upstream_connects: IntCounterVec,
    /// Requests being handled now.
    pub in_flight: IntGauge,
    access_log_dropped: IntCounter,
    access_log_sampled_out: IntCounter,
    record_skipped: IntCounterVec,
    names: Vec<String>,
    fleet_degraded: IntGauge,
    fleet_redis_duration: HistogramVec,
    fleet_redis_errors: IntCounterVec,
    fleet_sync_lag: prometheus::Gauge,
    client_closed: IntCounterVec,
    /// Indexed like [`ACCEPT_DROP_REASONS`].
    client_dropped_at_accept: [IntCounter; 6],
    client_sources: IntGauge,
    /// Indexed like [`HELLO_RESULTS`].
    tls_hellos: [IntCounter; 4],
    tls_certificate_reloads: IntCounterVec,
    /// Bearer token verification for `key = "jwt"` rules.
    pub jwt: JwtMetrics,
}

/// `rampart_jwt_*`: what `key = "jwt"` rules made of bearer tokens.
#[derive(Debug)]
pub struct JwtMetrics {
    /// [cache hit, cache miss].
    verified: [IntCounter; 2],
    /// Indexed like [`rampart_policy::Unverified::ALL`]; `None` for the
    /// reasons only explain and replay meet (`no_verifier`, `not_recorded`).
    unverified: Vec<Option<IntCounter>>,
    keys: IntGauge,
    cache_entries: IntGauge,
    reloads: IntCounterVec,
}

impl JwtMetrics {
    /// Counts the identity one request's jwt rules read (nothing when none
    /// asked for it); a verified token lacking a rule's claim also counts as
    /// `claim_missing`.
    pub fn request(&self, identity: Option<&rampart_policy::IdentityOutcome>, claim_missing: bool) {
        use rampart_policy::{IdentityOutcome, Unverified};
        let unverified = |why: Unverified| {
            if let Some(Some(counter)) = Unverified::ALL
                .iter()
                .position(|u| *u == why)
                .and_then(|i| self.unverified.get(i))
            {
                counter.inc();
            }
        };
        match identity {
            None => {}
            Some(IdentityOutcome::Verified { cached, .. }) => {
                self.verified[usize::from(!*cached)].inc();
            }
            Some(IdentityOutcome::Unverified(why)) => unverified(*why),
        }
        if claim_missing {
            unverified(Unverified::ClaimMissing);
        }
    }

    /// Records the keys loaded and the verified tokens cached now.
    pub fn set_state(&self, keys: usize, cached: usize) {
        self.keys.set(i64::try_from(keys).unwrap_or(i64::MAX));
        self.cache_entries
            .set(i64::try_from(cached).unwrap_or(i64::MAX));
    }

    /// Counts one JWKS reload attempt after a change on disk.
    pub fn reload(&self, result: Attempt) {
        self.reloads.with_label_values(&[result.as_label()]).inc();
    }
}

/// The `result` labels of `rampart_tls_client_hellos_total`: a JA4 was
/// computed, or why none was (see `rampart_policy::ja4::HelloError`).
pub const HELLO_RESULTS: [&str; 4] = ["fingerprinted", "not_tls", "malformed", "too_large"];

fn registered<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    names: &std::cell::RefCell<Vec<String>>,
    metric: T,
) -> T {
    names
        .borrow_mut()
        .extend(metric.desc().iter().map(|d| d.fq_name.clone()));
    // Names are literals below and registered once per registry.
    #[allow(clippy::expect_used)]
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    #[allow(clippy::expect_used)] // start-up only: the metric definitions are constants
    pub fn new() -> Self {
        let registry = Registry::new();
        let names = std::cell::RefCell::new(Vec::new());
        let requests = registered(
            &registry,
            &names,
            IntCounterVec::new(
                Opts::new(
                    "rampart_http_requests_total",
                    "Requests by route, verdict and status class.",
                ),
                &["route", "verdict", "status_class"],
            )
            .expect("valid metric"),
        );
        let request_duration = registered(
            &registry,
            &names,
            HistogramVec::new(
                HistogramOpts::new(
                    "rampart_http_request_duration_seconds",
                    "Time from request start to the end of the response, by route and verdict.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ]),
                &["route", "verdict"],
            )
            .expect("valid metric"),
        );
        let reloads = registered(
            &registry,
            &names,
            IntCounterVec::new(
                Opts::new(
                    "rampart_config_reloads_total",
                    "Config reloads by result (success, error).",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        let config_generation = registered(
            &registry,
            &names,
            IntGauge::new(
                "rampart_config_generation",
                "Generation of the config in force; increases with each successful reload.",
            )
            .expect("valid metric"),
        );
        let upstream_healthy = registered(
            &registry,
            &names,
            IntGaugeVec::new(
                Opts::new(
                    "rampart_upstream_server_healthy",
                    "1 when the origin server is in rotation, 0 when health checks took it out.",
                ),
                &["pool", "server"],
            )
            .expect("valid metric"),
        );
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(
                &registry,
                &names,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            registered(
                &registry,
                &names,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let rejections = counter(
            "rampart_policy_rejections_total",
            "Requests answered at the edge by the policy, by route, reason and rule.",
            &["route", "reason", "rule"],
        );
        let shadow = counter(
            "rampart_policy_shadow_matches_total",
            "Requests a shadow-mode rule would have rejected, by route and rule.",
            &["route", "rule"],
        );
        let limiter_keys = gauge(
            "rampart_limiter_keys",
            "Keys tracked by a limiter rule now.",
            &["rule", "kind"],
        );
        let limiter_max_keys = gauge(
            "rampart_limiter_max_keys",
            "The key cap (max_keys) of a limiter rule.",
            &["rule", "kind"],
        );
        let limiter_evictions = counter(
            "rampart_limiter_evictions_total",
            "Keys dropped by limiter sweeps (their bucket had refilled).",
            &["rule"],
        );
        let limiter_fallbacks = counter(
            "rampart_limiter_fallbacks_total",
            "Requests charged to a coarser key because the rule's store was full.",
            &["rule"],
        );
        let bans_active = gauge(
            "rampart_bans_active",
            "Keys in a limit's penalty box now.",
            &["rule"],
        );
        let bans_total = counter(
            "rampart_bans_total",
            "Keys banned by a limit's penalty box.",
            &["rule"],
        );
        let escalation_signal = registered(
            &registry,
            &names,
            prometheus::GaugeVec::new(
                Opts::new(
                    "rampart_escalation_signal",
                    "The value of an escalation's signal over the last few seconds (req/s, share or seconds).",
                ),
                &["escalation"],
            )
            .expect("valid metric"),
        );
        let escalation_entered = gauge(
            "rampart_escalation_entered",
            "1 while an escalation holds its flag.",
            &["escalation"],
        );
        let escalation_transitions = counter(
            "rampart_escalation_transitions_total",
            "Flags entered and left by escalations.",
            &["escalation", "transition"],
        );
        let geo_build = gauge(
            "rampart_geoip_database_build_timestamp_seconds",
            "Build time of the loaded GeoIP database (from its metadata).",
            &["database"],
        );
        let jwt_verified = counter(
            "rampart_jwt_verified_total",
            "Bearer tokens that verified for key = \"jwt\" rules, by cache (hit: no signature check, miss).",
            &["cache"],
        );
        let jwt_unverified = counter(
            "rampart_jwt_unverified_total",
            "Requests whose bearer token did not give a key = \"jwt\" rule its claim (counted by address instead), by reason.",
            &["reason"],
        );
        let jwt = JwtMetrics {
            verified: [
                jwt_verified.with_label_values(&["hit"]),
                jwt_verified.with_label_values(&["miss"]),
            ],
            unverified: rampart_policy::Unverified::ALL
                .iter()
                .map(|u| {
                    use rampart_policy::Unverified::{NoVerifier, NotRecorded};
                    (!matches!(u, NoVerifier | NotRecorded))
                        .then(|| jwt_unverified.with_label_values(&[u.as_label()]))
                })
                .collect(),
            keys: registered(
                &registry,
                &names,
                IntGauge::new("rampart_jwt_keys", "JWT verification keys loaded.")
                    .expect("valid metric"),
            ),
            cache_entries: registered(
                &registry,
                &names,
                IntGauge::new(
                    "rampart_jwt_cache_entries",
                    "Verified bearer tokens cached now (at most [jwt] cache_size).",
                )
                .expect("valid metric"),
            ),
            reloads: counter(
                "rampart_jwt_jwks_reloads_total",
                "JWKS file reloads after a change on disk, by result (success, error: the old keys keep serving).",
                &["result"],
            ),
        };
        let geo_reloads = counter(
            "rampart_geoip_reloads_total",
            "GeoIP database swaps after a change on disk, by result.",
            &["result"],
        );
        let lookups = counter(
            "rampart_geoip_lookups_total",
            "GeoIP lookups by database and result (found, unknown).",
            &["database", "result"],
        );
        let geo_lookups = [
            lookups.with_label_values(&["country", "found"]),
            lookups.with_label_values(&["country", "unknown"]),
            lookups.with_label_values(&["asn", "found"]),
            lookups.with_label_values(&["asn", "unknown"]),
        ];
        let flag_active = gauge(
            "rampart_lockdown_flag_active",
            "1 while a lockdown flag is on in this mode (enforce or preview), else 0.",
            &["flag", "mode"],
        );
        let flag_changes = counter(
            "rampart_lockdown_changes_total",
            "Lockdown flag changes by flag and action (enable, disable, expire).",
            &["flag", "action"],
        );
        let flag_preview = counter(
            "rampart_lockdown_preview_matches_total",
            "Requests a lockdown flag in preview mode would have rejected, by route and flag.",
            &["route", "flag"],
        );
        let lockdown_state_errors = registered(
            &registry,
            &names,
            IntCounter::new(
                "rampart_lockdown_state_errors_total",
                "Lockdown state file problems: corrupt at start, or a write that failed.",
            )
            .expect("valid metric"),
        );
        let upstream_duration = registered(
            &registry,
            &names,
            HistogramVec::new(
                HistogramOpts::new(
                    "rampart_upstream_response_duration_seconds",
                    "Time from choosing an origin server to its response header, by pool.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ]),
                &["pool"],
            )
            .expect("valid metric"),
        );
        let upstream_connects = counter(
            "rampart_upstream_connections_total",
            "Origin connections used, by pool and whether a kept-alive one was reused.",
            &["pool", "reused"],
        );
        let in_flight = registered(
            &registry,
            &names,
            IntGauge::new(
                "rampart_http_requests_in_flight",
                "Requests being handled now.",
            )
            .expect("valid metric"),
        );
        let access_log_dropped = registered(
            &registry,
            &names,
            IntCounter::new(
                "rampart_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind.",
            )
            .expect("valid metric"),
        );
        let access_log_sampled_out = registered(
            &registry,
            &names,
            IntCounter::new(
                "rampart_access_log_sampled_out_total",
                "Rejected requests not logged because of rejected_lines_per_second.",
            )
            .expect("valid metric"),
        );
        let record_skipped = registered(
            &registry,
            &names,
            IntCounterVec::new(
                Opts::new(
                    "rampart_record_skipped_total",
                    "Requests left out of the request record: sampled out under a flood (their sampled neighbours carry the weight) or dropped because the writer fell behind.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
        );
        let fleet_degraded = registered(
            &registry,
            &names,
            IntGauge::new(
                "rampart_fleet_degraded",
                "1 while this node cannot reach Redis (fleet mode): last known flags, fleet rules on their failure mode.",
            )
            .expect("valid metric"),
        );
        let fleet_redis_duration = registered(
            &registry,
            &names,
            HistogramVec::new(
                HistogramOpts::new(
                    "rampart_fleet_redis_duration_seconds",
                    "Redis round-trip time by operation (quota, peek, resync, flag_write, flag_expire, ban, node).",
                )
                .buckets(vec![
                    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ]),
                &["op"],
            )
            .expect("valid metric"),
        );
        let fleet_redis_errors = counter(
            "rampart_fleet_redis_errors_total",
            "Redis operations that failed or timed out, by operation.",
            &["op"],
        );
        let fleet_sync_lag = registered(
            &registry,
            &names,
            prometheus::Gauge::new(
                "rampart_fleet_flag_sync_lag_seconds",
                "Time between a flag change on another node and this node applying it (last change seen).",
            )
            .expect("valid metric"),
        );
        let client_closed = counter(
            "rampart_client_connections_closed_total",
            "Client connections the edge closed itself, by reason (keepalive_timeout, header_timeout, body_timeout, header_too_large, per_source_cap, proxy_protocol_missing, proxy_protocol_invalid, proxy_protocol_untrusted, tls_hello_timeout).",
            &["reason"],
        );
        let dropped_at_accept = counter(
            "rampart_client_connections_dropped_at_accept_total",
            "Client connections closed at accept, before TLS or HTTP, because every request from their source would be refused, by reason (denied_network, denied_asn, denied_country, unknown_country, unknown_asn, banned).",
            &["reason"],
        );
        let client_dropped_at_accept =
            ACCEPT_DROP_REASONS.map(|reason| dropped_at_accept.with_label_values(&[reason]));
        let client_sources = registered(
            &registry,
            &names,
            IntGauge::new(
                "rampart_client_sources",
                "Client addresses with at least one open connection (the per-source connection counter's size).",
            )
            .expect("valid metric"),
        );
        let hellos = counter(
            "rampart_tls_client_hellos_total",
            "First bytes of connections on TLS listeners, by result: fingerprinted (JA4 computed), not_tls, malformed, too_large (no JA4; the handshake goes on).",
            &["result"],
        );
        let tls_hellos = HELLO_RESULTS.map(|result| hellos.with_label_values(&[result]));
        let tls_certificate_reloads = counter(
            "rampart_tls_certificate_reloads_total",
            "Certificate and key reloads of TLS listeners, by result (success, error: the previous certificate keeps serving).",
            &["result"],
        );
        for result in ["success", "error"] {
            tls_certificate_reloads.with_label_values(&[result]);
        }
        Self {
            tls_hellos,
            tls_certificate_reloads,
            client_closed,
            client_dropped_at_accept,
            client_sources,
            fleet_degraded,
            fleet_redis_duration,
            fleet_redis_errors,
            fleet_sync_lag,
            upstream_duration,
            upstream_connects,
            in_flight,
            access_log_dropped,
            access_log_sampled_out,
            record_skipped,
            names: names.into_inner(),
            flag_active,
            flag_changes,
            flag_preview,
            lockdown_state_errors,
            registry,
            requests,
            request_duration,
            reloads,
            config_generation,
            upstream_healthy,
            rejections,
            shadow,
            limiter_keys,
            limiter_max_keys,
            limiter_evictions,
            limiter_fallbacks,
            bans_active,
            bans_total,
            escalation_signal,
            escalation_entered,
            escalation_transitions,
            geo_build,
            geo_reloads,
            geo_lookups,
            jwt,
        }
    }

    /// Counts a client connection the edge closed, by the `as_label` of
    /// [`crate::edge::EdgeRefusal`] or [`crate::proxy_protocol::ProxyRefusal`].
    pub fn client_connection_closed(&self, reason: &'static str) {
        self.client_closed.with_label_values(&[reason]).inc();
    }

    /// Counts a connection closed at accept for `refusal` (one of the
    /// refusals of [`rampart_policy::Policy::refusal_at_accept`]; any other is
    /// not counted here).
    pub fn connection_dropped_at_accept(&self, refusal: &rampart_policy::Rejection) {
        let label = refusal.label();
        if let Some(i) = ACCEPT_DROP_REASONS.iter().position(|r| *r == label) {
            self.client_dropped_at_accept[i].inc();
        }
    }

    /// Counts the first bytes of a TLS connection: fingerprinted (`Ok`) or why
    /// not. `Incomplete` is not a result (the caller reads on or times out).
    pub fn client_hello(&self, result: Result<(), rampart_policy::ja4::HelloError>) {
        let label = match result {
            Ok(()) => "fingerprinted",
            Err(e) => e.as_label(),
        };
        if let Some(i) = HELLO_RESULTS.iter().position(|r| *r == label) {
            self.tls_hellos[i].inc();
        }
    }

    /// Counts one certificate reload of a TLS listener.
    pub fn tls_certificate_reload(&self, result: Attempt) {
        self.tls_certificate_reloads
            .with_label_values(&[result.as_label()])
            .inc();
    }

    /// Sets the number of client addresses with open connections.
    pub fn set_client_sources(&self, n: usize) {
        self.client_sources
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts one finished request.
    pub fn request(&self, route: &str, verdict: &str, status: u16, seconds: f64) {
        self.requests
            .with_label_values(&[route, verdict, STATUS_CLASSES[status_class(status)]])
            .inc();
        self.request_duration
            .with_label_values(&[route, verdict])
            .observe(seconds);
    }

    /// Handles for the requests of `route` that go to the origin (the common case),
    /// resolved once per config snapshot.
    pub fn proxied_handles(&self, route: &str) -> ProxiedHandles {
        ProxiedHandles {
            route: route.to_string(),
            by_class: Default::default(),
            duration: self
                .request_duration
                .with_label_values(&[route, PROXIED_VERDICT]),
        }
    }

    /// Counts one proxied request through handles from [`Self::proxied_handles`].
    pub fn proxied(&self, handles: &ProxiedHandles, status: u16, seconds: f64) {
        let class = status_class(status);
        handles.by_class[class]
            .get_or_init(|| {
                self.requests.with_label_values(&[
                    &handles.route,
                    PROXIED_VERDICT,
                    STATUS_CLASSES[class],
                ])
            })
            .inc();
        handles.duration.observe(seconds);
    }

    /// Handles for one pool's origin metrics, resolved once per config snapshot.
    pub fn pool_handles(&self, pool: &str) -> PoolHandles {
        PoolHandles {
            connects_new: self.upstream_connects.with_label_values(&[pool, "false"]),
            connects_reused: self.upstream_connects.with_label_values(&[pool, "true"]),
            upstream_duration: self.upstream_duration.with_label_values(&[pool]),
        }
    }

    /// Counts one policy rejection.
    pub fn rejection(&self, route: &str, reason: &str, rule: &str) {
        self.rejections
            .with_label_values(&[route, reason, rule])
            .inc();
    }

    /// Counts one request refused by a policy rule: [`Self::rejection`] and
    /// [`Self::request`] together. The series of the last refusal a thread
    /// counted are kept, so that a flood of one refusal looks up no label.
    pub fn refused(
        &self,
        route: &str,
        verdict: &'static str,
        rule: &str,
        status: u16,
        seconds: f64,
    ) {
        thread_local! {
            static LAST: std::cell::RefCell<Option<RefusedHandles>> =
                const { std::cell::RefCell::new(None) };
        }
        let class = status_class(status);
        let owner = self as *const Self as usize;
        LAST.with(|last| {
            let Ok(mut last) = last.try_borrow_mut() else {
                return;
            };
            let fresh = !matches!(&*last, Some(h) if h.owner == owner
                && h.class == class
                && h.verdict == verdict
                && *h.route == *route
                && *h.rule == *rule);
            if fresh {
                *last = Some(RefusedHandles {
                    owner,
                    class,
                    verdict,
                    route: route.into(),
                    rule: rule.into(),
                    requests: self.requests.with_label_values(&[
                        route,
                        verdict,
                        STATUS_CLASSES[class],
                    ]),
                    duration: self.request_duration.with_label_values(&[route, verdict]),
                    rejections: self.rejections.with_label_values(&[route, verdict, rule]),
                });
            }
            if let Some(h) = &*last {
                h.requests.inc();
                h.duration.observe(seconds);
                h.rejections.inc();
            }
        });
    }

    /// Counts one shadow match.
    pub fn shadow_match(&self, route: &str, rule: &str) {
        self.shadow.with_label_values(&[route, rule]).inc();
    }

    /// Counts the result of one lookup in each configured database.
    pub fn geo_lookup(&self, geo: &GeoDb, info: &GeoInfo) {
        if geo.country.is_some() {
            self.geo_lookups[if info.country.is_some() { 0 } else { 1 }].inc();
        }
        if geo.asn.is_some() {
            self.geo_lookups[if info.asn.is_some() { 2 } else { 3 }].inc();
        }
    }

    /// Records the build times of the loaded GeoIP databases.
    pub fn set_geo_info(&self, geo: &GeoDb) {
        self.geo_build.reset();
        for (name, file) in [("country", &geo.country), ("asn", &geo.asn)] {
            if let Some(f) = file {
                self.geo_build
                    .with_label_values(&[name])
                    .set(f.build_epoch() as i64);
            }
        }
    }

    /// Counts one GeoIP swap attempt.
    pub fn geo_reloads(&self, result: Attempt) {
        self.geo_reloads
            .with_label_values(&[result.as_label()])
            .inc();
    }

    /// Records a limiter rule's key count and brings its counters up to the
    /// rule's own totals (a rule replaced by a reload starts again from zero).
    #[allow(clippy::too_many_arguments)]
    pub fn limiter(
        &self,
        rule: &str,
        kind: LimiterKind,
        keys: usize,
        max_keys: u32,
        evicted: u64,
        fallbacks: u64,
    ) {
        let kind = kind.as_label();
        self.limiter_keys
            .with_label_values(&[rule, kind])
            .set(keys as i64);
        self.limiter_max_keys
            .with_label_values(&[rule, kind])
            .set(i64::from(max_keys));
        for (vec, total) in [
            (&self.limiter_evictions, evicted),
            (&self.limiter_fallbacks, fallbacks),
        ] {
            let c = vec.with_label_values(&[rule]);
            let seen = c.get();
            c.inc_by(if total >= seen { total - seen } else { total });
        }
    }

    /// Records a penalty box: keys banned now, and its bans so far (brought up
    /// to the table's own total, as the limiter counters are).
    pub fn bans(&self, rule: &str, active: usize, total: u64) {
        self.bans_active
            .with_label_values(&[rule])
            .set(i64::try_from(active).unwrap_or(i64::MAX));
        let c = self.bans_total.with_label_values(&[rule]);
        let seen = c.get();
        c.inc_by(if total >= seen { total - seen } else { total });
    }

    /// Records which flags are on, in which mode.
    pub fn set_flags(
        &self,
        state: &crate::lockdown::FlagState,
        config: &rampart_config::LockdownConfig,
    ) {
        for flag in &config.flags {
            let mode = state.active.get(&flag.name).map(|a| a.mode.as_str());
            for m in ["enforce", "preview"] {
                self.flag_active
                    .with_label_values(&[&flag.name, m])
                    .set(i64::from(mode == Some(m)));
            }
        }
    }

    /// Counts one flag change.
    pub fn lockdown_change(&self, flag: &str, action: crate::state::FlagAction) {
        self.flag_changes
            .with_label_values(&[flag, action.as_label()])
            .inc();
    }

    /// Counts one request a previewed flag would have rejected.
    pub fn lockdown_preview(&self, route: &str, flag: &str) {
        self.flag_preview.with_label_values(&[route, flag]).inc();
    }

    /// Counts one state file problem.
    pub fn lockdown_state_error(&self) {
        self.lockdown_state_errors.inc();
    }

    /// Counts one dropped access log line.
    pub fn access_log_dropped(&self) {
        self.access_log_dropped.inc();
    }

    /// Counts one request left out of the request record (`sampled`, `dropped`).
    pub fn record_skipped(&self, reason: &'static str) {
        self.record_skipped.with_label_values(&[reason]).inc();
    }

    /// Counts one rejected request left out of the access log by sampling.
    pub fn access_log_sampled_out(&self) {
        self.access_log_sampled_out.inc();
    }

    /// Names of every metric this registry exports (for the README check).
    pub fn metric_names(&self) -> &[String] {
        &self.names
    }

    /// Records whether this node is degraded (Redis unreachable).
    pub fn fleet_degraded(&self, degraded: bool) {
        self.fleet_degraded.set(i64::from(degraded));
    }

    /// Records one Redis operation.
    pub fn fleet_redis(&self, op: FleetOp, seconds: f64, ok: bool) {
        let op = op.as_label();
        self.fleet_redis_duration
            .with_label_values(&[op])
            .observe(seconds);
        if !ok {
            self.fleet_redis_errors.with_label_values(&[op]).inc();
        }
    }

    /// Records the lag of the last flag change applied from the fleet.
    pub fn fleet_sync_lag(&self, seconds: f64) {
        self.fleet_sync_lag.set(seconds);
    }

    /// The lag of the last flag change applied from the fleet, seconds.
    pub fn fleet_sync_lag_seconds(&self) -> f64 {
        self.fleet_sync_lag.get()
    }

    /// Counts one reload attempt.
    pub fn reloads(&self, result: Attempt) {
        self.reloads.with_label_values(&[result.as_label()]).inc();
    }

    /// Records a server's health.
    pub fn upstream_health(&self, pool: &str, server: &str, healthy: bool) {
        self.upstream_healthy
            .with_label_values(&[pool, server])
            .set(i64::from(healthy));
    }

    /// Resets per-config series after a (re)load.
    pub fn set_config_info(&self, snapshot: &Snapshot) {
        self.config_generation.set(snapshot.generation as i64);
        self.limiter_keys.reset();
        self.limiter_max_keys.reset();
        self.bans_active.reset();
        self.upstream_healthy.reset();
        for pool in &snapshot.pools {
            for s in &pool.servers {
                self.upstream_health(pool.name(), &s.addr.to_string(), s.health.is_healthy());
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("cannot encode metrics: {e}");
        }
        out
    }
}

pub use rampart_policy::escalation::SignalCounters;

/// One cumulative counter the console's rate history samples
/// (`crate::console`): a series of a closed label set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConsoleSeries {
    /// `rampart_http_requests_total` of one route and verdict (status classes
    /// summed).
    Requests {
        /// Route label.
        route: String,
        /// Verdict label.
        verdict: String,
    },
    /// `rampart_policy_rejections_total` of one rule or flag and reason
    /// (routes summed).
    Refusals {
        /// Rule or flag name.
        rule: String,
        /// The verdict label of the refusal.
        reason: String,
    },
    /// `rampart_lockdown_preview_matches_total` of one flag (routes summed).
    Previews {
        /// Flag name.
        flag: String,
    },
}

impl Metrics {
    /// The current values of the counters the console samples: requests by
    /// route and verdict, refusals by rule, preview matches by flag. Reads
    /// three counter families, not the whole registry; nothing on the request
    /// path changes.
    pub fn console_counts(&self) -> Vec<(ConsoleSeries, u64)> {
        use prometheus::core::Collector;
        fn label(m: &prometheus::proto::Metric, name: &str) -> String {
            m.get_label()
                .iter()
                .find(|l| l.name() == name)
                .map(|l| l.value().to_string())
                .unwrap_or_default()
        }
        let mut sums: std::collections::HashMap<ConsoleSeries, u64> =
            std::collections::HashMap::new();
        let families = [
            (0, self.requests.collect()),
            (1, self.rejections.collect()),
            (2, self.flag_preview.collect()),
        ];
        for (kind, list) in families {
            for m in list.iter().flat_map(|f| f.get_metric()) {
                let series = match kind {
                    0 => ConsoleSeries::Requests {
                        route: label(m, "route"),
                        verdict: label(m, "verdict"),
                    },
                    1 => ConsoleSeries::Refusals {
                        rule: label(m, "rule"),
                        reason: label(m, "reason"),
                    },
                    _ => ConsoleSeries::Previews {
                        flag: label(m, "flag"),
                    },
                };
                *sums.entry(series).or_default() += m.get_counter().get_value() as u64;
            }
        }
        sums.into_iter().collect()
    }

    /// The counters of the escalation signals, read from the registry.
    pub fn signal_counters(&self) -> SignalCounters {
        let mut out = SignalCounters::default();
        for family in self.registry.gather() {
            match family.name() {
                "rampart_http_requests_total" => {
                    for m in family.get_metric() {
                        let label = |name: &str| {
                            m.get_label()
                                .iter()
                                .find(|l| l.name() == name)
                                .map(|l| l.value().to_string())
                                .unwrap_or_default()
                        };
                        let n = m.get_counter().get_value() as u64;
                        let proxied = label("verdict") == PROXIED_VERDICT;
                        let five = label("status_class") == "5xx";
                        let e = out.routes.entry(label("route")).or_default();
                        e[0] += n;
                        if proxied {
                            e[2] += n;
                            if five {
                                e[3] += n;
                            }
                        } else {
                            e[1] += n;
                        }
                    }
                }
                "rampart_policy_rejections_total" => {
                    for m in family.get_metric() {
                        let label = |name: &str| {
                            m.get_label()
                                .iter()
                                .find(|l| l.name() == name)
                                .map(|l| l.value().to_string())
                                .unwrap_or_default()
                        };
                        *out.refused_by
                            .entry((label("route"), label("rule")))
                            .or_default() += m.get_counter().get_value() as u64;
                    }
                }
                "rampart_upstream_response_duration_seconds" => {
                    for m in family.get_metric() {
                        let pool = m
                            .get_label()
                            .iter()
                            .find(|l| l.name() == "pool")
                            .map(|l| l.value().to_string())
                            .unwrap_or_default();
                        let h = m.get_histogram();
                        let buckets = h
                            .get_bucket()
                            .iter()
                            .map(|b| (b.upper_bound(), b.cumulative_count()))
                            .collect();
                        out.pools.insert(pool, (buckets, h.get_sample_count()));
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Records an escalation's signal value and whether it holds its flag.
    pub fn escalation(&self, name: &str, value: Option<f64>, entered: bool) {
        if let Some(v) = value {
            self.escalation_signal.with_label_values(&[name]).set(v);
        }
        self.escalation_entered
            .with_label_values(&[name])
            .set(i64::from(entered));
    }

    /// Counts one escalation transition.
    pub fn escalation_transition(
        &self,
        name: &str,
        transition: rampart_policy::escalation::Transition,
    ) {
        let label = match transition {
            rampart_policy::escalation::Transition::Enter => "enter",
            rampart_policy::escalation::Transition::Leave => "leave",
        };
        self.escalation_transitions
            .with_label_values(&[name, label])
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The README's metrics table and the exported metric names agree, both ways.
    #[test]
    fn readme_metrics_table_lists_exactly_the_exported_metrics() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .unwrap();
        let documented: BTreeSet<String> = readme
            .lines()
            .filter_map(|l| l.strip_prefix("| `rampart_"))
            .filter_map(|l| l.split('`').next())
            .map(|name| format!("rampart_{name}"))
            .collect();
        let exported: BTreeSet<String> = Metrics::new().metric_names().iter().cloned().collect();
        let missing: Vec<_> = exported.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "exported but not in the README table: {missing:?}"
        );
        assert!(
            stale.is_empty(),
            "in the README table but not exported: {stale:?}"
        );
    }
}
