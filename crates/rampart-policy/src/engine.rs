//! The decision for one request, written once and sans-IO.
//!
//! [`Policy::evaluate`] starts an [`Evaluation`]; each call to
//! [`Evaluation::next`] runs the pipeline as far as it can and returns a
//! [`Step`]: the finished [`Verdict`], or the I/O it needs first (the request
//! body, or fleet buckets in Redis). The caller does that I/O, hands back the
//! plain result ([`Evaluation::give_body`], [`Evaluation::give_fleet`]) and
//! calls `next` again. The proxy drives it with real I/O; `explain` and the
//! tests drive the very same code with charging off ([`Charging::DryRun`]),
//! which peeks at buckets instead of charging them and records a per-rule
//! [`TraceEntry`] list.
//!
//! The pipeline, in order:
//! 1. **Route**: the first route whose host and path match; 405 when it does not
//!    accept the method, `[unmatched]` otherwise.
//! 2. **Access rules**, in config order; the first that matches decides: `deny`
//!    answers 403, `allow` skips the unknown-origin refusals, limits and caps.
//! 3. **Lockdown flags**, in config order: the first enforced flag that refuses
//!    answers; a previewed one is observed. Their body rules are collected.
//! 4. **Unknown origin**: `geoip.unknown_country` / `unknown_asn = "deny"`.
//! 5. **Body keys**: a route with `key = "body"` limits asks for the body
//!    ([`Step::NeedBody`]) before anything is charged, and refuses a body that
//!    cannot be read unambiguously.
//! 6. **Limits**, route rules and global ones in config order; the first empty
//!    bucket decides. Buckets charged before it keep the charge: stacked limits
//!    count attempts, not only successes. Fleet rules are collected.
//! 7. **In-flight caps** are taken last among local rules, so a refused request
//!    holds none.
//! 8. **Fleet rules** ([`Step::NeedFleet`]): the caller charges Redis; a failed
//!    check takes the rule's failure mode (`open`, `closed`, `local`) here.
//! 9. **Body rules** of active flags ([`Step::NeedBody`] when the body was not
//!    read yet).
//!
//! A rule in shadow mode and a flag in preview never refuse: what they would
//! have refused becomes an [`Observation`] of the verdict.

mod accept;

use crate::bans::BanTable;
use crate::body::{BodyInput, BodyRefusal};
use crate::clients::{ClientMatch, MatchedBy};
use crate::geo::GeoInfo;
use crate::limits::{
    ConcurrencyPermit, ConcurrencyRule, KeyFacts, LimitKey, RateRule, RuleOutcome,
};
use crate::lockdown::{CompiledFlags, FlagMode};
use crate::route::{RouteMatch, RouteTable};
use crate::Rejection;
use governor::clock::{Clock, DefaultClock};
use http::HeaderMap;
use rampart_config::{
    AccessAction, Config, FleetFailure, KeyKind, LimitConfig, LimitScope, UnknownPolicy,
};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Whether a key is known before the request's fields are read.
fn early_key(key: &KeyKind) -> bool {
    match key {
        KeyKind::Ip
        | KeyKind::Prefix { .. }
        | KeyKind::Asn
        | KeyKind::Country
        | KeyKind::Ja4
        | KeyKind::Route => true,
        KeyKind::Header(_) | KeyKind::Body(_) | KeyKind::Jwt { .. } => false,
    }
}

/// One `[[access]]` rule, ready for matching.
#[derive(Debug)]
struct AccessRule {
    name: Arc<str>,
    action: AccessAction,
    clients: ClientMatch,
}

/// Indices of the rules that apply to one route.
#[derive(Debug, Default, Clone)]
struct RouteRules {
    access: Vec<usize>,
    limits: Vec<usize>,
    concurrency: Vec<usize>,
    /// The largest body the route's `key = "body"` limits read.
    body_key_limit: Option<usize>,
    /// Whether any of its limits has a penalty box.
    has_bans: bool,
    /// Whether its limits and in-flight caps are all keyed by what the
    /// connection and the request line tell (address, network, AS, country,
    /// JA4, the route) and kept on this node: then they can be decided before
    /// the request's fields are read (see [`Evaluation::next_early`]).
    early_limits: bool,
}

/// The facts about one request that the policy reads. The proxy gathers them;
/// nothing here is read from a socket.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Resolved client address (canonical: IPv4-mapped IPv6 is IPv4).
    pub ip: IpAddr,
    /// Its country and ASN.
    pub geo: GeoInfo,
    /// The host the request names (`:authority` or `Host`), if any.
    pub host: Option<&'a str>,
    /// The canonical path (see [`crate::canonical`]).
    pub path: &'a str,
    /// The raw query string, if any (body rules refuse a field sent in both).
    pub query: Option<&'a str>,
    /// The request method (canonical: upper case).
    pub method: &'a str,
    /// Request headers (header keys, session checks, body media types).
    pub headers: &'a HeaderMap,
    /// Mode of each lockdown flag, in config order (shorter means off).
    pub flags: &'a [FlagMode],
    /// The JA4 fingerprint of the client's TLS hello; `None` on plaintext
    /// listeners and for hellos that could not be fingerprinted.
    pub ja4: Option<crate::ja4::Ja4>,
    /// Where `key = "jwt"` rules get the request's verified identity.
    pub identity: IdentitySource<'a>,
}

/// Where `key = "jwt"` rules get a request's verified identity. It is asked
/// for only when such a rule is reached (a request refused earlier, e.g. by
/// an address limit placed before it, costs no signature check), once per
/// request.
#[derive(Debug, Clone, Copy, Default)]
pub enum IdentitySource<'a> {
    /// No key set: jwt rules count by address (`no_verifier`).
    #[default]
    None,
    /// Verify the request's `Authorization: Bearer` token.
    Verify(&'a crate::jwt::JwtVerifier),
    /// `rampart replay`: the identity the record kept (`None`: the record
    /// has none, `not_recorded`).
    Recorded(Option<&'a crate::record::RecordedIdentity>),
}

/// Whether an evaluation charges buckets and takes slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charging {
    /// A real request: buckets are charged, in-flight slots taken.
    Charge,
    /// `explain`: buckets are peeked at, nothing is taken, and every rule's
    /// outcome is traced.
    DryRun,
}

/// How a fleet bucket's answer is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    /// An empty bucket refuses the request.
    Enforce,
    /// The rule is in shadow mode: an empty bucket is only observed.
    Shadow,
    /// The rule applies only while a flag is on, and that flag is previewed.
    Preview {
        /// The flag's name.
        flag: Arc<str>,
    },
}

/// A fleet-wide bucket the caller must charge (or, in a dry run, peek at)
/// through Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetCheck {
    /// Limit rule index (into the config's limits).
    pub rule: usize,
    /// The key charged.
    pub key: LimitKey,
    /// Cells to take (the rule's cost, scaled by lockdown flags).
    pub cost: u32,
    /// What an empty bucket means.
    pub enforcement: Enforcement,
}

/// What Redis said about one [`FleetCheck`]: the plain I/O result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetAnswer {
    /// The bucket held the cost.
    Allowed,
    /// The bucket is empty; the cost fits after this long.
    Limited {
        /// Time until the cost fits, as Redis computed it.
        retry_after: Duration,
    },
    /// No answer (Redis unreachable, timed out, or the node is degraded): the
    /// rule's failure mode decides.
    Unavailable,
}

/// The request body as the caller read it: the plain I/O result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRead {
    /// The whole body, or the first `limit + 1` bytes of a longer one.
    Complete(Vec<u8>),
    /// The body did not arrive within `client_body_timeout` (408).
    TimedOut,
    /// The client went away while sending it (499, nothing written).
    ClientGone,
    /// The body framing was malformed (bad chunk) (400).
    Malformed,
    /// The body as a recording keeps it (`rampart replay`): the fields the
    /// recording's rules read, not the bytes.
    Recorded(crate::body::RecordedBody),
    /// No body is available (explain without one): body rules and body keys
    /// are traced as not evaluated. A real request never gives this; if it
    /// does, the body counts as unreadable (400).
    NotGiven,
}

impl BodyRead {
    /// The refusal a failed read means (`None` for a complete body): 408 when
    /// it timed out, 499 when the client went away, 400 when malformed.
    pub fn refusal(&self) -> Option<Rejection> {
        match self {
            BodyRead::Complete(_) | BodyRead::Recorded(_) => None,
            BodyRead::TimedOut => Some(Rejection::ClientTimeout),
            BodyRead::ClientGone => Some(Rejection::ClientError { status: 499 }),
            BodyRead::Malformed | BodyRead::NotGiven => {
                Some(Rejection::ClientError { status: 400 })
            }
        }
    }
}

/// What a rule in shadow mode or a flag in preview would have refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A `shadow = true` limit or cap would have refused the request.
    Shadow {
        /// The rule's name.
        rule: Arc<str>,
    },
    /// A previewed flag would have refused the request.
    Preview {
        /// The flag's name.
        flag: Arc<str>,
    },
}

/// The one outcome of one request.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Matched route index; `None` when no route matched.
    pub route: Option<usize>,
    /// The pool the request goes to, when it goes upstream.
    pub pool: Option<usize>,
    /// `Some` when the request is answered at the edge.
    pub refusal: Option<Rejection>,
    /// The allow rule that let the request skip the limits.
    pub allowed_by: Option<Arc<str>>,
    /// Shadow rules and previewed flags that would have refused it.
    pub observations: Vec<Observation>,
    /// In-flight slots held until the request ends (dropping releases them).
    /// Always empty for a refused request and in a dry run.
    pub permits: Vec<ConcurrencyPermit>,
    /// The ban this request's refusal started, if it did (the proxy announces
    /// bans of fleet rules to the other nodes).
    pub new_ban: Option<NewBan>,
    /// The key whose bucket, ban or in-flight cap refused the request.
    pub key: Option<LimitKey>,
    /// The request's verified identity, when a `key = "jwt"` rule asked for it.
    pub identity: Option<crate::jwt::IdentityOutcome>,
    /// Whether a verified token lacked the claim of a rule that read it
    /// (that rule counted the request by address).
    pub claim_missing: bool,
}

/// A ban a refusal has just started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBan {
    /// Limit rule index.
    pub rule: usize,
    /// The banned key.
    pub key: LimitKey,
    /// How long.
    pub length: Duration,
    /// The key's bans in memory, this one included.
    pub offenses: u32,
}

impl Verdict {
    /// The verdict's label (`proxied` or the refusal's label), as in metrics
    /// and the access log.
    pub fn label(&self) -> &'static str {
        self.refusal.as_ref().map_or(PROXIED, Rejection::label)
    }
}

/// The label of a request that went upstream.
pub const PROXIED: &str = "proxied";

/// What the pipeline needs next.
// `Done` is the step every request ends with and is moved out at once:
// boxing it to shrink the rarer variants would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Step {
    /// Decided.
    Done(Verdict),
    /// Read the request body, up to `limit` bytes (one more when it is longer),
    /// and hand it over with [`Evaluation::give_body`].
    NeedBody {
        /// Bytes to read.
        limit: usize,
    },
    /// Charge these fleet buckets (peek in a dry run) and hand the answers over,
    /// in the same order, with [`Evaluation::give_fleet`]. All of them may be
    /// asked at once, under one deadline.
    NeedFleet(Vec<FleetCheck>),
}

/// The kind of a traced rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// An `[[access]]` rule.
    Access,
    /// An active lockdown flag.
    Flag,
    /// `geoip.unknown_country` / `unknown_asn`.
    UnknownOrigin,
    /// A local `[[limits]]` rule.
    Limit,
    /// A fleet-scoped `[[limits]]` rule.
    FleetLimit,
    /// A `[[concurrency]]` rule.
    Concurrency,
    /// A limit's penalty box.
    Ban,
    /// A `key = "body"` limit reading its field.
    BodyKey,
    /// A flag's body rule.
    BodyRule,
    /// The request's bearer token, verified for `key = "jwt"` rules.
    Identity,
}

impl RuleKind {
    /// The label in explain output.
    pub fn as_label(self) -> &'static str {
        match self {
            RuleKind::Access => "access",
            RuleKind::Flag => "flag",
            RuleKind::UnknownOrigin => "unknown_origin",
            RuleKind::Limit => "limit",
            RuleKind::FleetLimit => "fleet_limit",
            RuleKind::Concurrency => "concurrency",
            RuleKind::Ban => "ban",
            RuleKind::BodyKey => "body_key",
            RuleKind::BodyRule => "body_rule",
            RuleKind::Identity => "jwt",
        }
    }
}

/// What a traced rule did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceOutcome {
    /// The rule does not concern this request.
    NoMatch,
    /// The rule let the request on.
    Passed,
    /// The rule refused the request.
    Refused,
    /// The rule (shadow or preview) would have refused; observed only.
    Observed,
    /// The rule was not evaluated (an allow rule skipped it, a refusal came
    /// first, or the body it reads was not given).
    Skipped,
}

impl TraceOutcome {
    /// The label in explain output.
    pub fn as_label(self) -> &'static str {
        match self {
            TraceOutcome::NoMatch => "no_match",
            TraceOutcome::Passed => "passed",
            TraceOutcome::Refused => "refused",
            TraceOutcome::Observed => "observed",
            TraceOutcome::Skipped => "skipped",
        }
    }
}

/// One rule in a dry run's trace.
#[derive(Debug, Clone)]
pub struct TraceEntry {
    /// What kind of rule.
    pub kind: RuleKind,
    /// Rule (or flag) name.
    pub name: Arc<str>,
    /// The key the request is counted under (empty where there is none).
    pub key: String,
    /// Human detail: match, bucket or slot state.
    pub detail: String,
    /// What the rule did.
    pub outcome: TraceOutcome,
    /// Whether the rule is in shadow mode (or the flag in preview).
    pub shadow: bool,
}

/// The policy of one config: routes, rules, limiter state and per-route rule lists.
#[derive(Debug)]
pub struct Policy<C: Clock + Clone = DefaultClock> {
    routes: RouteTable,
    /// The `Allow` field of each route (its methods).
    allow: Vec<Arc<str>>,
    access: Vec<AccessRule>,
    limits: Vec<Arc<RateRule<C>>>,
    limit_names: Vec<Arc<str>>,
    /// The clients each limit applies to; `None`: everyone.
    limit_clients: Vec<Option<ClientMatch>>,
    /// The penalty box of each limit that has one. Kept across reloads while
    /// the rule's name, key and ban settings are unchanged.
    bans: Vec<Option<Arc<BanTable<C>>>>,
    /// For fleet rules whose failure mode is `local`: the local bucket at the
    /// configured share of the budget, used while Redis is unreachable. Kept
    /// across reloads like the other buckets, capped and swept like them.
    fleet_fallback: Vec<Option<Arc<RateRule<C>>>>,
    concurrency: Vec<Arc<ConcurrencyRule>>,
    concurrency_names: Vec<Arc<str>>,
    /// Index `routes.len()` holds the rules for requests without a route.
    per_route: Vec<RouteRules>,
    unknown_country: UnknownPolicy,
    unknown_asn: UnknownPolicy,
    flags: CompiledFlags,
    /// What [`Policy::refusal_at_accept`] reads.
    accept: accept::AcceptPlan,
}

fn mode(flags: &[FlagMode], i: usize) -> FlagMode {
    flags.get(i).copied().unwrap_or_default()
}

fn applies(routes: &Option<Vec<usize>>, route: Option<usize>) -> bool {
    match (routes, route) {
        (None, _) => true,
        (Some(list), Some(r)) => list.contains(&r),
        (Some(_), None) => false,
    }
}

/// Whole seconds to wait, rounded up, at least one: the `Retry-After` of every
/// rate-limit refusal, local or fleet.
pub fn retry_after_secs(wait: Duration) -> u64 {
    u64::try_from(wait.as_nanos().div_ceil(1_000_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The local fallback bucket of a fleet rule with failure mode `local`: the
/// rule at `share` of its rate and burst.
fn fallback_config(l: &LimitConfig) -> Option<LimitConfig> {
    let LimitScope::Fleet {
        failure: FleetFailure::Local { share },
    } = l.scope
    else {
        return None;
    };
    let mut local = l.clone();
    let scale = |n: u32| NonZeroU32::new(((f64::from(n) * share).floor() as u32).max(1));
    local.rate.count = scale(l.rate.count.get()).unwrap_or(l.rate.count);
    local.burst = scale(l.burst.get()).unwrap_or(l.burst);
    local.cost = local.cost.min(local.burst);
    Some(local)
}

impl<C: Clock + Clone> Policy<C> {
    /// Builds the policy of `config`. Limiter state of `previous` (fleet
    /// fallback buckets included) is kept for every rule whose name, key, rate,
    /// burst and key cap are unchanged, so a reload never hands an attacker
    /// fresh buckets.
    pub fn new(config: &Config, clock: C, previous: Option<&Policy<C>>) -> Self {
        if config
            .lockdown
            .flags
            .iter()
            .any(|f| !f.body_rules.is_empty())
        {
            // Phone number metadata loads once, here rather than on a request.
            crate::body::warm_up();
        }
        let access = config
            .access
            .iter()
            .map(|a| AccessRule {
                name: a.name.as_str().into(),
                action: a.action,
                clients: ClientMatch::new(&a.clients),
            })
            .collect();
        let keep = |rules: Option<&[Arc<RateRule<C>>]>, l: &LimitConfig| {
            rules
                .and_then(|rules| {
                    rules
                        .iter()
                        .find(|r| r.config.name == l.name && r.same_shape(l))
                })
                .cloned()
                .unwrap_or_else(|| Arc::new(RateRule::new(l.clone(), clock.clone())))
        };
        let limits: Vec<Arc<RateRule<C>>> = config
            .limits
            .iter()
            .map(|l| keep(previous.map(|p| p.limits.as_slice()), l))
            .collect();
        let previous_fallbacks: Option<Vec<Arc<RateRule<C>>>> =
            previous.map(|p| p.fleet_fallback.iter().flatten().cloned().collect());
        let fleet_fallback = config
            .limits
            .iter()
            .map(|l| {
                let local = fallback_config(l)?;
                Some(keep(previous_fallbacks.as_deref(), &local))
            })
            .collect();
        let bans = config
            .limits
            .iter()
            .map(|l| {
                let ban = l.ban.as_ref()?;
                // Kept only together with its rule's state (the same Arc): a
                // rebuilt rule hashes header and body values with a new key, so
                // an old ban on a hashed value would match nobody.
                let kept = previous.and_then(|p| {
                    p.limits
                        .iter()
                        .zip(&p.bans)
                        .find(|(r, b)| {
                            limits.iter().any(|kept| Arc::ptr_eq(kept, r))
                                && r.config.name == l.name
                                && b.as_ref().is_some_and(|b| b.config == *ban)
                        })
                        .and_then(|(_, b)| b.clone())
                });
                Some(kept.unwrap_or_else(|| Arc::new(BanTable::new(ban.clone(), clock.clone()))))
            })
            .collect();
        let concurrency = config
            .concurrency
            .iter()
            .map(|c| {
                previous
                    .and_then(|p| {
                        p.concurrency.iter().find(|r| {
                            r.config.name == c.name
                                && r.config.key == c.key
                                && r.config.max_in_flight == c.max_in_flight
                        })
                    })
                    .cloned()
                    .unwrap_or_else(|| Arc::new(ConcurrencyRule::new(c.clone())))
            })
            .collect();
        let per_route = (0..=config.routes.len())
            .map(|r| {
                let route = (r < config.routes.len()).then_some(r);
                let limits: Vec<usize> = (0..config.limits.len())
                    .filter(|&i| applies(&config.limits[i].routes, route))
                    .collect();
                RouteRules {
                    access: (0..config.access.len())
                        .filter(|&i| applies(&config.access[i].routes, route))
                        .collect(),
                    body_key_limit: limits
                        .iter()
                        .filter_map(|&i| match &config.limits[i].key {
                            KeyKind::Body(spec) => Some(spec.max_body_bytes),
                            _ => None,
                        })
                        .max(),
                    has_bans: limits.iter().any(|&i| config.limits[i].ban.is_some()),
                    early_limits: limits.iter().all(|&i| {
                        config.limits[i].scope == LimitScope::Local
                            && early_key(&config.limits[i].key)
                    }) && config
                        .concurrency
                        .iter()
                        .filter(|c| applies(&c.routes, route))
                        .all(|c| early_key(&c.key)),
                    limits,
                    concurrency: (0..config.concurrency.len())
                        .filter(|&i| applies(&config.concurrency[i].routes, route))
                        .collect(),
                }
            })
            .collect();
        Self {
            routes: RouteTable::new(config),
            allow: config
                .routes
                .iter()
                .map(|r| r.methods.join(", ").into())
                .collect(),
            access,
            fleet_fallback,
            limit_names: config
                .limits
                .iter()
                .map(|l| l.name.as_str().into())
                .collect(),
            bans,
            limit_clients: config
                .limits
                .iter()
                .map(|l| (!l.clients.is_everyone()).then(|| ClientMatch::new(&l.clients)))
                .collect(),
            limits,
            concurrency_names: config
                .concurrency
                .iter()
                .map(|c| c.name.as_str().into())
                .collect(),
            concurrency,
            per_route,
            unknown_country: config.geoip.unknown_country,
            unknown_asn: config.geoip.unknown_asn,
            flags: CompiledFlags::new(&config.lockdown),
            accept: accept::AcceptPlan::new(config),
        }
    }

    /// Starts deciding one request (see the module doc).
    pub fn evaluate(&self, charging: Charging) -> Evaluation<'_, C> {
        Evaluation {
            policy: self,
            charging,
            stage: Stage::Route,
            route: None,
            pool: None,
            refusal: None,
            allowed_by: None,
            observations: Vec::new(),
            permits: Vec::new(),
            body_checks: Vec::new(),
            fleet_checks: Vec::new(),
            fleet_answered: false,
            body: None,
            body_keys: Vec::new(),
            new_ban: None,
            key: None,
            identity: None,
            claim_missing: false,
            trace: (charging == Charging::DryRun).then(Vec::new),
        }
    }

    /// Runs a whole evaluation synchronously: `body` answers every
    /// [`Step::NeedBody`] (`None`: [`BodyRead::NotGiven`]) and `fleet` every
    /// [`Step::NeedFleet`]. Returns the verdict and, in a dry run, the trace.
    /// For callers without I/O of their own (explain without Redis, tests,
    /// benches).
    pub fn run(
        &self,
        facts: &RequestFacts<'_>,
        charging: Charging,
        body: Option<&[u8]>,
        mut fleet: impl FnMut(&[FleetCheck]) -> Vec<FleetAnswer>,
    ) -> (Verdict, Vec<TraceEntry>) {
        let mut evaluation = self.evaluate(charging);
        loop {
            match evaluation.next(facts) {
                Step::Done(verdict) => return (verdict, evaluation.take_trace()),
                Step::NeedBody { .. } => evaluation.give_body(match body {
                    Some(bytes) => BodyRead::Complete(bytes.to_vec()),
                    None => BodyRead::NotGiven,
                }),
                Step::NeedFleet(checks) => {
                    let answers = fleet(&checks);
                    evaluation.give_fleet(answers);
                }
            }
        }
    }

    /// The route table.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// The compiled lockdown flags.
    pub fn flags(&self) -> &CompiledFlags {
        &self.flags
    }

    fn rules_for(&self, route: Option<usize>) -> &RouteRules {
        let last = self.per_route.len() - 1;
        &self.per_route[route.map_or(last, |r| r.min(last))]
    }

    /// The tightest `limit_scale` among flags in `wanted` mode, with its flag index.
    fn scale(&self, flags: &[FlagMode], wanted: FlagMode) -> Option<(f64, usize)> {
        self.flags
            .flags
            .iter()
            .enumerate()
            .filter(|(i, _)| mode(flags, *i) == wanted)
            .filter_map(|(i, f)| f.config.limit_scale.map(|s| (s, i)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }

    /// The refusal for limit rule `rule` charged `cost` cells, `wait` before it fits.
    fn rate_limited(&self, rule: usize, cost: u32, wait: Duration) -> Option<Rejection> {
        let r = self.limits.get(rule)?;
        let rate = &r.config.rate;
        Some(Rejection::RateLimited {
            rule: self.limit_names[rule].clone(),
            retry_after: retry_after_secs(wait),
            // What a client may send now: a flag's limit_scale raises the
            // cost, so the advertised quota shrinks with it.
            quota: (rate.count.get() / cost.max(1)).max(1),
            window: rate.per.as_secs().max(1),
        })
    }

    /// The refusal of a request whose key limit rule `rule` has banned for
    /// `remaining` more.
    fn banned_refusal(&self, rule: usize, remaining: Duration) -> Rejection {
        Rejection::Banned {
            rule: self.limit_names[rule].clone(),
            retry_after: retry_after_secs(remaining),
        }
    }

    /// Rate rules, in config order.
    pub fn rate_rules(&self) -> &[Arc<RateRule<C>>] {
        &self.limits
    }

    /// The local fallback buckets of fleet rules with failure mode `local`,
    /// indexed like the rate rules.
    pub fn fallback_rules(&self) -> &[Option<Arc<RateRule<C>>>] {
        &self.fleet_fallback
    }

    /// The penalty boxes, indexed like the rate rules.
    pub fn ban_tables(&self) -> &[Option<Arc<BanTable<C>>>] {
        &self.bans
    }

    /// The penalty box of the rule called `name`, with the rule's key kind.
    pub fn ban_table(&self, name: &str) -> Option<(&Arc<BanTable<C>>, &KeyKind)> {
        let i = self.limits.iter().position(|r| r.config.name == name)?;
        Some((self.bans.get(i)?.as_ref()?, &self.limits[i].config.key))
    }

    /// Concurrency rules, in config order.
    pub fn concurrency_rules(&self) -> &[Arc<ConcurrencyRule>] {
        &self.concurrency
    }

    /// Sweeps every rate rule and fleet fallback bucket; returns `(rule name,
    /// keys dropped)` (fallback buckets under `NAME (fallback)`).
    pub fn sweep(&self) -> Vec<(String, usize)> {
        self.limits
            .iter()
            .map(|r| (r.config.name.clone(), r.sweep()))
            .chain(
                self.fleet_fallback
                    .iter()
                    .flatten()
                    .map(|r| (format!("{} (fallback)", r.config.name), r.sweep())),
            )
            .chain(self.limits.iter().zip(&self.bans).filter_map(|(r, b)| {
                Some((format!("{} (bans)", r.config.name), b.as_ref()?.sweep()))
            }))
            .collect()
    }
}

/// Where an evaluation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Steps 1 and 2: route and access rules.
    Route,
    /// Steps 3 and 4: flags and unknown origin.
    Flags,
    /// Asks for the body when a limit is keyed by a body field.
    BodyKeys,
    Limits,
    Fleet,
    BodyRules,
    BodyRulesAsked,
    Done,
}

/// A body rule of an active flag to run on this request.
#[derive(Debug, Clone, Copy)]
struct BodyCheck {
    flag: usize,
    rule: usize,
    preview: bool,
}

/// One request's decision in progress (see the module doc). Holds no
/// reference into the request: the facts are passed to every [`Evaluation::next`].
#[derive(Debug)]
pub struct Evaluation<'p, C: Clock + Clone = DefaultClock> {
    policy: &'p Policy<C>,
    charging: Charging,
    stage: Stage,
    route: Option<usize>,
    pool: Option<usize>,
    refusal: Option<Rejection>,
    allowed_by: Option<Arc<str>>,
    observations: Vec<Observation>,
    permits: Vec<ConcurrencyPermit>,
    body_checks: Vec<BodyCheck>,
    fleet_checks: Vec<FleetCheck>,
    fleet_answered: bool,
    body: Option<BodyRead>,
    /// Normalised body key values, indexed like the config's limits.
    body_keys: Vec<Option<String>>,
    new_ban: Option<NewBan>,
    /// The key whose bucket, ban or cap refused.
    key: Option<LimitKey>,
    /// The verified identity, once a jwt rule asked for it.
    identity: Option<crate::jwt::IdentityOutcome>,
    claim_missing: bool,
    trace: Option<Vec<TraceEntry>>,
}

impl<C: Clock + Clone> Evaluation<'_, C> {
    /// Runs the pipeline as far as it can without I/O.
    pub fn next(&mut self, facts: &RequestFacts<'_>) -> Step {
        loop {
            if let Some(step) = self.step(facts) {
                return step;
            }
        }
    }

    /// Runs the pipeline as far as the request's address, JA4, host, path and
    /// method decide it, before its fields are read: `facts.headers` may be
    /// empty. `Some` is the step [`Self::next`] would have returned; `None`
    /// means a stage ahead reads what is not known yet (the fields or body
    /// for a flag's session check or body rule on this route, a header, body
    /// or jwt key, the fleet), and
    /// [`Self::next`] with the whole facts goes on from there. Nothing done
    /// here is done again, so each bucket is charged once.
    ///
    /// The facts given to `next` afterwards must name the same client, host,
    /// path and method (the caller checks that its two readings agree).
    pub fn next_early(&mut self, facts: &RequestFacts<'_>) -> Option<Step> {
        loop {
            let rules = self.policy.rules_for(self.route);
            let known = match self.stage {
                Stage::Route => true,
                // A flag on that checks a session or adds a body rule on this
                // route reads more than the head's first line and Host.
                Stage::Flags => facts.flags.iter().enumerate().all(|(i, &m)| {
                    m == FlagMode::Off
                        || self
                            .policy
                            .flags
                            .flags
                            .get(i)
                            .is_none_or(|f| !f.reads_request(self.route))
                }),
                Stage::BodyKeys => self.allowed_by.is_some() || rules.body_key_limit.is_none(),
                Stage::Limits => self.allowed_by.is_some() || rules.early_limits,
                Stage::Fleet => self.fleet_checks.is_empty(),
                Stage::BodyRules => self.body_checks.is_empty(),
                Stage::BodyRulesAsked | Stage::Done => false,
            };
            if !known {
                return None;
            }
            if let Some(step) = self.step(facts) {
                return Some(step);
            }
        }
    }

    /// Runs one stage: `Some` when the caller must act (or the verdict is in).
    fn step(&mut self, facts: &RequestFacts<'_>) -> Option<Step> {
        match self.stage {
            Stage::Route => {
                self.stage = Stage::Flags;
                self.route_access(facts);
                if self.refusal.is_some() {
                    return Some(self.finish());
                }
            }
            Stage::Flags => {
                self.stage = Stage::BodyKeys;
                self.flags_and_origin(facts);
                if self.refusal.is_some() {
                    return Some(self.finish());
                }
            }
            Stage::BodyKeys => {
                self.stage = Stage::Limits;
                if self.allowed_by.is_none() && self.body.is_none() {
                    let rules = self.policy.rules_for(self.route);
                    if let Some(limit) = rules.body_key_limit {
                        // Nothing is charged before the body keys are known.
                        return Some(Step::NeedBody {
                            limit: limit.max(self.body_rule_limit()),
                        });
                    }
                }
            }
            Stage::Limits => {
                self.stage = Stage::Fleet;
                if self.allowed_by.is_none() {
                    self.body_key_values(facts);
                    if self.refusal.is_none() {
                        self.limits(facts);
                    }
                    if self.refusal.is_some() {
                        return Some(self.finish());
                    }
                    if !self.fleet_checks.is_empty() {
                        return Some(Step::NeedFleet(self.fleet_checks.clone()));
                    }
                }
            }
            Stage::Fleet => {
                self.stage = Stage::BodyRules;
                if !self.fleet_answered && !self.fleet_checks.is_empty() {
                    // Asked and not answered: as if Redis had not answered.
                    self.give_fleet(Vec::new());
                }
                if self.refusal.is_some() {
                    return Some(self.finish());
                }
            }
            Stage::BodyRules => {
                if !self.body_checks.is_empty() && self.body.is_none() {
                    self.stage = Stage::BodyRulesAsked;
                    return Some(Step::NeedBody {
                        limit: self.body_rule_limit(),
                    });
                }
                self.stage = Stage::Done;
                self.body_rules(facts);
                return Some(self.finish());
            }
            Stage::BodyRulesAsked => {
                self.stage = Stage::Done;
                self.body_rules(facts);
                return Some(self.finish());
            }
            Stage::Done => return Some(self.finish()),
        }
        None
    }

    /// Hands over the body asked for by [`Step::NeedBody`].
    pub fn give_body(&mut self, read: BodyRead) {
        self.body = Some(read);
    }

    /// Hands over Redis's answers to [`Step::NeedFleet`], in the order asked;
    /// a missing answer counts as [`FleetAnswer::Unavailable`]. A failed check
    /// takes its rule's failure mode: `open` lets the request on, `closed`
    /// refuses it (Retry-After 1 s), `local` charges the node's fallback bucket.
    pub fn give_fleet(&mut self, answers: Vec<FleetAnswer>) {
        self.fleet_answered = true;
        let checks = std::mem::take(&mut self.fleet_checks);
        for (i, check) in checks.iter().enumerate() {
            let answer = answers.get(i).copied().unwrap_or(FleetAnswer::Unavailable);
            let Some(rule) = self.policy.limits.get(check.rule) else {
                continue;
            };
            let (wait, how) = match answer {
                FleetAnswer::Allowed => (None, "allowed by the fleet bucket"),
                FleetAnswer::Limited { retry_after } => {
                    (Some(retry_after), "the fleet bucket is empty")
                }
                FleetAnswer::Unavailable => match rule.config.scope {
                    LimitScope::Fleet {
                        failure: FleetFailure::Closed,
                    } => (
                        Some(Duration::from_secs(1)),
                        "Redis did not answer; failure mode closed refuses",
                    ),
                    LimitScope::Fleet {
                        failure: FleetFailure::Local { .. },
                    } => match self.fallback(check) {
                        Some(RuleOutcome::Limited { retry_after }) => (
                            Some(retry_after),
                            "Redis did not answer; the local fallback bucket is empty",
                        ),
                        _ => (
                            None,
                            "Redis did not answer; allowed by the local fallback bucket",
                        ),
                    },
                    _ => (None, "Redis did not answer; failure mode open allows"),
                },
            };
            let outcome = match (&wait, &check.enforcement, &self.refusal) {
                (_, _, Some(_)) => TraceOutcome::Skipped,
                (None, _, None) => TraceOutcome::Passed,
                (Some(_), Enforcement::Enforce, None) => TraceOutcome::Refused,
                (Some(_), _, None) => TraceOutcome::Observed,
            };
            self.note(|| TraceEntry {
                kind: RuleKind::FleetLimit,
                name: rule.config.name.as_str().into(),
                key: describe_key(&check.key),
                detail: how.into(),
                outcome,
                shadow: check.enforcement != Enforcement::Enforce,
            });
            if outcome == TraceOutcome::Skipped {
                continue;
            }
            let Some(wait) = wait else { continue };
            match &check.enforcement {
                Enforcement::Enforce => {
                    self.refusal = self.policy.rate_limited(check.rule, check.cost, wait);
                    self.key = Some(check.key);
                    // Only a refusal by the fleet bucket itself counts toward a
                    // ban: never one Redis being unreachable caused (closed
                    // mode, or the smaller fallback bucket).
                    if matches!(answer, FleetAnswer::Limited { .. }) {
                        self.strike(check.rule, check.key);
                    }
                }
                Enforcement::Shadow => self.observations.push(Observation::Shadow {
                    rule: self.policy.limit_names[check.rule].clone(),
                }),
                Enforcement::Preview { flag } => {
                    self.observations
                        .push(Observation::Preview { flag: flag.clone() });
                }
            }
        }
        if self.refusal.is_some() {
            self.permits.clear();
        }
    }

    /// The dry run's trace (empty when charging).
    pub fn take_trace(&mut self) -> Vec<TraceEntry> {
        self.trace.take().unwrap_or_default()
    }

    fn note(&mut self, entry: impl FnOnce() -> TraceEntry) {
        if let Some(trace) = &mut self.trace {
            trace.push(entry());
        }
    }

    fn finish(&mut self) -> Step {
        self.stage = Stage::Done;
        let refused = self.refusal.is_some();
        Step::Done(Verdict {
            route: self.route,
            pool: if refused { None } else { self.pool },
            refusal: self.refusal.clone(),
            allowed_by: self.allowed_by.clone(),
            observations: std::mem::take(&mut self.observations),
            permits: if refused {
                Vec::new()
            } else {
                std::mem::take(&mut self.permits)
            },
            new_ban: self.new_ban.take(),
            key: if refused { self.key } else { None },
            identity: self.identity.take(),
            claim_missing: self.claim_missing,
        })
    }

    /// The largest body the collected body rules read.
    fn body_rule_limit(&self) -> usize {
        self.body_checks
            .iter()
            .filter_map(|c| {
                self.policy
                    .flags
                    .flags
                    .get(c.flag)?
                    .config
                    .body_rules
                    .get(c.rule)
            })
            .map(|r| r.max_body_bytes)
            .max()
            .unwrap_or(0)
    }

    /// Steps 1 and 2: route and access rules.
    fn route_access(&mut self, facts: &RequestFacts<'_>) {
        let policy = self.policy;
        match policy.routes.find(facts.host, facts.path, facts.method) {
            RouteMatch::Route { route, pool } => {
                self.route = Some(route);
                self.pool = Some(pool);
            }
            RouteMatch::Fallback { pool } => self.pool = Some(pool),
            RouteMatch::MethodNotAllowed { route } => {
                self.route = Some(route);
                self.refusal = Some(Rejection::MethodNotAllowed {
                    allow: policy
                        .allow
                        .get(route)
                        .cloned()
                        .unwrap_or_else(|| "".into()),
                });
                return;
            }
            RouteMatch::Reject { status } => {
                self.refusal = Some(Rejection::NoRoute { status });
                return;
            }
        }
        let rules = policy.rules_for(self.route);

        for &i in &rules.access {
            let rule = &policy.access[i];
            let matched = if self.allowed_by.is_some() {
                None
            } else {
                rule.clients
                    .matches(facts.ip, &facts.geo, facts.ja4.as_ref())
            };
            let decided = self.allowed_by.is_some();
            self.note(|| TraceEntry {
                kind: RuleKind::Access,
                name: rule.name.clone(),
                key: String::new(),
                detail: match (matched, rule.action) {
                    (None, _) if decided => "an earlier allow rule decided".into(),
                    (None, _) => "no match".into(),
                    (Some(m), AccessAction::Allow) => {
                        format!("allow: matches by {m:?}; limits are skipped")
                    }
                    (Some(m), AccessAction::Deny) => format!("deny: matches by {m:?}"),
                },
                outcome: match (matched, rule.action) {
                    (None, _) if decided => TraceOutcome::Skipped,
                    (None, _) => TraceOutcome::NoMatch,
                    (Some(_), AccessAction::Allow) => TraceOutcome::Passed,
                    (Some(_), AccessAction::Deny) => TraceOutcome::Refused,
                },
                shadow: false,
            });
            let Some(matched) = matched else { continue };
            match rule.action {
                AccessAction::Allow => self.allowed_by = Some(rule.name.clone()),
                AccessAction::Deny => {
                    self.refusal = Some(denied(&rule.name, matched));
                    return;
                }
            }
        }
    }

    /// Steps 3 and 4: flags and unknown origin.
    fn flags_and_origin(&mut self, facts: &RequestFacts<'_>) {
        let policy = self.policy;

        for (i, flag) in policy.flags.flags.iter().enumerate() {
            let m = mode(facts.flags, i);
            if m == FlagMode::Off {
                continue;
            }
            let refusal = flag.check(self.route, facts.ip, &facts.geo, facts.headers);
            let preview = m == FlagMode::Preview;
            self.note(|| TraceEntry {
                kind: RuleKind::Flag,
                name: flag.name.clone(),
                key: String::new(),
                detail: match &refusal {
                    Some(r) if preview => {
                        format!("previewed: would answer {} ({})", r.status(), r.label())
                    }
                    Some(r) => format!("enforced: answers {} ({})", r.status(), r.label()),
                    None => format!(
                        "{}: does not refuse this request",
                        if preview { "previewed" } else { "enforced" }
                    ),
                },
                outcome: match (&refusal, preview) {
                    (None, _) => TraceOutcome::Passed,
                    (Some(_), true) => TraceOutcome::Observed,
                    (Some(_), false) => TraceOutcome::Refused,
                },
                shadow: preview,
            });
            if let Some(refusal) = refusal {
                if !preview {
                    self.refusal = Some(refusal);
                    return;
                }
                self.observations.push(Observation::Preview {
                    flag: flag.name.clone(),
                });
            }
            if let Some(route) = self.route {
                for (j, rule) in flag.config.body_rules.iter().enumerate() {
                    let method_checked =
                        rule.methods.is_empty() || rule.methods.iter().any(|m| m == facts.method);
                    if rule.route == route && method_checked {
                        self.body_checks.push(BodyCheck {
                            flag: i,
                            rule: j,
                            preview,
                        });
                    }
                }
            }
        }
        // The allow list skips unknown-origin refusals, limits and in-flight caps.
        if self.allowed_by.is_some() {
            return;
        }
        for (policy_value, unknown, name, refusal) in [
            (
                policy.unknown_country,
                facts.geo.country.is_none(),
                "geoip.unknown_country",
                Rejection::UnknownCountry,
            ),
            (
                policy.unknown_asn,
                facts.geo.asn.is_none(),
                "geoip.unknown_asn",
                Rejection::UnknownAsn,
            ),
        ] {
            if policy_value != UnknownPolicy::Deny {
                continue;
            }
            self.note(|| TraceEntry {
                kind: RuleKind::UnknownOrigin,
                name: name.into(),
                key: String::new(),
                detail: if unknown {
                    "deny: the client's origin is unknown".into()
                } else {
                    "deny: the client's origin is known".into()
                },
                outcome: if unknown {
                    TraceOutcome::Refused
                } else {
                    TraceOutcome::Passed
                },
                shadow: false,
            });
            if unknown {
                self.refusal = Some(refusal);
                return;
            }
        }
    }

    /// The facts rule `i` (of kind `kind`) is keyed by.
    fn key_facts<'a>(&'a self, facts: &RequestFacts<'a>, kind: &KeyKind, i: usize) -> KeyFacts<'a> {
        KeyFacts {
            ip: facts.ip,
            geo: facts.geo,
            header: match kind {
                KeyKind::Header(name) => facts.headers.get(name.as_str()).map(|v| v.as_bytes()),
                _ => None,
            },
            body: match kind {
                KeyKind::Body(_) => self
                    .body_keys
                    .get(i)
                    .and_then(|v| v.as_deref())
                    .map(str::as_bytes),
                _ => None,
            },
            ja4: facts.ja4,
            jwt: match kind {
                KeyKind::Jwt { claim } => self
                    .identity
                    .as_ref()
                    .and_then(|o| o.claim(claim))
                    .map(str::as_bytes),
                _ => None,
            },
        }
    }

    /// The key of a rule of `kind` (rule `i`): asks for the verified identity
    /// first when the rule is keyed by it, and notes a missing claim.
    fn rule_key(
        &mut self,
        facts: &RequestFacts<'_>,
        kind: &KeyKind,
        i: usize,
        key: impl FnOnce(&KeyFacts<'_>) -> LimitKey,
    ) -> LimitKey {
        if let KeyKind::Jwt { claim } = kind {
            self.ensure_identity(facts);
            if let Some(crate::jwt::IdentityOutcome::Verified { token, .. }) = &self.identity {
                if token.claim(claim).is_none() {
                    self.claim_missing = true;
                }
            }
        }
        key(&self.key_facts(facts, kind, i))
    }

    /// Verifies the request's bearer token, once (traced in a dry run).
    fn ensure_identity(&mut self, facts: &RequestFacts<'_>) {
        if self.identity.is_some() {
            return;
        }
        use crate::jwt::{IdentityOutcome, Unverified};
        let outcome = match facts.identity {
            IdentitySource::None => IdentityOutcome::Unverified(Unverified::NoVerifier),
            IdentitySource::Verify(verifier) => verifier.verify_request(facts.headers),
            IdentitySource::Recorded(Some(recorded)) => recorded.outcome(),
            IdentitySource::Recorded(None) => IdentityOutcome::Unverified(Unverified::NotRecorded),
        };
        self.note(|| {
            let (detail, outcome_label) = outcome.describe();
            TraceEntry {
                kind: RuleKind::Identity,
                name: "jwt".into(),
                key: String::new(),
                detail,
                outcome: outcome_label,
                shadow: false,
            }
        });
        self.identity = Some(outcome);
    }

    /// The key as explain shows it: for jwt rules, whether it is the token's
    /// claim or the address it fell back to, and why.
    fn key_text(&self, kind: &KeyKind, key: &LimitKey) -> String {
        let KeyKind::Jwt { claim } = kind else {
            return describe_key(key);
        };
        match (key, &self.identity) {
            (LimitKey::Hashed(_), _) => format!("jwt claim {claim} (hashed)"),
            (_, Some(crate::jwt::IdentityOutcome::Verified { .. })) => format!(
                "{} (the verified token has no {claim}: counted by address)",
                describe_key(key)
            ),
            (_, Some(crate::jwt::IdentityOutcome::Unverified(why))) => format!(
                "{} (no verified token, {}: counted by address)",
                describe_key(key),
                why.as_label()
            ),
            (_, None) => describe_key(key),
        }
    }

    /// Step 5: reads the fields of the route's `key = "body"` limits.
    fn body_key_values(&mut self, facts: &RequestFacts<'_>) {
        let policy = self.policy;
        let rules = policy.rules_for(self.route);
        if rules.body_key_limit.is_none() {
            return;
        }
        let source = match BodySource::of(self.body.as_ref(), facts) {
            Some(source) => source,
            None if matches!(self.body, Some(BodyRead::NotGiven))
                && self.charging == Charging::DryRun =>
            {
                // Explain without a body: those limits are traced as skipped.
                return;
            }
            None => {
                self.refusal = self
                    .body
                    .as_ref()
                    .and_then(BodyRead::refusal)
                    .or(Some(Rejection::ClientError { status: 400 }));
                return;
            }
        };
        let mut values = vec![None; policy.limits.len()];
        let mut refused = None;
        for &i in &rules.limits {
            let KeyKind::Body(spec) = &policy.limits[i].config.key else {
                continue;
            };
            match source.key_value(spec) {
                Ok(v) => values[i] = Some(v),
                Err(refusal) => {
                    refused = Some(Rejection::BodyRefused {
                        flag: policy.limit_names[i].clone(),
                        status: refusal.status(),
                        detail: refusal.detail(),
                    });
                    break;
                }
            }
        }
        self.body_keys = values;
        if let Some(refusal) = refused {
            let label = refusal.rule().unwrap_or_default().to_string();
            let detail = refusal.detail();
            self.note(|| TraceEntry {
                kind: RuleKind::BodyKey,
                name: label.into(),
                key: String::new(),
                detail: format!("the body cannot be read unambiguously: {detail}"),
                outcome: TraceOutcome::Refused,
                shadow: false,
            });
            self.refusal = Some(refusal);
        }
    }

    /// Steps 6 and 7: local limits (fleet ones are collected) and in-flight caps.
    fn limits(&mut self, facts: &RequestFacts<'_>) {
        let policy = self.policy;
        let dry = self.charging == Charging::DryRun;
        let rules = policy.rules_for(self.route);
        let scale = policy.scale(facts.flags, FlagMode::Enforce).map(|(s, _)| s);
        let preview_scale = policy.scale(facts.flags, FlagMode::Preview);
        let mut preview_scale_hit = false;
        if rules.has_bans && self.banned(facts) {
            return;
        }
        for &i in &rules.limits {
            let rule = &policy.limits[i];
            let Some(enforcement) = self.applicable(facts, i, true) else {
                continue;
            };
            if matches!(rule.config.key, KeyKind::Body(_)) && self.body_keys.is_empty() {
                // Dry run without a body.
                self.note(|| TraceEntry {
                    kind: RuleKind::Limit,
                    name: rule.config.name.as_str().into(),
                    key: "body field (hashed)".into(),
                    detail: "keyed by a field of the request body; explain was given no body"
                        .into(),
                    outcome: TraceOutcome::Skipped,
                    shadow: rule.config.shadow,
                });
                continue;
            }
            let key = self.rule_key(facts, &rule.config.key, i, |f| rule.key(f));
            let cost = scale.map_or(rule.config.cost, |s| rule.scaled_cost(s));
            if matches!(rule.config.scope, LimitScope::Fleet { .. }) {
                self.fleet_checks.push(FleetCheck {
                    rule: i,
                    key,
                    cost: cost.get(),
                    enforcement,
                });
                continue;
            }
            // Cells free before this request, for a previewed limit_scale.
            let free_before = preview_scale.map(|_| rule.peek(&key).cells);
            let (outcome, own_key) = if dry {
                (rule.peek_cost(key, cost), true)
            } else {
                let (outcome, charged) = rule.check_cost_charged(key, cost);
                (outcome, charged == key)
            };
            let key_text = self
                .trace
                .is_some()
                .then(|| self.key_text(&rule.config.key, &key));
            self.note(|| {
                let state = rule.peek(&key);
                TraceEntry {
                    kind: RuleKind::Limit,
                    name: rule.config.name.as_str().into(),
                    key: key_text.unwrap_or_default(),
                    detail: format!(
                        "{} requests left of {} (rate {}/{}s, cost {}){}",
                        state.cells / cost.get(),
                        rule.config.burst.get() / cost.get(),
                        rule.config.rate.count,
                        rule.config.rate.per.as_secs_f64(),
                        cost,
                        if state.tracked {
                            ""
                        } else {
                            "; key not tracked (full bucket)"
                        }
                    ),
                    outcome: match (outcome, &enforcement) {
                        (RuleOutcome::Allowed, _) => TraceOutcome::Passed,
                        (_, Enforcement::Enforce) => TraceOutcome::Refused,
                        _ => TraceOutcome::Observed,
                    },
                    shadow: enforcement != Enforcement::Enforce,
                }
            });
            let retry_after = match outcome {
                RuleOutcome::Allowed => {
                    if let (Some((s, _)), Some(free)) = (preview_scale, free_before) {
                        // Would a bucket tightened by `s` have held this request? Its
                        // use is the real use divided by `s` (as if every request so
                        // far had been charged the tightened cost).
                        let burst = f64::from(rule.config.burst.get());
                        let tight_free = burst - (burst - f64::from(free)) / s;
                        preview_scale_hit |= tight_free < f64::from(rule.scaled_cost(s).get());
                    }
                    continue;
                }
                RuleOutcome::Limited { retry_after } => retry_after,
            };
            match enforcement {
                Enforcement::Preview { flag } => {
                    self.observations.push(Observation::Preview { flag });
                }
                Enforcement::Shadow => self.observations.push(Observation::Shadow {
                    rule: policy.limit_names[i].clone(),
                }),
                Enforcement::Enforce => {
                    self.refusal = policy.rate_limited(i, cost.get(), retry_after);
                    self.key = Some(key);
                    // A refusal by a shared coarser or overflow bucket (the
                    // store was full) is not this client's doing: no strike.
                    if own_key {
                        self.strike(i, key);
                    }
                    return;
                }
            }
        }
        if preview_scale_hit {
            if let Some(flag) = preview_scale.and_then(|(_, f)| policy.flags.flags.get(f)) {
                self.observations.push(Observation::Preview {
                    flag: flag.name.clone(),
                });
            }
        }

        for &i in &rules.concurrency {
            let rule = &policy.concurrency[i];
            let key = self.rule_key(facts, &rule.config.key, i, |f| rule.key(f));
            let max = rule.config.max_in_flight.get();
            let taken = if dry {
                rule.in_flight(&key) < max
            } else {
                match rule.acquire(key) {
                    Some(permit) => {
                        self.permits.push(permit);
                        true
                    }
                    None => false,
                }
            };
            let key_text = self
                .trace
                .is_some()
                .then(|| self.key_text(&rule.config.key, &key));
            self.note(|| TraceEntry {
                kind: RuleKind::Concurrency,
                name: rule.config.name.as_str().into(),
                key: key_text.unwrap_or_default(),
                detail: format!("{} of {max} in flight", rule.in_flight(&key)),
                outcome: match (taken, rule.config.shadow) {
                    (true, _) => TraceOutcome::Passed,
                    (false, true) => TraceOutcome::Observed,
                    (false, false) => TraceOutcome::Refused,
                },
                shadow: rule.config.shadow,
            });
            if taken {
                continue;
            }
            if rule.config.shadow {
                self.observations.push(Observation::Shadow {
                    rule: policy.concurrency_names[i].clone(),
                });
            } else {
                self.permits.clear();
                self.refusal = Some(Rejection::TooManyInFlight {
                    rule: policy.concurrency_names[i].clone(),
                });
                self.key = Some(key);
                return;
            }
        }
    }

    /// How limit `i` applies to this request: `None` when it does not (its
    /// flag is off, or the client is outside its networks, ASNs or countries).
    fn applicable(
        &mut self,
        facts: &RequestFacts<'_>,
        i: usize,
        trace: bool,
    ) -> Option<Enforcement> {
        let policy = self.policy;
        let rule = policy.limits.get(i)?;
        let mut enforcement = if rule.config.shadow {
            Enforcement::Shadow
        } else {
            Enforcement::Enforce
        };
        if let Some(f) = rule.config.only_with_flag {
            match mode(facts.flags, f) {
                FlagMode::Off => return None,
                FlagMode::Preview => {
                    if let Some(flag) = policy.flags.flags.get(f) {
                        enforcement = Enforcement::Preview {
                            flag: flag.name.clone(),
                        };
                    }
                }
                FlagMode::Enforce => {}
            }
        }
        if let Some(Some(clients)) = policy.limit_clients.get(i) {
            if clients
                .matches(facts.ip, &facts.geo, facts.ja4.as_ref())
                .is_none()
            {
                if trace {
                    self.note(|| TraceEntry {
                        kind: RuleKind::Limit,
                        name: rule.config.name.as_str().into(),
                        key: String::new(),
                        detail: "does not apply to this client (its networks, ASNs or countries)"
                            .into(),
                        outcome: TraceOutcome::NoMatch,
                        shadow: rule.config.shadow,
                    });
                }
                return None;
            }
        }
        Some(enforcement)
    }

    /// The penalty boxes, before any bucket is charged: refuses the request
    /// when an enforced rule that applies holds its key banned.
    fn banned(&mut self, facts: &RequestFacts<'_>) -> bool {
        let policy = self.policy;
        for &i in &policy.rules_for(self.route).limits {
            let Some(Some(table)) = policy.bans.get(i) else {
                continue;
            };
            if self.applicable(facts, i, false) != Some(Enforcement::Enforce) {
                continue;
            }
            let rule = &policy.limits[i];
            if matches!(rule.config.key, KeyKind::Body(_)) && self.body_keys.is_empty() {
                continue;
            }
            let key = self.rule_key(facts, &rule.config.key, i, |f| rule.key(f));
            let remaining = table.banned(&key);
            let key_text = self
                .trace
                .is_some()
                .then(|| self.key_text(&rule.config.key, &key));
            self.note(|| TraceEntry {
                kind: RuleKind::Ban,
                name: rule.config.name.as_str().into(),
                key: key_text.unwrap_or_default(),
                detail: match remaining {
                    Some(r) => format!("banned for {} more s", retry_after_secs(r)),
                    None => format!(
                        "not banned ({} refusals within {} s ban)",
                        table.config.after,
                        table.config.within.as_secs()
                    ),
                },
                outcome: if remaining.is_some() {
                    TraceOutcome::Refused
                } else {
                    TraceOutcome::Passed
                },
                shadow: false,
            });
            if let Some(remaining) = remaining {
                self.refusal = Some(policy.banned_refusal(i, remaining));
                self.key = Some(key);
                return true;
            }
        }
        false
    }

    /// Counts a refusal by limit `rule` of `key` in its penalty box (real
    /// requests only).
    fn strike(&mut self, rule: usize, key: LimitKey) {
        if self.charging != Charging::Charge {
            return;
        }
        // Every client whose AS or country is unknown shares that key: banning
        // it would ban them all for one of them.
        if matches!(key, LimitKey::Asn(0)) || key == LimitKey::Country(crate::geo::UNKNOWN_COUNTRY)
        {
            return;
        }
        if let Some(Some(table)) = self.policy.bans.get(rule) {
            if let Some((length, offenses)) = table.strike_counted(key) {
                self.new_ban = Some(NewBan {
                    rule,
                    key,
                    length,
                    offenses,
                });
            }
        }
    }

    /// Charges (or peeks at) the local fallback bucket of a fleet rule.
    fn fallback(&self, check: &FleetCheck) -> Option<RuleOutcome> {
        let local = self.policy.fleet_fallback.get(check.rule)?.as_ref()?;
        let cost = NonZeroU32::new(check.cost.min(local.config.burst.get()).max(1))?;
        Some(match self.charging {
            Charging::Charge => local.check_cost(check.key, cost),
            Charging::DryRun => local.peek_cost(check.key, cost),
        })
    }

    /// Step 9: the body rules of active flags.
    fn body_rules(&mut self, facts: &RequestFacts<'_>) {
        let checks = std::mem::take(&mut self.body_checks);
        if checks.is_empty() {
            return;
        }
        let policy = self.policy;
        let source = match BodySource::of(self.body.as_ref(), facts) {
            Some(source) => source,
            None if matches!(self.body, Some(BodyRead::NotGiven))
                && self.charging == Charging::DryRun =>
            {
                for check in &checks {
                    if let Some(flag) = policy.flags.flags.get(check.flag) {
                        self.note(|| TraceEntry {
                            kind: RuleKind::BodyRule,
                            name: flag.name.clone(),
                            key: String::new(),
                            detail: "reads the request body; explain was given no body".into(),
                            outcome: TraceOutcome::Skipped,
                            shadow: check.preview,
                        });
                    }
                }
                return;
            }
            None => {
                self.refusal = self
                    .body
                    .as_ref()
                    .and_then(BodyRead::refusal)
                    .or(Some(Rejection::ClientError { status: 400 }));
                self.permits.clear();
                return;
            }
        };
        let mut refusal = None;
        let mut traced = Vec::new();
        let mut observations = Vec::new();
        for check in checks {
            let Some(flag) = policy.flags.flags.get(check.flag) else {
                continue;
            };
            let Some(rule) = flag.config.body_rules.get(check.rule) else {
                continue;
            };
            let refused = source.check(rule).err();
            traced.push((flag.name.clone(), refused.clone(), check.preview));
            let Some(refused) = refused else { continue };
            if check.preview {
                observations.push(Observation::Preview {
                    flag: flag.name.clone(),
                });
                continue;
            }
            refusal = Some(Rejection::BodyRefused {
                flag: flag.name.clone(),
                status: refused.status(),
                detail: refused.detail(),
            });
            break;
        }
        for (name, refused, preview) in traced {
            self.note(|| TraceEntry {
                kind: RuleKind::BodyRule,
                name,
                key: String::new(),
                detail: match &refused {
                    Some(r) => format!("answers {}: {}", r.status(), r.detail()),
                    None => "the body passes".into(),
                },
                outcome: match (&refused, preview) {
                    (None, _) => TraceOutcome::Passed,
                    (Some(_), true) => TraceOutcome::Observed,
                    (Some(_), false) => TraceOutcome::Refused,
                },
                shadow: preview,
            });
        }
        self.observations.extend(observations);
        if refusal.is_some() {
            self.permits.clear();
            self.refusal = refusal;
        }
    }
}

/// A body the rules can read: bytes as received, or a recording's fields.
enum BodySource<'a> {
    Bytes(BodyInput<'a>),
    Recorded(&'a crate::body::RecordedBody),
}

impl<'a> BodySource<'a> {
    /// The readable body in `read`, if there is one.
    fn of(read: Option<&'a BodyRead>, facts: &RequestFacts<'a>) -> Option<Self> {
        match read? {
            BodyRead::Complete(bytes) => Some(BodySource::Bytes(BodyInput {
                headers: facts.headers,
                query: facts.query,
                body: bytes,
            })),
            BodyRead::Recorded(body) => Some(BodySource::Recorded(body)),
            _ => None,
        }
    }

    fn key_value(&self, spec: &rampart_config::BodyKeyConfig) -> Result<String, BodyRefusal> {
        match self {
            BodySource::Bytes(input) => crate::body::body_key_value(spec, input),
            BodySource::Recorded(body) => crate::body::body_key_recorded(spec, body),
        }
    }

    fn check(&self, rule: &rampart_config::BodyRuleConfig) -> Result<(), BodyRefusal> {
        match self {
            BodySource::Bytes(input) => crate::body::check_body(rule, input),
            BodySource::Recorded(body) => crate::body::check_recorded(rule, body),
        }
    }
}

/// The refusal of deny rule `rule` for a client that matched it by `matched`.
fn denied(rule: &Arc<str>, matched: MatchedBy) -> Rejection {
    let rule = rule.clone();
    match matched {
        MatchedBy::Network => Rejection::DeniedByNetwork { rule },
        MatchedBy::Asn(asn) => Rejection::DeniedByAsn { rule, asn },
        MatchedBy::Country(country) => Rejection::DeniedByCountry { rule, country },
        MatchedBy::Ja4 => Rejection::DeniedByJa4 { rule },
    }
}

fn describe_key(key: &LimitKey) -> String {
    match key {
        LimitKey::Ip(ip) => ip.to_string(),
        LimitKey::Net(net) => net.to_string(),
        LimitKey::Asn(0) => "AS unknown".into(),
        LimitKey::Asn(n) => format!("AS{n}"),
        LimitKey::Country(c) => c.to_string(),
        LimitKey::Hashed(_) => "hashed value".into(),
        LimitKey::Ja4(j) => j.to_string(),
        LimitKey::Whole => "whole route".into(),
        LimitKey::Overflow => "overflow".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::path::Path;
    use std::time::Duration;

    const BASE: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"
[pools.web]
servers = ["127.0.0.1:9000"]
[[routes]]
name = "login"
path_prefix = "/login"
pool = "web"
[[routes]]
name = "chat"
pool = "web"
"#;

    fn policy(extra: &str) -> (Policy<FakeRelativeClock>, FakeRelativeClock) {
        let config = rampart_config::parse(&format!("{BASE}{extra}"), Path::new("t.toml")).unwrap();
        let clock = FakeRelativeClock::default();
        (Policy::new(&config, clock.clone(), None), clock)
    }

    /// The old shape of a decision, so the tests read as before.
    #[derive(Debug)]
    struct Decision {
        rejection: Option<Rejection>,
        allowed_by: Option<Arc<str>>,
        shadow: Vec<Arc<str>>,
        preview: Vec<Arc<str>>,
    }

    impl From<Verdict> for Decision {
        fn from(v: Verdict) -> Self {
            let mut d = Decision {
                rejection: v.refusal,
                allowed_by: v.allowed_by,
                shadow: Vec::new(),
                preview: Vec::new(),
            };
            for o in v.observations {
                match o {
                    Observation::Shadow { rule } => d.shadow.push(rule),
                    Observation::Preview { flag } => d.preview.push(flag),
                }
            }
            d
        }
    }

    /// The path of test route `route` (0: login, 1: chat).
    fn path_of(route: usize) -> &'static str {
        ["/login", "/chat"][route]
    }

    fn decide(p: &Policy<FakeRelativeClock>, ip: &str, route: usize) -> Decision {
        decide_with(p, ip, route, &[], &HeaderMap::new())
    }

    fn decide_with(
        p: &Policy<FakeRelativeClock>,
        ip: &str,
        route: usize,
        flags: &[FlagMode],
        headers: &HeaderMap,
    ) -> Decision {
        let facts = RequestFacts {
            ip: ip.parse().unwrap(),
            geo: GeoInfo::default(),
            host: None,
            path: path_of(route),
            query: None,
            method: "POST",
            headers,
            flags,
            ja4: None,
            identity: Default::default(),
        };
        let (verdict, _) = p.run(&facts, Charging::Charge, None, |checks| {
            vec![FleetAnswer::Allowed; checks.len()]
        });
        verdict.into()
    }

    const FLAGS: &str = r#"
[[limits]]
name = "login-ip"
key = "ip"
rate = "4/min"
burst = 4
routes = ["login"]
[[limits]]
name = "attack-only"
key = "route"
rate = "1/h"
burst = 1
routes = ["chat"]
only_with_flag = "under_attack"
[[flags]]
name = "under_attack"
limit_scale = 0.5
[[flags]]
name = "login_only"
allow_only_routes = ["login"]
[[flags]]
name = "sessions"
require_session = { routes = ["chat"], cookie = "sid", header = "authorization" }
[[flags]]
name = "office_only"
restrict = [{ routes = ["chat"], cidrs = ["192.0.2.0/24"] }]
[[flags]]
name = "maintenance"
maintenance = { retry_after = "2m", message = "Back soon." }
"#;

    use crate::lockdown::FlagMode::{Enforce, Off, Preview};

    #[test]
    fn limit_scale_tightens_every_bucket_and_preview_only_reports() {
        let (p, _clock) = policy(FLAGS);
        let none = HeaderMap::new();
        // Scale 0.5: each login costs 2 cells of 4, so two requests pass.
        assert!(decide_with(&p, "10.0.0.1", 0, &[Enforce], &none)
            .rejection
            .is_none());
        assert!(decide_with(&p, "10.0.0.1", 0, &[Enforce], &none)
            .rejection
            .is_none());
        let limited = decide_with(&p, "10.0.0.1", 0, &[Enforce], &none)
            .rejection
            .unwrap();
        assert_eq!(limited.rule(), Some("login-ip"));
        // The advertised quota is the scaled one: 4/min at 0.5 is 2 requests.
        let policy_field = limited
            .headers()
            .into_iter()
            .find(|(k, _)| *k == "ratelimit-policy")
            .map(|(_, v)| v);
        assert_eq!(policy_field.as_deref(), Some("\"login-ip\";q=2;w=60"));
        // In preview, the third and fourth requests pass but are reported.
        assert!(decide_with(&p, "10.0.0.2", 0, &[Preview], &none)
            .preview
            .is_empty());
        assert!(decide_with(&p, "10.0.0.2", 0, &[Preview], &none)
            .preview
            .is_empty());
        let d = decide_with(&p, "10.0.0.2", 0, &[Preview], &none);
        assert!(d.rejection.is_none());
        assert_eq!(d.preview, vec![Arc::<str>::from("under_attack")]);
    }

    #[test]
    fn only_with_flag_rules_apply_while_their_flag_is_on() {
        let (p, _clock) = policy(FLAGS);
        let none = HeaderMap::new();
        for _ in 0..3 {
            assert!(decide_with(&p, "10.0.0.1", 1, &[Off], &none)
                .rejection
                .is_none());
        }
        assert!(decide_with(&p, "10.0.0.1", 1, &[Enforce], &none)
            .rejection
            .is_none());
        assert_eq!(
            decide_with(&p, "10.0.0.1", 1, &[Enforce], &none)
                .rejection
                .unwrap()
                .rule(),
            Some("attack-only")
        );
    }

    #[test]
    fn login_only_sessions_restrictions_and_maintenance() {
        let (p, _clock) = policy(FLAGS);
        let none = HeaderMap::new();
        let login_only = [Off, Enforce];
        assert!(decide_with(&p, "10.0.0.1", 0, &login_only, &none)
            .rejection
            .is_none());
        let r = decide_with(&p, "10.0.0.1", 1, &login_only, &none)
            .rejection
            .unwrap();
        assert_eq!((r.status(), r.label()), (503, "locked_down"));

        let sessions = [Off, Off, Enforce];
        assert_eq!(
            decide_with(&p, "10.0.0.1", 1, &sessions, &none)
                .rejection
                .unwrap()
                .label(),
            "session_required"
        );
        let mut cookie = HeaderMap::new();
        cookie.insert("cookie", "theme=dark; sid=abc".parse().unwrap());
        assert!(decide_with(&p, "10.0.0.1", 1, &sessions, &cookie)
            .rejection
            .is_none());
        let mut empty_cookie = HeaderMap::new();
        empty_cookie.insert("cookie", "sid=".parse().unwrap());
        assert!(decide_with(&p, "10.0.0.1", 1, &sessions, &empty_cookie)
            .rejection
            .is_some());

        let office = [Off, Off, Off, Enforce];
        assert_eq!(
            decide_with(&p, "10.0.0.1", 1, &office, &none)
                .rejection
                .unwrap()
                .status(),
            403
        );
        assert!(decide_with(&p, "192.0.2.5", 1, &office, &none)
            .rejection
            .is_none());
        assert!(decide_with(&p, "10.0.0.1", 0, &office, &none)
            .rejection
            .is_none()); // login not restricted

        let maintenance = [Off, Off, Off, Off, Enforce];
        let r = decide_with(&p, "10.0.0.1", 0, &maintenance, &none)
            .rejection
            .unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.retry_after(), Some(120));
        assert_eq!(r.detail(), "Back soon.");
        let preview = [Off, Off, Off, Off, Preview];
        let d = decide_with(&p, "10.0.0.1", 0, &preview, &none);
        assert!(d.rejection.is_none());
        assert_eq!(d.preview, vec![Arc::<str>::from("maintenance")]);
    }

    #[test]
    fn route_rules_stack_on_global_ones_and_the_first_empty_bucket_decides() {
        let (p, clock) = policy(
            r#"
[[limits]]
name = "global-ip"
key = "ip"
rate = "3/s"
burst = 3
[[limits]]
name = "login-ip"
key = "ip"
rate = "1/s"
burst = 1
routes = ["login"]
"#,
        );
        assert!(decide(&p, "192.0.2.1", 0).rejection.is_none());
        let second = decide(&p, "192.0.2.1", 0).rejection.unwrap();
        assert_eq!(
            second,
            Rejection::RateLimited {
                rule: "login-ip".into(),
                retry_after: 1,
                quota: 1,
                window: 1
            }
        );
        // The chat route only has the global rule: one cell left of three
        // (the two login attempts were charged to the global bucket too).
        assert!(decide(&p, "192.0.2.1", 1).rejection.is_none());
        let r = decide(&p, "192.0.2.1", 1).rejection.unwrap();
        assert_eq!(r.rule(), Some("global-ip"));
        clock.advance(Duration::from_secs(1));
        assert!(decide(&p, "192.0.2.1", 1).rejection.is_none());
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        let (p, clock) =
            policy("[[limits]]\nname = \"l\"\nkey = \"ip\"\nrate = \"1/10s\"\nburst = 1\n");
        assert!(decide(&p, "192.0.2.1", 0).rejection.is_none());
        clock.advance(Duration::from_millis(7_500));
        match decide(&p, "192.0.2.1", 0).rejection.unwrap() {
            Rejection::RateLimited {
                retry_after,
                window,
                ..
            } => {
                assert_eq!(retry_after, 3); // 2.5 s rounds up
                assert_eq!(window, 10);
            }
            other => panic!("{other:?}"),
        }
        clock.advance(Duration::from_millis(2_400));
        match decide(&p, "192.0.2.1", 0).rejection.unwrap() {
            Rejection::RateLimited { retry_after, .. } => assert_eq!(retry_after, 1), // 0.1 s
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shadow_rules_count_but_never_reject() {
        let (p, _clock) = policy(
            "[[limits]]\nname = \"s\"\nkey = \"ip\"\nrate = \"1/s\"\nburst = 1\nshadow = true\n",
        );
        assert!(decide(&p, "192.0.2.1", 0).shadow.is_empty());
        let d = decide(&p, "192.0.2.1", 0);
        assert!(d.rejection.is_none());
        assert_eq!(d.shadow, vec![Arc::<str>::from("s")]);
    }

    #[test]
    fn deny_and_allow_lists_first_match_wins() {
        let (p, _clock) = policy(
            r#"
[[access]]
name = "office"
action = "allow"
cidrs = ["198.51.100.0/24"]
[[access]]
name = "bad-net"
action = "deny"
cidrs = ["198.51.0.0/16", "2001:db8:bad::/48"]
[[limits]]
name = "tiny"
key = "route"
rate = "1/h"
burst = 1
"#,
        );
        let d = decide(&p, "198.51.7.7", 0);
        assert_eq!(
            d.rejection,
            Some(Rejection::DeniedByNetwork {
                rule: "bad-net".into()
            })
        );
        assert_eq!(d.rejection.unwrap().status(), 403);
        assert!(decide(&p, "2001:db8:bad::1", 0).rejection.is_some());
        // The office skips every limit, however often it comes.
        for _ in 0..5 {
            let d = decide(&p, "198.51.100.9", 0);
            assert!(d.rejection.is_none());
            assert_eq!(d.allowed_by.as_deref(), Some("office"));
        }
        assert!(decide(&p, "192.0.2.1", 0).rejection.is_none());
        assert!(decide(&p, "192.0.2.2", 0).rejection.is_some());
    }

    #[test]
    fn reload_keeps_buckets_of_unchanged_rules_and_resets_changed_ones() {
        let extra = "[[limits]]\nname = \"a\"\nkey = \"ip\"\nrate = \"1/h\"\nburst = 1\n[[limits]]\nname = \"b\"\nkey = \"ip\"\nrate = \"1/h\"\nburst = 1\nroutes = [\"chat\"]\n";
        let (p, clock) = policy(extra);
        assert!(decide(&p, "192.0.2.1", 1).rejection.is_none());
        let changed = extra.replace(
            "name = \"b\"\nkey = \"ip\"\nrate = \"1/h\"",
            "name = \"b\"\nkey = \"ip\"\nrate = \"2/h\"",
        );
        let config =
            rampart_config::parse(&format!("{BASE}{changed}"), Path::new("t.toml")).unwrap();
        let next = Policy::new(&config, clock, Some(&p));
        assert!(Arc::ptr_eq(&p.rate_rules()[0], &next.rate_rules()[0]));
        assert!(!Arc::ptr_eq(&p.rate_rules()[1], &next.rate_rules()[1]));
        // "a" still remembers the request; "b" starts fresh but "a" decides first.
        assert_eq!(
            decide(&next, "192.0.2.1", 1).rejection.unwrap().rule(),
            Some("a")
        );
    }
}

#[cfg(test)]
mod body_key_tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::path::Path;

    const CONFIG: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"
[pools.web]
servers = ["127.0.0.1:9000"]
[[routes]]
name = "login"
path_prefix = "/login"
pool = "web"
[[routes]]
name = "other"
pool = "web"
[[limits]]
name = "login-ip"
key = "ip"
rate = "100/h"
burst = 100
routes = ["login"]
[[limits]]
name = "login-account"
key = "body"
field = "username"
rate = "2/h"
burst = 2
routes = ["login"]
"#;

    fn json_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers
    }

    fn facts<'a>(ip: &str, path: &'a str, headers: &'a HeaderMap) -> RequestFacts<'a> {
        RequestFacts {
            ip: ip.parse().unwrap(),
            geo: GeoInfo::default(),
            host: None,
            path,
            query: None,
            method: "POST",
            headers,
            flags: &[],
            ja4: None,
            identity: Default::default(),
        }
    }

    fn login(p: &Policy<FakeRelativeClock>, ip: &str, body: &str) -> Verdict {
        let headers = json_headers();
        let (verdict, _) = p.run(
            &facts(ip, "/login", &headers),
            Charging::Charge,
            Some(body.as_bytes()),
            |_| Vec::new(),
        );
        verdict
    }

    fn policy() -> Policy<FakeRelativeClock> {
        let config = rampart_config::parse(CONFIG, Path::new("t.toml")).unwrap();
        Policy::new(&config, FakeRelativeClock::default(), None)
    }

    #[test]
    fn the_body_is_asked_for_before_anything_is_charged() {
        let p = policy();
        let headers = json_headers();
        let mut evaluation = p.evaluate(Charging::Charge);
        match evaluation.next(&facts("192.0.2.1", "/login", &headers)) {
            Step::NeedBody { limit } => assert_eq!(limit, rampart_config::DEFAULT_MAX_BODY_BYTES),
            other => panic!("{other:?}"),
        }
        // The address bucket was not touched: its key is not even tracked.
        assert!(
            !p.rate_rules()[0]
                .peek(&LimitKey::Ip("192.0.2.1".parse().unwrap()))
                .tracked
        );
        // A client that never finishes its body is answered 408, nothing charged.
        evaluation.give_body(BodyRead::TimedOut);
        match evaluation.next(&facts("192.0.2.1", "/login", &headers)) {
            Step::Done(v) => assert_eq!(v.refusal, Some(Rejection::ClientTimeout)),
            other => panic!("{other:?}"),
        }
        assert!(
            !p.rate_rules()[0]
                .peek(&LimitKey::Ip("192.0.2.1".parse().unwrap()))
                .tracked
        );
        // Routes without body keys are decided at once.
        let mut other = p.evaluate(Charging::Charge);
        assert!(matches!(
            other.next(&facts("192.0.2.1", "/other", &headers)),
            Step::Done(_)
        ));
    }

    #[test]
    fn one_account_from_many_addresses_is_limited_and_others_are_not() {
        let p = policy();
        let alice = r#"{"username":"  Alice@Example.com ","password":"x"}"#;
        let alice_again = r#"{"username":"alice@example.COM"}"#;
        assert!(login(&p, "198.51.100.1", alice).refusal.is_none());
        // Trimmed and case-folded: the same account.
        assert!(login(&p, "198.51.100.2", alice_again).refusal.is_none());
        let limited = login(&p, "198.51.100.99", alice).refusal.unwrap();
        assert_eq!(limited.rule(), Some("login-account"));
        assert!(login(&p, "198.51.100.99", r#"{"username":"bob"}"#)
            .refusal
            .is_none());
        // The key is a hash: no trace of the name in what explain shows.
        let headers = json_headers();
        let (verdict, trace) = p.run(
            &facts("198.51.100.99", "/login", &headers),
            Charging::DryRun,
            Some(alice.as_bytes()),
            |_| Vec::new(),
        );
        assert_eq!(verdict.refusal.unwrap().rule(), Some("login-account"));
        let text = format!("{trace:?}");
        assert!(!text.to_lowercase().contains("alice"), "{text}");
    }

    #[test]
    fn unreadable_bodies_are_refused() {
        let p = policy();
        for body in [
            r#"{"username":"a","username":"b"}"#,
            r#"{"Username":"a"}"#,
            r#"{"user":"a"}"#,
            r#"{"username":"   "}"#,
            "{not json",
        ] {
            let refused = login(&p, "192.0.2.9", body).refusal.unwrap();
            assert_eq!(refused.status(), 400, "{body}");
            assert_eq!(refused.rule(), Some("login-account"));
        }
        // Nothing was charged for them.
        assert!(
            !p.rate_rules()[0]
                .peek(&LimitKey::Ip("192.0.2.9".parse().unwrap()))
                .tracked
        );
    }
}

#[cfg(test)]
mod fleet_tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::path::Path;

    const CONFIG: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"
[pools.web]
servers = ["127.0.0.1:9000"]
[fleet]
redis_url = "redis://127.0.0.1:1/0"
[[routes]]
name = "open"
path_prefix = "/open"
pool = "web"
[[routes]]
name = "closed"
path_prefix = "/closed"
pool = "web"
[[routes]]
name = "local"
path_prefix = "/local"
pool = "web"
[[routes]]
name = "two"
path_prefix = "/two"
pool = "web"
[[limits]]
name = "f-open"
key = "ip"
rate = "10/min"
burst = 10
routes = ["open", "two"]
scope = "fleet"
fleet_failure = "open"
[[limits]]
name = "f-closed"
key = "ip"
rate = "10/min"
burst = 10
routes = ["closed", "two"]
scope = "fleet"
fleet_failure = "closed"
[[limits]]
name = "f-local"
key = "ip"
rate = "8/min"
burst = 8
routes = ["local"]
scope = "fleet"
fleet_failure = "local"
fleet_local_share = 0.5
[[limits]]
name = "f-shadow"
key = "ip"
rate = "10/min"
burst = 10
routes = ["two"]
scope = "fleet"
shadow = true
"#;

    fn policy(clock: &FakeRelativeClock) -> Policy<FakeRelativeClock> {
        let config = rampart_config::parse(CONFIG, Path::new("t.toml")).unwrap();
        Policy::new(&config, clock.clone(), None)
    }

    /// Decides a request to `path`, answering every fleet check with `answer`;
    /// returns the verdict and the checks asked.
    fn decide(
        p: &Policy<FakeRelativeClock>,
        path: &str,
        answer: FleetAnswer,
    ) -> (Verdict, Vec<FleetCheck>) {
        let headers = HeaderMap::new();
        let facts = RequestFacts {
            ip: "192.0.2.1".parse().unwrap(),
            geo: GeoInfo::default(),
            host: None,
            path,
            query: None,
            method: "GET",
            headers: &headers,
            flags: &[],
            ja4: None,
            identity: Default::default(),
        };
        let mut asked = Vec::new();
        let (verdict, _) = p.run(&facts, Charging::Charge, None, |checks| {
            asked.extend_from_slice(checks);
            vec![answer; checks.len()]
        });
        (verdict, asked)
    }

    #[test]
    fn failure_mode_open_lets_requests_on() {
        let clock = FakeRelativeClock::default();
        let p = policy(&clock);
        for _ in 0..50 {
            assert!(decide(&p, "/open", FleetAnswer::Unavailable)
                .0
                .refusal
                .is_none());
        }
    }

    #[test]
    fn failure_mode_closed_refuses_with_retry_after_one_second() {
        let clock = FakeRelativeClock::default();
        let p = policy(&clock);
        let refusal = decide(&p, "/closed", FleetAnswer::Unavailable)
            .0
            .refusal
            .unwrap();
        assert_eq!(
            refusal,
            Rejection::RateLimited {
                rule: "f-closed".into(),
                retry_after: 1,
                quota: 10,
                window: 60
            }
        );
    }

    #[test]
    fn failure_mode_local_spends_the_nodes_share_and_refills_on_the_clock() {
        let clock = FakeRelativeClock::default();
        let p = policy(&clock);
        // Share 0.5 of 8/min with burst 8: a bucket of 4 refilling one per 15 s.
        for i in 0..4 {
            let (v, _) = decide(&p, "/local", FleetAnswer::Unavailable);
            assert!(v.refusal.is_none(), "request {i}");
        }
        let refusal = decide(&p, "/local", FleetAnswer::Unavailable)
            .0
            .refusal
            .unwrap();
        assert_eq!(refusal.rule(), Some("f-local"));
        assert_eq!(refusal.retry_after(), Some(15));
        clock.advance(Duration::from_secs(15));
        assert!(decide(&p, "/local", FleetAnswer::Unavailable)
            .0
            .refusal
            .is_none());
        // While Redis answers, the fallback bucket is not charged.
        clock.advance(Duration::from_secs(60));
        for _ in 0..20 {
            assert!(decide(&p, "/local", FleetAnswer::Allowed)
                .0
                .refusal
                .is_none());
        }
        let fallback = p.fallback_rules()[2].as_ref().unwrap();
        assert_eq!(
            fallback
                .peek(&LimitKey::Ip("192.0.2.1".parse().unwrap()))
                .cells,
            4
        );
    }

    #[test]
    fn fallback_buckets_survive_a_reload_and_are_swept() {
        let clock = FakeRelativeClock::default();
        let p = policy(&clock);
        for _ in 0..4 {
            decide(&p, "/local", FleetAnswer::Unavailable);
        }
        let config = rampart_config::parse(CONFIG, Path::new("t.toml")).unwrap();
        let next = Policy::new(&config, clock.clone(), Some(&p));
        let (before, after) = (
            p.fallback_rules()[2].as_ref().unwrap(),
            next.fallback_rules()[2].as_ref().unwrap(),
        );
        assert!(
            Arc::ptr_eq(before, after),
            "a reload kept the drained bucket"
        );
        assert!(decide(&next, "/local", FleetAnswer::Unavailable)
            .0
            .refusal
            .is_some());
        assert_eq!(after.tracked_keys(), 1);
        clock.advance(Duration::from_secs(120));
        let swept = next.sweep();
        assert!(
            swept.contains(&("f-local (fallback)".to_string(), 1)),
            "{swept:?}"
        );
        assert_eq!(after.tracked_keys(), 0);
    }

    #[test]
    fn redis_wait_becomes_whole_seconds_rounded_up() {
        let clock = FakeRelativeClock::default();
        let p = policy(&clock);
        for (wait_ms, secs) in [(1, 1), (999, 1), (1_000, 1), (1_001, 2), (2_500, 3)] {
            let answer = FleetAnswer::Limited {
                retry_after: Duration::from_millis(wait_ms),
            };
            let refusal = decide(&p, "/open", answer).0.refusal.unwrap();
            assert_eq!(refusal.retry_after(), Some(secs), "{wait_ms} ms");
        }
    }

    #[test]
    fn every_fleet_rule_of_a_route_is_asked_at_once_and_shadow_rules_only_observe() {
        let clock = FakeRelativeClock::default();
        let p = policy(&clock);
        let (verdict, asked) = decide(&p, "/two", FleetAnswer::Allowed);
        assert!(verdict.refusal.is_none());
        let names: Vec<usize> = asked.iter().map(|c| c.rule).collect();
        assert_eq!(names, vec![0, 1, 3], "one step asks for all three");
        assert_eq!(asked[2].enforcement, Enforcement::Shadow);
        // Only the shadow rule's bucket is empty: observed, not refused.
        let headers = HeaderMap::new();
        let facts = RequestFacts {
            ip: "192.0.2.1".parse().unwrap(),
            geo: GeoInfo::default(),
            host: None,
            path: "/two",
            query: None,
            method: "GET",
            headers: &headers,
            flags: &[],
            ja4: None,
            identity: Default::default(),
        };
        let limited = FleetAnswer::Limited {
            retry_after: Duration::from_secs(5),
        };
        let (verdict, _) = p.run(&facts, Charging::Charge, None, |_| {
            vec![FleetAnswer::Allowed, FleetAnswer::Allowed, limited]
        });
        assert!(verdict.refusal.is_none());
        assert_eq!(
            verdict.observations,
            vec![Observation::Shadow {
                rule: "f-shadow".into()
            }]
        );
        // Missing answers count as Redis not answering: `f-closed` refuses.
        let (verdict, _) = p.run(&facts, Charging::Charge, None, |_| Vec::new());
        assert_eq!(verdict.refusal.unwrap().rule(), Some("f-closed"));
    }
}

#[cfg(test)]
mod ban_and_scope_tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::path::Path;

    const CONFIG: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"
[geoip]
asn_db = "/nonexistent/asn.mmdb"
[pools.web]
servers = ["127.0.0.1:9000"]
[[routes]]
name = "login"
path_prefix = "/login"
pool = "web"
[[limits]]
name = "hosting"
key = "asn"
rate = "2/min"
burst = 2
not_asns = [4134]
ban = { after = 3, within = "1m", for = "30s", increment = 2.0, max = "2m" }
[[limits]]
name = "everyone-ip"
key = "ip"
rate = "100/min"
burst = 100
"#;

    fn facts<'a>(ip: &str, asn: u32, headers: &'a HeaderMap) -> RequestFacts<'a> {
        RequestFacts {
            ip: ip.parse().unwrap(),
            geo: GeoInfo {
                country: None,
                asn: Some(asn),
            },
            host: None,
            path: "/login",
            query: None,
            method: "POST",
            headers,
            flags: &[],
            ja4: None,
            identity: Default::default(),
        }
    }

    fn decide(p: &Policy<FakeRelativeClock>, ip: &str, asn: u32, charging: Charging) -> Verdict {
        let headers = HeaderMap::new();
        p.run(&facts(ip, asn, &headers), charging, None, |_| Vec::new())
            .0
    }

    #[test]
    fn limits_scoped_to_networks_spare_the_excluded_ones() {
        let clock = FakeRelativeClock::default();
        let config = rampart_config::parse(CONFIG, Path::new("t.toml")).unwrap();
        let p = Policy::new(&config, clock, None);
        // The carrier AS 4134 is outside the hosting rule: 50 requests pass.
        for _ in 0..50 {
            assert!(decide(&p, "10.0.0.1", 4134, Charging::Charge)
                .refusal
                .is_none());
        }
        // A hosting AS gets 2.
        assert!(decide(&p, "10.0.0.2", 64500, Charging::Charge)
            .refusal
            .is_none());
        assert!(decide(&p, "10.0.0.3", 64500, Charging::Charge)
            .refusal
            .is_none());
        let r = decide(&p, "10.0.0.4", 64500, Charging::Charge)
            .refusal
            .unwrap();
        assert_eq!(r.rule(), Some("hosting"));
    }

    #[test]
    fn a_key_refused_often_is_banned_before_any_bucket_is_charged() {
        let clock = FakeRelativeClock::default();
        let config = rampart_config::parse(CONFIG, Path::new("t.toml")).unwrap();
        let p = Policy::new(&config, clock.clone(), None);
        for _ in 0..2 {
            assert!(decide(&p, "10.0.0.1", 64500, Charging::Charge)
                .refusal
                .is_none());
        }
        // Refused three times by the bucket: the third bans AS64500.
        for _ in 0..3 {
            assert_eq!(
                decide(&p, "10.0.0.1", 64500, Charging::Charge).label(),
                "rate_limited"
            );
        }
        let everyone = &p.rate_rules()[1];
        let ip_key = LimitKey::Ip("10.0.0.9".parse().unwrap());
        // Explain says banned too, and charges nothing.
        assert_eq!(
            decide(&p, "10.0.0.9", 64500, Charging::DryRun).label(),
            "banned"
        );
        let banned = decide(&p, "10.0.0.9", 64500, Charging::Charge)
            .refusal
            .unwrap();
        assert_eq!(
            banned,
            Rejection::Banned {
                rule: "hosting".into(),
                retry_after: 30
            }
        );
        assert_eq!(banned.status(), 429);
        assert_eq!(banned.retry_after(), Some(30));
        // No bucket was charged for the banned request.
        assert!(!everyone.peek(&ip_key).tracked);
        // After the ban, the bucket decides again (one token refilled meanwhile).
        clock.advance(Duration::from_secs(30));
        assert!(decide(&p, "10.0.0.9", 64500, Charging::Charge)
            .refusal
            .is_none());
        // A repeat offender's second ban is twice as long.
        for _ in 0..3 {
            decide(&p, "10.0.0.9", 64500, Charging::Charge);
        }
        assert_eq!(
            decide(&p, "10.0.0.9", 64500, Charging::Charge)
                .refusal
                .unwrap()
                .retry_after(),
            Some(60)
        );
        let (table, _) = p.ban_table("hosting").unwrap();
        assert_eq!(table.bans_total(), 2);
        assert_eq!(table.active(5)[0].key, LimitKey::Asn(64500));
    }

    #[test]
    fn dry_runs_never_ban_and_bans_survive_a_reload() {
        let clock = FakeRelativeClock::default();
        let config = rampart_config::parse(CONFIG, Path::new("t.toml")).unwrap();
        let p = Policy::new(&config, clock.clone(), None);
        for _ in 0..2 {
            decide(&p, "10.0.0.1", 64500, Charging::Charge);
        }
        for _ in 0..20 {
            assert_eq!(
                decide(&p, "10.0.0.1", 64500, Charging::DryRun).label(),
                "rate_limited"
            );
        }
        assert_eq!(p.ban_table("hosting").unwrap().0.bans_total(), 0);
        for _ in 0..3 {
            decide(&p, "10.0.0.1", 64500, Charging::Charge);
        }
        let next = Policy::new(&config, clock, Some(&p));
        assert_eq!(
            decide(&next, "10.0.0.1", 64500, Charging::Charge).label(),
            "banned"
        );
    }
}

#[cfg(test)]
mod ban_fairness_tests {
    //! Refusals that are not the client's own doing never ban it.
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::path::Path;

    fn policy(extra: &str) -> Policy<FakeRelativeClock> {
        let config = rampart_config::parse(
            &format!(
                "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[geoip]\nasn_db = \"/x.mmdb\"\n[fleet]\nredis_url = \"redis://127.0.0.1:1/0\"\n[pools.web]\nservers = [\"127.0.0.1:9000\"]\n[[routes]]\nname = \"all\"\npool = \"web\"\n{extra}"
            ),
            Path::new("t.toml"),
        )
        .unwrap();
        Policy::new(&config, FakeRelativeClock::default(), None)
    }

    fn decide(
        p: &Policy<FakeRelativeClock>,
        ip: &str,
        asn: Option<u32>,
        fleet: FleetAnswer,
    ) -> Verdict {
        let headers = HeaderMap::new();
        let facts = RequestFacts {
            ip: ip.parse().unwrap(),
            geo: GeoInfo { country: None, asn },
            host: None,
            path: "/",
            query: None,
            method: "GET",
            headers: &headers,
            flags: &[],
            ja4: None,
            identity: Default::default(),
        };
        p.run(&facts, Charging::Charge, None, |c| vec![fleet; c.len()])
            .0
    }

    #[test]
    fn redis_being_unreachable_never_bans() {
        let p = policy("[[limits]]\nname = \"f\"\nkey = \"ip\"\nrate = \"100/s\"\nscope = \"fleet\"\nfleet_failure = \"closed\"\nban = { after = 3, within = \"1m\", for = \"10m\" }\n");
        for _ in 0..10 {
            assert_eq!(
                decide(&p, "192.0.2.1", Some(1), FleetAnswer::Unavailable).label(),
                "rate_limited"
            );
        }
        assert!(decide(&p, "192.0.2.1", Some(1), FleetAnswer::Allowed)
            .refusal
            .is_none());
        // Refusals by the fleet bucket itself do ban.
        let limited = FleetAnswer::Limited {
            retry_after: Duration::from_secs(1),
        };
        for _ in 0..3 {
            decide(&p, "192.0.2.1", Some(1), limited);
        }
        assert_eq!(
            decide(&p, "192.0.2.1", Some(1), FleetAnswer::Allowed).label(),
            "banned"
        );
    }

    #[test]
    fn refusals_by_a_shared_overflow_bucket_never_ban() {
        let p = policy("[[limits]]\nname = \"l\"\nkey = \"ip\"\nrate = \"2/min\"\nburst = 2\nmax_keys = 2\nban = { after = 2, within = \"1m\", for = \"10m\" }\n");
        // Two addresses fill the store; a third drains the /24 bucket it shares.
        decide(&p, "10.0.0.1", Some(1), FleetAnswer::Allowed);
        decide(&p, "10.0.1.1", Some(1), FleetAnswer::Allowed);
        for _ in 0..4 {
            decide(&p, "192.0.2.1", Some(1), FleetAnswer::Allowed);
        }
        // A newcomer in the same /24 is refused by the shared bucket, never banned.
        for _ in 0..5 {
            assert_eq!(
                decide(&p, "192.0.2.99", Some(1), FleetAnswer::Allowed).label(),
                "rate_limited"
            );
        }
        let (table, _) = p.ban_table("l").unwrap();
        assert_eq!(table.bans_total(), 0);
    }

    #[test]
    fn the_unknown_as_is_never_banned() {
        let p = policy("[[limits]]\nname = \"a\"\nkey = \"asn\"\nrate = \"1/min\"\nburst = 1\nban = { after = 2, within = \"1m\", for = \"10m\" }\n");
        for _ in 0..5 {
            decide(&p, "192.0.2.1", None, FleetAnswer::Allowed);
        }
        assert_eq!(
            decide(&p, "198.51.100.1", None, FleetAnswer::Allowed).label(),
            "rate_limited"
        );
        assert_eq!(p.ban_table("a").unwrap().0.bans_total(), 0);
    }

    #[test]
    fn a_rebuilt_rule_does_not_keep_bans_its_new_hasher_cannot_match() {
        let extra = |rate: &str| {
            format!("[[limits]]\nname = \"h\"\nkey = \"header\"\nheader = \"x-key\"\nrate = \"{rate}\"\nburst = 1\nban = {{ after = 1, within = \"1m\", for = \"10m\" }}\n")
        };
        let old = policy(&extra("1/min"));
        let config = rampart_config::parse(
            &format!("[[listeners]]\naddress = \"127.0.0.1:8080\"\n[geoip]\nasn_db = \"/x.mmdb\"\n[fleet]\nredis_url = \"redis://127.0.0.1:1/0\"\n[pools.web]\nservers = [\"127.0.0.1:9000\"]\n[[routes]]\nname = \"all\"\npool = \"web\"\n{}", extra("2/min")),
            Path::new("t.toml"),
        )
        .unwrap();
        let new = Policy::new(&config, FakeRelativeClock::default(), Some(&old));
        assert!(!Arc::ptr_eq(
            old.ban_table("h").unwrap().0,
            new.ban_table("h").unwrap().0
        ));
        let same = Policy::new(&rampart_config::parse(
            &format!("[[listeners]]\naddress = \"127.0.0.1:8080\"\n[geoip]\nasn_db = \"/x.mmdb\"\n[fleet]\nredis_url = \"redis://127.0.0.1:1/0\"\n[pools.web]\nservers = [\"127.0.0.1:9000\"]\n[[routes]]\nname = \"all\"\npool = \"web\"\n{}", extra("1/min")),
            Path::new("t.toml"),
        ).unwrap(), FakeRelativeClock::default(), Some(&old));
        assert!(Arc::ptr_eq(
            old.ban_table("h").unwrap().0,
            same.ban_table("h").unwrap().0
        ));
    }
}
