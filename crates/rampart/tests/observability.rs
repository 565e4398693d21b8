//! Observability against real tools: a real Prometheus scrapes a running Rampart
//! while allowed and rejected traffic passes, then every PromQL expression of the
//! shipped dashboard and alert rules is evaluated; `promtool check rules` and
//! `promtool check metrics` pass; the access log and top offenders work.
//! Needs Debian's `prometheus` package (scripts/test and .ci/run install it).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::{free_port, wait_until, ConfigBuilder, MockOrigin, Rampart, TEST_TOKEN};
use reqwest::Method;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("`{name}` is not installed: run scripts/test, or apt-get install prometheus")
    })
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(origin: &MockOrigin) -> String {
    ConfigBuilder::new()
        .pool("web", &[origin.addr])
        .health_check(
            "web",
            "kind = \"http\"\npath = \"/healthz\"\ninterval = \"500ms\"",
        )
        .route("login", "/api/auth/login", "web")
        .raw(
            r#"
[client_ip]
trusted_proxies = ["127.0.0.0/8"]
[access_log]
enabled = true
path = "access.log"
rejected_lines_per_second = 5
[[limits]]
name = "login-ip"
key = "ip"
rate = "1/h"
burst = 2
[[concurrency]]
name = "streams"
key = "ip"
max_in_flight = 10
[[flags]]
name = "under_attack"
limit_scale = 0.5
"#,
        )
        .build()
}

/// Every `expr` of the alert rules (one per line, as the file promises).
fn alert_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .map(str::to_string)
        .collect()
}

/// Every target expression of the dashboard, with Grafana's variables filled in.
fn dashboard_exprs() -> Vec<String> {
    let text =
        std::fs::read_to_string(repo().join("deploy/grafana/dashboards/rampart.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            out.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    for a in dash["annotations"]["list"].as_array().unwrap() {
        out.push(a["expr"].as_str().unwrap().to_string());
    }
    out.into_iter()
        .map(|e| e.replace("$__rate_interval", "1m").replace("$route", ".*"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_and_every_dashboard_and_alert_expression_evaluates() {
    let prometheus = tool("prometheus");
    let promtool = tool("promtool");
    let origin = MockOrigin::start("web").await;
    let rampart = Rampart::start(bin(), &config(&origin)).await;

    // Allowed and rejected traffic from a few clients, some from the same /24.
    let client = reqwest::Client::new();
    let mut rejected = 0;
    for round in 0..4 {
        for ip in ["203.0.113.5", "203.0.113.6", "198.51.100.9"] {
            let r = client
                .post(rampart.url("/api/auth/login"))
                .header("x-forwarded-for", ip)
                .send()
                .await
                .unwrap();
            rejected += usize::from(r.status() == 429);
        }
        let _ = client
            .get(rampart.url(&format!("/nowhere/{round}")))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(
        rejected, 6,
        "two requests per client pass, the rest are limited"
    );

    // promtool check metrics on a real scrape.
    let scrape = rampart.metrics().await;
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(scrape.as_bytes())
            .unwrap();
    }
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // promtool check rules on the shipped alert rules.
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(repo().join("deploy/prometheus/alerts.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A real Prometheus, scraping every 500 ms with the admin token, loading the rules.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TEST_TOKEN).unwrap();
    let port = free_port("127.0.0.1");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            r#"
global:
  scrape_interval: 500ms
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: rampart
    authorization:
      type: Bearer
      credentials_file: {token}
    static_configs:
      - targets: ["{admin}"]
"#,
            rules = repo().join("deploy/prometheus/alerts.yml").display(),
            token = dir.path().join("token").display(),
            admin = rampart.admin,
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = KillOnDrop(
        Command::new(&prometheus)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let query = |q: String| {
        let client = client.clone();
        async move {
            let r = client
                .get(format!("http://127.0.0.1:{port}/api/v1/query"))
                .query(&[("query", q.as_str())])
                .send()
                .await;
            match r {
                Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            }
        }
    };
    // Enough scrapes for rate() over the traffic, which keeps flowing meanwhile.
    let scraped = wait_until(Duration::from_secs(30), || async {
        let _ = client
            .post(rampart.url("/api/auth/login"))
            .header("x-forwarded-for", "203.0.113.5")
            .send()
            .await;
        let v = query("count_over_time(up{job=\"rampart\"}[1m])".into()).await;
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|n| n.parse::<f64>().ok())
            .is_some_and(|n| n >= 6.0)
    })
    .await;
    let plog = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    assert!(
        scraped,
        "Prometheus did not scrape Rampart; its log:\n{plog}"
    );
    let up = query("up{job=\"rampart\"}".into()).await;
    assert_eq!(
        up["data"]["result"][0]["value"][1], "1",
        "scrape failing: {up}"
    );

    let mut exprs = dashboard_exprs();
    exprs.extend(alert_exprs());
    assert!(exprs.len() >= 20, "{} expressions", exprs.len());
    for expr in &exprs {
        let v = query(expr.clone()).await;
        assert_eq!(v["status"], "success", "{expr}\n{v}");
        let is_rate = expr.contains("rate(rampart_http_requests_total")
            || expr.contains("rate(rampart_policy_rejections_total");
        let scoped = expr.contains("reason=~") || expr.contains(" > ") || expr.contains(" and ");
        if is_rate && !scoped {
            let result = v["data"]["result"].as_array().unwrap();
            assert!(!result.is_empty(), "no data for {expr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_sampling_and_top_offenders() {
    let origin = MockOrigin::start("web").await;
    let rampart = Rampart::start(bin(), &config(&origin)).await;
    let client = reqwest::Client::new();
    for i in 0..22 {
        let ip = if i % 2 == 0 {
            "203.0.113.5"
        } else {
            "203.0.113.77"
        };
        client
            .post(rampart.url("/api/auth/login?token=secret"))
            .header("x-forwarded-for", ip)
            .send()
            .await
            .unwrap();
    }
    // 4 allowed, 18 rejected, at most 5 rejected lines per second are written.
    let path = rampart.dir().join("access.log");
    let lines = || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    assert!(wait_until(Duration::from_secs(5), || async { lines().len() >= 9 }).await);
    let all = lines();
    let allowed: Vec<_> = all.iter().filter(|l| l["verdict"] == "proxied").collect();
    assert_eq!(allowed.len(), 4);
    let first = allowed[0];
    assert_eq!(first["client"], "203.0.113.5");
    assert_eq!(first["route"], "login");
    assert_eq!(first["method"], "POST");
    assert_eq!(
        first["path"], "/api/auth/login",
        "the query string is never logged"
    );
    assert_eq!(first["status"], 200);
    assert_eq!(first["upstream"], origin.addr.to_string());
    let limited: Vec<_> = all
        .iter()
        .filter(|l| l["verdict"] == "rate_limited")
        .collect();
    assert!(
        (5..=15).contains(&limited.len()),
        "{} rejected lines",
        limited.len()
    );
    assert_eq!(limited[0]["rule"], "login-ip");
    assert_eq!(limited[0]["status"], 429);

    let sampled = wait_until(Duration::from_secs(5), || async {
        let m = rampart.metrics().await;
        m.lines()
            .find_map(|l| l.strip_prefix("rampart_access_log_sampled_out_total "))
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n + limited.len() == 18)
    })
    .await;
    assert!(
        sampled,
        "every rejected request is either logged or counted as sampled out"
    );

    let top: Value = rampart
        .admin_request(Method::GET, "/debug/top?n=5")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(top["window_seconds"], 120);
    assert_eq!(top["ips"][0]["rejected"], 9);
    assert_eq!(top["ips"].as_array().unwrap().len(), 2);
    // No GeoIP database here: the rows say so with nulls.
    assert_eq!(
        top["prefixes"][0],
        serde_json::json!({"key": "203.0.113.0/24", "rejected": 18,
            "country": null, "asn": null, "as_organization": null})
    );

    let out = Command::new(bin())
        .args([
            "top",
            "--admin",
            &rampart.admin.to_string(),
            "--token",
            TEST_TOKEN,
            "-n",
            "3",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("203.0.113.0/24") && text.contains(" 18") && text.contains("COUNTRY  AS"),
        "{text}"
    );
}
