//! Proxy core over real sockets: routes and pools, health checks, 503 when a pool
//! is down, streaming, client IP through trusted proxies, reload, TLS + HTTP/2,
//! admin authentication and graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::{dead_addr, wait_until, ConfigBuilder, MockOrigin, Rampart, TEST_TOKEN};
use reqwest::{Method, StatusCode};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

/// The chat and auth pools, health-checked every `probe_interval`, with the chat,
/// stream and login routes.
fn two_pool_config_probing(
    chat: &[SocketAddr],
    auth: &[SocketAddr],
    probe_interval: &str,
) -> ConfigBuilder {
    let health_check = format!(
        "kind = \"http\"\npath = \"/healthz\"\ninterval = \"{probe_interval}\"\ntimeout = \"200ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1"
    );
    ConfigBuilder::new()
        .pool_with("chat", chat, r#"connect_timeout = "500ms""#)
        .health_check("chat", &health_check)
        .pool_with("auth", auth, r#"connect_timeout = "500ms""#)
        .health_check("auth", &health_check)
        .route_with(
            "chat",
            "/v1/chat/completions",
            "chat",
            r#"methods = ["POST"]"#,
        )
        .route("stream", "/stream", "chat")
        .route_with("login", "/api/auth/login", "auth", r#"methods = ["POST"]"#)
}

/// [`two_pool_config_probing`] with probes 100 ms apart.
fn two_pool_config(chat: &[SocketAddr], auth: &[SocketAddr]) -> ConfigBuilder {
    two_pool_config_probing(chat, auth, "100ms")
}

async fn origin_of(resp: reqwest::Response) -> String {
    resp.headers()
        .get("x-origin")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_else(|| "none".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_reaches_its_pool_and_unmatched_is_answered_at_the_edge() {
    let chat = MockOrigin::start("chat").await;
    let auth = MockOrigin::start("auth").await;
    let rampart = Rampart::start(bin(), &two_pool_config(&[chat.addr], &[auth.addr]).build()).await;
    let client = reqwest::Client::new();

    let r = client
        .post(rampart.url("/v1/chat/completions"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(origin_of(r).await, "chat");
    let r = client
        .post(rampart.url("/api/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(origin_of(r).await, "auth");

    // Wrong method for the route: 405 with Allow, never a fall-through elsewhere.
    let r = client
        .get(rampart.url("/api/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["rule"], "method_not_allowed");
    // A path no route has: 404 problem, nothing upstream.
    let r = client.get(rampart.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["rule"], "no_route");
    assert_eq!(body["status"], 404);
    assert_eq!(chat.request_count(), 1);
    assert_eq!(auth.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_origin_is_taken_out_and_traffic_continues_on_the_others() {
    let a = MockOrigin::start("a").await;
    let b = MockOrigin::start("b").await;
    let auth = MockOrigin::start("auth").await;
    let rampart = Rampart::start(
        bin(),
        &two_pool_config(&[a.addr, b.addr], &[auth.addr]).build(),
    )
    .await;
    let client = reqwest::Client::new();

    // Round robin spreads requests over both servers.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = client
            .post(rampart.url("/v1/chat/completions"))
            .send()
            .await
            .unwrap();
        seen.push(origin_of(r).await);
    }
    assert!(
        seen.contains(&"a".to_string()) && seen.contains(&"b".to_string()),
        "{seen:?}"
    );

    b.stop();
    let b_addr = b.addr.to_string();
    let taken_out = wait_until(Duration::from_secs(5), || async {
        let status = rampart.status().await;
        status["pools"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["servers"].as_array().unwrap().clone())
            .any(|s| s["address"] == b_addr.as_str() && s["healthy"] == false)
    })
    .await;
    assert!(taken_out, "health checks did not take b out");

    let before = a.request_count();
    for _ in 0..10 {
        let r = client
            .post(rampart.url("/v1/chat/completions"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(origin_of(r).await, "a");
    }
    assert_eq!(a.request_count(), before + 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_on_another_server() {
    // b passes the first probe, then dies; with probes an hour apart it stays in
    // rotation, so every request that picks it must be retried on a.
    let a = MockOrigin::start("a").await;
    let dead = dead_addr();
    let config = two_pool_config_probing(&[a.addr, dead.addr()], &[a.addr], "1h").build();
    let b = MockOrigin::start_on("b", &dead.addr().to_string()).await;
    let rampart = Rampart::start(bin(), &config).await;
    b.stop();
    drop(b);
    let client = reqwest::Client::new();
    for _ in 0..6 {
        let r = client
            .post(rampart.url("/v1/chat/completions"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a connect failure must be retried on a");
        assert_eq!(origin_of(r).await, "a");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_no_healthy_server_answers_503_at_once() {
    let auth = MockOrigin::start("auth").await;
    let (dead_a, dead_b) = (dead_addr(), dead_addr());
    let rampart = Rampart::start(
        bin(),
        &two_pool_config(&[dead_a.addr(), dead_b.addr()], &[auth.addr]).build(),
    )
    .await;
    let r = reqwest::Client::new()
        .post(rampart.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.headers()["retry-after"], "5");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["rule"], "no_healthy_upstream");
    assert!(body["detail"].as_str().unwrap().contains("\"chat\""));
}

/// An origin that takes the request and never answers: the pool's
/// `read_timeout` (1 s here) ends the wait with a 504, each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_never_answers_gets_504_at_its_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Reads what comes and keeps every connection open, silent.
        while let Ok((mut s, _)) = silent.accept().await {
            let held = held_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let _ = held.send(n);
                }
            });
        }
    });
    let auth = MockOrigin::start("auth").await;
    let config = ConfigBuilder::new()
        .pool_with(
            "slow",
            &[silent_addr],
            r#"connect_timeout = "500ms"
read_timeout = "1s""#,
        )
        .pool_with("auth", &[auth.addr], "")
        .route("slow", "/slow", "slow")
        .route("login", "/api/auth/login", "auth")
        .build();
    let rampart = Rampart::start(bin(), &config).await;
    for round in 0..2 {
        let mut client = tokio::net::TcpStream::connect(rampart.addr).await.unwrap();
        client
            .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(20), client.read(&mut buf))
                .await
                .expect("no answer: the origin's read timeout was not applied")
                .unwrap();
            assert!(n > 0, "closed without an answer in round {round}");
            head.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&head);
        assert!(text.starts_with("HTTP/1.1 504"), "round {round}: {text}");
        assert!(held_rx.recv().await.is_some(), "the origin got the request");
    }
    assert_eq!(
        rampart
            .metric(r#"rampart_http_requests_total{route="slow",status_class="5xx",verdict="upstream_failed"}"#)
            .await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sse_chunk_reaches_the_client_before_the_origin_finishes() {
    let chat = MockOrigin::start("chat").await;
    let rampart = Rampart::start(bin(), &two_pool_config(&[chat.addr], &[chat.addr]).build()).await;
    let mut r = reqwest::Client::new()
        .get(rampart.url("/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let first = tokio::time::timeout(Duration::from_secs(5), r.chunk())
        .await
        .expect("first chunk within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: first\n\n");
    assert_eq!(
        chat.streams_finished(),
        0,
        "the origin has not finished its stream yet"
    );
    chat.release_streams();
    let mut rest = Vec::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"data: last\n\n");
    assert_eq!(chat.streams_finished(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_untrusted_peers_are_ignored_and_replaced() {
    let origin = MockOrigin::start("o").await;
    // Trusted: 127.0.0.2 (a load balancer) and ::1. The test client at 127.0.0.1 is not trusted.
    let config = two_pool_config(&[origin.addr], &[origin.addr])
        .listener("{listen6}", "")
        .raw("[client_ip]\ntrusted_proxies = [\"127.0.0.2/32\", \"10.0.0.0/8\", \"::1/128\", \"2001:db8:ffff::/48\"]")
        .build();
    let rampart = Rampart::start(bin(), &config).await;
    let login = |client: &reqwest::Client, base: String, xff: &str| {
        client
            .post(format!("{base}/api/auth/login"))
            .header("x-forwarded-for", xff)
            .header("x-real-ip", "6.6.6.6")
            .header("forwarded", "for=6.6.6.6")
            .header("x-client-ip", "6.6.6.6")
            .header("true-client-ip", "6.6.6.6")
            .header("cf-connecting-ip", "6.6.6.6")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "https")
            .header("x_forwarded_for", "6.6.6.6")
            .header("X_Real_IP", "6.6.6.6")
            .header("x-app-trace", "kept")
            .send()
    };

    // Untrusted peer 127.0.0.1: its header is ignored.
    let untrusted = reqwest::Client::builder()
        .local_address("127.0.0.1".parse().ok())
        .build()
        .unwrap();
    login(&untrusted, rampart.url(""), "203.0.113.50")
        .await
        .unwrap();
    // Trusted peer 127.0.0.2: rightmost address that is not itself trusted.
    let trusted = reqwest::Client::builder()
        .local_address("127.0.0.2".parse().ok())
        .build()
        .unwrap();
    login(&trusted, rampart.url(""), "6.6.6.6, 198.51.100.7, 10.1.2.3")
        .await
        .unwrap();
    // IPv6: trusted peer ::1, chain of IPv6 hops.
    let status = rampart.status().await;
    assert!(status["ready"].as_bool().unwrap());
    let v6_base = format!("http://{}", rampart.addr6.unwrap());
    let v6 = reqwest::Client::new();
    login(&v6, v6_base, "2001:db8:1::5, 2001:db8:ffff::2")
        .await
        .unwrap();

    let seen: Vec<(String, String, bool)> = origin
        .requests()
        .iter()
        .map(|r| {
            (
                r.headers["x-forwarded-for"].to_str().unwrap().to_string(),
                r.headers["x-real-ip"].to_str().unwrap().to_string(),
                r.headers.contains_key("forwarded"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("127.0.0.1".into(), "127.0.0.1".into(), false),
            ("198.51.100.7".into(), "198.51.100.7".into(), false),
            ("2001:db8:1::5".into(), "2001:db8:1::5".into(), false),
        ]
    );
    // Every other client-sent claim of address, host or scheme is gone, also in
    // underscore spelling; unrelated fields pass.
    for r in origin.requests() {
        for name in [
            "x-client-ip",
            "true-client-ip",
            "cf-connecting-ip",
            "x-forwarded-host",
            "x_forwarded_for",
            "x_real_ip",
        ] {
            assert!(!r.headers.contains_key(name), "{name} reached the origin");
        }
        assert_eq!(r.headers["x-forwarded-proto"], "http");
        assert_eq!(r.headers["x-app-trace"], "kept");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_names_resolve_when_applied_and_one_that_does_not_refuses_the_reload() {
    // The proxy takes a name's first address: start the origin there (127.0.0.1
    // or ::1, depending on the machine).
    let first = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 0))
        .unwrap()
        .next()
        .unwrap();
    let chat = MockOrigin::start("chat").await;
    let auth = MockOrigin::start_on("auth", &first.to_string()).await;
    let by_name = |port: u16| format!("localhost:{port}");
    let config = two_pool_config(&[chat.addr], &[auth.addr]).build().replace(
        &format!("\"{}\"", auth.addr),
        &format!("\"{}\"", by_name(auth.addr.port())),
    );
    assert!(config.contains("localhost:"));
    let rampart = Rampart::start(bin(), &config).await;
    let client = reqwest::Client::new();
    let r = client
        .post(rampart.url("/api/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(origin_of(r).await, "auth");

    // A name that does not resolve (`.invalid`, RFC 6761) is a config error at
    // reload: refused with its key, and the old config keeps serving.
    let original = std::fs::read_to_string(rampart.config_path()).unwrap();
    std::fs::write(
        rampart.config_path(),
        original.replace(
            &by_name(auth.addr.port()),
            &format!("nowhere.invalid:{}", auth.addr.port()),
        ),
    )
    .unwrap();
    let r = rampart
        .admin_request(Method::POST, "/reload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["result"], "refused");
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{body}");
    let prefix = format!(
        "{}: pools.auth.servers[0]: \"nowhere.invalid:{}\" cannot be resolved: ",
        rampart.config_path().display(),
        auth.addr.port()
    );
    assert!(errors[0].as_str().unwrap().starts_with(&prefix), "{body}");
    let r = client
        .post(rampart.url("/api/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(origin_of(r).await, "auth");
    assert_eq!(rampart.status().await["generation"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_reload_keeps_the_old_config_and_a_good_one_applies() {
    let chat = MockOrigin::start("chat").await;
    let auth = MockOrigin::start("auth").await;
    let good = two_pool_config(&[chat.addr], &[auth.addr]).build();
    let rampart = Rampart::start(bin(), &good).await;
    let client = reqwest::Client::new();
    // A keep-alive connection opened before the reloads must keep working.
    let r = client
        .post(rampart.url("/api/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let original = std::fs::read_to_string(rampart.config_path()).unwrap();
    std::fs::write(
        rampart.config_path(),
        original.replace(
            "path_prefix = \"/api/auth/login\"\npool = \"auth\"",
            "path_prefix = \"/api/auth/login\"\npool = \"nope\"\nbogus = 1",
        ),
    )
    .unwrap();
    let r = rampart
        .admin_request(Method::POST, "/reload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["result"], "refused");
    let errors: Vec<String> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    let file = rampart.config_path().display().to_string();
    assert_eq!(
        errors,
        vec![
            format!("{file}: routes[2].bogus: unknown key"),
            format!("{file}: routes[2].pool: unknown pool \"nope\" (known: auth, chat)"),
        ]
    );
    // SIGHUP with the same broken file: refused too; the old config keeps serving.
    rampart.signal("HUP");
    for _ in 0..5 {
        let r = client
            .post(rampart.url("/api/auth/login"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(origin_of(r).await, "auth");
    }
    assert_eq!(rampart.status().await["generation"], 1);

    // A good file through SIGHUP: login now goes to the chat pool.
    std::fs::write(
        rampart.config_path(),
        original.replace(
            "path_prefix = \"/api/auth/login\"\npool = \"auth\"",
            "path_prefix = \"/api/auth/login\"\npool = \"chat\"",
        ),
    )
    .unwrap();
    rampart.signal("HUP");
    let applied = wait_until(Duration::from_secs(5), || async {
        rampart.status().await["generation"] == 2
    })
    .await;
    assert!(applied, "SIGHUP reload did not apply:\n{}", rampart.log());
    let r = client
        .post(rampart.url("/api/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(origin_of(r).await, "chat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_with_a_self_signed_certificate() {
    let origin = MockOrigin::start("o").await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert_path.display(),
        key_path.display()
    );
    let config = two_pool_config(&[origin.addr], &[origin.addr])
        .listener("{listen2}", &tls)
        .build();
    let rampart = Rampart::start(bin(), &config).await;
    let tls_port = rampart.addr2.unwrap().port();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], tls_port)))
        .build()
        .unwrap();
    let r = client
        .post(format!("https://localhost:{tls_port}/api/auth/login"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(origin_of(r).await, "o");
    let seen = origin.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(&seen[0].body[..], b"hello");
    assert_eq!(seen[0].headers["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requires_the_token_and_is_not_on_the_public_listener() {
    let origin = MockOrigin::start("o").await;
    let rampart = Rampart::start(
        bin(),
        &two_pool_config(&[origin.addr], &[origin.addr]).build(),
    )
    .await;
    let client = reqwest::Client::new();
    for path in ["/metrics", "/status", "/reload"] {
        let method = if path == "/reload" {
            Method::POST
        } else {
            Method::GET
        };
        let none = client
            .request(method.clone(), rampart.admin_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(
            none.status(),
            StatusCode::UNAUTHORIZED,
            "{path} without token"
        );
        let wrong = client
            .request(method.clone(), rampart.admin_url(path))
            .bearer_auth("test-admin-token-0123456780")
            .send()
            .await
            .unwrap();
        assert_eq!(
            wrong.status(),
            StatusCode::UNAUTHORIZED,
            "{path} with a wrong token"
        );
        let right = client
            .request(method.clone(), rampart.admin_url(path))
            .bearer_auth(TEST_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), StatusCode::OK, "{path} with the token");
        // The public listener knows nothing of admin paths, even with the token.
        let public = client
            .request(method, rampart.url(path))
            .bearer_auth(TEST_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(
            public.status(),
            StatusCode::NOT_FOUND,
            "{path} on the public listener"
        );
    }
    // Metrics are recorded in the logging phase, just after the response is sent.
    let counted = wait_until(Duration::from_secs(5), || async {
        let metrics = rampart.metrics().await;
        metrics.contains("rampart_http_requests_total{route=\"_unmatched\",status_class=\"4xx\",verdict=\"no_route\"} 3")
    })
    .await;
    assert!(counted, "the three public requests are counted as no_route");
    assert_eq!(origin.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    let origin = MockOrigin::start("o").await;
    let config = two_pool_config(&[origin.addr], &[origin.addr])
        .server("grace_period = \"3s\"\ngraceful_shutdown_timeout = \"1s\"")
        .route("slow", "/slow", "chat")
        .build();
    let mut rampart = Rampart::start(bin(), &config).await;
    let url = rampart.url("/slow?ms=1500");
    let in_flight = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status()) });
    assert!(
        wait_until(Duration::from_secs(5), || async {
            origin.request_count() == 1
        })
        .await,
        "slow request did not reach the origin"
    );
    rampart.signal("TERM");
    let status = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(status, 200);
    assert!(
        rampart.wait_exit(Duration::from_secs(15)).await,
        "rampart did not exit after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_forwarding_headers_over_a_raw_socket_fall_back_to_the_peer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = MockOrigin::start("o").await;
    let config = two_pool_config(&[origin.addr], &[origin.addr])
        .raw("[client_ip]\ntrusted_proxies = [\"127.0.0.0/8\"]")
        .build();
    let rampart = Rampart::start(bin(), &config).await;
    let mut stream = tokio::net::TcpStream::connect(rampart.addr).await.unwrap();
    let mut request =
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nX-Forwarded-For: "
            .to_vec();
    request.extend_from_slice(b"\xff\xfe garbage, 198.51.100.1\r\nConnection: close\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A header that is not even text cannot name a client: the peer is the client.
    assert_eq!(origin.requests()[0].headers["x-forwarded-for"], "127.0.0.1");
}
