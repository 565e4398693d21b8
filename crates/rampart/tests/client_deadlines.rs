//! The edge cannot be held open: client deadlines, head caps, the per-source
//! connection cap and honest client verdicts, over real sockets. The configs set
//! deadlines of about a second; each test waits with a generous bound for what
//! must happen (a connection that stayed open would be held for minutes).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::{wait_until, ConfigBuilder, MockOrigin, Rampart};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

fn config(origin: &MockOrigin, extra_server: &str) -> ConfigBuilder {
    ConfigBuilder::new()
        .server(
            r#"
client_header_timeout = "1s"
client_body_timeout = "1s"
keepalive_timeout = "1s"
h2_idle_timeout = "1s"
max_request_head_bytes = 4096
max_request_headers = 20
"#,
        )
        .server(extra_server)
        .pool_with("web", &[origin.addr], r#"read_timeout = "30s""#)
        .route("register", "/api/auth/register", "web")
        .catch_all_route("web", "web")
        .raw(
            r#"
[[flags]]
name = "registration_cn_mobile_only"
default_active = true
body_rules = [{ route = "register", field = "phone", allowed_regions = ["CN"] }]
"#,
        )
}

/// Reads until the server closes or `limit` passes; returns what was read and
/// how long the connection stayed open.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Duration, bool) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&out).into(), start.elapsed(), true)
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), start.elapsed(), false),
        }
    }
}

/// Sends one header line every 300 ms for up to 3 s (each read is quick, the
/// head never ends), then reads what the server answers until it closes.
async fn drip_head(s: &mut TcpStream) -> (String, bool) {
    let drip = async {
        for i in 0..40 {
            // The slow client itself (the stimulus under test), not a wait.
            tokio::time::sleep(Duration::from_millis(300)).await;
            if s.write_all(format!("X-Drip-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), drip).await;
    let (text, _, closed) = read_until_closed(s, Duration::from_secs(10)).await;
    (text, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripped_head_gets_408_when_its_deadline_passes() {
    let origin = MockOrigin::start("o").await;
    let r = Rampart::start(bin(), &config(&origin, "").build()).await;
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let (text, closed) = drip_head(&mut s).await;
    assert!(closed, "the connection is still open");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("\"client_timeout\""), "{text}");
    assert_eq!(origin.request_count(), 0);
    assert_eq!(
        r.metric(r#"rampart_client_connections_closed_total{reason="header_timeout"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        r.metric(r#"rampart_http_requests_total{route="_unmatched",status_class="4xx",verdict="client_timeout"}"#)
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_keepalive_requests_are_closed() {
    let origin = MockOrigin::start("o").await;
    let r = Rampart::start(bin(), &config(&origin, "").build()).await;
    // Idle after a complete request: closed quietly after keepalive_timeout.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let (_, held, closed) = read_until_closed(&mut s, Duration::from_secs(20)).await;
    assert!(
        closed,
        "idle keep-alive connection still open after {held:?}"
    );

    // A partial second request on a kept-alive connection: 408, then closed.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s.write_all(b"GET /c HTTP/1.1\r\nHo").await.unwrap();
    let (text, _, closed) = read_until_closed(&mut s, Duration::from_secs(20)).await;
    assert!(closed);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(origin.request_count(), 2);
    assert!(r
        .metric(r#"rampart_client_connections_closed_total{reason="keepalive_timeout"}"#)
        .await
        .is_some_and(|n| n >= 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_too_large_or_with_too_many_fields_get_431() {
    let origin = MockOrigin::start("o").await;
    let r = Rampart::start(bin(), &config(&origin, "").build()).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8000)
    );
    let many: String = (0..30).map(|i| format!("X-F{i}: 1\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    for request in [big, many] {
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        let _ = s.write_all(request.as_bytes()).await;
        let (text, _, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
        assert!(closed);
        assert!(text.starts_with("HTTP/1.1 431"), "{text}");
        assert!(text.contains("\"header_too_large\""), "{text}");
    }
    // Just under the caps still works.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    let ok = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(3000)
    );
    s.write_all(ok.as_bytes()).await.unwrap();
    let (text, _, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(origin.request_count(), 1);
    assert_eq!(
        r.metric(r#"rampart_client_connections_closed_total{reason="header_too_large"}"#)
            .await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripped_body_gets_408_and_is_never_blamed_on_the_origin() {
    let origin = MockOrigin::start("o").await;
    let r = Rampart::start(bin(), &config(&origin, "").build()).await;
    // A registration body read by the body rule, dripped one byte at a time.
    let body = br#"{"phone":"+8613800138000"}"#;
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /api/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let drip = async {
        for b in body.iter() {
            // The slow client itself (the stimulus under test), not a wait.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), drip).await;
    let (text, _, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");

    // A proxied body (no body rule on this route) that stalls half-way.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf")
        .await
        .unwrap();
    let (text, _, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed);
    assert!(!text.contains(" 502 ") && !text.contains(" 504 "), "{text}");

    // A client that goes away mid-body, once Rampart holds its request (the
    // in-flight gauge counts requests whose head was read: 0 after the requests
    // above ended, then 1 for this one).
    let in_flight = |n: f64| {
        let r = &r;
        move || async move { r.metric("rampart_http_requests_in_flight").await == Some(n) }
    };
    assert!(wait_until(Duration::from_secs(10), in_flight(0.0)).await);
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf")
        .await
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), in_flight(1.0)).await);
    drop(s);

    let metrics = wait_until(Duration::from_secs(10), || async {
        let m = r.metrics().await;
        m.contains("verdict=\"client_error\"") && m.contains("verdict=\"client_timeout\"")
    })
    .await;
    let m = r.metrics().await;
    assert!(metrics, "{m}");
    assert!(
        !m.contains("verdict=\"upstream_failed\""),
        "a client fault was blamed on the origin:\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_hold_more_than_its_connections() {
    let origin = MockOrigin::start("o").await;
    let r = Rampart::start(
        bin(),
        &config(&origin, "max_connections_per_source = 3").build(),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // The fourth is closed at accept, before it can send anything.
    let mut fourth = TcpStream::connect(r.addr).await.unwrap();
    let (text, took, closed) = read_until_closed(&mut fourth, Duration::from_secs(5)).await;
    assert!(closed && text.is_empty(), "{text}");
    assert!(took < Duration::from_secs(1), "closed only after {took:?}");
    assert_eq!(
        r.metric(r#"rampart_client_connections_closed_total{reason="per_source_cap"}"#)
            .await,
        Some(1.0)
    );
    // Another source address is not affected.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = other.connect(r.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (text, _, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // A slot frees when a connection closes.
    held.pop();
    let ok = wait_until(Duration::from_secs(5), || async {
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        let _ = s
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let (text, _, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
        text.starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(ok, "no slot came back after a connection closed");

    // The admin listener has no per-source cap: an operator's tools stay
    // connected while the same address holds more than 3 of them.
    let mut admin_held = Vec::new();
    for _ in 0..5 {
        admin_held.push(TcpStream::connect(r.admin).await.unwrap());
    }
    let metrics = r.metrics().await;
    assert!(
        metrics.contains("rampart_client_connections_closed_total"),
        "{metrics}"
    );
    drop(admin_held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_counted_as_client_errors() {
    let origin = MockOrigin::start("o").await;
    let r = Rampart::start(bin(), &config(&origin, "").build()).await;
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    )
    .await
    .unwrap();
    let (text, _, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(origin.request_count(), 0);
    // A broken chunk in a body Rampart reads (the registration body rule): the
    // client's error, never the origin's.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(
        b"POST /api/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000000\r\nabc\r\n",
    )
    .await
    .unwrap();
    let (text, _, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(!r.metrics().await.contains("upstream_failed"));
    let counted = wait_until(Duration::from_secs(5), || async {
        r.metric(r#"rampart_http_requests_total{route="_unmatched",status_class="4xx",verdict="client_error"}"#)
            .await
            .is_some()
    })
    .await;
    assert!(counted, "{}", r.metrics().await);
}

/// Rampart with the test config on an h2c listener, and an HTTP/2 client for it.
async fn h2c(origin: &MockOrigin) -> (Rampart, reqwest::Client) {
    let template = config(origin, "").first_listener("h2c = true").build();
    let r = Rampart::start(bin(), &template).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    (r, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripping_http2_stream_is_cut_at_its_body_deadline() {
    let origin = MockOrigin::start("o").await;
    let (r, client) = h2c(&origin).await;
    let chunks = futures_util::stream::unfold(0u32, |i| async move {
        if i >= 20 {
            return None;
        }
        // The slow client itself (the stimulus under test), not a wait.
        tokio::time::sleep(Duration::from_millis(250)).await;
        Some((Ok::<_, std::io::Error>(vec![b'x'; 10]), i + 1))
    });
    let started = Instant::now();
    let resp = client
        .post(r.url("/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    // Cut well before the 5 s the drip would take.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 408);
    }
    let counted = wait_until(Duration::from_secs(5), || async {
        r.metrics().await.contains("verdict=\"client_timeout\"")
    })
    .await;
    let m = r.metrics().await;
    assert!(counted, "{m}");
    assert!(!m.contains("verdict=\"upstream_failed\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_has_the_same_deadlines() {
    let origin = MockOrigin::start("o").await;
    let r = Rampart::start(bin(), &config(&origin, "").build()).await;
    let mut s = TcpStream::connect(r.admin).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (text, closed) = drip_head(&mut s).await;
    assert!(closed, "the admin connection is still open");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    // Admin traffic is not counted as public requests.
    assert_eq!(
        r.metric(r#"rampart_http_requests_total{route="_unmatched",status_class="4xx",verdict="client_timeout"}"#)
            .await,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_stream_is_cut_at_its_body_deadline() {
    let origin = MockOrigin::start("o").await;
    let (r, client) = h2c(&origin).await;
    // Ten bytes of a declared hundred, then nothing: the origin's read timeout is
    // 30 s, the body deadline 1 s.
    let chunks = futures_util::stream::unfold(0u32, |i| async move {
        if i == 0 {
            Some((Ok::<_, std::io::Error>(vec![b'x'; 10]), 1))
        } else {
            // The stalled client: never reached, the stream is cut after 1 s.
            tokio::time::sleep(Duration::from_secs(60)).await;
            None
        }
    });
    let started = Instant::now();
    let resp = client
        .post(r.url("/upload"))
        .header("content-length", "100")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 408);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(origin.request_count(), 0, "nothing went upstream");
}
