//! Protects the per-request policy budget (about 1 µs for route, lists, country,
//! ASN and three buckets) and the costs inside it: a limiter check on a hot key
//! and on a new key, a country and ASN lookup, rendering a 429 with its fields,
//! the phone-number body rule on a registration body; and the per-connection
//! check at accept (`Policy::refusal_at_accept`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use governor::clock::DefaultClock;
use http::HeaderMap;
use rampart_config::{KeyKind, LimitConfig};
use rampart_policy::limits::{LimitKey, RateRule};
use rampart_policy::{resolve_client_ip, Charging, GeoDb, Policy, Rejection, RequestFacts, Step};
use rampart_testkit::geo::{write_asn_db, write_country_db, CountryShape};
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

/// A config shaped like the shipped one, with a 1000-entry deny list and three
/// buckets on the login route (ip, prefix, asn) that nobody exhausts.
fn config_text(dir: &Path) -> String {
    let mut deny = Vec::new();
    for i in 0..1000u32 {
        deny.push(format!("\"{}.{}.0.0/16\"", 100 + i / 250, i % 250));
    }
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:8080"
[client_ip]
trusted_proxies = ["10.0.0.0/8"]
[geoip]
country_db = "{dir}/country.mmdb"
asn_db = "{dir}/asn.mmdb"
[pools.chat]
servers = ["127.0.0.1:9001"]
[pools.auth]
servers = ["127.0.0.1:9002"]
[[routes]]
name = "chat"
path_prefix = "/v1/chat/completions"
methods = ["POST"]
pool = "chat"
[[routes]]
name = "models"
path_prefix = "/v1/models"
pool = "chat"
[[routes]]
name = "register"
path_prefix = "/api/auth/register"
pool = "auth"
[[routes]]
name = "login"
path_prefix = "/api/auth/login"
methods = ["POST"]
pool = "auth"
[[access]]
name = "office"
action = "allow"
cidrs = ["192.0.2.0/24"]
[[access]]
name = "bad-networks"
action = "deny"
cidrs = [{deny}]
asns = [64999]
countries = ["KP"]
[[limits]]
name = "ip-global"
key = "ip"
rate = "1000000000/s"
[[limits]]
name = "login-prefix"
key = "prefix"
rate = "1000000000/s"
routes = ["login"]
[[limits]]
name = "login-asn"
key = "asn"
rate = "1000000000/s"
routes = ["login"]
"#,
        dir = dir.display(),
        deny = deny.join(", ")
    )
}

/// Fixture databases with a few thousand networks each.
fn write_geo(dir: &Path) {
    let mut countries = Vec::new();
    let mut asns = Vec::new();
    let codes = ["US", "DE", "CN", "FR", "JP", "BR", "IN", "GB"];
    for a in 1..=200u32 {
        for b in (0..=255u32).step_by(16) {
            let net = format!("{a}.{b}.0.0/12");
            let net: ipnet::IpNet = net.parse::<ipnet::IpNet>().map(|n| n.trunc()).unwrap();
            countries.push((net.to_string(), codes[(a + b) as usize % codes.len()]));
            asns.push((net.to_string(), 64_000 + a * 16 + b / 16, "Example AS"));
        }
    }
    countries.dedup_by(|x, y| x.0 == y.0);
    asns.dedup_by(|x, y| x.0 == y.0);
    let c: Vec<(&str, &str)> = countries.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    let a: Vec<(&str, u32, &str)> = asns.iter().map(|(n, a, o)| (n.as_str(), *a, *o)).collect();
    write_country_db(&dir.join("country.mmdb"), CountryShape::MaxMind, &c);
    write_asn_db(&dir.join("asn.mmdb"), &a);
}

fn full_decision(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    write_geo(dir.path());
    let config =
        rampart_config::parse(&config_text(dir.path()), &dir.path().join("b.toml")).unwrap();
    let geo = GeoDb::open(&config.geoip).unwrap();
    let policy: Policy<DefaultClock> = Policy::new(&config, DefaultClock::default(), None);
    let headers = HeaderMap::new();
    let peer: IpAddr = "10.1.2.3".parse().unwrap();

    // As the proxy drives it: the route, rules and buckets in one evaluation.
    let decide = |client: &str| {
        let xff = [client.as_bytes()];
        let ip = resolve_client_ip(peer, xff.into_iter(), &config.client_ip);
        let info = geo.lookup(ip);
        let facts = RequestFacts {
            ip,
            geo: info,
            host: Some("api.example.com"),
            path: "/api/auth/login",
            query: None,
            method: "POST",
            headers: &headers,
            flags: &[],
            ja4: None,
            identity: Default::default(),
        };
        let mut evaluation = policy.evaluate(Charging::Charge);
        let verdict = match evaluation.next(&facts) {
            Step::Done(verdict) => verdict,
            other => panic!("{client}: asked for {other:?}"),
        };
        assert!(verdict.refusal.is_none(), "{client}: {:?}", verdict.refusal);
        verdict
    };

    let mut group = c.benchmark_group("decision");
    group.bench_function("full_hot_key", |b| {
        b.iter(|| black_box(decide(black_box("45.67.89.10"))))
    });
    let clients: Vec<String> = (0..65_536u32)
        .map(|i| Ipv4Addr::from(0x2d00_0000 + i * 7).to_string())
        .collect();
    let mut i = 0;
    group.bench_function("full_65k_clients", |b| {
        b.iter(|| {
            i = (i + 1) % clients.len();
            black_box(decide(&clients[i]))
        })
    });
    group.finish();

    // Once per accepted connection, in the listener's accept loop.
    let mut group = c.benchmark_group("accept");
    let at_accept = |peer: IpAddr| policy.refusal_at_accept(peer, |ip| geo.lookup(ip));
    for (name, peer, refused) in [
        ("client_not_listed", "45.67.89.10", false),
        ("client_deny_listed", "100.5.1.1", true),
        ("trusted_proxy", "10.1.2.3", false),
    ] {
        let peer: IpAddr = peer.parse().unwrap();
        assert_eq!(at_accept(peer).is_some(), refused, "{name}");
        group.bench_function(name, |b| b.iter(|| black_box(at_accept(black_box(peer)))));
    }
    group.finish();

    let mut group = c.benchmark_group("geo");
    let ip: IpAddr = "45.67.89.10".parse().unwrap();
    group.bench_function("country_and_asn_lookup", |b| {
        b.iter(|| black_box(geo.lookup(black_box(ip))))
    });
    group.finish();
}

fn limit_config(max_keys: u32) -> LimitConfig {
    LimitConfig {
        name: "bench".into(),
        key: KeyKind::Ip,
        rate: rampart_config::parse_rate("1000000/s").unwrap(),
        burst: NonZeroU32::new(1000).unwrap(),
        cost: NonZeroU32::MIN,
        routes: None,
        max_keys: NonZeroU32::new(max_keys).unwrap(),
        shadow: false,
        only_with_flag: None,
        scope: rampart_config::LimitScope::Local,
        clients: Default::default(),
        ban: None,
    }
}

fn limiter(c: &mut Criterion) {
    let mut group = c.benchmark_group("limiter");
    let rule = RateRule::new(limit_config(100_000), DefaultClock::default());
    let key = LimitKey::Ip("198.51.100.7".parse().unwrap());
    group.bench_function("check_hot_key", |b| {
        b.iter(|| black_box(rule.check(black_box(key))))
    });

    // Every iteration is an address never seen before; the cap is far away.
    let fresh = RateRule::new(limit_config(50_000_000), DefaultClock::default());
    let mut n: u32 = 0x0b00_0000;
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("check_new_key", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(fresh.check(LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(n)))))
        })
    });

    // At the cap: new addresses fall back to their /24, then the overflow bucket.
    let full = RateRule::new(limit_config(1_000), DefaultClock::default());
    for i in 0..1_000u32 {
        full.check(LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))));
    }
    let mut m: u32 = 0x0c00_0000;
    group.bench_function("check_new_key_at_cap", |b| {
        b.iter(|| {
            m = m.wrapping_add(1);
            black_box(full.check(LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(m)))))
        })
    });
    group.finish();
}

fn rendering(c: &mut Criterion) {
    let r = Rejection::RateLimited {
        rule: "login-ip".into(),
        retry_after: 7,
        quota: 10,
        window: 60,
    };
    c.bench_function("rejection/render_429_with_ratelimit_fields", |b| {
        b.iter(|| {
            let h = black_box(&r).headers();
            let body = r.render(rampart_config::RouteKind::Api);
            black_box((h, body))
        })
    });
}

fn body_rule(c: &mut Criterion) {
    let rule = rampart_config::BodyRuleConfig {
        route: 0,
        field: "phone".into(),
        pointer: vec!["phone".into()],
        allowed_calling_codes: vec![],
        allowed_regions: vec!["CN".into()],
        number_types: vec![rampart_config::PhoneType::Mobile],
        methods: vec![],
        max_body_bytes: 16 * 1024,
    };
    rampart_policy::body::warm_up();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let body = br#"{"username":"li.wei","password":"correct horse battery staple","phone":"+86 138-0013-8000","captcha":"x7kq"}"#;
    c.bench_function("body/registration_json_phone_check", |b| {
        b.iter(|| {
            black_box(rampart_policy::body::check_body(
                &rule,
                &rampart_policy::body::BodyInput {
                    headers: &headers,
                    query: Some("ref=ad"),
                    body: black_box(body),
                },
            ))
        })
    });
    // The number check alone (libphonenumber parse, validity, region, type): the
    // issue's budget is 5 µs.
    for (name, number) in [
        ("cn_mobile_allowed", "+86 138-0013-8000"),
        ("us_refused", "+1 415 555 0100"),
        ("invalid_refused", "+8600000000"),
    ] {
        c.bench_function(&format!("body/phone_number_{name}"), |b| {
            b.iter(|| {
                black_box(rampart_policy::body::phone_allowed(
                    &rule,
                    black_box(number),
                ))
            })
        });
    }
}

// A limit keyed by a body field: the added cost per login request of reading the
// account name from the body and normalising it (the hash and the bucket check
// are those of any other key).
fn body_key(c: &mut Criterion) {
    let spec = rampart_config::BodyKeyConfig {
        field: "username".into(),
        pointer: vec!["username".into()],
        normalize: rampart_config::BodyKeyNormalize::Account,
        number_prefix: None,
        max_body_bytes: 16 * 1024,
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let body = br#"{"username":"Li.Wei@Example.com","password":"correct horse battery staple","remember":true}"#;
    c.bench_function("body/login_account_key", |b| {
        b.iter(|| {
            black_box(rampart_policy::body::body_key_value(
                &spec,
                &rampart_policy::body::BodyInput {
                    headers: &headers,
                    query: None,
                    body: black_box(body),
                },
            ))
        })
    });
}

// Canonical paths: the common case (already canonical, borrowed) and a rewrite.
fn canonical(c: &mut Criterion) {
    let opts = rampart_policy::CanonicalOptions::default();
    for (name, path) in [
        ("already_canonical", "/v1/chat/completions"),
        ("rewrite", "/api//auth/./x/../%72egister"),
    ] {
        c.bench_function(&format!("canonical/{name}"), |b| {
            b.iter(|| black_box(rampart_policy::canonicalize_path(black_box(path), opts)))
        });
    }
}

criterion_group!(
    benches,
    full_decision,
    limiter,
    rendering,
    body_rule,
    body_key,
    canonical
);
criterion_main!(benches);
