//! Closing a connection at accept never refuses what the request path would
//! let through: over a generated table of configs × client addresses × origins
//! (country, AS) × bans, wherever `Policy::refusal_at_accept` refuses, every
//! request that connection could carry (each route, a path no route matches,
//! each method, with and without a session cookie and an API key, every
//! lockdown flag alone enforced and previewed) is refused by the request path
//! too, given the answers most favourable to the client (a dry run, so no
//! bucket drains; fleet buckets allowed; a body that passes the body rules);
//! and the rule named at accept is the one the request path names on a route
//! where nothing answers first.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use governor::clock::FakeRelativeClock;
use http::HeaderMap;
use rampart_policy::ja4::Ja4;
use rampart_policy::limits::LimitKey;
use rampart_policy::{
    Charging, CountryCode, FlagMode, FleetAnswer, GeoInfo, Policy, Rejection, RequestFacts,
};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

const BASE: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"
[[listeners]]
address = "127.0.0.1:8081"
proxy_protocol = "any"
proxy_protocol_from = ["10.9.0.0/16"]
[[listeners]]
address = "127.0.0.1:8443"
tls = { cert = "Cargo.toml", key = "Cargo.toml" }
[client_ip]
trusted_proxies = ["10.8.0.0/16"]
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
[unmatched]
action = "proxy"
pool = "web"
[[flags]]
name = "maintenance"
maintenance = { retry_after = "2m", message = "Back soon." }
[[flags]]
name = "login_only"
allow_only_routes = ["login"]
[[flags]]
name = "sessions"
require_session = { routes = ["chat"], cookie = "sid" }
[[flags]]
name = "office_only"
restrict = [{ routes = ["chat"], cidrs = ["192.0.2.0/24"] }]
[[flags]]
name = "registration_cn_mobile_only"
body_rules = [{ route = "register", field = "phone", allowed_regions = ["CN"], number_types = ["mobile"] }]
[[flags]]
name = "under_attack"
limit_scale = 0.5
"#;

const FLAG_COUNT: usize = 6;

/// Access rules of every shape (scoped and not, allow before and after
/// deny, negations) and penalty boxes of every shape.
const RULES: &str = r#"
[geoip]
country_db = "/nonexistent/country.mmdb"
asn_db = "/nonexistent/asn.mmdb"
[[access]]
name = "office-chat"
action = "allow"
cidrs = ["203.0.113.128/25"]
routes = ["chat"]
[[access]]
name = "login-deny"
action = "deny"
cidrs = ["198.18.0.0/15"]
routes = ["login"]
[[access]]
name = "bad-net"
action = "deny"
cidrs = ["203.0.113.0/24", "198.18.0.0/16"]
[[access]]
name = "bad-as"
action = "deny"
asns = [64666]
not_cidrs = ["198.51.100.128/25"]
[[access]]
name = "bad-country"
action = "deny"
countries = ["KP"]
[[access]]
name = "late-allow"
action = "allow"
asns = [64666, 64777]
[[access]]
name = "ja4-deny"
action = "deny"
ja4 = ["t12d0308h1_*_*"]
[[access]]
name = "ja4-not-deny"
action = "deny"
cidrs = ["192.0.2.64/26"]
not_ja4 = ["t13d1516h2_8daaf6152771_*"]
[[limits]]
name = "by-ip"
key = "ip"
rate = "100/min"
ban = { after = 2, within = "1m", for = "5m" }
[[limits]]
name = "by-prefix-hosting"
key = "prefix"
prefix_v4 = 24
rate = "100/min"
asns = [64500]
ban = { after = 2, within = "1m", for = "5m" }
[[limits]]
name = "login-ip"
key = "ip"
rate = "100/min"
routes = ["login"]
ban = { after = 2, within = "1m", for = "5m" }
[[limits]]
name = "shadow-ip"
key = "ip"
rate = "100/min"
shadow = true
ban = { after = 2, within = "1m", for = "5m" }
[[limits]]
name = "attack-ip"
key = "ip"
rate = "100/min"
only_with_flag = "under_attack"
ban = { after = 2, within = "1m", for = "5m" }
[[limits]]
name = "api-key"
key = "header"
header = "x-api-key"
rate = "100/min"
ban = { after = 2, within = "1m", for = "5m" }
[[limits]]
name = "fleet-country"
key = "country"
rate = "100000/min"
scope = "fleet"
ban = { after = 2, within = "1m", for = "5m" }
"#;

/// Unknown origin refused, an allow rule for one route.
const UNKNOWN: &str = r#"
[geoip]
country_db = "/nonexistent/country.mmdb"
asn_db = "/nonexistent/asn.mmdb"
unknown_country = "deny"
unknown_asn = "deny"
[[access]]
name = "monitoring"
action = "allow"
cidrs = ["192.0.2.0/24"]
routes = ["register"]
"#;

/// A fingerprint before every deny by address; with [`JA4_X`], a client is
/// let through by the JA4 rules that concern it, and with none or [`JA4_Y`]
/// refused by them.
const JA4_ALLOW: &str = r#"
[geoip]
country_db = "/nonexistent/country.mmdb"
asn_db = "/nonexistent/asn.mmdb"
unknown_country = "deny"
[[access]]
name = "tls-client-allow"
action = "allow"
ja4 = ["t13d1516h2_*_e5627efa2ab1"]
not_countries = ["KP"]
[[access]]
name = "bad-net"
action = "deny"
cidrs = ["203.0.113.0/24"]
[[access]]
name = "bad-country"
action = "deny"
countries = ["KP"]
[[limits]]
name = "by-ip"
key = "ip"
rate = "100/min"
ban = { after = 2, within = "1m", for = "5m" }
"#;

const JA4_X: &str = "t13d1516h2_8daaf6152771_e5627efa2ab1";
const JA4_Y: &str = "t12d0308h1_fe5e151bca39_5d27fba9ef2f";

/// What a request's connection may have fingerprinted.
fn fingerprints() -> [Option<Ja4>; 3] {
    [
        None,
        Some(Ja4::parse(JA4_X).unwrap()),
        Some(Ja4::parse(JA4_Y).unwrap()),
    ]
}

/// Client addresses: in and out of every list, trusted proxies and balancers,
/// IPv6 and IPv4-mapped IPv6.
const ADDRESSES: &[&str] = &[
    "203.0.113.9",
    "203.0.113.200",
    "::ffff:203.0.113.9",
    "198.18.0.1",
    "198.19.0.1",
    "198.51.100.1",
    "198.51.100.200",
    "192.0.2.1",
    "192.0.2.77",
    "10.8.0.1",
    "10.9.0.1",
    "2001:db8::1",
];

const ORIGINS: &[(Option<&str>, Option<u32>)] = &[
    (None, None),
    (Some("DE"), Some(64501)),
    (Some("DE"), None),
    (None, Some(64501)),
    (Some("KP"), Some(64501)),
    (Some("DE"), Some(64666)),
    (Some("FR"), Some(64500)),
    (Some("CN"), Some(64777)),
    (Some("CN"), Some(64501)),
];

/// Each route's path, a path no route matches, each method, with and without
/// a session cookie and an API key.
fn requests() -> Vec<(&'static str, &'static str, bool, bool)> {
    let mut out = Vec::new();
    for path in ["/login", "/register", "/chat", "/elsewhere"] {
        for method in ["GET", "POST"] {
            for cookie in [false, true] {
                for api_key in [false, true] {
                    out.push((path, method, cookie, api_key));
                }
            }
        }
    }
    out
}

fn flag_sets() -> Vec<Vec<FlagMode>> {
    let mut sets = vec![vec![FlagMode::Off; FLAG_COUNT]];
    for i in 0..FLAG_COUNT {
        for mode in [FlagMode::Enforce, FlagMode::Preview] {
            let mut set = vec![FlagMode::Off; FLAG_COUNT];
            set[i] = mode;
            sets.push(set);
        }
    }
    sets
}

fn geo((country, asn): (Option<&str>, Option<u32>)) -> GeoInfo {
    GeoInfo {
        country: country.and_then(CountryCode::parse),
        asn,
    }
}

fn canonical(ip: &str) -> IpAddr {
    rampart_config::canonical_ip(ip.parse().unwrap())
}

/// The request path's verdict, with every answer favouring the client.
fn decide(
    policy: &Policy<FakeRelativeClock>,
    peer: &str,
    origin: (Option<&str>, Option<u32>),
    (path, method, cookie, api_key): (&str, &str, bool, bool),
    flags: &[FlagMode],
    ja4: Option<Ja4>,
) -> Option<Rejection> {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    if cookie {
        headers.insert("cookie", "sid=abc".parse().unwrap());
    }
    if api_key {
        headers.insert("x-api-key", "k-123".parse().unwrap());
    }
    let facts = RequestFacts {
        // The peer is the client: no forwarding header is believed from it.
        ip: canonical(peer),
        geo: geo(origin),
        host: Some("example.com"),
        path,
        query: None,
        method,
        headers: &headers,
        flags,
        ja4,
        identity: Default::default(),
    };
    let body = br#"{"phone":"+86 138 0013 8000"}"#;
    policy
        .run(&facts, Charging::DryRun, Some(body), |checks| {
            vec![FleetAnswer::Allowed; checks.len()]
        })
        .0
        .refusal
}

/// Checks every row of one config; returns the accept-time refusals by
/// (address, origin) as (label, rule).
fn check(policy: &Policy<FakeRelativeClock>) -> BTreeMap<(String, usize), (String, String)> {
    let mut refused = BTreeMap::new();
    let none = vec![FlagMode::Off; FLAG_COUNT];
    for peer in ADDRESSES {
        for (o, origin) in ORIGINS.iter().enumerate() {
            let calls = std::cell::Cell::new(0);
            let at_accept = policy.refusal_at_accept(peer.parse().unwrap(), |ip| {
                calls.set(calls.get() + 1);
                assert_eq!(ip, canonical(peer), "looked up the canonical address");
                geo(*origin)
            });
            assert!(calls.get() <= 1, "one lookup at most");
            let Some(at_accept) = at_accept else { continue };
            for request in requests() {
                for flags in flag_sets() {
                    for ja4 in fingerprints() {
                        let verdict = decide(policy, peer, *origin, request, &flags, ja4);
                        assert!(
                            verdict.is_some(),
                            "{peer} {origin:?} is closed at accept ({at_accept:?}) but {} {} with flags {flags:?} and JA4 {ja4:?} is let through",
                            request.1,
                            request.0
                        );
                    }
                }
            }
            // Where nothing answers first (a route the client may use, no
            // flag, an API key so that the header-keyed rule counts the key and
            // not the address, a fingerprint no JA4 rule refuses), the request
            // path names the same refusal.
            let x = Ja4::parse(JA4_X).ok();
            let chat = decide(
                policy,
                peer,
                *origin,
                ("/chat", "POST", true, true),
                &none,
                x,
            );
            assert_eq!(chat.as_ref(), Some(&at_accept), "{peer} {origin:?}");
            refused.insert(
                (peer.to_string(), o),
                (
                    at_accept.label().to_string(),
                    at_accept.rule().unwrap_or_default().to_string(),
                ),
            );
        }
    }
    refused
}

fn policy(rules: &str) -> Policy<FakeRelativeClock> {
    // Relative TLS paths resolve against this crate's folder, where the
    // validator finds Cargo.toml (it only checks that the files exist).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("t.toml");
    let config = rampart_config::parse(&format!("{BASE}{rules}"), &path).unwrap();
    Policy::new(&config, FakeRelativeClock::default(), None)
}

fn labels(refused: &BTreeMap<(String, usize), (String, String)>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (label, rule) in refused.values() {
        *out.entry(format!("{label}:{rule}")).or_default() += 1;
    }
    out
}

#[test]
fn access_rules_and_bans_refused_at_accept_are_refused_on_every_request() {
    let policy = policy(RULES);
    let before = check(&policy);
    // Not vacuous: each unscoped deny refuses somebody at accept.
    let seen = labels(&before);
    for label in [
        "denied_network:bad-net",
        "denied_asn:bad-as",
        "denied_country:bad-country",
    ] {
        assert!(
            seen.contains_key(label),
            "{label} never at accept: {seen:?}"
        );
    }
    // The office's allow rule (chat only) keeps its part of bad-net; the
    // login-only deny refuses at accept only through bad-net (198.18/16).
    assert!(!before.keys().any(|(peer, _)| peer == "203.0.113.200"));
    assert!(!before.contains_key(&("198.19.0.1".to_string(), 1)));
    assert!(before.contains_key(&("198.18.0.1".to_string(), 1)));
    // Trusted proxies and balancers never.
    assert!(!before
        .keys()
        .any(|(peer, _)| peer == "10.8.0.1" || peer == "10.9.0.1"));

    // Bans through real refusals: 192.0.2.77 drains by-ip, then is banned.
    let charge = |p: &Policy<FakeRelativeClock>, ip: &str, asn: Option<u32>| {
        let headers = HeaderMap::new();
        let facts = RequestFacts {
            ip: ip.parse().unwrap(),
            geo: GeoInfo {
                country: CountryCode::parse("FR"),
                asn,
            },
            host: Some("example.com"),
            path: "/chat",
            query: None,
            method: "GET",
            headers: &headers,
            flags: &[],
            // A fingerprint the JA4 deny rules let through.
            ja4: Ja4::parse(JA4_X).ok(),
            identity: Default::default(),
        };
        p.run(&facts, Charging::Charge, None, |c| {
            vec![FleetAnswer::Allowed; c.len()]
        })
        .0
        .refusal
    };
    let mut bans = 0;
    for _ in 0..200 {
        if let Some(Rejection::Banned { .. }) = charge(&policy, "192.0.2.77", Some(1)) {
            bans += 1;
            break;
        }
    }
    assert_eq!(bans, 1, "by-ip banned 192.0.2.77 through the request path");
    // Every other shape of ban, imposed as the fleet would.
    let impose = |rule: &str, key: LimitKey| {
        let (table, _) = policy.ban_table(rule).unwrap();
        table.impose(key, Duration::from_secs(300), 1);
    };
    impose(
        "by-prefix-hosting",
        LimitKey::Net("198.51.100.0/24".parse().unwrap()),
    );
    impose(
        "fleet-country",
        LimitKey::Country(CountryCode::parse("CN").unwrap()),
    );
    for rule in ["login-ip", "shadow-ip", "attack-ip", "api-key"] {
        impose(rule, LimitKey::Ip("192.0.2.1".parse().unwrap()));
    }
    let after = check(&policy);
    let seen = labels(&after);
    for label in [
        "banned:by-ip",
        "banned:by-prefix-hosting",
        "banned:fleet-country",
    ] {
        assert!(
            seen.contains_key(label),
            "{label} never at accept: {seen:?}"
        );
    }
    // 192.0.2.1 is banned only by rules a request can escape.
    assert!(!after.contains_key(&("192.0.2.1".to_string(), 1)));
    // The hosting prefix ban concerns AS64500 only.
    assert!(after.contains_key(&("198.51.100.1".to_string(), 6)));
    assert!(!after.contains_key(&("198.51.100.1".to_string(), 1)));
}

#[test]
fn unknown_origin_refused_at_accept_is_refused_on_every_request() {
    let policy = policy(UNKNOWN);
    let refused = check(&policy);
    let seen = labels(&refused);
    assert!(seen.contains_key("unknown_country:"), "{seen:?}");
    assert!(seen.contains_key("unknown_asn:"), "{seen:?}");
    // The monitoring allow rule keeps its networks, for every origin.
    assert!(!refused.keys().any(|(peer, _)| peer.starts_with("192.0.2.")));
    // A placed client is accepted.
    assert!(!refused.contains_key(&("198.51.100.1".to_string(), 1)));
}

#[test]
fn without_rules_that_refuse_nothing_is_looked_up() {
    let policy = policy(
        "[[access]]\nname = \"office\"\naction = \"allow\"\ncidrs = [\"192.0.2.0/24\"]\n[[limits]]\nname = \"login\"\nkey = \"ip\"\nrate = \"1/min\"\nroutes = [\"login\"]\nban = { after = 1, within = \"1m\", for = \"1m\" }\n",
    );
    for peer in ADDRESSES {
        let at_accept = policy.refusal_at_accept(peer.parse().unwrap(), |_| {
            panic!("no rule read at accept needs the origin")
        });
        assert!(at_accept.is_none());
    }
}

#[test]
fn rules_on_the_tls_fingerprint_are_never_decided_at_accept() {
    let policy = policy(JA4_ALLOW);
    // The allow rule may match any client whose country is not KP (its
    // fingerprint is only known after accept): only KP is refused at accept,
    // and only by what comes after an allow rule that excludes it.
    let refused = check(&policy);
    assert!(
        refused
            .iter()
            .all(|((_, o), (label, _))| ORIGINS[*o].0 == Some("KP") || label == "unknown_country"),
        "{refused:?}"
    );
    assert!(refused.contains_key(&("203.0.113.9".to_string(), 4)));
    assert!(!refused.contains_key(&("203.0.113.9".to_string(), 1)));
    // On the request path the fingerprint decides.
    let chat = ("/chat", "GET", false, false);
    let none = vec![FlagMode::Off; FLAG_COUNT];
    let [plain, x, y] = fingerprints();
    let origin = (Some("DE"), Some(64501));
    assert_eq!(decide(&policy, "203.0.113.9", origin, chat, &none, x), None);
    for other in [plain, y] {
        assert!(matches!(
            decide(&policy, "203.0.113.9", origin, chat, &none, other),
            Some(Rejection::DeniedByNetwork { .. })
        ));
    }
    // In RULES: a deny by fingerprint and one by "no such fingerprint" refuse
    // on the request path only.
    let policy = policy_rules();
    let origin = (Some("DE"), Some(64501));
    for (peer, ja4, denied) in [
        ("192.0.2.77", x, false),
        ("192.0.2.77", plain, true),
        ("192.0.2.77", y, true),
        ("192.0.2.1", plain, false),
        ("192.0.2.1", y, true),
    ] {
        let verdict = decide(&policy, peer, origin, chat, &none, ja4);
        // Denied by fingerprint (ja4-deny: denied_ja4), or by network for a
        // client of ja4-not-deny's networks its exclusion does not cover.
        assert_eq!(
            matches!(
                verdict.as_ref().and_then(|r| r.rule()),
                Some("ja4-deny" | "ja4-not-deny")
            ),
            denied,
            "{peer} {ja4:?}: {verdict:?}"
        );
        if ja4 == y {
            assert!(matches!(verdict, Some(Rejection::DeniedByJa4 { .. })));
        }
        assert!(policy
            .refusal_at_accept(peer.parse().unwrap(), |_| geo(origin))
            .is_none());
    }
}

fn policy_rules() -> Policy<FakeRelativeClock> {
    policy(RULES)
}
