//! Limits keyed by a body field over real sockets: credential stuffing (one
//! account from 500 addresses) and SMS pumping (one number range), bodies that
//! cannot be read refused before any bucket is charged, and no clear-text value
//! in logs, metrics or explain.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::{ConfigBuilder, MockOrigin, Rampart};
use reqwest::Method;
use std::path::Path;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

fn config(origin: &MockOrigin) -> String {
    ConfigBuilder::new()
        .pool("auth", &[origin.addr])
        .route_with("login", "/api/auth/login", "auth", r#"methods = ["POST"]"#)
        .route_with(
            "register",
            "/api/auth/register",
            "auth",
            r#"methods = ["POST"]"#,
        )
        .raw(
            r#"
[client_ip]
trusted_proxies = ["127.0.0.1/32"]
[[limits]]
name = "login-account"
key = "body"
field = "username"
rate = "10/15m"
burst = 10
routes = ["login"]
[[limits]]
name = "register-range"
key = "body"
field = "/user/phone"
normalize = "phone"
number_prefix = 9
rate = "3/10m"
burst = 3
routes = ["register"]
[[limits]]
name = "login-ip"
key = "ip"
rate = "3/h"
burst = 3
routes = ["login"]
[access_log]
enabled = true
path = "-"
rejected_lines_per_second = 100000
"#,
        )
        .build()
}

async fn login(c: &reqwest::Client, r: &Rampart, from: &str, user: &str) -> u16 {
    c.post(r.url("/api/auth/login"))
        .header("x-forwarded-for", from)
        .json(&serde_json::json!({"username": user, "password": "hunter2"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_tried_from_500_addresses_is_limited_after_its_budget() {
    let origin = MockOrigin::start("auth").await;
    let r = Rampart::start(bin(), &config(&origin)).await;
    let c = reqwest::Client::new();
    let mut passed = 0;
    let mut limited = 0;
    for i in 0..500 {
        let from = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256 + 1);
        // Different spellings of one account are one account.
        let user = if i % 2 == 0 {
            "Victim@Example.com"
        } else {
            " victim@example.com "
        };
        match login(&c, &r, &from, user).await {
            200 => passed += 1,
            429 => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(passed, 10, "the account's budget, and not one attempt more");
    assert_eq!(limited, 490);
    assert_eq!(origin.request_count(), 10);
    // Other accounts are not limited, from the same addresses either.
    for i in 0..20 {
        let from = format!("10.0.0.{}", i + 1);
        assert_eq!(login(&c, &r, &from, &format!("user{i}")).await, 200);
    }
    // Nothing in clear: access log, metrics, explain.
    let explain = r
        .admin_request(
            Method::GET,
            "/debug/explain?ip=10.0.0.1&path=/api/auth/login&method=POST",
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for text in [r.log(), r.metrics().await, explain] {
        assert!(!text.to_lowercase().contains("victim"), "{text}");
        assert!(!text.contains("user7"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_run_through_one_number_range_is_limited() {
    let origin = MockOrigin::start("auth").await;
    let r = Rampart::start(bin(), &config(&origin)).await;
    let c = reqwest::Client::new();
    let register = |from: String, phone: String| {
        let c = c.clone();
        let url = r.url("/api/auth/register");
        async move {
            c.post(url)
                .header("x-forwarded-for", from)
                .json(&serde_json::json!({"user": {"phone": phone}}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // +86 138 0013 xxxx: one range of 10 000 numbers, walked from many addresses.
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(
            register(
                format!("10.1.0.{i}"),
                format!("+86 138 0013 {:04}", 1000 + i),
            )
            .await,
        );
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429, 429, 429, 429]);
    // Another range passes.
    assert_eq!(
        register("10.1.0.99".into(), "+86 139 1234 5678".into()).await,
        200
    );
    assert_eq!(
        register("10.1.0.99".into(), "+86 139 1234 5679".into()).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_cannot_be_read_are_refused_before_any_bucket_is_charged() {
    let origin = MockOrigin::start("auth").await;
    let r = Rampart::start(bin(), &config(&origin)).await;
    let c = reqwest::Client::new();
    for (ct, body) in [
        ("application/json", r#"{"username":"a","username":"b"}"#),
        ("application/json", r#"{"Username":"a"}"#),
        ("application/x-www-form-urlencoded", "username=a&username=b"),
        ("text/plain", r#"{"username":"a"}"#),
        ("application/json", r#"{"password":"no user"}"#),
    ] {
        let resp = c
            .post(r.url("/api/auth/login"))
            .header("x-forwarded-for", "10.9.9.9")
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(
            [400, 415].contains(&resp.status().as_u16()),
            "{ct} {body}: {}",
            resp.status()
        );
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
    // The address's bucket (3/h) was never charged: three good logins pass.
    for i in 0..3 {
        assert_eq!(login(&c, &r, "10.9.9.9", &format!("u{i}")).await, 200);
    }
    assert_eq!(login(&c, &r, "10.9.9.9", "u9").await, 429);
    assert_eq!(origin.request_count(), 3);
}
