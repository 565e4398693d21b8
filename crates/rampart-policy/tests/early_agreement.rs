//! Deciding early changes no verdict. Two policies built from one config get
//! the same generated stream of requests (clients that fill their buckets and
//! get banned, every route, methods a route refuses, API keys, lockdown flags
//! off, enforced and previewed (maintenance, a session check, a body rule,
//! tighter limits), a concurrency cap, a fleet rule). One decides
//! each request with `Evaluation::next_early` on what the connection and the
//! request line tell (no header fields) and then, when that is not enough,
//! `next` with every fact; the other with `next` alone. Every verdict must be
//! the same, bucket for bucket and ban for ban, and a good share of them must
//! have been decided early (refusals and requests let through both).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use governor::clock::FakeRelativeClock;
use http::HeaderMap;
use rampart_policy::limits::LimitKey;
use rampart_policy::{
    BodyRead, Charging, CountryCode, Evaluation, FlagMode, FleetAnswer, GeoInfo, Policy,
    RequestFacts, Step, Verdict,
};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

const CONFIG: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"
[client_ip]
trusted_proxies = ["10.8.0.0/16"]
[geoip]
country_db = "/nonexistent/country.mmdb"
asn_db = "/nonexistent/asn.mmdb"
[pools.web]
servers = ["127.0.0.1:9000"]
[fleet]
redis_url = "redis://127.0.0.1:1/0"
[[routes]]
name = "login"
path_prefix = "/login"
methods = ["POST"]
pool = "web"
[[routes]]
name = "register"
path_prefix = "/register"
methods = ["POST"]
pool = "web"
[[routes]]
name = "chat"
path_prefix = "/chat"
pool = "web"
[[routes]]
name = "search"
path_prefix = "/search"
pool = "web"
[unmatched]
action = "proxy"
pool = "web"
[[access]]
name = "office"
action = "allow"
cidrs = ["192.0.2.0/24"]
[[access]]
name = "bad-net"
action = "deny"
cidrs = ["198.51.100.0/24"]
[[access]]
name = "bad-country"
action = "deny"
countries = ["KP"]
[[limits]]
name = "by-ip"
key = "ip"
rate = "5/s"
burst = 8
ban = { after = 4, within = "10s", for = "3s" }
[[limits]]
name = "by-asn"
key = "asn"
rate = "20/s"
burst = 30
ban = { after = 10, within = "10s", for = "5s" }
[[limits]]
name = "login-prefix"
key = "prefix"
prefix_v4 = 24
rate = "2/s"
burst = 3
routes = ["login"]
ban = { after = 3, within = "10s", for = "4s" }
[[limits]]
name = "shadow-ip"
key = "ip"
rate = "1/s"
shadow = true
[[limits]]
name = "attack-ip"
key = "ip"
rate = "2/s"
only_with_flag = "under_attack"
[[limits]]
name = "chat-key"
key = "header"
header = "x-api-key"
rate = "3/s"
routes = ["chat"]
ban = { after = 3, within = "10s", for = "3s" }
[[limits]]
name = "search-fleet"
key = "ip"
rate = "4/s"
scope = "fleet"
routes = ["search"]
[[concurrency]]
name = "register-inflight"
key = "ip"
max_in_flight = 1
routes = ["register"]
[[flags]]
name = "maintenance"
maintenance = { retry_after = "2m", message = "Back soon." }
[[flags]]
name = "sessions"
require_session = { routes = ["chat"], cookie = "sid" }
[[flags]]
name = "registration_cn_mobile_only"
body_rules = [{ route = "register", field = "phone", allowed_regions = ["CN"], number_types = ["mobile"] }]
[[flags]]
name = "under_attack"
limit_scale = 0.5
"#;

const FLAG_COUNT: usize = 4;

const CLIENTS: &[(&str, Option<&str>, Option<u32>)] = &[
    ("203.0.113.9", Some("DE"), Some(64501)),
    ("203.0.113.10", Some("DE"), Some(64501)),
    ("203.0.113.11", Some("DE"), Some(64501)),
    ("198.18.0.1", None, None),
    ("198.51.100.7", Some("FR"), Some(64502)),
    ("192.0.2.5", Some("FR"), Some(64502)),
    ("100.64.0.1", Some("KP"), Some(64503)),
    ("2001:db8::1", Some("CN"), Some(64504)),
];
const PATHS: &[&str] = &[
    "/login",
    "/register",
    "/chat",
    "/chat/x",
    "/search",
    "/other",
];
const METHODS: &[&str] = &["GET", "POST", "PUT"];

/// A small deterministic generator (no dependency, same stream every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

fn policy() -> (Policy<FakeRelativeClock>, FakeRelativeClock) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("t.toml");
    let config = rampart_config::parse(CONFIG, &path).unwrap();
    let clock = FakeRelativeClock::default();
    (Policy::new(&config, clock.clone(), None), clock)
}

/// Drives an evaluation to its verdict, answering the fleet and giving a body
/// that passes the body rule.
fn finish(evaluation: &mut Evaluation<'_, FakeRelativeClock>, facts: &RequestFacts<'_>) -> Verdict {
    let mut step = evaluation.next(facts);
    loop {
        match step {
            Step::Done(verdict) => return verdict,
            Step::NeedBody { .. } => evaluation.give_body(BodyRead::Complete(
                br#"{"phone":"+86 138 0013 8000"}"#.to_vec(),
            )),
            Step::NeedFleet(checks) => {
                evaluation.give_fleet(vec![FleetAnswer::Allowed; checks.len()])
            }
        }
        step = evaluation.next(facts);
    }
}

/// What must agree between the two verdicts (a header's key is a keyed hash,
/// keyed per policy: only its kind can be compared).
fn summary(v: &Verdict) -> String {
    let shown = |key: Option<LimitKey>| match key {
        Some(LimitKey::Hashed(_)) => "hashed".to_string(),
        other => format!("{other:?}"),
    };
    let key = shown(v.key);
    let new_ban = v
        .new_ban
        .as_ref()
        .map(|b| (b.rule, shown(Some(b.key)), b.length, b.offenses));
    format!(
        "route={:?} pool={:?} refusal={:?} allowed_by={:?} observations={:?} permits={} new_ban={:?} key={:?}",
        v.route,
        v.pool,
        v.refusal,
        v.allowed_by,
        v.observations,
        v.permits.len(),
        new_ban,
        key
    )
}

#[test]
fn deciding_early_gives_every_verdict_the_full_evaluation_gives() {
    let (early_policy, early_clock) = policy();
    let (full_policy, full_clock) = policy();
    let mut rng = Lcg(0x5eed);
    let no_fields = HeaderMap::new();
    let (mut early_refused, mut early_passed, mut late, mut refused) = (0, 0, 0, 0);
    // Permits held for a while, so that the in-flight cap refuses sometimes.
    let mut held = Vec::new();
    for n in 0..30_000 {
        let (ip, country, asn) = CLIENTS[rng.next(CLIENTS.len())];
        let path = PATHS[rng.next(PATHS.len())];
        let method = METHODS[rng.next(METHODS.len())];
        let mut flags = vec![FlagMode::Off; FLAG_COUNT];
        if rng.next(5) == 0 {
            flags[rng.next(FLAG_COUNT)] = if rng.next(2) == 0 {
                FlagMode::Enforce
            } else {
                FlagMode::Preview
            };
        }
        let mut headers = HeaderMap::new();
        if rng.next(2) == 0 {
            headers.insert("x-api-key", format!("k-{}", rng.next(3)).parse().unwrap());
        }
        if rng.next(2) == 0 {
            headers.insert("cookie", "sid=abc".parse().unwrap());
        }
        headers.insert("content-type", "application/json".parse().unwrap());
        let ip: IpAddr = ip.parse().unwrap();
        let full = RequestFacts {
            ip,
            geo: GeoInfo {
                country: country.and_then(CountryCode::parse),
                asn,
            },
            host: Some("example.com"),
            path,
            query: None,
            method,
            headers: &headers,
            flags: &flags,
            ja4: None,
            identity: Default::default(),
        };
        let early = RequestFacts {
            headers: &no_fields,
            ..full
        };

        let mut evaluation = early_policy.evaluate(Charging::Charge);
        let a = match evaluation.next_early(&early) {
            Some(Step::Done(verdict)) => {
                if verdict.refusal.is_some() {
                    early_refused += 1;
                } else {
                    early_passed += 1;
                }
                verdict
            }
            Some(other) => panic!("request {n}: early evaluation asked for I/O: {other:?}"),
            None => {
                late += 1;
                finish(&mut evaluation, &full)
            }
        };
        let b = finish(&mut full_policy.evaluate(Charging::Charge), &full);
        assert_eq!(
            summary(&a),
            summary(&b),
            "request {n}: {method} {path} from {ip}, flags {flags:?}"
        );
        refused += usize::from(b.refusal.is_some());
        held.push((a.permits, b.permits));
        if held.len() > 3 {
            held.remove(0);
        }
        let step = Duration::from_millis(rng.next(40) as u64);
        early_clock.advance(step);
        full_clock.advance(step);
    }
    // Not vacuous: buckets, bans and caps refused, and early decisions of both
    // kinds were taken, as well as late ones.
    assert!(refused > 5_000, "refused {refused}");
    assert!(early_refused > 3_000, "early refusals {early_refused}");
    assert!(early_passed > 1_000, "early passes {early_passed}");
    assert!(late > 3_000, "late {late}");
}
