//! The operator console (`GET /console` on the admin listener) over real
//! sockets: served only on the admin listener, with its security headers and
//! without data; its rate history follows the traffic; top offenders name the
//! AS organisation; fleet status lists every node and the flags it applies; and
//! the whole page driven in a real browser (Debian's `chromium` through
//! `playwright-core`, `tests/console/console.mjs`): token, rate chart under
//! load, preview then enforce `registration_cn_mobile_only` with a TTL, a +1
//! registration refused, explain, disable, screenshot.
//!
//! Rampart runs the shipped `conf/rampart.toml` (its addresses replaced by test
//! ports and mock origins, loopback trusted as a proxy so that
//! `X-Forwarded-For` plays many clients, and fixture GeoIP databases added).
//! The browser test needs `node`, `chromium` and `playwright-core` (installed by
//! `scripts/test`); it fails when they are missing.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::geo::{write_asn_db, write_country_db, CountryShape};
use rampart_testkit::redis::RedisServer;
use rampart_testkit::{wait_until, MockOrigin, Rampart, TEST_TOKEN};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const FLAG: &str = "registration_cn_mobile_only";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `text` with `from` replaced by `to`; `from` must be there (the shipped
/// config changed otherwise, and this test must follow it).
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "conf/rampart.toml no longer contains {from:?}"
    );
    text.replacen(from, to, 1)
}

/// The shipped config on test ports, in front of `auth` and `chat`, trusting
/// loopback as a proxy, with fixture GeoIP databases (written by [`geo`]) and,
/// when given, a `[fleet]` section.
fn shipped_config(
    auth: &MockOrigin,
    chat: &MockOrigin,
    fleet: Option<(&RedisServer, &str)>,
) -> String {
    let mut text = std::fs::read_to_string(repo().join("conf/rampart.toml")).unwrap();
    for (from, to) in [
        (
            "address = \"127.0.0.1:8080\"",
            "address = \"{listen}\"".to_string(),
        ),
        (
            "address = \"127.0.0.1:9901\"",
            "address = \"{admin}\"".to_string(),
        ),
        (
            "servers = [\"127.0.0.1:9001\"]",
            format!("servers = [\"{}\"]", chat.addr),
        ),
        (
            "servers = [\"127.0.0.1:9002\"]",
            format!("servers = [\"{}\"]", auth.addr),
        ),
        (
            "trusted_proxies = []",
            "trusted_proxies = [\"127.0.0.0/8\"]".to_string(),
        ),
    ] {
        text = replace_once(&text, from, &to);
    }
    text.push_str("\n[geoip]\ncountry_db = \"{dir}/country.mmdb\"\nasn_db = \"{dir}/asn.mmdb\"\n");
    if let Some((redis, node)) = fleet {
        text.push_str(&format!(
            "\n[fleet]\nredis_url = \"{}\"\nkey_prefix = \"console:\"\nnode = \"{node}\"\nresync_interval = \"300ms\"\n",
            redis.url()
        ));
    }
    text
}

/// Fixture databases: the shipped deny-listed network in a hosting AS, the
/// load's clients in a mobile carrier, documentation addresses elsewhere.
fn geo(dir: &Path) {
    write_country_db(
        &dir.join("country.mmdb"),
        CountryShape::MaxMind,
        &[
            ("198.51.100.0/24", "US"),
            ("100.64.0.0/10", "CN"),
            ("203.0.113.0/24", "DE"),
        ],
    );
    write_asn_db(
        &dir.join("asn.mmdb"),
        &[
            ("198.51.100.0/24", 64500, "Example Hosting Ltd"),
            ("100.64.0.0/10", 64501, "Example Mobile Carrier"),
            ("203.0.113.0/24", 64502, "Documentation Networks"),
        ],
    );
}

async fn start(fleet: Option<(&RedisServer, &str)>) -> (Rampart, MockOrigin, MockOrigin) {
    let auth = MockOrigin::start("auth").await;
    let chat = MockOrigin::start("chat").await;
    let rampart = Rampart::start_with(bin(), &shipped_config(&auth, &chat, fleet), geo).await;
    (rampart, auth, chat)
}

/// A small, steady load until `stop`: +1 registrations from fresh addresses
/// of the carrier (about 20/s), and logins from the shipped deny-listed network
/// (about 5/s, refused with 403).
fn load(rampart: &Rampart, stop: Arc<AtomicBool>) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>) {
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let base = rampart.url("");
    let handle = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut i: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let ip = format!("100.64.{}.{}", (i / 250) % 250, i % 250 + 1);
            let _ = client
                .post(format!("{base}/api/auth/register"))
                .header("x-forwarded-for", ip)
                .json(&json!({"name": "bot", "phone": "+1 415 555 0100"}))
                .send()
                .await;
            if i.is_multiple_of(4) {
                let _ = client
                    .post(format!("{base}/api/auth/login"))
                    .header("x-forwarded-for", format!("198.51.100.{}", i % 20 + 1))
                    .send()
                    .await;
            }
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (handle, sent)
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::Client::new().get(url).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_on_the_admin_listener_only_with_a_strict_policy_and_no_data() {
    let (rampart, auth, _chat) = start(None).await;

    // No token needed for the page itself: it holds no data.
    let page = get(&rampart.admin_url("/console")).await;
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers.get("set-cookie").is_none());
    let csp = headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(html.starts_with("<!doctype html>"));
    // No data in the page: no flag, rule, origin, token or config value.
    let origin = auth.addr.to_string();
    for secret in [
        FLAG,
        "known-bad-networks",
        "login-ip",
        origin.as_str(),
        TEST_TOKEN,
        "generation\":",
    ] {
        assert!(!html.contains(secret), "the page holds {secret:?}");
    }
    // HEAD works, other methods do not.
    let head = reqwest::Client::new()
        .head(rampart.admin_url("/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    let post = reqwest::Client::new()
        .post(rampart.admin_url("/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);

    // Every data call needs the token.
    for path in [
        "/console/api/rates",
        "/fleet",
        "/status",
        "/lockdown",
        "/debug/top",
    ] {
        let r = get(&rampart.admin_url(path)).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        let r = reqwest::Client::new()
            .get(rampart.admin_url(path))
            .bearer_auth("not-the-token-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        let r = rampart
            .admin_request(Method::GET, path)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }

    // The public listener does not serve it: the shipped config answers
    // unmatched paths with a 404 problem, and nothing reaches an origin.
    for path in ["/console", "/console/api/rates", "/console/"] {
        let r = get(&rampart.url(path)).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        assert!(r.headers().get("content-security-policy").is_none());
        let body = r.text().await.unwrap();
        assert!(!body.contains("<html"), "{body}");
    }
    // Not under another spelling either.
    for path in ["/CONSOLE", "/console?x=1", "//console", "/./console"] {
        let r = get(&rampart.url(path)).await;
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
        assert!(!r.text().await.unwrap().contains("<html"), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_history_follows_traffic_by_route_verdict_rule_and_preview() {
    let (rampart, auth, _chat) = start(None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (load, _) = load(&rampart, stop.clone());

    let series = |v: &Value, list: &str, key: &str, name: &str| -> Option<Value> {
        v[list]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s[key] == name)
            .cloned()
    };
    // Registrations reach the origin; the deny-listed network is refused by
    // its access rule; both show as rates.
    let seen = wait_until(Duration::from_secs(30), || async {
        let v = rampart.admin_json("/console/api/rates").await;
        let proxied = v["requests"].as_array().unwrap().iter().any(|s| {
            s["route"] == "register"
                && s["verdict"] == "proxied"
                && s["rates"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r.as_f64() > Some(0.0))
        });
        let denied = series(&v, "refusals", "rule", "known-bad-networks")
            .is_some_and(|s| s["reason"] == "denied_network" && s["total"].as_u64() > Some(0));
        proxied && denied
    })
    .await;
    assert!(seen, "{}", rampart.admin_json("/console/api/rates").await);
    let v = rampart.admin_json("/console/api/rates").await;
    assert_eq!(v["interval_seconds"], 2);
    assert_eq!(v["window_seconds"], 300);
    let times = v["times_ms"].as_array().unwrap();
    for s in v["requests"].as_array().unwrap() {
        assert_eq!(s["rates"].as_array().unwrap().len(), times.len());
    }
    assert!(auth.request_count() > 0);

    // A previewed flag's would-refuse counter shows up and grows.
    let r = rampart
        .admin_request(Method::PUT, &format!("/lockdown/{FLAG}"))
        .json(&json!({"reason": "test", "actor": "tester", "ttl": "10m", "mode": "preview"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let previewed = wait_until(Duration::from_secs(30), || async {
        let v = rampart.admin_json("/console/api/rates").await;
        series(&v, "previews", "flag", FLAG).is_some_and(|s| {
            s["total"].as_u64() > Some(0)
                && s["rates"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r.as_f64() > Some(0.0))
        })
    })
    .await;
    assert!(
        previewed,
        "{}",
        rampart.admin_json("/console/api/rates").await
    );

    // Enforced, its refusals show by rule.
    let r = rampart
        .admin_request(Method::PUT, &format!("/lockdown/{FLAG}"))
        .json(&json!({"reason": "test", "actor": "tester", "ttl": "10m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let refused = wait_until(Duration::from_secs(30), || async {
        let v = rampart.admin_json("/console/api/rates").await;
        series(&v, "refusals", "rule", FLAG).is_some_and(|s| {
            s["reason"] == "body_refused"
                && s["rates"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r.as_f64() > Some(0.0))
        })
    })
    .await;
    assert!(
        refused,
        "{}",
        rampart.admin_json("/console/api/rates").await
    );
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_offenders_carry_country_as_and_organisation() {
    let (rampart, _auth, _chat) = start(None).await;
    let client = reqwest::Client::new();
    for i in 0..30 {
        let r = client
            .post(rampart.url("/api/auth/login"))
            .header("x-forwarded-for", format!("198.51.100.{}", i % 3 + 1))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    let top = rampart.admin_json("/debug/top?n=5").await;
    let ip = &top["ips"][0];
    assert_eq!(ip["country"], "US", "{top}");
    assert_eq!(ip["asn"], 64500, "{top}");
    assert_eq!(ip["as_organization"], "Example Hosting Ltd", "{top}");
    assert_eq!(ip["rejected"], 10, "{top}");
    assert_eq!(top["prefixes"][0]["key"], "198.51.100.0/24");
    assert_eq!(top["prefixes"][0]["as_organization"], "Example Hosting Ltd");
    assert_eq!(top["asns"][0]["key"], "AS64500");
    assert_eq!(top["asns"][0]["as_organization"], "Example Hosting Ltd");
    assert_eq!(top["asns"][0]["rejected"], 30);
    assert_eq!(top["ips"].as_array().unwrap().len(), 3);
    // Bad input is a clear 400.
    let r = rampart
        .admin_request(Method::GET, "/debug/top?n=0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_status_lists_every_node_with_the_flags_it_applies() {
    let (single, _a, _b) = start(None).await;
    let local = single.admin_json("/fleet").await;
    assert_eq!(local["mode"], "local", "{local}");
    drop(single);

    let redis = RedisServer::start().await;
    let (one, _auth1, _chat1) = start(Some((&redis, "edge-1"))).await;
    let (two, _auth2, _chat2) = start(Some((&redis, "edge-2"))).await;
    let nodes = |v: &Value| -> Vec<String> {
        v["nodes"]
            .as_array()
            .map(|n| {
                n.iter()
                    .map(|n| n["node"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let both = wait_until(Duration::from_secs(20), || async {
        nodes(&one.admin_json("/fleet").await) == ["edge-1", "edge-2"]
    })
    .await;
    assert!(both, "{}", one.admin_json("/fleet").await);
    let status = one.admin_json("/fleet").await;
    assert_eq!(status["mode"], "fleet");
    assert_eq!(status["node"], "edge-1");
    assert_eq!(status["degraded"], false);
    assert_eq!(status["redis"], redis.url());

    // A flag enforced through one node: the other reports applying it.
    let r = one
        .admin_request(Method::PUT, &format!("/lockdown/{FLAG}"))
        .json(&json!({"reason": "test", "actor": "tester", "ttl": "10m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let applied = wait_until(Duration::from_secs(20), || async {
        let v = one.admin_json("/fleet").await;
        v["nodes"].as_array().is_some_and(|n| {
            n.len() == 2
                && n.iter()
                    .all(|n| n["flags"][FLAG]["mode"] == "enforce" && n["stale"] == false)
        })
    })
    .await;
    assert!(applied, "{}", one.admin_json("/fleet").await);
    // Seen from the other node too.
    let from_two = two.admin_json("/fleet").await;
    assert_eq!(nodes(&from_two), ["edge-1", "edge-2"]);

    // A node that stops reporting is shown stale, not dropped at once.
    drop(two);
    let stale = wait_until(Duration::from_secs(30), || async {
        let v = one.admin_json("/fleet").await;
        v["nodes"].as_array().is_some_and(|n| {
            n.iter()
                .any(|n| n["node"] == "edge-2" && n["stale"] == true)
        })
    })
    .await;
    assert!(stale, "{}", one.admin_json("/fleet").await);
}

/// The audit log of `rampart` as JSON lines.
fn audit(rampart: &Rampart) -> Vec<Value> {
    std::fs::read_to_string(rampart.dir().join("state/lockdown-audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_previews_enforces_and_disables_a_flag_in_a_real_browser() {
    let script_dir = repo().join("crates/rampart/tests/console");
    let missing = "run scripts/test, which installs Debian's chromium and nodejs and playwright-core from npm";
    let node = find_in_path("node").unwrap_or_else(|| panic!("`node` is not installed: {missing}"));
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.is_file(),
        "{} is not installed: {missing}",
        chromium.display()
    );
    assert!(
        script_dir
            .join("node_modules/playwright-core/package.json")
            .is_file(),
        "playwright-core is not installed in {}: {missing}",
        script_dir.display()
    );

    let (rampart, auth, _chat) = start(None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (load, sent) = load(&rampart, stop.clone());
    let started = wait_until(Duration::from_secs(20), || async {
        sent.load(Ordering::Relaxed) > 10
    })
    .await;
    assert!(started);

    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&out_dir).unwrap();
    let screenshot = out_dir.join("console.png");
    let _ = std::fs::remove_file(&screenshot);
    let command = std::process::Command::new(node)
        .arg(script_dir.join("console.mjs"))
        .env("CONSOLE_URL", rampart.admin_url("/console"))
        .env("ADMIN_TOKEN", TEST_TOKEN)
        .env("PUBLIC_URL", rampart.url(""))
        .env("FLAG", FLAG)
        .env("CHROMIUM", &chromium)
        .env("SCREENSHOT_DIR", &out_dir)
        .stdin(std::process::Stdio::null())
        .output();
    let output = tokio::task::spawn_blocking(move || command)
        .await
        .unwrap()
        .expect("run node");
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "console.mjs failed ({}):\n{stdout}\n{stderr}\nrampart log (tail):\n{}",
        output.status,
        rampart
            .log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let result: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("a JSON result line");
    assert_eq!(result["ok"], true, "{stdout}");
    let png = std::fs::read(&screenshot).expect("screenshot saved");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // What the page did is what the server recorded: preview, enforce with a
    // TTL, disable, all by the name typed at sign-in, with the reason typed.
    let changes: Vec<Value> = audit(&rampart)
        .into_iter()
        .filter(|e| e["flag"] == FLAG)
        .map(|e| {
            json!([
                e["action"],
                e["mode"],
                e["actor"],
                e["reason"],
                e["ttl_seconds"]
            ])
        })
        .collect();
    assert_eq!(
        changes,
        [
            json!([
                "enable",
                "preview",
                "console-e2e",
                "e2e: +1 signup flood",
                600
            ]),
            json!([
                "enable",
                "enforce",
                "console-e2e",
                "e2e: +1 signup flood, INC-1",
                900
            ]),
            json!(["disable", null, "console-e2e", "e2e: flood over", null]),
        ]
    );
    assert!(!rampart.flag_active(FLAG).await);
    // The +1 registrations sent while previewed and after disabling reached
    // the origin; the one sent while enforced did not.
    let marked: Vec<_> = auth
        .requests()
        .into_iter()
        .filter(|r| r.headers.get("x-e2e").is_some())
        .map(|r| r.headers["x-e2e"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(marked, ["while-previewed", "after-disable"], "{marked:?}");
}
