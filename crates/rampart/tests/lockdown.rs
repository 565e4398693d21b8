//! Lockdown flags over real sockets: the admin API and the CLI turn them on and
//! off; their effects on registration, login and maintenance; TTL expiry; state
//! across a restart; a corrupt state file; preview; admin security.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::{wait_until, ConfigBuilder, MockOrigin, Rampart, TEST_TOKEN};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

fn config(origin: &MockOrigin) -> String {
    ConfigBuilder::new()
        .pool("auth", &[origin.addr])
        .health_check("auth", r#"interval = "1s""#)
        .route("login", "/api/auth/login", "auth")
        .route("register", "/api/auth/register", "auth")
        .route("chat", "/v1/", "auth")
        .raw(
            r#"
[[flags]]
name = "registration_cn_mobile_only"
body_rules = [{ route = "register", field = "phone", allowed_calling_codes = ["+86"], max_body_bytes = 1024 }]
[[flags]]
name = "registration_closed"
block = [{ routes = ["register"], status = 403, message = "Registrations are closed." }]
[[flags]]
name = "login_only"
allow_only_routes = ["login"]
[[flags]]
name = "maintenance"
maintenance = { retry_after = "10m", message = "Back soon." }
"#,
        )
        .build()
}

async fn put_flag(r: &Rampart, flag: &str, body: Value) -> reqwest::Response {
    r.admin_request(Method::PUT, &format!("/lockdown/{flag}"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn enable(r: &Rampart, flag: &str, extra: Value) {
    let mut body = json!({"reason": "test", "actor": "tester"});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let resp = put_flag(r, flag, body).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

async fn flags(r: &Rampart) -> Value {
    r.admin_request(Method::GET, "/lockdown")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn flag<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap()
}

async fn register(r: &Rampart, content_type: &str, body: &'static [u8]) -> reqwest::Response {
    reqwest::Client::new()
        .post(r.url("/api/auth/register"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cn_mobile_only_registration_passes_plus_86_and_refuses_the_rest() {
    let origin = MockOrigin::start("auth").await;
    let rampart = Rampart::start(bin(), &config(&origin)).await;
    enable(&rampart, "registration_cn_mobile_only", json!({})).await;

    // Odd spacing and key order: the origin must get these exact bytes.
    let cn: &'static [u8] = b"{ \"name\" : \"li\",\n  \"phone\":\"+86 138-0013-8000\" }";
    let r = register(&rampart, "application/json", cn).await;
    assert_eq!(r.status(), 200);
    let form: &'static [u8] = b"name=wang&phone=0086%20139%200013%208000";
    assert_eq!(
        register(&rampart, "application/x-www-form-urlencoded", form)
            .await
            .status(),
        200
    );
    let seen = origin.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(&seen[0].body[..], cn);
    assert_eq!(&seen[1].body[..], form);

    let r = register(
        &rampart,
        "application/json",
        b"{\"name\":\"bob\",\"phone\":\"+1 415 555 0100\"}",
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["rule"], "registration_cn_mobile_only");
    assert_eq!(body["type"], "https://rampart.dev/problems/body-refused");
    assert!(body["detail"].as_str().unwrap().contains("+86"), "{body}");

    let malformed = register(&rampart, "application/json", b"{\"phone\": 8613800138000}").await;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let too_large: &'static [u8] = Box::leak(
        format!("{{\"phone\":\"+86 1\",\"pad\":\"{}\"}}", "x".repeat(2000))
            .into_bytes()
            .into_boxed_slice(),
    );
    assert_eq!(
        register(&rampart, "application/json", too_large)
            .await
            .status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // None of the refused bodies reached the origin.
    assert_eq!(origin.request_count(), 2);

    // Login is not affected.
    let login = reqwest::Client::new()
        .post(rampart.url("/api/auth/login"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    assert_eq!(origin.request_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_only_blocks_registration_not_login_and_maintenance_answers_503() {
    let origin = MockOrigin::start("auth").await;
    let rampart = Rampart::start(bin(), &config(&origin)).await;
    let client = reqwest::Client::new();
    enable(&rampart, "login_only", json!({})).await;
    assert_eq!(
        client
            .post(rampart.url("/api/auth/login"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = client
        .post(rampart.url("/api/auth/register"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["rule"], "login_only");
    assert_eq!(
        client
            .get(rampart.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(origin.request_count(), 1);

    let off = rampart
        .admin_request(Method::DELETE, "/lockdown/login_only")
        .send()
        .await
        .unwrap();
    assert_eq!(off.status(), 200);
    assert_eq!(
        client
            .post(rampart.url("/api/auth/register"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    enable(&rampart, "maintenance", json!({})).await;
    let r = client
        .post(rampart.url("/api/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "600");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["detail"], "Back soon.");
    assert_eq!(origin.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_counts_without_blocking() {
    let origin = MockOrigin::start("auth").await;
    let rampart = Rampart::start(bin(), &config(&origin)).await;
    enable(&rampart, "registration_closed", json!({"mode": "preview"})).await;
    assert_eq!(
        flag(&flags(&rampart).await, "registration_closed")["mode"],
        "preview"
    );
    for _ in 0..3 {
        let r = reqwest::Client::new()
            .post(rampart.url("/api/auth/register"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(origin.request_count(), 3);
    let counted = wait_until(Duration::from_secs(5), || async {
        rampart.metrics()
            .await
            .contains("rampart_lockdown_preview_matches_total{flag=\"registration_closed\",route=\"register\"} 3")
    })
    .await;
    assert!(counted, "{}", rampart.metrics().await);
    assert!(rampart
        .metrics()
        .await
        .contains("rampart_lockdown_flag_active{flag=\"registration_closed\",mode=\"preview\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_with_a_ttl_expires_by_itself_and_is_audited() {
    let origin = MockOrigin::start("auth").await;
    let rampart = Rampart::start(bin(), &config(&origin)).await;
    enable(&rampart, "registration_closed", json!({"ttl": "1s"})).await;
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .post(rampart.url("/api/auth/register"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let expired = wait_until(Duration::from_secs(5), || async {
        flag(&flags(&rampart).await, "registration_closed")["active"] == false
    })
    .await;
    assert!(expired, "the flag did not expire");
    assert_eq!(
        client
            .post(rampart.url("/api/auth/register"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let audit = std::fs::read_to_string(rampart.dir().join("state/lockdown-audit.jsonl")).unwrap();
    let actions: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(actions.len(), 2);
    assert_eq!(actions[0]["action"], "enable");
    assert_eq!(actions[0]["actor"], "tester");
    assert_eq!(actions[0]["ttl_seconds"], 1);
    assert_eq!(actions[1]["action"], "expire");
    assert_eq!(actions[1]["flag"], "registration_closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_flag_survives_a_restart() {
    let origin = MockOrigin::start("auth").await;
    let mut rampart = Rampart::start(bin(), &config(&origin)).await;
    enable(
        &rampart,
        "registration_closed",
        json!({"reason": "botnet wave 3"}),
    )
    .await;
    rampart.restart(bin()).await;
    let state = flags(&rampart).await;
    let f = flag(&state, "registration_closed");
    assert_eq!(f["active"], true);
    assert_eq!(f["reason"], "botnet wave 3");
    assert_eq!(f["actor"], "tester");
    let r = reqwest::Client::new()
        .post(rampart.url("/api/auth/register"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        rampart.log().contains("lockdown state restored"),
        "{}",
        rampart.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_set_aside_and_reported() {
    let origin = MockOrigin::start("auth").await;
    let text = config(&origin).replace(
        "name = \"maintenance\"\n",
        "name = \"maintenance\"\ndefault_active = true\n",
    );
    let rampart = Rampart::start_with(bin(), &text, |dir| {
        std::fs::create_dir_all(dir.join("state")).unwrap();
        std::fs::write(
            dir.join("state/lockdown.json"),
            b"{\"version\":1,\"flags\":{\"registration_cl",
        )
        .unwrap();
    })
    .await;
    // Started with the config defaults: maintenance on, nothing else.
    let state = flags(&rampart).await;
    assert_eq!(flag(&state, "maintenance")["active"], true);
    assert_eq!(flag(&state, "maintenance")["actor"], "config");
    assert_eq!(flag(&state, "registration_closed")["active"], false);
    let set_aside: Vec<String> = std::fs::read_dir(rampart.dir().join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("lockdown.json.corrupt-"))
        .collect();
    assert_eq!(
        set_aside.len(),
        1,
        "the corrupt file is kept under another name"
    );
    assert!(!rampart.dir().join("state/lockdown.json").exists());
    assert!(
        rampart.log().contains("LOCKDOWN STATE FILE"),
        "{}",
        rampart.log()
    );
    assert!(rampart
        .metrics()
        .await
        .contains("rampart_lockdown_state_errors_total 1"));
    let audit = std::fs::read_to_string(rampart.dir().join("state/lockdown-audit.jsonl")).unwrap();
    assert!(audit.contains("\"action\":\"corrupt_state\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockdown_admin_calls_need_the_token_and_good_input() {
    let origin = MockOrigin::start("auth").await;
    let rampart = Rampart::start(bin(), &config(&origin)).await;
    let client = reqwest::Client::new();
    let body = json!({"reason": "x", "actor": "y"});
    let none = client
        .put(rampart.admin_url("/lockdown/maintenance"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    let wrong = client
        .put(rampart.admin_url("/lockdown/maintenance"))
        .bearer_auth("not-the-token-at-all-0000")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        client
            .get(rampart.admin_url("/lockdown"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // The admin paths do not exist on the public listener, even with the token.
    let public = client
        .put(rampart.url("/lockdown/maintenance"))
        .bearer_auth(TEST_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    assert_eq!(flag(&flags(&rampart).await, "maintenance")["active"], false);

    let unknown = put_flag(&rampart, "panic_button", body.clone()).await;
    assert_eq!(unknown.status(), 404);
    let detail: Value = unknown.json().await.unwrap();
    assert_eq!(
        detail["known_flags"],
        json!([
            "registration_cn_mobile_only",
            "registration_closed",
            "login_only",
            "maintenance"
        ])
    );
    for bad in [
        json!({"actor": "y"}),
        json!({"reason": "x", "actor": "y", "mode": "maybe"}),
        json!({"reason": "x", "actor": "y", "ttl": "soon"}),
        json!({"reason": "", "actor": "y"}),
        json!({"reason": "x", "actor": "y", "extra": 1}),
    ] {
        let r = put_flag(&rampart, "maintenance", bad.clone()).await;
        assert_eq!(r.status(), 400, "{bad}");
    }
    assert_eq!(flag(&flags(&rampart).await, "maintenance")["active"], false);
}

#[test]
fn the_cli_enables_lists_and_disables_flags() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (rampart, origin) = runtime.block_on(async {
        let origin = MockOrigin::start("auth").await;
        (Rampart::start(bin(), &config(&origin)).await, origin)
    });
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .arg("lockdown")
            .args(["--admin", &rampart.admin.to_string(), "--token", TEST_TOKEN])
            .args(args)
            .env("USER", "oncall")
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, out, err) = cli(&[
        "enable",
        "registration_closed",
        "--ttl",
        "2h",
        "--reason",
        "signup flood",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("registration_closed: ENFORCE by oncall (cli), expires in 1h59m")
            || out.starts_with("registration_closed: ENFORCE by oncall (cli), expires in 2h00m"),
        "{out}"
    );

    let (code, out, _) = cli(&["status"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("FLAG"), "{out}");
    let row = lines
        .iter()
        .find(|l| l.starts_with("registration_closed"))
        .unwrap();
    assert!(
        row.contains("ENFORCE") && row.contains("oncall (cli)") && row.contains("signup flood"),
        "{row}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["maintenance", "off"]),
        "{out}"
    );
    assert!(
        row.contains(" 0s ago ") || row.contains(" 1s ago "),
        "{row}"
    );

    let (code, out, _) = cli(&["--json", "status"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(flag(&v, "registration_closed")["reason"], "signup flood");

    let (code, out, _) = cli(&["disable", "registration_closed", "--reason", "flood over"]);
    assert_eq!((code, out.as_str()), (0, "registration_closed: off\n"));
    let (code, _, err) = cli(&["enable", "no_such_flag", "--reason", "x"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("404") && err.contains("known flags: registration_cn_mobile_only"),
        "{err}"
    );
    drop(origin);
}

/// Explains a registration from 198.51.100.7, with `body` posted when given.
async fn explain_registration(r: &Rampart, body: Option<&str>) -> Value {
    let path = "/debug/explain?ip=198.51.100.7&path=/api/auth/register&method=POST";
    let request = match body {
        Some(body) => r
            .admin_request(Method::POST, path)
            .header("content-type", "application/json")
            .body(body.to_string()),
        None => r.admin_request(Method::GET, path),
    };
    let resp = request.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_follows_the_active_flags_and_reads_a_posted_body() {
    let origin = MockOrigin::start("auth").await;
    let rampart = Rampart::start(bin(), &config(&origin)).await;
    let us = r#"{"phone":"+1 415 555 0100"}"#;
    let cn = r#"{"phone":"+86 138 0013 8000"}"#;
    assert_eq!(
        explain_registration(&rampart, Some(us)).await["verdict"],
        "proxied"
    );

    enable(&rampart, "registration_cn_mobile_only", json!({})).await;
    let refused = explain_registration(&rampart, Some(us)).await;
    assert_eq!(refused["verdict"], "body_refused", "{refused}");
    assert_eq!(refused["status"], 403);
    assert_eq!(refused["rule"], "registration_cn_mobile_only");
    let traced = refused["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "body_rule")
        .unwrap();
    assert_eq!(traced["outcome"], "refused");
    assert_eq!(
        explain_registration(&rampart, Some(cn)).await["verdict"],
        "proxied"
    );
    // Without a body, the body rule is shown as not evaluated.
    let no_body = explain_registration(&rampart, None).await;
    assert_eq!(no_body["verdict"], "proxied");
    assert!(no_body["rules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["kind"] == "body_rule" && r["outcome"] == "skipped"));
    // The real request agrees.
    let real = reqwest::Client::new()
        .post(rampart.url("/api/auth/register"))
        .header("content-type", "application/json")
        .body(us)
        .send()
        .await
        .unwrap();
    assert_eq!(real.status(), 403);

    // Maintenance: explain says so (it used to say "proxied").
    enable(&rampart, "maintenance", json!({})).await;
    let down = explain_registration(&rampart, Some(cn)).await;
    assert_eq!(down["verdict"], "maintenance");
    assert_eq!(down["status"], 503);
    assert_eq!(down["rules"][0]["kind"], "flag");
    // Explaining never reached the origin.
    assert_eq!(origin.request_count(), 0);
}

/// Sends registrations at about `per_second` until `stop` is set.
fn flood(
    url: String,
    per_second: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_second));
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            let _ = client.post(&url).send().await;
        }
    })
}

async fn flag_state(r: &Rampart, flag: &str) -> Value {
    r.admin_json("/lockdown").await["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == flag)
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_enters_and_leaves_its_flag_and_an_operator_wins() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let origin = MockOrigin::start("auth").await;
    let config = format!(
        "{}\n{}",
        config(&origin),
        r#"
[[escalations]]
name = "register-flood"
flag = "registration_closed"
signal = "request_rate"
route = "register"
enter_above = 20
enter_for = "1s"
leave_below = 5
leave_for = "2s"
min_hold = "0s"
"#
    );
    let rampart = Rampart::start(bin(), &config).await;
    let url = rampart.url("/api/auth/register");

    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let load = flood(url.clone(), 50, stop.clone());
    let entered = wait_until(Duration::from_secs(15), || async {
        flag_state(&rampart, "registration_closed").await["active"] == true
    })
    .await;
    assert!(
        entered,
        "the flood did not enter the flag:\n{}",
        rampart.metrics().await
    );
    let state = flag_state(&rampart, "registration_closed").await;
    assert_eq!(state["actor"], "auto:register-flood");
    assert_eq!(state["mode"], "enforce");
    let refused = reqwest::Client::new().post(&url).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    // Quiet: the window drains, then 2 s below 5/s leaves the flag.
    let left = wait_until(Duration::from_secs(20), || async {
        flag_state(&rampart, "registration_closed").await["active"] == false
    })
    .await;
    assert!(left, "the escalation did not leave the flag");
    let audit = std::fs::read_to_string(rampart.dir().join("state/lockdown-audit.jsonl")).unwrap();
    let auto: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\"actor\":\"auto:register-flood\""))
        .collect();
    assert_eq!(auto.len(), 2, "{audit}");
    assert!(auto[0].contains("\"action\":\"enable\""), "{audit}");
    assert!(auto[1].contains("\"action\":\"disable\""), "{audit}");
    assert_eq!(
        rampart
            .metric("rampart_escalation_transitions_total{escalation=\"register-flood\",transition=\"enter\"}")
            .await,
        Some(1.0)
    );

    // A second flood: entered again; the operator turns the flag off and
    // automation leaves it off while the flood goes on.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let load = flood(url.clone(), 50, stop.clone());
    let entered = wait_until(Duration::from_secs(15), || async {
        flag_state(&rampart, "registration_closed").await["active"] == true
    })
    .await;
    assert!(entered);
    let off = rampart
        .admin_request(Method::DELETE, "/lockdown/registration_closed")
        .json(&json!({"actor": "oncall", "reason": "false positive"}))
        .send()
        .await
        .unwrap();
    assert_eq!(off.status(), 200);
    // The escalation keeps seeing the flood (its signal stays above the
    // threshold for several ticks) and does not re-enter.
    let seen = "rampart_escalation_signal{escalation=\"register-flood\"}";
    for _ in 0..4 {
        let high = wait_until(Duration::from_secs(5), || async {
            rampart.metric(seen).await.unwrap_or(0.0) > 20.0
        })
        .await;
        assert!(high);
        tokio::time::sleep(Duration::from_secs(1)).await; // one tick of the escalator
    }
    assert_eq!(
        flag_state(&rampart, "registration_closed").await["active"],
        false
    );
    assert_eq!(
        rampart
            .metric("rampart_escalation_entered{escalation=\"register-flood\"}")
            .await,
        Some(0.0)
    );
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
}
