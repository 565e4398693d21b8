//! `explain` is the real decision with charging switched off: over a generated
//! table of requests × active flags × rules (maintenance, login_only, route
//! blocks, restrictions, sessions, body rules, body keys, unknown country, local
//! limits with limit_scale, limits scoped to countries, penalty boxes, shadow
//! rules, in-flight caps, fleet rules in each failure mode and each Redis
//! answer), a dry run first and then the real decision, on the same state,
//! must give the same verdict on every row.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use governor::clock::FakeRelativeClock;
use http::HeaderMap;
use rampart_policy::limits::ConcurrencyPermit;
use rampart_policy::{
    Charging, CountryCode, FlagMode, FleetAnswer, GeoInfo, Policy, RequestFacts, TraceEntry,
    Verdict,
};
use std::path::Path;
use std::time::Duration;

const CONFIG: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"
[pools.web]
servers = ["127.0.0.1:9000"]
[geoip]
country_db = "/nonexistent/country.mmdb"
unknown_country = "deny"
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
[[access]]
name = "office"
action = "allow"
cidrs = ["192.0.2.0/28"]
[[access]]
name = "bad-net"
action = "deny"
cidrs = ["203.0.113.0/24"]
[[limits]]
name = "login-ip"
key = "ip"
rate = "3/min"
burst = 3
routes = ["login"]
ban = { after = 3, within = "1m", for = "30s" }
[[limits]]
name = "chat-foreign"
key = "ip"
rate = "2/min"
burst = 2
routes = ["chat"]
not_countries = ["DE"]
[[limits]]
name = "login-account"
key = "body"
field = "username"
rate = "2/min"
burst = 2
routes = ["login"]
[[limits]]
name = "chat-shadow"
key = "ip"
rate = "1/min"
burst = 1
routes = ["chat"]
shadow = true
[[limits]]
name = "attack-only"
key = "route"
rate = "4/min"
burst = 4
routes = ["chat"]
only_with_flag = "under_attack"
[[limits]]
name = "fleet-open"
key = "ip"
rate = "100/min"
burst = 100
routes = ["chat"]
scope = "fleet"
fleet_failure = "open"
[[limits]]
name = "fleet-closed"
key = "ip"
rate = "100/min"
burst = 100
routes = ["register"]
scope = "fleet"
fleet_failure = "closed"
[[limits]]
name = "fleet-local"
key = "ip"
rate = "8/min"
burst = 8
routes = ["chat"]
scope = "fleet"
fleet_failure = "local"
fleet_local_share = 0.5
[[concurrency]]
name = "chat-slots"
key = "ip"
max_in_flight = 2
routes = ["chat"]
[[flags]]
name = "maintenance"
maintenance = { retry_after = "2m", message = "Back soon." }
[[flags]]
name = "login_only"
allow_only_routes = ["login"]
[[flags]]
name = "registration_closed"
block = [{ routes = ["register"], status = 403, message = "Closed." }]
[[flags]]
name = "sessions"
require_session = { routes = ["chat"], cookie = "sid" }
[[flags]]
name = "office_only"
restrict = [{ routes = ["chat"], cidrs = ["192.0.2.0/24"], countries = ["CN"] }]
[[flags]]
name = "registration_cn_mobile_only"
body_rules = [{ route = "register", field = "phone", allowed_regions = ["CN"], number_types = ["mobile"] }]
[[flags]]
name = "under_attack"
limit_scale = 0.5
"#;

const FLAG_COUNT: usize = 7;

/// One request of the table.
struct Request {
    ip: &'static str,
    country: Option<&'static str>,
    path: &'static str,
    method: &'static str,
    cookie: bool,
    body: Option<&'static str>,
}

const REQUESTS: &[Request] = &[
    Request {
        ip: "198.51.100.1",
        country: Some("DE"),
        path: "/login",
        method: "POST",
        cookie: false,
        body: Some(r#"{"username":"alice","password":"x"}"#),
    },
    Request {
        ip: "198.51.100.2",
        country: Some("DE"),
        path: "/login",
        method: "POST",
        cookie: false,
        body: Some(r#"{"username":"alice","username":"bob"}"#),
    },
    Request {
        ip: "198.51.100.3",
        country: Some("DE"),
        path: "/login",
        method: "GET",
        cookie: false,
        body: None,
    },
    Request {
        ip: "198.51.100.4",
        country: Some("CN"),
        path: "/register",
        method: "POST",
        cookie: false,
        body: Some(r#"{"phone":"+86 138 0013 8000"}"#),
    },
    Request {
        ip: "198.51.100.5",
        country: Some("US"),
        path: "/register",
        method: "POST",
        cookie: false,
        body: Some(r#"{"phone":"+1 415 555 0100"}"#),
    },
    Request {
        ip: "198.51.100.6",
        country: Some("US"),
        path: "/register",
        method: "POST",
        cookie: false,
        body: Some("{not json"),
    },
    Request {
        ip: "198.51.100.7",
        country: Some("DE"),
        path: "/chat",
        method: "POST",
        cookie: true,
        body: Some("{}"),
    },
    Request {
        ip: "198.51.100.8",
        country: Some("DE"),
        path: "/chat",
        method: "POST",
        cookie: false,
        body: Some("{}"),
    },
    Request {
        ip: "192.0.2.1",
        country: Some("DE"),
        path: "/chat",
        method: "POST",
        cookie: false,
        body: Some("{}"),
    },
    Request {
        ip: "192.0.2.77",
        country: Some("DE"),
        path: "/chat",
        method: "POST",
        cookie: false,
        body: Some("{}"),
    },
    Request {
        ip: "203.0.113.9",
        country: Some("DE"),
        path: "/chat",
        method: "POST",
        cookie: false,
        body: Some("{}"),
    },
    Request {
        ip: "198.51.100.9",
        country: None,
        path: "/chat",
        method: "POST",
        cookie: true,
        body: Some("{}"),
    },
    Request {
        ip: "198.51.100.10",
        country: Some("CN"),
        path: "/nowhere",
        method: "GET",
        cookie: false,
        body: None,
    },
];

/// Every Redis answer a fleet rule can get.
fn fleet_answers() -> [FleetAnswer; 3] {
    [
        FleetAnswer::Allowed,
        FleetAnswer::Limited {
            retry_after: Duration::from_millis(2_500),
        },
        FleetAnswer::Unavailable,
    ]
}

/// The flag combinations: all off, each flag alone enforced and previewed, and
/// a few pairs.
fn flag_sets() -> Vec<Vec<FlagMode>> {
    let mut sets = vec![vec![FlagMode::Off; FLAG_COUNT]];
    for i in 0..FLAG_COUNT {
        for mode in [FlagMode::Enforce, FlagMode::Preview] {
            let mut set = vec![FlagMode::Off; FLAG_COUNT];
            set[i] = mode;
            sets.push(set);
        }
    }
    for (a, b) in [(4, 6), (5, 6), (3, 5), (1, 6)] {
        let mut set = vec![FlagMode::Off; FLAG_COUNT];
        set[a] = FlagMode::Enforce;
        set[b] = FlagMode::Preview;
        sets.push(set);
    }
    sets
}

/// What must agree between a dry run and the real decision.
fn comparable(v: &Verdict) -> String {
    format!(
        "route={:?} pool={:?} refusal={:?} allowed_by={:?} observations={:?}",
        v.route, v.pool, v.refusal, v.allowed_by, v.observations
    )
}

fn run(
    policy: &Policy<FakeRelativeClock>,
    request: &Request,
    flags: &[FlagMode],
    answer: FleetAnswer,
    charging: Charging,
) -> (Verdict, Vec<TraceEntry>) {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    if request.cookie {
        headers.insert("cookie", "sid=abc".parse().unwrap());
    }
    let facts = RequestFacts {
        ip: request.ip.parse().unwrap(),
        geo: GeoInfo {
            country: request.country.and_then(CountryCode::parse),
            asn: None,
        },
        host: Some("example.com"),
        path: request.path,
        query: None,
        method: request.method,
        headers: &headers,
        flags,
        ja4: None,
        identity: Default::default(),
    };
    policy.run(
        &facts,
        charging,
        request.body.map(str::as_bytes),
        |checks| vec![answer; checks.len()],
    )
}

#[test]
fn explain_and_the_real_decision_agree_on_every_row() {
    let config = rampart_config::parse(CONFIG, Path::new("t.toml")).unwrap();
    let clock = FakeRelativeClock::default();
    let policy = Policy::new(&config, clock.clone(), None);
    let mut rows = 0;
    let mut refused = std::collections::BTreeMap::<&'static str, usize>::new();
    let mut observed = 0;
    // Slots of real requests still "in flight", so the in-flight cap is reached.
    let mut held: Vec<ConcurrencyPermit> = Vec::new();
    for (round, flags) in flag_sets().iter().enumerate() {
        for answer in fleet_answers() {
            // Buckets drain over the repeats, so limited rows are covered too.
            for repeat in 0..3 {
                for request in REQUESTS {
                    let (dry, trace) = run(&policy, request, flags, answer, Charging::DryRun);
                    let (real, real_trace) = run(&policy, request, flags, answer, Charging::Charge);
                    assert!(real_trace.is_empty(), "only a dry run traces");
                    assert!(dry.permits.is_empty(), "a dry run takes no slot");
                    assert_eq!(
                        comparable(&dry),
                        comparable(&real),
                        "row {rows}: {} {} from {} flags {flags:?} fleet {answer:?}\ntrace: {trace:#?}",
                        request.method,
                        request.path,
                        request.ip
                    );
                    *refused.entry(real.label()).or_default() += 1;
                    observed += real.observations.len();
                    rows += 1;
                    if repeat < 2 {
                        held.extend(real.permits);
                    }
                }
            }
            held.clear();
        }
        // Some rounds start on refilled buckets, some on drained ones.
        if round % 3 == 2 {
            clock.advance(Duration::from_secs(60));
        }
    }
    // The table reaches every kind of verdict it is meant to cover.
    for label in [
        "proxied",
        "maintenance",
        "locked_down",
        "session_required",
        "restricted_by_flag",
        "body_refused",
        "rate_limited",
        "banned",
        "too_many_in_flight",
        "denied_network",
        "unknown_country",
        "method_not_allowed",
        "no_route",
    ] {
        assert!(
            refused.get(label).copied().unwrap_or(0) > 0,
            "no row ended in {label}: {refused:?}"
        );
    }
    assert!(observed > 0, "no shadow or preview observation");
    assert!(rows > 1_000, "{rows} rows");
}

#[test]
fn a_dry_run_charges_nothing() {
    let config = rampart_config::parse(CONFIG, Path::new("t.toml")).unwrap();
    let policy = Policy::new(&config, FakeRelativeClock::default(), None);
    let login = &REQUESTS[0];
    let off = [FlagMode::Off; FLAG_COUNT];
    for _ in 0..10 {
        let (v, trace) = run(&policy, login, &off, FleetAnswer::Allowed, Charging::DryRun);
        assert!(v.refusal.is_none());
        assert!(trace.iter().any(|t| t.name.as_ref() == "login-ip"));
    }
    for _ in 0..2 {
        let (v, _) = run(&policy, login, &off, FleetAnswer::Allowed, Charging::Charge);
        assert!(v.refusal.is_none());
    }
    let (v, _) = run(&policy, login, &off, FleetAnswer::Allowed, Charging::Charge);
    assert_eq!(v.refusal.unwrap().rule(), Some("login-account"));
}
