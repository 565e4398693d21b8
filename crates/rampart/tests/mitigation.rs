//! The mitigation engine over real sockets, with fixture GeoIP databases: per-IP,
//! per-ASN and per-/64 buckets, country deny, allow-list bypass, in-flight caps,
//! explanations, and a GeoIP file swapped under load. Client addresses are
//! presented through X-Forwarded-For from the trusted loopback peer.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::geo::{write_asn_db, write_country_db, CountryShape};
use rampart_testkit::{wait_until, ConfigBuilder, MockOrigin, Rampart};
use reqwest::{Method, StatusCode};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

/// A config with one `login` route and one `chat` route to `origin`, the GeoIP
/// fixtures of `{dir}`, and `rules` appended.
fn config(origin: &MockOrigin, rules: &str) -> String {
    ConfigBuilder::new()
        .pool("web", &[origin.addr])
        .health_check("web", r#"interval = "1s""#)
        .route("login", "/api/auth/login", "web")
        .route("stream", "/stream", "web")
        .route("chat", "/v1/", "web")
        .route_with(
            "signup-page",
            "/signup",
            "web",
            "kind = \"browser\"\nclose_on_reject = true",
        )
        .raw(
            r#"
[client_ip]
trusted_proxies = ["127.0.0.0/8"]
[geoip]
country_db = "{dir}/country.mmdb"
asn_db = "{dir}/asn.mmdb"
check_interval = "100ms"
"#,
        )
        .raw(rules)
        .build()
}

/// Starts Rampart with fixture databases in its folder.
async fn start(origin: &MockOrigin, rules: &str) -> Rampart {
    Rampart::start_with(bin(), &config(origin, rules), |dir| {
        write_country_db(
            &dir.join("country.mmdb"),
            CountryShape::MaxMind,
            &[
                ("203.0.113.0/24", "US"),
                ("198.51.100.0/24", "DE"),
                ("2001:db8::/32", "FR"),
            ],
        );
        write_asn_db(
            &dir.join("asn.mmdb"),
            &[
                ("198.51.100.0/24", 64500, "Botnet Hosting"),
                ("203.0.113.0/24", 64501, "Home ISP"),
            ],
        );
    })
    .await
}

async fn get_as(
    client: &reqwest::Client,
    rampart: &Rampart,
    path: &str,
    ip: &str,
) -> reqwest::Response {
    client
        .get(rampart.url(path))
        .header("x-forwarded-for", ip)
        .send()
        .await
        .unwrap()
}

fn parse_sf_list(value: &str) -> sfv::List {
    sfv::Parser::new(value)
        .parse_list()
        .unwrap_or_else(|e| panic!("{value:?} is not a structured field list: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_bucket_answers_429_with_retry_after_and_ratelimit_fields() {
    let origin = MockOrigin::start("o").await;
    let rampart = start(
        &origin,
        "[[limits]]\nname = \"login-ip\"\nkey = \"ip\"\nrate = \"6/min\"\nburst = 2\nroutes = [\"login\"]\n",
    )
    .await;
    let client = reqwest::Client::new();
    for _ in 0..2 {
        assert_eq!(
            get_as(&client, &rampart, "/api/auth/login", "203.0.113.5")
                .await
                .status(),
            200
        );
    }
    let r = get_as(&client, &rampart, "/api/auth/login", "203.0.113.5").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // 6/min: one request every 10 s; the bucket was just emptied.
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((9..=10).contains(&retry_after), "retry-after {retry_after}");

    let policy = parse_sf_list(r.headers()["ratelimit-policy"].to_str().unwrap());
    let sfv::ListEntry::Item(item) = &policy[0] else {
        panic!("not an item")
    };
    assert_eq!(
        item.bare_item,
        sfv::BareItem::String(sfv::String::from_string("login-ip".into()).unwrap())
    );
    assert_eq!(
        item.params.get("q"),
        Some(&sfv::BareItem::Integer(sfv::integer(6)))
    );
    assert_eq!(
        item.params.get("w"),
        Some(&sfv::BareItem::Integer(sfv::integer(60)))
    );
    let state = parse_sf_list(r.headers()["ratelimit"].to_str().unwrap());
    let sfv::ListEntry::Item(item) = &state[0] else {
        panic!("not an item")
    };
    assert_eq!(
        item.params.get("r"),
        Some(&sfv::BareItem::Integer(sfv::integer(0)))
    );
    assert_eq!(
        item.params.get("t"),
        Some(&sfv::BareItem::Integer(sfv::integer(retry_after as i64)))
    );

    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["type"], "https://rampart.dev/problems/rate-limited");
    assert_eq!(body["rule"], "login-ip");
    assert_eq!(body["violated-policies"], serde_json::json!(["login-ip"]));
    // Another client has its own bucket; another route has no limit.
    assert_eq!(
        get_as(&client, &rampart, "/api/auth/login", "203.0.113.6")
            .await
            .status(),
        200
    );
    assert_eq!(
        get_as(&client, &rampart, "/v1/models", "203.0.113.5")
            .await
            .status(),
        200
    );
    // The rejected request never reached the origin.
    assert_eq!(origin.request_count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_asn_bucket_is_shared_by_every_address_of_the_asn() {
    let origin = MockOrigin::start("o").await;
    let rampart = start(
        &origin,
        "[[limits]]\nname = \"per-asn\"\nkey = \"asn\"\nrate = \"1/h\"\nburst = 3\n",
    )
    .await;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 1..=6 {
        let r = get_as(&client, &rampart, "/v1/models", &format!("198.51.100.{i}")).await;
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429, 429]);
    // AS64501 has its own bucket.
    assert_eq!(
        get_as(&client, &rampart, "/v1/models", "203.0.113.1")
            .await
            .status(),
        200
    );
    assert_eq!(origin.request_count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bucket_per_ipv6_64() {
    let origin = MockOrigin::start("o").await;
    let rampart = start(
        &origin,
        "[[limits]]\nname = \"per-64\"\nkey = \"prefix\"\nprefix_v6 = 64\nrate = \"1/h\"\nburst = 2\n",
    )
    .await;
    let client = reqwest::Client::new();
    let s = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        s(get_as(&client, &rampart, "/v1/x", "2001:db8:1:2::1").await),
        200
    );
    assert_eq!(
        s(get_as(&client, &rampart, "/v1/x", "2001:db8:1:2:aaaa::2").await),
        200
    );
    assert_eq!(
        s(get_as(
            &client,
            &rampart,
            "/v1/x",
            "2001:db8:1:2:ffff:ffff:ffff:ffff"
        )
        .await),
        429
    );
    assert_eq!(
        s(get_as(&client, &rampart, "/v1/x", "2001:db8:1:3::1").await),
        200
    );
    assert_eq!(origin.request_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn country_deny_answers_403_and_the_allow_list_bypasses_limits() {
    let origin = MockOrigin::start("o").await;
    let rampart = start(
        &origin,
        r#"
[[access]]
name = "office"
action = "allow"
cidrs = ["203.0.113.128/25"]
[[access]]
name = "no-de"
action = "deny"
countries = ["DE"]
[[limits]]
name = "everyone"
key = "route"
rate = "1/h"
burst = 1
"#,
    )
    .await;
    let client = reqwest::Client::new();
    let r = get_as(&client, &rampart, "/v1/x", "198.51.100.77").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["rule"], "no-de");
    assert_eq!(body["type"], "https://rampart.dev/problems/denied-country");
    assert!(body["detail"].as_str().unwrap().contains("DE"));
    assert_eq!(origin.request_count(), 0);

    // A browser route gets an HTML page, and the connection is closed after it.
    let r = get_as(&client, &rampart, "/signup", "198.51.100.77").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.headers()["connection"], "close");
    assert!(r.text().await.unwrap().contains("<h1>Forbidden</h1>"));

    // The office (203.0.113.128/25) skips the one-request-an-hour bucket.
    for _ in 0..5 {
        assert_eq!(
            get_as(&client, &rampart, "/v1/x", "203.0.113.200")
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        get_as(&client, &rampart, "/v1/x", "203.0.113.1")
            .await
            .status(),
        200
    );
    assert_eq!(
        get_as(&client, &rampart, "/v1/x", "203.0.113.2")
            .await
            .status(),
        429
    );
    assert_eq!(origin.request_count(), 6);

    // Metrics are recorded in the logging phase, just after the response is sent.
    let counted = wait_until(Duration::from_secs(5), || async {
        let metrics = rampart.metrics().await;
        metrics.contains("rampart_policy_rejections_total{reason=\"denied_country\",route=\"chat\",rule=\"no-de\"} 1")
            && metrics.contains("rampart_policy_rejections_total{reason=\"rate_limited\",route=\"chat\",rule=\"everyone\"} 1")
    })
    .await;
    assert!(counted, "rejections are counted by route, reason and rule");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_cap_per_client_on_streaming_routes() {
    let origin = MockOrigin::start("o").await;
    let rampart = start(
        &origin,
        "[[concurrency]]\nname = \"streams\"\nkey = \"ip\"\nmax_in_flight = 1\nroutes = [\"stream\"]\n",
    )
    .await;
    let client = reqwest::Client::new();
    let mut first = get_as(&client, &rampart, "/stream", "203.0.113.9").await;
    assert_eq!(first.status(), 200);
    first.chunk().await.unwrap();
    let second = get_as(&client, &rampart, "/stream", "203.0.113.9").await;
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["retry-after"], "1");
    let body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(body["rule"], "streams");
    // Someone else may stream meanwhile.
    let other = get_as(&client, &rampart, "/stream", "203.0.113.10").await;
    assert_eq!(other.status(), 200);
    origin.release_streams();
    while first.chunk().await.unwrap().is_some() {}
    drop(other);
    // Once the first stream ends, its slot is free again.
    let freed = wait_until(Duration::from_secs(5), || async {
        get_as(&client, &rampart, "/stream", "203.0.113.9")
            .await
            .status()
            == 200
    })
    .await;
    assert!(freed, "the slot was not released when the stream ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_what_the_proxy_sees_and_would_decide() {
    let origin = MockOrigin::start("o").await;
    let rampart = start(
        &origin,
        "[[limits]]\nname = \"per-asn\"\nkey = \"asn\"\nrate = \"1/h\"\nburst = 1\n",
    )
    .await;
    let explain = || async {
        rampart
            .admin_request(
                Method::GET,
                "/debug/explain?ip=198.51.100.3&path=/api/auth/login&method=post",
            )
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let before = explain().await;
    assert_eq!(before["country"], "DE");
    assert_eq!(before["asn"], 64500);
    assert_eq!(before["as_organization"], "Botnet Hosting");
    assert_eq!(before["route"], "login");
    assert_eq!(before["pool"], "web");
    assert_eq!(before["verdict"], "proxied");
    assert_eq!(before["rules"][0]["key"], "AS64500");
    assert_eq!(before["rules"][0]["would_reject"], false);
    // Explaining charges nothing; one real request empties the bucket.
    let client = reqwest::Client::new();
    assert_eq!(
        get_as(&client, &rampart, "/api/auth/login", "198.51.100.200")
            .await
            .status(),
        200
    );
    let after = explain().await;
    assert_eq!(after["verdict"], "rate_limited");
    assert_eq!(after["rule"], "per-asn");
    assert_eq!(after["status"], 429);
    assert_eq!(after["rules"][0]["would_reject"], true);
    assert_eq!(after["rules"][0]["outcome"], "refused");

    let bad = rampart
        .admin_request(Method::GET, "/debug/explain?ip=not-an-ip")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_geoip_file_replaced_under_load_fails_no_request_and_gives_new_answers() {
    let origin = MockOrigin::start("o").await;
    let rampart = start(
        &origin,
        "[[access]]\nname = \"no-cn\"\naction = \"deny\"\ncountries = [\"CN\"]\n",
    )
    .await;
    let country_db = rampart.dir().join("country.mmdb");
    let url = rampart.url("/v1/x");
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let denied = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (url, stop, failures, denied) =
            (url.clone(), stop.clone(), failures.clone(), denied.clone());
        load.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut sent = 0u32;
            // Bounded: at most 20 000 requests or until told to stop.
            while !stop.load(Ordering::Relaxed) && sent < 20_000 {
                sent += 1;
                match client
                    .get(&url)
                    .header("x-forwarded-for", "203.0.113.7")
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) if r.status() == 403 => {
                        denied.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // The old database answers under load first: no denial among the first
    // hundred requests served.
    let loaded = wait_until(Duration::from_secs(10), || async {
        origin.request_count() >= 100
    })
    .await;
    assert!(
        loaded,
        "the load did not get going; log:\n{}",
        rampart.log()
    );
    assert_eq!(denied.load(Ordering::Relaxed), 0);
    // 203.0.113.0/24 moves from US to CN.
    write_country_db(
        &country_db,
        CountryShape::IpLocationDb,
        &[("203.0.113.0/24", "CN"), ("198.51.100.0/24", "DE")],
    );
    let swapped = wait_until(Duration::from_secs(10), || async {
        denied.load(Ordering::Relaxed) > 0
    })
    .await;
    // Keep the load on through a hundred more answers of the new database.
    let kept_on = wait_until(Duration::from_secs(10), || async {
        denied.load(Ordering::Relaxed) >= 100
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(
        swapped && kept_on,
        "the new database was never used; log:\n{}",
        rampart.log()
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during the swap"
    );
    let r = reqwest::Client::new()
        .get(&url)
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[test]
fn geoip_lookup_prints_country_and_asn_from_the_configured_databases() {
    let dir = tempfile::tempdir().unwrap();
    write_country_db(
        &dir.path().join("country.mmdb"),
        CountryShape::IpLocationDb,
        &[("203.0.113.0/24", "JP")],
    );
    write_asn_db(
        &dir.path().join("asn.mmdb"),
        &[("203.0.113.0/24", 64501, "Home ISP")],
    );
    let config = dir.path().join("rampart.toml");
    std::fs::write(
        &config,
        "[[listeners]]\naddress = \"127.0.0.1:1\"\n[geoip]\ncountry_db = \"country.mmdb\"\nasn_db = \"asn.mmdb\"\n",
    )
    .unwrap();
    let run = |ip: &str| {
        let out = std::process::Command::new(bin())
            .args(["geoip", "lookup", ip, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
        )
    };
    assert_eq!(
        run("203.0.113.50"),
        (
            0,
            "ip 203.0.113.50\ncountry JP\nasn 64501 (Home ISP)\n".to_string()
        )
    );
    assert_eq!(
        run("192.0.2.1"),
        (
            0,
            "ip 192.0.2.1\ncountry unknown\nasn unknown\n".to_string()
        )
    );
    assert_eq!(run("nope").0, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosting_networks_get_a_tighter_budget_and_repeat_offenders_are_banned() {
    let origin = MockOrigin::start("o").await;
    let rampart = start(
        &origin,
        r#"
[[limits]]
name = "hosting-asn"
key = "asn"
rate = "2/h"
burst = 2
routes = ["login"]
asns = [64500]
ban = { after = 3, within = "1m", for = "2m", max = "10m" }
[[limits]]
name = "everyone-ip"
key = "ip"
rate = "100/h"
burst = 100
routes = ["login"]
"#,
    )
    .await;
    let client = reqwest::Client::new();
    // The home ISP (AS64501) is outside the hosting rule.
    for i in 0..10 {
        let r = get_as(
            &client,
            &rampart,
            "/api/auth/login",
            &format!("203.0.113.{i}"),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    // The hosting AS: two pass, three refused, then the whole AS is banned,
    // whatever address it comes from.
    for i in 0..2 {
        let r = get_as(
            &client,
            &rampart,
            "/api/auth/login",
            &format!("198.51.100.{i}"),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    for i in 2..5 {
        let r = get_as(
            &client,
            &rampart,
            "/api/auth/login",
            &format!("198.51.100.{i}"),
        )
        .await;
        assert_eq!(r.status(), 429);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["type"], "https://rampart.dev/problems/rate-limited");
    }
    let origin_before = origin.request_count();
    let banned = get_as(&client, &rampart, "/api/auth/login", "198.51.100.77").await;
    assert_eq!(banned.status(), 429);
    assert_eq!(banned.headers()["retry-after"], "120");
    assert_eq!(banned.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = banned.json().await.unwrap();
    assert_eq!(body["type"], "https://rampart.dev/problems/banned");
    assert_eq!(body["rule"], "hosting-asn");
    assert_eq!(origin.request_count(), origin_before);

    // Visible in the admin API, /debug/top, explain and metrics.
    let bans = rampart.admin_json("/bans").await;
    assert_eq!(bans["bans"][0]["rule"], "hosting-asn");
    assert_eq!(bans["bans"][0]["key"], "AS64500");
    assert_eq!(bans["bans"][0]["offenses"], 1);
    let top = rampart.admin_json("/debug/top?n=5").await;
    assert_eq!(top["bans"][0]["key"], "AS64500");
    let explain = rampart
        .admin_json("/debug/explain?ip=198.51.100.200&path=/api/auth/login")
        .await;
    assert_eq!(explain["verdict"], "banned");
    assert_eq!(explain["rules"][0]["kind"], "ban");
    let active = wait_until(Duration::from_secs(5), || async {
        rampart
            .metric("rampart_bans_active{rule=\"hosting-asn\"}")
            .await
            == Some(1.0)
    })
    .await;
    assert!(active, "{}", rampart.metrics().await);
    assert_eq!(
        rampart
            .metric("rampart_bans_total{rule=\"hosting-asn\"}")
            .await,
        Some(1.0)
    );

    // Lifted by the operator: the bucket decides again (still empty: 429, not banned).
    let lifted = rampart
        .admin_request(Method::DELETE, "/bans/hosting-asn?key=AS64500")
        .send()
        .await
        .unwrap();
    assert_eq!(lifted.status(), 200);
    let body: serde_json::Value = lifted.json().await.unwrap();
    assert_eq!(body["was_banned"], true);
    let r = get_as(&client, &rampart, "/api/auth/login", "198.51.100.78").await;
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["type"], "https://rampart.dev/problems/rate-limited");
    let bad = rampart
        .admin_request(Method::DELETE, "/bans/hosting-asn?key=not-a-key")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let unknown = rampart
        .admin_request(Method::DELETE, "/bans/nope?key=AS1")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_on_a_network_is_lifted_by_any_address_in_it() {
    let origin = MockOrigin::start("o").await;
    let rampart = start(
        &origin,
        r#"
[[limits]]
name = "net"
key = "prefix"
prefix_v4 = 24
rate = "1/h"
burst = 1
routes = ["login"]
ban = { after = 2, within = "1m", for = "5m" }
"#,
    )
    .await;
    let client = reqwest::Client::new();
    for i in 1..=3 {
        get_as(
            &client,
            &rampart,
            "/api/auth/login",
            &format!("203.0.113.{i}"),
        )
        .await;
    }
    let banned = get_as(&client, &rampart, "/api/auth/login", "203.0.113.50").await;
    let body: serde_json::Value = banned.json().await.unwrap();
    assert_eq!(body["type"], "https://rampart.dev/problems/banned");
    assert_eq!(
        rampart.admin_json("/bans").await["bans"][0]["key"],
        "203.0.113.0/24"
    );
    let lifted = rampart
        .admin_request(Method::DELETE, "/bans/net?key=203.0.113.77")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = lifted.json().await.unwrap();
    assert_eq!(body["was_banned"], true);
    assert_eq!(body["key"], "203.0.113.0/24");
}
