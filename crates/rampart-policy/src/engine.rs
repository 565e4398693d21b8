//! The mitigation decision for one request: access rules, unknown-origin policy,
//! stacked rate limits and in-flight caps, in that order.
//!
//! - `[[access]]` rules are tried in config order; the first that matches decides:
//!   `deny` answers 403, `allow` skips the limits below (monitoring, office).
//! - Active lockdown flags, in config order: maintenance, routes left open,
//!   blocked routes, session requirement, client restrictions. The first enforced
//!   flag that matches answers; a previewed one is only reported.
//! - A client whose country (ASN) is unknown is refused when
//!   `geoip.unknown_country` (`unknown_asn`) is `deny`.
//! - Every `[[limits]]` rule of the route (and every global one) is charged in
//!   config order; the first empty bucket decides. Buckets charged before it keep
//!   the charge: stacked limits count attempts, not only successes.
//! - `[[concurrency]]` slots are taken last, so a rejected request holds none.
//! - A rule in shadow mode is evaluated and reported, never enforced.

use crate::cidr::CidrSet;
use crate::geo::{CountryCode, GeoInfo};
use crate::limits::{
    BucketState, ConcurrencyPermit, ConcurrencyRule, KeyFacts, LimitKey, RateRule, RuleOutcome,
};
use crate::lockdown::{CompiledFlags, FlagMode};
use crate::Rejection;
use governor::clock::{Clock, DefaultClock};
use http::HeaderMap;
use rampart_config::{AccessAction, Config, KeyKind, UnknownPolicy};
use std::net::IpAddr;
use std::sync::Arc;

/// One `[[access]]` rule, ready for matching.
#[derive(Debug)]
struct AccessRule {
    name: Arc<str>,
    action: AccessAction,
    cidrs: CidrSet,
    asns: Vec<u32>,
    countries: Vec<CountryCode>,
}

/// How an access rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AccessMatch {
    Network,
    Asn(u32),
    Country(CountryCode),
}

impl AccessRule {
    fn matches(&self, ip: IpAddr, geo: &GeoInfo) -> Option<AccessMatch> {
        if self.cidrs.contains(ip) {
            return Some(AccessMatch::Network);
        }
        if let Some(asn) = geo.asn.filter(|a| self.asns.binary_search(a).is_ok()) {
            return Some(AccessMatch::Asn(asn));
        }
        geo.country
            .filter(|c| self.countries.contains(c))
            .map(AccessMatch::Country)
    }
}

/// Indices of the rules that apply to one route.
#[derive(Debug, Default, Clone)]
struct RouteRules {
    access: Vec<usize>,
    limits: Vec<usize>,
    concurrency: Vec<usize>,
}

/// The facts about one request that the policy reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Resolved client address (canonical: IPv4-mapped IPv6 is IPv4).
    pub ip: IpAddr,
    /// Its country and ASN.
    pub geo: GeoInfo,
    /// Matched route index; `None` for requests proxied by `[unmatched]`.
    pub route: Option<usize>,
    /// The request method (canonical: upper case).
    pub method: &'a str,
    /// Request headers (for header-keyed rules and session checks).
    pub headers: &'a HeaderMap,
    /// Mode of each lockdown flag, in config order (shorter means off).
    pub flags: &'a [FlagMode],
    /// The normalised body fields of `key = "body"` limits, indexed like the
    /// config's limits ([`Policy::body_key_values`]); `None` when the body has
    /// not been read. A route with such limits is not decided without them:
    /// [`Decision::need_body`] asks for the body first.
    pub body_keys: Option<&'a [Option<String>]>,
}

/// A fleet-wide bucket the proxy must charge (through Redis) before the request
/// goes upstream.
#[derive(Debug, Clone)]
pub struct FleetCheck {
    /// Limit rule index.
    pub rule: usize,
    /// The key charged.
    pub key: LimitKey,
    /// Cells to take (the rule's cost, scaled by lockdown flags).
    pub cost: u32,
    /// Count would-be rejections under this name instead of rejecting
    /// (shadow rules: the rule name, `false`; previewed flags: the flag name, `true`).
    pub report_only: Option<(Arc<str>, bool)>,
}

/// A body check the proxy must run before the request goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyCheck {
    /// Flag index.
    pub flag: usize,
    /// Body rule index within the flag.
    pub rule: usize,
    /// Whether the flag is only previewed (count, do not reject).
    pub preview: bool,
}

/// What the policy decided.
#[derive(Debug, Default)]
pub struct Decision {
    /// `Some` when the request must be answered at the edge.
    pub rejection: Option<Rejection>,
    /// Name of the allow rule that let the request skip the limits.
    pub allowed_by: Option<Arc<str>>,
    /// Shadow rules that would have rejected this request.
    pub shadow: Vec<Arc<str>>,
    /// In-flight slots held until the request ends (dropping releases them).
    pub permits: Vec<ConcurrencyPermit>,
    /// Flags in preview that would have rejected this request.
    pub preview: Vec<Arc<str>>,
    /// Body rules to run on the request body.
    pub body_checks: Vec<BodyCheck>,
    /// Fleet-wide buckets to charge.
    pub fleet_checks: Vec<FleetCheck>,
    /// The route has `key = "body"` limits and no body was given: read up to
    /// this many bytes, get the values ([`Policy::body_key_values`]) and decide
    /// again with them. Nothing has been charged.
    pub need_body: Option<usize>,
}

/// The policy of one config: rules, limiter state and per-route rule lists.
#[derive(Debug)]
pub struct Policy<C: Clock + Clone = DefaultClock> {
    access: Vec<AccessRule>,
    limits: Vec<Arc<RateRule<C>>>,
    limit_names: Vec<Arc<str>>,
    /// For fleet rules whose failure mode is `local`: the local bucket at the
    /// configured share of the budget, used while Redis is unreachable.
    fleet_fallback: Vec<Option<Arc<RateRule<C>>>>,
    concurrency: Vec<Arc<ConcurrencyRule>>,
    concurrency_names: Vec<Arc<str>>,
    /// Index `routes.len()` holds the rules for requests without a route.
    per_route: Vec<RouteRules>,
    unknown_country: UnknownPolicy,
    unknown_asn: UnknownPolicy,
    flags: CompiledFlags,
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

impl<C: Clock + Clone> Policy<C> {
    /// Builds the policy of `config`. Limiter state of `previous` is kept for
    /// every rule whose name, key, rate, burst and key cap are unchanged, so a
    /// reload never hands an attacker fresh buckets.
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
            .map(|a| {
                let mut asns = a.asns.clone();
                asns.sort_unstable();
                AccessRule {
                    name: a.name.as_str().into(),
                    action: a.action,
                    cidrs: CidrSet::new(&a.cidrs),
                    asns,
                    countries: a
                        .countries
                        .iter()
                        .filter_map(|c| CountryCode::parse(c))
                        .collect(),
                }
            })
            .collect();
        let limits: Vec<Arc<RateRule<C>>> = config
            .limits
            .iter()
            .map(|l| {
                previous
                    .and_then(|p| {
                        p.limits
                            .iter()
                            .find(|r| r.config.name == l.name && r.same_shape(l))
                    })
                    .cloned()
                    .unwrap_or_else(|| Arc::new(RateRule::new(l.clone(), clock.clone())))
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
                RouteRules {
                    access: (0..config.access.len())
                        .filter(|&i| applies(&config.access[i].routes, route))
                        .collect(),
                    limits: (0..config.limits.len())
                        .filter(|&i| applies(&config.limits[i].routes, route))
                        .collect(),
                    concurrency: (0..config.concurrency.len())
                        .filter(|&i| applies(&config.concurrency[i].routes, route))
                        .collect(),
                }
            })
            .collect();
        let fleet_fallback = config
            .limits
            .iter()
            .map(|l| match l.scope {
                rampart_config::LimitScope::Fleet {
                    failure: rampart_config::FleetFailure::Local { share },
                } => {
                    let mut local = l.clone();
                    let scale = |n: u32| {
                        std::num::NonZeroU32::new(((f64::from(n) * share).floor() as u32).max(1))
                    };
                    local.rate.count = scale(l.rate.count.get()).unwrap_or(l.rate.count);
                    local.burst = scale(l.burst.get()).unwrap_or(l.burst);
                    local.cost = local.cost.min(local.burst);
                    Some(Arc::new(RateRule::new(local, clock.clone())))
                }
                _ => None,
            })
            .collect();
        Self {
            access,
            fleet_fallback,
            limit_names: config
                .limits
                .iter()
                .map(|l| l.name.as_str().into())
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
        }
    }

    /// The compiled lockdown flags.
    pub fn flags(&self) -> &CompiledFlags {
        &self.flags
    }

    /// Runs body rule `check` on a request's body.
    pub fn check_body(
        &self,
        check: BodyCheck,
        input: &crate::body::BodyInput<'_>,
    ) -> Option<Rejection> {
        let flag = self.flags.flags.get(check.flag)?;
        let rule = flag.config.body_rules.get(check.rule)?;
        crate::body::check_body(rule, input)
            .err()
            .map(|refusal| Rejection::BodyRefused {
                flag: flag.name.clone(),
                status: refusal.status(),
                detail: refusal.detail(),
            })
    }

    /// The largest body any of `checks` reads.
    pub fn body_limit(&self, checks: &[BodyCheck]) -> usize {
        checks
            .iter()
            .filter_map(|c| self.flags.flags.get(c.flag)?.config.body_rules.get(c.rule))
            .map(|r| r.max_body_bytes)
            .max()
            .unwrap_or(0)
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

    fn rules_for(&self, route: Option<usize>) -> &RouteRules {
        let last = self.per_route.len() - 1;
        &self.per_route[route.map_or(last, |r| r.min(last))]
    }

    /// The facts rule `i` (of kind `kind`) is keyed by.
    fn key_facts<'a>(facts: &RequestFacts<'a>, kind: &KeyKind, i: usize) -> KeyFacts<'a> {
        KeyFacts {
            ip: facts.ip,
            geo: facts.geo,
            header: match kind {
                KeyKind::Header(name) => facts.headers.get(name.as_str()).map(|v| v.as_bytes()),
                _ => None,
            },
            body: match kind {
                KeyKind::Body(_) => facts
                    .body_keys
                    .and_then(|values| values.get(i))
                    .and_then(|v| v.as_deref())
                    .map(str::as_bytes),
                _ => None,
            },
        }
    }

    /// The largest body the `key = "body"` limits of `route` read; `None` when it
    /// has none (the request needs no body to be decided).
    pub fn body_key_limit(&self, route: Option<usize>) -> Option<usize> {
        self.rules_for(route)
            .limits
            .iter()
            .filter_map(|&i| match &self.limits[i].config.key {
                KeyKind::Body(spec) => Some(spec.max_body_bytes),
                _ => None,
            })
            .max()
    }

    /// The normalised values of the `key = "body"` limits of `route`, indexed
    /// like the config's limits, read from `input` as body rules read bodies; a
    /// body that cannot be read that way is refused before any bucket is
    /// charged.
    pub fn body_key_values(
        &self,
        route: Option<usize>,
        input: &crate::body::BodyInput<'_>,
    ) -> Result<Vec<Option<String>>, Rejection> {
        let mut values = vec![None; self.limits.len()];
        for &i in &self.rules_for(route).limits {
            let KeyKind::Body(spec) = &self.limits[i].config.key else {
                continue;
            };
            match crate::body::body_key_value(spec, input) {
                Ok(v) => values[i] = Some(v),
                Err(refusal) => {
                    return Err(Rejection::BodyRefused {
                        flag: self.limit_names[i].clone(),
                        status: refusal.status(),
                        detail: refusal.detail(),
                    })
                }
            }
        }
        Ok(values)
    }

    /// Decides one request, charging its buckets and taking its in-flight slots.
    pub fn decide(&self, facts: &RequestFacts<'_>) -> Decision {
        let mut decision = Decision::default();
        let rules = self.rules_for(facts.route);

        for &i in &rules.access {
            let rule = &self.access[i];
            let Some(matched) = rule.matches(facts.ip, &facts.geo) else {
                continue;
            };
            match rule.action {
                AccessAction::Allow => {
                    decision.allowed_by = Some(rule.name.clone());
                    break;
                }
                AccessAction::Deny => {
                    let name = rule.name.clone();
                    decision.rejection = Some(match matched {
                        AccessMatch::Network => Rejection::DeniedByNetwork { rule: name },
                        AccessMatch::Asn(asn) => Rejection::DeniedByAsn { rule: name, asn },
                        AccessMatch::Country(country) => Rejection::DeniedByCountry {
                            rule: name,
                            country,
                        },
                    });
                    return decision;
                }
            }
        }

        for (i, flag) in self.flags.flags.iter().enumerate() {
            let m = mode(facts.flags, i);
            if m == FlagMode::Off {
                continue;
            }
            if let Some(rejection) = flag.check(facts.route, facts.ip, &facts.geo, facts.headers) {
                if m == FlagMode::Enforce {
                    decision.rejection = Some(rejection);
                    return decision;
                }
                decision.preview.push(flag.name.clone());
            }
            if let Some(route) = facts.route {
                for (j, rule) in flag.config.body_rules.iter().enumerate() {
                    let method_checked =
                        rule.methods.is_empty() || rule.methods.iter().any(|m| m == facts.method);
                    if rule.route == route && method_checked {
                        decision.body_checks.push(BodyCheck {
                            flag: i,
                            rule: j,
                            preview: m == FlagMode::Preview,
                        });
                    }
                }
            }
        }
        // The allow list skips unknown-origin refusals, limits and in-flight caps.
        if decision.allowed_by.is_some() {
            return decision;
        }

        if self.unknown_country == UnknownPolicy::Deny && facts.geo.country.is_none() {
            decision.rejection = Some(Rejection::UnknownCountry);
            return decision;
        }
        if self.unknown_asn == UnknownPolicy::Deny && facts.geo.asn.is_none() {
            decision.rejection = Some(Rejection::UnknownAsn);
            return decision;
        }

        if facts.body_keys.is_none() {
            if let Some(limit) = self.body_key_limit(facts.route) {
                decision.need_body = Some(limit);
                return decision;
            }
        }

        let scale = self.scale(facts.flags, FlagMode::Enforce).map(|(s, _)| s);
        let preview_scale = self.scale(facts.flags, FlagMode::Preview);
        let mut preview_scale_hit = false;
        for &i in &rules.limits {
            let rule = &self.limits[i];
            let mut preview_flag = None;
            if let Some(f) = rule.config.only_with_flag {
                match mode(facts.flags, f) {
                    FlagMode::Off => continue,
                    FlagMode::Preview => {
                        preview_flag = self.flags.flags.get(f).map(|f| f.name.clone())
                    }
                    FlagMode::Enforce => {}
                }
            }
            let key = rule.key(&Self::key_facts(facts, &rule.config.key, i));
            let cost = scale.map_or(rule.config.cost, |s| rule.scaled_cost(s));
            if matches!(rule.config.scope, rampart_config::LimitScope::Fleet { .. }) {
                let report_only = match (&preview_flag, rule.config.shadow) {
                    (Some(flag), _) => Some((flag.clone(), true)),
                    (None, true) => Some((self.limit_names[i].clone(), false)),
                    (None, false) => None,
                };
                decision.fleet_checks.push(FleetCheck {
                    rule: i,
                    key,
                    cost: cost.get(),
                    report_only,
                });
                continue;
            }
            let retry_after = match rule.check_cost(key, cost) {
                RuleOutcome::Allowed => {
                    if let Some((s, _)) = preview_scale {
                        // Would a bucket tightened by `s` have held this request? Its
                        // use is the real use divided by `s` (as if every request so
                        // far had been charged the tightened cost).
                        let burst = f64::from(rule.config.burst.get());
                        let before = f64::from(rule.peek(&key).cells + cost.get());
                        let tight_free = burst - (burst - before) / s;
                        preview_scale_hit |= tight_free < f64::from(rule.scaled_cost(s).get());
                    }
                    continue;
                }
                RuleOutcome::Limited { retry_after } => retry_after,
            };
            if let Some(flag) = preview_flag {
                decision.preview.push(flag);
                continue;
            }
            if rule.config.shadow {
                decision.shadow.push(self.limit_names[i].clone());
                continue;
            }
            let rate = &rule.config.rate;
            decision.rejection = Some(Rejection::RateLimited {
                rule: self.limit_names[i].clone(),
                retry_after: retry_after.as_secs_f64().ceil().max(1.0) as u64,
                // What a client may send now: a flag's limit_scale raises the
                // cost, so the advertised quota shrinks with it.
                quota: (rate.count.get() / cost.get()).max(1),
                window: rate.per.as_secs().max(1),
            });
            return decision;
        }
        if preview_scale_hit {
            if let Some(flag) = preview_scale.and_then(|(_, f)| self.flags.flags.get(f)) {
                decision.preview.push(flag.name.clone());
            }
        }

        for &i in &rules.concurrency {
            let rule = &self.concurrency[i];
            let key = rule.key(&Self::key_facts(facts, &rule.config.key, i));
            match rule.acquire(key) {
                Some(permit) => decision.permits.push(permit),
                None if rule.config.shadow => {
                    decision.shadow.push(self.concurrency_names[i].clone())
                }
                None => {
                    decision.permits.clear();
                    decision.rejection = Some(Rejection::TooManyInFlight {
                        rule: self.concurrency_names[i].clone(),
                    });
                    return decision;
                }
            }
        }
        decision
    }

    /// What [`Policy::decide`] would do, without charging anything.
    pub fn explain(&self, facts: &RequestFacts<'_>) -> Explanation {
        let rules = self.rules_for(facts.route);
        let mut out = Explanation::default();
        for &i in &rules.access {
            let rule = &self.access[i];
            let matched = rule.matches(facts.ip, &facts.geo);
            out.rules.push(ExplainedRule {
                name: rule.name.to_string(),
                kind: "access",
                key: String::new(),
                detail: match (matched, rule.action) {
                    (None, _) => "no match".into(),
                    (Some(m), AccessAction::Allow) => {
                        format!("allow: matches by {m:?}; limits are skipped")
                    }
                    (Some(m), AccessAction::Deny) => format!("deny: matches by {m:?}"),
                },
                would_reject: matched.is_some() && rule.action == AccessAction::Deny,
                shadow: false,
            });
            if matched.is_some() && out.verdict.is_none() {
                out.verdict = Some(match rule.action {
                    AccessAction::Allow => format!("allowed by {}", rule.name),
                    AccessAction::Deny => format!("denied by {}", rule.name),
                });
            }
        }
        for &i in &rules.limits {
            let rule = &self.limits[i];
            if let (KeyKind::Body(spec), None) = (&rule.config.key, facts.body_keys) {
                out.rules.push(ExplainedRule {
                    name: rule.config.name.clone(),
                    kind: "limit",
                    key: format!("body field {} (hashed)", spec.field),
                    detail: "keyed by a field of the request body; explain has no body".into(),
                    would_reject: false,
                    shadow: rule.config.shadow,
                });
                continue;
            }
            let key = rule.key(&Self::key_facts(facts, &rule.config.key, i));
            let BucketState {
                tracked, remaining, ..
            } = rule.peek(&key);
            let would_reject = remaining == 0;
            out.rules.push(ExplainedRule {
                name: rule.config.name.clone(),
                kind: "limit",
                key: describe_key(&key),
                detail: format!(
                    "{} requests left of {} (rate {}/{}s, cost {}){}",
                    remaining,
                    rule.config.burst.get() / rule.config.cost.get(),
                    rule.config.rate.count,
                    rule.config.rate.per.as_secs_f64(),
                    rule.config.cost,
                    if tracked {
                        ""
                    } else {
                        "; key not tracked (full bucket)"
                    }
                ),
                would_reject,
                shadow: rule.config.shadow,
            });
            if would_reject && !rule.config.shadow && out.verdict.is_none() {
                out.verdict = Some(format!("rate limited by {}", rule.config.name));
            }
        }
        for &i in &rules.concurrency {
            let rule = &self.concurrency[i];
            let key = rule.key(&Self::key_facts(facts, &rule.config.key, i));
            let n = rule.in_flight(&key);
            let would_reject = n >= rule.config.max_in_flight.get();
            out.rules.push(ExplainedRule {
                name: rule.config.name.clone(),
                kind: "concurrency",
                key: describe_key(&key),
                detail: format!("{n} of {} in flight", rule.config.max_in_flight),
                would_reject,
                shadow: rule.config.shadow,
            });
            if would_reject && !rule.config.shadow && out.verdict.is_none() {
                out.verdict = Some(format!("too many in flight ({})", rule.config.name));
            }
        }
        if out.verdict.is_none() {
            if self.unknown_country == UnknownPolicy::Deny && facts.geo.country.is_none() {
                out.verdict = Some("denied: unknown country".into());
            } else if self.unknown_asn == UnknownPolicy::Deny && facts.geo.asn.is_none() {
                out.verdict = Some("denied: unknown ASN".into());
            }
        }
        out
    }

    /// The rejection for fleet rule `rule` charged `cost` cells per request, with
    /// `retry_after` seconds to wait.
    pub fn rate_limited(&self, rule: usize, cost: u32, retry_after: u64) -> Option<Rejection> {
        let r = self.limits.get(rule)?;
        Some(Rejection::RateLimited {
            rule: self.limit_names[rule].clone(),
            retry_after: retry_after.max(1),
            quota: (r.config.rate.count.get() / cost.max(1)).max(1),
            window: r.config.rate.per.as_secs().max(1),
        })
    }

    /// Charges the local fallback bucket of fleet rule `rule` (failure mode
    /// `local`); `None` when the rule has no local fallback.
    pub fn fleet_fallback_check(
        &self,
        rule: usize,
        key: LimitKey,
        cost: u32,
    ) -> Option<RuleOutcome> {
        let local = self.fleet_fallback.get(rule)?.as_ref()?;
        let cost = std::num::NonZeroU32::new(cost.min(local.config.burst.get()).max(1))?;
        Some(local.check_cost(key, cost))
    }

    /// Rate rules, in config order.
    pub fn rate_rules(&self) -> &[Arc<RateRule<C>>] {
        &self.limits
    }

    /// Concurrency rules, in config order.
    pub fn concurrency_rules(&self) -> &[Arc<ConcurrencyRule>] {
        &self.concurrency
    }

    /// Sweeps every rate rule; returns `(rule name, keys dropped)`.
    pub fn sweep(&self) -> Vec<(String, usize)> {
        self.limits
            .iter()
            .map(|r| (r.config.name.clone(), r.sweep()))
            .collect()
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
        LimitKey::Whole => "whole route".into(),
        LimitKey::Overflow => "overflow".into(),
    }
}

/// Every rule that applies to a request and what it would say.
#[derive(Debug, Default)]
pub struct Explanation {
    /// Rules in evaluation order.
    pub rules: Vec<ExplainedRule>,
    /// The first rule that would act, or `None` when the request would pass.
    pub verdict: Option<String>,
}

/// One rule in an [`Explanation`].
#[derive(Debug)]
pub struct ExplainedRule {
    /// Rule name.
    pub name: String,
    /// `access`, `limit` or `concurrency`.
    pub kind: &'static str,
    /// The key the request is counted under (empty for access rules).
    pub key: String,
    /// Human detail: match, bucket or slot state.
    pub detail: String,
    /// Whether this rule would reject the request now.
    pub would_reject: bool,
    /// Whether the rule is in shadow mode.
    pub shadow: bool,
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
        p.decide(&RequestFacts {
            ip: ip.parse().unwrap(),
            geo: GeoInfo::default(),
            route: Some(route),
            method: "POST",
            headers,
            flags,
            body_keys: None,
        })
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

    fn decide(
        p: &Policy<FakeRelativeClock>,
        ip: &str,
        route: usize,
        keys: Option<&[Option<String>]>,
    ) -> Decision {
        let headers = HeaderMap::new();
        p.decide(&RequestFacts {
            ip: ip.parse().unwrap(),
            geo: GeoInfo::default(),
            route: Some(route),
            method: "POST",
            headers: &headers,
            flags: &[],
            body_keys: keys,
        })
    }

    fn values(p: &Policy<FakeRelativeClock>, body: &str) -> Result<Vec<Option<String>>, Rejection> {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        p.body_key_values(
            Some(0),
            &crate::body::BodyInput {
                headers: &headers,
                query: None,
                body: body.as_bytes(),
            },
        )
    }

    #[test]
    fn the_body_is_asked_for_before_anything_is_charged() {
        let config = rampart_config::parse(CONFIG, Path::new("t.toml")).unwrap();
        let p = Policy::new(&config, FakeRelativeClock::default(), None);
        let first = decide(&p, "192.0.2.1", 0, None);
        assert_eq!(
            first.need_body,
            Some(rampart_config::DEFAULT_MAX_BODY_BYTES)
        );
        assert!(first.rejection.is_none());
        // The address bucket was not touched: its key is not even tracked.
        assert!(
            !p.rate_rules()[0]
                .peek(&LimitKey::Ip("192.0.2.1".parse().unwrap()))
                .tracked
        );
        // Routes without body keys are decided at once.
        assert_eq!(decide(&p, "192.0.2.1", 1, None).need_body, None);
    }

    #[test]
    fn one_account_from_many_addresses_is_limited_and_others_are_not() {
        let config = rampart_config::parse(CONFIG, Path::new("t.toml")).unwrap();
        let p = Policy::new(&config, FakeRelativeClock::default(), None);
        let alice = values(&p, r#"{"username":"  Alice@Example.com ","password":"x"}"#).unwrap();
        let alice_again = values(&p, r#"{"username":"alice@example.COM"}"#).unwrap();
        assert_eq!(alice, alice_again, "trimmed and case-folded");
        for i in 0..2 {
            assert!(decide(&p, &format!("198.51.100.{i}"), 0, Some(&alice))
                .rejection
                .is_none());
        }
        let limited = decide(&p, "198.51.100.99", 0, Some(&alice))
            .rejection
            .unwrap();
        assert_eq!(limited.rule(), Some("login-account"));
        let bob = values(&p, r#"{"username":"bob"}"#).unwrap();
        assert!(decide(&p, "198.51.100.99", 0, Some(&bob))
            .rejection
            .is_none());
        // The key is a hash: no trace of the name in what explain shows.
        let headers = HeaderMap::new();
        let e = p.explain(&RequestFacts {
            ip: "198.51.100.99".parse().unwrap(),
            geo: GeoInfo::default(),
            route: Some(0),
            method: "POST",
            headers: &headers,
            flags: &[],
            body_keys: Some(&alice),
        });
        let text = format!("{:?}", e.rules);
        assert!(!text.to_lowercase().contains("alice"), "{text}");
    }

    #[test]
    fn unreadable_bodies_are_refused() {
        let config = rampart_config::parse(CONFIG, Path::new("t.toml")).unwrap();
        let p = Policy::new(&config, FakeRelativeClock::default(), None);
        for body in [
            r#"{"username":"a","username":"b"}"#,
            r#"{"Username":"a"}"#,
            r#"{"user":"a"}"#,
            r#"{"username":"   "}"#,
            "{not json",
        ] {
            let refused = values(&p, body).unwrap_err();
            assert_eq!(refused.status(), 400, "{body}");
            assert_eq!(refused.rule(), Some("login-account"));
        }
    }
}
