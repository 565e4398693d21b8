//! Lockdown flags cannot vanish or linger: a reload cannot drop an active flag,
//! flags that expired while Rampart was down are dropped and audited before the
//! first request, TTLs are bounded or an explicit "none", times keep
//! milliseconds, and the CLI never prints a control character it was sent.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::{ConfigBuilder, MockOrigin, Rampart, TEST_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::Path;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

const FLAGS: &str = r#"
[[flags]]
name = "registration_closed"
block = [{ routes = ["register"], status = 403, message = "Closed." }]
[[flags]]
name = "maintenance"
maintenance = { retry_after = "1m", message = "Back soon." }
"#;

fn config(origin: &MockOrigin, flags: &str) -> String {
    ConfigBuilder::new()
        .pool("auth", &[origin.addr])
        .route("register", "/api/auth/register", "auth")
        .raw(flags)
        .build()
}

async fn put(r: &Rampart, flag: &str, body: Value) -> (u16, Value) {
    let resp = r
        .admin_request(Method::PUT, &format!("/lockdown/{flag}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn register_status(r: &Rampart) -> u16 {
    reqwest::Client::new()
        .post(r.url("/api/auth/register"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_cannot_drop_an_active_flag() {
    let origin = MockOrigin::start("auth").await;
    let r = Rampart::start(bin(), &config(&origin, FLAGS)).await;
    let (status, _) = put(
        &r,
        "registration_closed",
        json!({"reason": "flood", "actor": "oncall"}),
    )
    .await;
    assert_eq!(status, 200);
    // The new file no longer defines the active flag: refused, nothing changes.
    let without = std::fs::read_to_string(r.config_path()).unwrap().replace(
        "name = \"registration_closed\"\nblock = [{ routes = [\"register\"], status = 403, message = \"Closed.\" }]\n[[flags]]\n",
        "",
    );
    std::fs::write(r.config_path(), &without).unwrap();
    let resp = r
        .admin_request(Method::POST, "/reload")
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("registration_closed"),
        "{body}"
    );
    assert_eq!(register_status(&r).await, 403, "the lockdown still holds");
    // Disabled first, the same reload goes through.
    let resp = r
        .admin_request(Method::DELETE, "/lockdown/registration_closed")
        .json(&json!({"reason": "over", "actor": "oncall"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = r
        .admin_request(Method::POST, "/reload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(register_status(&r).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_that_expired_while_down_are_dropped_before_the_first_request() {
    let origin = MockOrigin::start("auth").await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let state = json!({
        "version": 2,
        "flags": {
            "registration_closed": {
                "mode": "enforce", "actor": "oncall", "reason": "wave 1",
                "since_ms": now_ms - 3_600_000, "expires_ms": now_ms - 60_000
            },
            "maintenance": {
                "mode": "enforce", "actor": "oncall", "reason": "still on",
                "since_ms": now_ms - 1_000, "expires_ms": now_ms + 3_600_000
            }
        }
    });
    let r = Rampart::start_with(bin(), &config(&origin, FLAGS), |dir| {
        std::fs::create_dir_all(dir.join("state")).unwrap();
        std::fs::write(dir.join("state/lockdown.json"), state.to_string()).unwrap();
    })
    .await;
    let list: Value = r
        .admin_request(Method::GET, "/lockdown")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let by_name = |n: &str| {
        list["flags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_name("registration_closed")["active"], false);
    assert_eq!(by_name("maintenance")["active"], true);
    assert_eq!(
        by_name("maintenance")["since_ms"].as_u64(),
        Some(now_ms - 1_000),
        "milliseconds are kept"
    );
    let audit = std::fs::read_to_string(r.dir().join("state/lockdown-audit.jsonl")).unwrap();
    let line = audit
        .lines()
        .find(|l| l.contains("registration_closed"))
        .unwrap_or_else(|| panic!("no audit record: {audit}"));
    assert!(line.contains("\"action\":\"expire\""), "{line}");
    assert!(line.contains("while Rampart was down"), "{line}");
    // The state file no longer holds it either.
    let file = std::fs::read_to_string(r.dir().join("state/lockdown.json")).unwrap();
    assert!(!file.contains("registration_closed"), "{file}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_are_bounded_or_explicitly_none() {
    let origin = MockOrigin::start("auth").await;
    let r = Rampart::start(bin(), &config(&origin, FLAGS)).await;
    for bad in ["", "  ", "0s", "8d", "999999999999h", "soon"] {
        let (status, body) = put(
            &r,
            "registration_closed",
            json!({"reason": "x", "actor": "y", "ttl": bad}),
        )
        .await;
        assert_eq!(status, 400, "ttl {bad:?}: {body}");
    }
    let (status, body) = put(
        &r,
        "registration_closed",
        json!({"reason": "x", "actor": "y", "ttl": "none"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires"], Value::Null);
    let (status, body) = put(
        &r,
        "maintenance",
        json!({"reason": "x", "actor": "y", "ttl": "1500ms"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let since = body["since_ms"].as_u64().unwrap();
    assert_eq!(body["expires_ms"].as_u64(), Some(since + 1500));
}

#[test]
fn the_cli_escapes_control_characters() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (r, _origin) = runtime.block_on(async {
        let origin = MockOrigin::start("auth").await;
        let r = Rampart::start(bin(), &config(&origin, FLAGS)).await;
        let (status, _) = put(
            &r,
            "registration_closed",
            json!({"reason": "\u{1b}[2J\u{1b}[31mall clear\u{7}", "actor": "evil\r\nroot"}),
        )
        .await;
        assert_eq!(status, 200);
        (r, origin)
    });
    let out = std::process::Command::new(bin())
        .arg("lockdown")
        .args(["--admin", &r.admin.to_string(), "--token", TEST_TOKEN])
        .arg("status")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "raw control characters printed: {text:?}"
    );
    assert!(text.contains("\\u{1b}[2J"), "{text}");
    assert!(text.contains("evil\\u{d}\\u{a}root"), "{text}");
}
