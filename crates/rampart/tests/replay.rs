//! The request record and `rampart replay` over real sockets: a record taken
//! while Rampart answers a mix of traffic, replayed under the same config,
//! reproduces every live verdict (same counts per verdict and rule); a
//! tighter candidate refuses a superset; credentials never reach the record
//! in clear.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::{wait_until, ConfigBuilder, MockOrigin, Rampart};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

const RULES: &str = r#"
[client_ip]
trusted_proxies = ["127.0.0.1/32"]
[[access]]
name = "blocked-net"
action = "deny"
cidrs = ["10.66.0.0/16"]
[[access]]
name = "office"
action = "allow"
cidrs = ["10.99.0.0/16"]
[[limits]]
name = "login-ip"
key = "ip"
rate = "2/h"
burst = 2
routes = ["login"]
ban = { after = 3, within = "1h", for = "1h" }
[[limits]]
name = "register-range"
key = "body"
field = "phone"
normalize = "phone"
number_prefix = 7
rate = "3/h"
burst = 3
routes = ["register"]
[[limits]]
name = "chat-key"
key = "header"
header = "x-api-key"
rate = "4/h"
burst = 4
routes = ["chat"]
[[flags]]
name = "registration_cn_mobile_only"
body_rules = [{ route = "register", field = "phone", allowed_regions = ["CN"], number_types = ["mobile"] }]
[record]
enabled = true
dir = "{dir}/record"
"#;

fn config(origin: &MockOrigin, tighter: bool) -> String {
    let rules = if tighter {
        RULES
            .replace("rate = \"2/h\"\nburst = 2", "rate = \"1/h\"\nburst = 1")
            .replace(
                "cidrs = [\"10.66.0.0/16\"]",
                "cidrs = [\"10.66.0.0/16\", \"10.7.0.0/16\"]",
            )
    } else {
        RULES.to_string()
    };
    ConfigBuilder::new()
        .pool("auth", &[origin.addr])
        .pool("chat", &[origin.addr])
        .route_with("login", "/api/auth/login", "auth", r#"methods = ["POST"]"#)
        .route_with(
            "register",
            "/api/auth/register",
            "auth",
            r#"methods = ["POST"]"#,
        )
        .route("chat", "/api/chat", "chat")
        .raw(&rules)
        .build()
}

/// Sends the traffic; returns the statuses seen.
async fn traffic(r: &Rampart) -> Vec<u16> {
    let c = reqwest::Client::new();
    let mut statuses = Vec::new();
    let mut push = |s: reqwest::Response| statuses.push(s.status().as_u16());
    // Sign-ins: a flood from one address (limited, then banned), a few others,
    // the office (allow-listed), a denied network.
    for (from, n) in [
        ("10.7.0.1", 9),
        ("10.7.0.2", 2),
        ("10.99.0.5", 4),
        ("10.66.1.1", 2),
    ] {
        for i in 0..n {
            push(
                c.post(r.url("/api/auth/login"))
                    .header("x-forwarded-for", from)
                    .header("authorization", format!("Bearer secret-token-{i}"))
                    .json(&json!({"username": "ann", "password": "hunter2"}))
                    .send()
                    .await
                    .unwrap(),
            );
        }
    }
    // A wrong method and an unmatched path.
    push(
        c.get(r.url("/api/auth/login"))
            .header("x-forwarded-for", "10.7.0.3")
            .send()
            .await
            .unwrap(),
    );
    push(
        c.get(r.url("/nowhere"))
            .header("x-forwarded-for", "10.7.0.3")
            .send()
            .await
            .unwrap(),
    );
    // Chat keyed by an API key: one key over its budget.
    for i in 0..6 {
        push(
            c.get(r.url("/api/chat/completions"))
                .header("x-forwarded-for", format!("10.8.0.{i}"))
                .header("x-api-key", "key-one-secret")
                .header("cookie", "session=cookie-secret; theme=dark")
                .send()
                .await
                .unwrap(),
        );
    }
    // Registrations, before and after the phone flag is turned on.
    let register = |phone: &'static str, ct: &'static str, from: &'static str| {
        let body = if ct == "application/json" {
            json!({"phone": phone, "name": "x"}).to_string()
        } else {
            format!("phone={}", phone.replace('+', "%2B"))
        };
        c.post(r.url("/api/auth/register"))
            .header("x-forwarded-for", from)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    push(
        register("+14155550100", "application/json", "10.9.0.1")
            .await
            .unwrap(),
    );
    let on = r
        .admin_request(Method::PUT, "/lockdown/registration_cn_mobile_only")
        .json(&json!({"reason": "replay test", "actor": "test", "ttl": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(on.status(), 200);
    for (phone, ct, from) in [
        ("+8613800138000", "application/json", "10.9.0.2"),
        (
            "+8613800138001",
            "application/x-www-form-urlencoded",
            "10.9.0.3",
        ),
        ("+8613800138002", "application/json", "10.9.0.4"),
        ("+8613800138003", "application/json", "10.9.0.5"),
        ("+14155550101", "application/json", "10.9.0.6"),
        ("+8613800138004", "text/plain", "10.9.0.7"),
    ] {
        push(register(phone, ct, from).await.unwrap());
    }
    // A duplicate field.
    push(
        c.post(r.url("/api/auth/register"))
            .header("x-forwarded-for", "10.9.0.8")
            .header("content-type", "application/json")
            .body(r#"{"phone":"+8613800138005","phone":"+14155550102"}"#)
            .send()
            .await
            .unwrap(),
    );
    statuses
}

fn record_files(r: &Rampart) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(r.dir().join("record"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn record_lines(r: &Rampart) -> usize {
    record_files(r)
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .count()
        })
        .sum()
}

fn replay(config: &Path, baseline: Option<&Path>, files: &[PathBuf]) -> Value {
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("replay")
        .arg("--config")
        .arg(config)
        .arg("--json")
        .arg("--quiet");
    if let Some(b) = baseline {
        cmd.arg("--baseline").arg(b);
    }
    let out = cmd.args(files).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_run_replayed_under_its_config_reproduces_every_verdict() {
    let origin = MockOrigin::start("auth").await;
    let r = Rampart::start(bin(), &config(&origin, false)).await;
    let statuses = traffic(&r).await;
    let sent = statuses.len();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            record_lines(&r) >= sent
        })
        .await,
        "{} of {sent} records written",
        record_lines(&r)
    );
    let files = record_files(&r);
    let text: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert_eq!(text.lines().count(), sent);
    for secret in ["secret-token", "cookie-secret", "key-one-secret", "hunter2"] {
        assert!(!text.contains(secret), "{secret} in the record:\n{text}");
    }

    let report = replay(&r.config_path(), None, &files);
    assert_eq!(report["differs_from_recorded"], 0, "{report:#}");
    assert_eq!(report["records"], sent, "{report:#}");
    assert_eq!(report["late"], 0, "{report:#}");
    let verdicts = &report["verdicts"];
    assert_eq!(verdicts["candidate"], verdicts["baseline"], "{report:#}");
    // The live answers agree with what the record says the policy decided.
    let count = |status: u16| statuses.iter().filter(|&&s| s == status).count() as u64;
    let v = |label: &str| verdicts["candidate"][label].as_u64().unwrap_or(0);
    assert_eq!(v("rate_limited") + v("banned"), count(429), "{report:#}");
    assert_eq!(v("denied_network"), 2, "{report:#}");
    assert_eq!(v("method_not_allowed"), count(405), "{report:#}");
    assert_eq!(v("no_route"), count(404), "{report:#}");
    assert!(v("banned") > 0 && v("body_refused") >= 3, "{report:#}");
    assert_eq!(v("proxied"), count(200), "{report:#}");
    // Per rule too.
    let rules: BTreeMap<String, (u64, u64)> = report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                format!(
                    "{} {}",
                    row["rule"].as_str().unwrap(),
                    row["verdict"].as_str().unwrap()
                ),
                (
                    row["refused"].as_u64().unwrap(),
                    row["baseline"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    for (rule, (replayed, recorded)) in &rules {
        assert_eq!(replayed, recorded, "{rule}: {report:#}");
    }
    assert!(rules.contains_key("chat-key rate_limited"), "{report:#}");
    assert!(
        rules.contains_key("register-range rate_limited"),
        "{report:#}"
    );

    // A tighter candidate: every request the recorded config refused, it
    // refuses too, and more.
    let tighter = r.dir().join("tighter.toml");
    let text = config(&origin, true).replace("{dir}", &r.dir().display().to_string());
    std::fs::write(
        &tighter,
        text.replace("{listen}", "127.0.0.1:1")
            .replace("{admin}", "127.0.0.1:2"),
    )
    .unwrap();
    let report = replay(&tighter, Some(&r.config_path()), &files);
    assert_eq!(report["no_longer_refused"], 0, "{report:#}");
    assert!(report["newly_refused"].as_u64().unwrap() > 0, "{report:#}");
}
