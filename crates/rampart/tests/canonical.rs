//! The canonical request target over real sockets: what the origin receives is
//! the one spelling Rampart matched; ambiguous targets are refused at the edge
//! and counted; `Expect: 100-continue` is answered before a body rule reads.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::{ConfigBuilder, MockOrigin, Rampart};
use reqwest::Method;
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

fn config(origin: &MockOrigin) -> ConfigBuilder {
    ConfigBuilder::new()
        .pool("auth", &[origin.addr])
        .route_with("register", "/api/auth/register", "auth", r#"methods = ["POST"]"#)
        .route("auth-other", "/api/auth/", "auth")
        .raw(
            r#"
[access_log]
enabled = true
path = "-"
[[flags]]
name = "registration_cn_mobile_only"
body_rules = [{ route = "register", field = "phone", allowed_regions = ["CN"], number_types = ["mobile"], max_body_bytes = 4096 }]
"#,
        )
}

/// Sends `request` as raw bytes and reads until the server closes.
async fn raw(r: &Rampart, request: &[u8]) -> String {
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_receives_the_path_rampart_matched() {
    let origin = MockOrigin::start("auth").await;
    let r = Rampart::start(bin(), &config(&origin).build()).await;
    let host = r.addr;
    for (sent, forwarded) in [
        ("/api/auth/%6cogin", "/api/auth/login"),
        ("/api/auth/./login", "/api/auth/login"),
        ("/api/auth//login?x=%2F&y=1", "/api/auth/login?x=%2F&y=1"),
        ("/api/auth/x/../login", "/api/auth/login"),
        ("/api/auth/%2e/login", "/api/auth/login"),
        ("/api/auth/caf%c3%a9", "/api/auth/caf%C3%A9"),
        ("http://HOST/api/auth/%6cogin?q=1", "/api/auth/login?q=1"),
    ] {
        let sent = sent.replace("HOST", &host.to_string());
        let before = origin.request_count();
        let resp = raw(
            &r,
            format!("GET {sent} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&resp), 200, "{sent}: {resp}");
        let seen = origin.requests();
        assert_eq!(seen.len(), before + 1);
        assert_eq!(seen.last().unwrap().path, forwarded, "{sent}");
    }
    // The access log carries the canonical path too.
    let log = r.log();
    assert!(
        log.lines()
            .filter(|l| l.contains("\"route\":\"auth-other\""))
            .all(|l| !l.contains("%6c") && !l.contains("/./")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_targets_and_methods_are_refused_at_the_edge() {
    let origin = MockOrigin::start("auth").await;
    let r = Rampart::start(bin(), &config(&origin).build()).await;
    for (method, target, rule) in [
        ("POST", "/api/auth%2fregister", "canonical_path"),
        ("POST", "/api/auth%5Cregister", "canonical_path"),
        ("POST", "/api/auth\\register", "canonical_path"),
        ("POST", "/api/auth/register%00", "canonical_path"),
        ("POST", "/../api/auth/register", "canonical_path"),
        ("POST", "/api/auth/register;jsessionid=1", "canonical_path"),
        ("POST", "/api/auth/reg%zzister", "canonical_path"),
        ("POST", "/api/auth/%c3%28", "canonical_path"),
        ("post", "/api/auth/register", "canonical_method"),
        ("Post", "/api/auth/register", "canonical_method"),
    ] {
        let resp = raw(
            &r,
            format!(
                "{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 29\r\nConnection: close\r\n\r\n{{\"phone\":\"+1 415 555 0100\"}}"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(status_of(&resp), 400, "{method} {target}: {resp}");
        assert!(resp.contains("application/problem+json"), "{resp}");
        assert!(resp.contains(&format!("\"rule\":\"{rule}\"")), "{resp}");
    }
    // Another method on the register path is 405, never the catch-all route.
    for method in ["PUT", "PATCH", "GET"] {
        let resp = raw(
            &r,
            format!("{method} /api/auth/%72egister HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&resp), 405, "{method}: {resp}");
        assert!(resp.to_ascii_lowercase().contains("allow: post"), "{resp}");
    }
    assert_eq!(
        origin.request_count(),
        0,
        "nothing refused reached the origin"
    );
    let refused = r
        .metric(r#"rampart_http_requests_total{route="_unmatched",status_class="4xx",verdict="non_canonical"}"#)
        .await;
    assert_eq!(refused, Some(10.0));
    let wrong_method = r
        .metric(r#"rampart_http_requests_total{route="register",status_class="4xx",verdict="method_not_allowed"}"#)
        .await;
    assert_eq!(wrong_method, Some(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_spellings_cannot_escape_the_body_rule() {
    let origin = MockOrigin::start("auth").await;
    let r = Rampart::start(bin(), &config(&origin).build()).await;
    let resp = r
        .admin_request(Method::PUT, "/lockdown/registration_cn_mobile_only")
        .json(&json!({"reason": "test", "actor": "tester"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let us = r#"{"phone":"+1 415 555 0100"}"#;
    for path in [
        "/api/auth/%72egister",
        "/api/auth/./register",
        "/api/auth//register",
        "/api/auth/x/../register",
        "/api/auth/%2e/register",
        "/%61pi/auth/register/",
    ] {
        let resp = raw(
            &r,
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{us}",
                us.len()
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(status_of(&resp), 403, "{path}: {resp}");
    }
    assert_eq!(origin.request_count(), 0);

    // Expect: 100-continue: the client hears 100 before sending its body; the
    // origin gets the body without the Expect field.
    let body = format!(
        r#"{{"phone":"+86 138 0013 8000","bio":"{}"}}"#,
        "x".repeat(2000)
    );
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /api/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut first = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut first))
        .await
        .expect("100 Continue before the body")
        .unwrap();
    let head = String::from_utf8_lossy(&first[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    s.write_all(body.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains(" 200 "), "{rest}");
    let seen = origin.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, body.as_bytes());
    assert!(!seen[0].headers.contains_key("expect"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_paths_are_canonicalised_and_keep_their_authority() {
    let origin = MockOrigin::start("auth").await;
    let template = config(&origin).first_listener("h2c = true").build();
    let r = Rampart::start(bin(), &template).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = client
        .get(r.url("/api/auth//%6cogin?a=%2F"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let seen = origin.requests();
    assert_eq!(seen.last().unwrap().path, "/api/auth/login?a=%2F");
    // The HTTP/1.1 origin still gets a Host built from :authority.
    assert_eq!(
        seen.last().unwrap().headers["host"],
        r.addr.to_string().as_str()
    );
    let resp = client
        .post(r.url("/api/auth%2Fregister"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = client
        .put(r.url("/api/auth/%72egister"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(origin.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cannot_name_two_hosts() {
    let origin = MockOrigin::start("auth").await;
    let r = Rampart::start(bin(), &config(&origin).build()).await;
    // HTTP/1.1: two Host fields (Rampart would route on one, an origin might
    // read the other).
    let resp = raw(
        &r,
        b"GET /api/auth/x HTTP/1.1\r\nHost: public.example\r\nHost: admin.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    // (Pingora's parser refuses this one itself, before Rampart sees it.)
    assert_eq!(status_of(&resp), 400, "{resp}");

    // HTTP/2: a Host field that differs from :authority.
    let template = config(&origin).first_listener("h2c = true").build();
    let h2 = Rampart::start(bin(), &template).await;
    let send = |host: Option<&'static str>| {
        let addr = h2.addr;
        async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            let mut req = http::Request::builder()
                .uri(format!("http://{addr}/api/auth/x"))
                .method("GET");
            if let Some(host) = host {
                req = req.header("host", host);
            }
            let req = req
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            sender.send_request(req).await.unwrap().status().as_u16()
        }
    };
    assert_eq!(send(None).await, 200);
    assert_eq!(send(Some("admin.example")).await, 400);
    assert_eq!(origin.request_count(), 1);
}
