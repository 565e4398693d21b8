//! Connections from sources every request of which would be refused are closed
//! at accept, before a byte is read, TLS included: deny-listed networks and
//! banned addresses, over real sockets from distinct loopback sources
//! (127.0.0.x). What the request path might still let through is accepted as
//! before: a rule scoped to a route, clients behind a trusted proxy or a PROXY
//! protocol balancer, a ban once lifted.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::{wait_until, ConfigBuilder, MockOrigin, Rampart};
use reqwest::Method;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// What one connection from `from` to `to` got after sending `bytes`: the
/// bytes read until the server closed (or 10 s passed), whether it closed, and
/// how long that took.
async fn exchange(from: &str, to: SocketAddr, bytes: &[u8]) -> (String, bool, Duration) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(to).await.unwrap();
    let started = Instant::now();
    if !bytes.is_empty() {
        // The server may have closed already: a failed write is an answer too.
        let _ = s.write_all(bytes).await;
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (
        String::from_utf8_lossy(&out).into_owned(),
        closed,
        started.elapsed(),
    )
}

async fn dropped(r: &Rampart, reason: &str) -> f64 {
    r.metric(&format!(
        "rampart_client_connections_dropped_at_accept_total{{reason=\"{reason}\"}}"
    ))
    .await
    .unwrap_or(-1.0)
}

/// Waits until the `reason` counter reads `n`; panics with the metrics if not.
async fn wait_dropped(r: &Rampart, reason: &str, n: f64) {
    let seen = wait_until(Duration::from_secs(5), || async {
        dropped(r, reason).await == n
    })
    .await;
    assert!(
        seen,
        "dropped_at_accept{{reason={reason}}} is not {n}:\n{}",
        r.metrics().await
    );
}

fn config(origin: &MockOrigin) -> ConfigBuilder {
    ConfigBuilder::new()
        // Long enough that a connection closed within it was not closed by it.
        .server("client_header_timeout = \"30s\"")
        .pool("web", &[origin.addr])
        .catch_all_route("all", "web")
        .raw(
            r#"
[[access]]
name = "bad-hosts"
action = "deny"
cidrs = ["127.0.0.9/32"]
[[access]]
name = "all-route-only"
action = "deny"
cidrs = ["127.0.0.10/32"]
routes = ["all"]
"#,
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_listed_source_is_closed_before_a_byte_is_read() {
    let origin = MockOrigin::start("o").await;
    let r = Rampart::start(bin(), &config(&origin).build()).await;
    assert_eq!(dropped(&r, "denied_network").await, 0.0, "series at 0");

    // Silent: closed at once, not at the 30 s head deadline, nothing written.
    let (text, closed, took) = exchange("127.0.0.9", r.addr, b"").await;
    assert!(closed && text.is_empty(), "{closed} {text:?}");
    assert!(took < Duration::from_secs(5), "held for {took:?}");
    wait_dropped(&r, "denied_network", 1.0).await;
    // With a request: no response either.
    let (text, closed, _) = exchange("127.0.0.9", r.addr, GET).await;
    assert!(closed && text.is_empty(), "{closed} {text:?}");
    wait_dropped(&r, "denied_network", 2.0).await;

    // Anyone else is served.
    let (text, _, _) = exchange("127.0.0.2", r.addr, GET).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // A rule scoped to a route is the request path's: 403 as before.
    let (text, _, _) = exchange("127.0.0.10", r.addr, GET).await;
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(text.contains("all-route-only"), "{text}");
    assert_eq!(origin.request_count(), 1);
    assert_eq!(dropped(&r, "denied_network").await, 2.0);
    // Closed connections carried no request: none is counted as one.
    let m = r.metrics().await;
    assert!(
        !m.contains("rule=\"bad-hosts\""),
        "a dropped connection was counted as a request:\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_a_trusted_proxy_or_a_balancer_are_refused_by_the_request_path() {
    let origin = MockOrigin::start("o").await;
    let config = config(&origin)
        .first_listener(
            r#"proxy_protocol = "any"
proxy_protocol_from = ["127.0.0.4/32"]"#,
        )
        // The proxy and the balancer are in the deny list themselves: as
        // peers they are not the client, so they are never closed at accept.
        .raw(
            r#"
[client_ip]
trusted_proxies = ["127.0.0.3/32"]
[[access]]
name = "infra-too"
action = "deny"
cidrs = ["127.0.0.3/32", "127.0.0.4/32"]
"#,
        )
        .build();
    let r = Rampart::start(bin(), &config).await;
    let xff = |client: &str| {
        format!(
            "GET /x HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {client}\r\nConnection: close\r\n\r\n"
        )
    };
    let (text, _, _) = exchange("127.0.0.3", r.addr, xff("127.0.0.9").as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(text.contains("bad-hosts"), "{text}");
    let (text, _, _) = exchange("127.0.0.3", r.addr, xff("127.0.0.20").as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    let proxied = |client: &str| {
        [
            format!("PROXY TCP4 {client} 127.0.0.1 40000 80\r\n").as_bytes(),
            GET,
        ]
        .concat()
    };
    let (text, _, _) = exchange("127.0.0.4", r.addr, &proxied("127.0.0.9")).await;
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(text.contains("bad-hosts"), "{text}");
    let (text, _, _) = exchange("127.0.0.4", r.addr, &proxied("127.0.0.21")).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // The same client straight to the listener (no header, not a balancer):
    // closed at accept.
    let (text, closed, _) = exchange("127.0.0.9", r.addr, GET).await;
    assert!(closed && text.is_empty(), "{text:?}");
    wait_dropped(&r, "denied_network", 1.0).await;
    assert_eq!(origin.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_address_is_closed_at_accept_until_its_ban_is_lifted() {
    let origin = MockOrigin::start("o").await;
    let config = config(&origin)
        .raw(
            r#"
[[limits]]
name = "per-ip"
key = "ip"
rate = "1/h"
burst = 1
ban = { after = 2, within = "1m", for = "10m" }
"#,
        )
        .build();
    let r = Rampart::start(bin(), &config).await;
    // One request passes, two are refused by the bucket, which bans the address.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (text, _, _) = exchange("127.0.0.5", r.addr, GET).await;
        statuses.push(text.get(9..12).unwrap_or("none").to_string());
    }
    assert_eq!(statuses, ["200", "429", "429"]);
    let bans = r.admin_json("/bans").await;
    assert_eq!(bans["bans"][0]["key"], "127.0.0.5", "{bans}");
    // From now on its connections are closed at accept.
    let (text, closed, _) = exchange("127.0.0.5", r.addr, GET).await;
    assert!(closed && text.is_empty(), "{text:?}");
    wait_dropped(&r, "banned", 1.0).await;
    // Another address is not banned (its own bucket is full).
    let (text, _, _) = exchange("127.0.0.6", r.addr, GET).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // Lifted: accepted again, and the empty bucket answers (429, not banned).
    let lifted = r
        .admin_request(Method::DELETE, "/bans/per-ip?key=127.0.0.5")
        .send()
        .await
        .unwrap();
    assert_eq!(lifted.status(), 200);
    let (text, _, _) = exchange("127.0.0.5", r.addr, GET).await;
    assert!(text.starts_with("HTTP/1.1 429"), "{text}");
    assert!(text.contains("rate-limited"), "{text}");
    assert_eq!(dropped(&r, "banned").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_listener_closes_before_the_handshake() {
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
    let r = Rampart::start(bin(), &config(&origin).listener("{listen2}", &tls).build()).await;
    let port = r.addr2.unwrap().port();
    let client = |from: &str| {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap(),
            )
            .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], port)))
            .local_address(from.parse().ok())
            .build()
            .unwrap()
    };
    let url = format!("https://localhost:{port}/x");
    let ok = client("127.0.0.2").get(&url).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let refused = client("127.0.0.9").get(&url).send().await;
    assert!(refused.is_err(), "{refused:?}");
    wait_dropped(&r, "denied_network", 1.0).await;
    // No handshake was attempted: a ClientHello gets no ServerHello, not even
    // an alert.
    let hello = [0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x03];
    let (text, closed, took) = exchange("127.0.0.9", r.addr2.unwrap(), &hello).await;
    assert!(closed && text.is_empty(), "{text:?}");
    assert!(took < Duration::from_secs(5), "held for {took:?}");
    wait_dropped(&r, "denied_network", 2.0).await;
    assert_eq!(origin.request_count(), 1);
}
