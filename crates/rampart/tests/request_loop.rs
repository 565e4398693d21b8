//! Rampart's own HTTP/1.1 request loop (`server.http1_loop = "rampart"`, the
//! default) over raw sockets, where it differs from pingora-proxy's: refusals
//! written as pre-rendered bytes between pipelined requests, origin connections
//! closed by the origin while pooled, `101` upgrades, and the other loop still
//! selectable.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::{read_request, wait_until, ConfigBuilder, MockOrigin, Rampart};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

/// One route to `origin`; loopback is a trusted proxy and 198.51.100.0/24 is
/// denied, so `X-Forwarded-For: 198.51.100.7` is refused with 403.
fn config(origin: SocketAddr, server: &str) -> String {
    let server = if server.contains("http1_loop") {
        server.to_string()
    } else {
        format!("http1_loop = \"rampart\"\n{server}")
    };
    ConfigBuilder::new()
        .server(&server)
        .pool("o", &[origin])
        .route("all", "/", "o")
        .raw("[client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]")
        .raw("[[access]]\nname = \"bad\"\naction = \"deny\"\ncidrs = [\"198.51.100.0/24\"]")
        .build()
}

/// Everything the peer sends until it closes (or `limit` passes).
async fn read_all(s: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of the responses in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text.get(at + 9..at + 12)?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_whether_refused_or_proxied() {
    for http1_loop in ["rampart", "pingora-proxy"] {
        let origin = MockOrigin::start("o").await;
        let server = format!("http1_loop = \"{http1_loop}\"");
        let r = Rampart::start(bin(), &config(origin.addr, &server)).await;
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(
            b"GET /one HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n\
              GET /two HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /three HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.8\r\n\r\n\
              GET /four HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let text = read_all(&mut s, Duration::from_secs(10)).await;
        if http1_loop == "rampart" {
            assert_eq!(statuses(&text), vec![403, 200, 403, 200], "{text}");
            assert_eq!(text.matches("\"rule\":\"bad\"").count(), 2, "{text}");
            let paths: Vec<String> = origin.requests().into_iter().map(|q| q.path).collect();
            assert_eq!(paths, vec!["/two", "/four"]);
        } else {
            // pingora-proxy closes a connection whose client pipelined (RFC 9112
            // allows it): the first answer comes back, the rest are not served.
            assert_eq!(statuses(&text).first(), Some(&403), "{text}");
            assert!(origin.requests().iter().all(|q| q.path != "/one"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_answer_keep_alive_and_close_requests_and_count_like_any_other() {
    let origin = MockOrigin::start("o").await;
    let r = Rampart::start(bin(), &config(origin.addr, "")).await;
    // Keep-alive: the refusal, then the connection serves another request.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{first}");
    assert!(
        first.contains("content-type: application/problem+json\r\n"),
        "{first}"
    );
    assert!(first.contains("date: "), "{first}");
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{first}"
    );
    let (head, body) = first.split_once("\r\n\r\n").unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(body.len(), length);
    s.write_all(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = read_all(&mut s, Duration::from_secs(10)).await;
    assert_eq!(statuses(&text), vec![200], "{text}");

    // Connection: close and HTTP/1.0: refused through the session, then closed.
    for request in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n"[..],
        &b"GET / HTTP/1.0\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n"[..],
        // A refused request with a body: answered, its body never forwarded.
        &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-Forwarded-For: 198.51.100.7\r\n\r\nhello"[..],
    ] {
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        if request.starts_with(b"POST") {
            let n = s.read(&mut buf).await.unwrap();
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(text.contains(" 403 "), "{text}");
            continue;
        }
        let text = read_all(&mut s, Duration::from_secs(10)).await;
        assert_eq!(statuses(&text.replace("HTTP/1.0", "HTTP/1.1")), vec![403], "{text}");
    }
    assert_eq!(
        origin
            .requests()
            .iter()
            .map(|q| q.path.as_str())
            .collect::<Vec<_>>(),
        vec!["/after"]
    );
    // The refusal of a request with a body is written before it is counted:
    // the count can trail the answer the client read by a moment.
    let counted = wait_until(Duration::from_secs(5), || async {
        r.metric(
            r#"rampart_policy_rejections_total{reason="denied_network",route="all",rule="bad"}"#,
        )
        .await
            == Some(4.0)
    })
    .await;
    assert!(counted, "{}", r.metrics().await);
}

/// An origin that answers each connection's first request with a keep-alive
/// response and then closes it without saying so, as an origin whose keep-alive
/// timeout is shorter than the proxy's does. Counts connections.
async fn one_request_per_connection_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let length: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let at = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let mut have = head.len() - at;
                while have < length {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                // Closed once the proxy has had time to pool the connection.
                tokio::time::sleep(Duration::from_millis(100)).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_connections_closed_while_pooled_are_never_a_failed_request() {
    let (origin, accepted) = one_request_per_connection_origin().await;
    let r = Rampart::start(bin(), &config(origin, "")).await;
    let client = reqwest::Client::new();
    for i in 0..6 {
        // Requests that can be sent again (no body) and ones that cannot (a
        // streamed body): each finds the pooled connection closed.
        let request = if i % 2 == 0 {
            client.get(r.url(&format!("/get{i}")))
        } else {
            client.post(r.url(&format!("/post{i}"))).body("payload")
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        assert_eq!(response.text().await.unwrap(), "ok");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(accepted.load(Ordering::SeqCst) >= 6);
    let failed = r
        .metric(r#"rampart_http_requests_total{route="all",verdict="upstream_failed",status_class="5xx"}"#)
        .await
        .unwrap_or(0.0);
    assert_eq!(failed, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_carries_bytes_both_ways() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // Health checks connect too: every connection is served the same way.
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                    .await;
                // Echo in capitals until the client closes.
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    let upper = buf[..n].to_ascii_uppercase();
                    if s.write_all(&upper).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let r = Rampart::start(bin(), &config(origin, "")).await;
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for word in ["hello", "again"] {
        s.write_all(word.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        while got.len() < word.len() {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("echo in time")
                .unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, word.to_ascii_uppercase().as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_loop_name_is_a_config_error() {
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg({
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("rampart.toml");
            std::fs::write(
                &path,
                "[server]\nhttp1_loop = \"fast\"\n[[listeners]]\naddress = \"127.0.0.1:1\"\n[admin]\naddress = \"127.0.0.1:2\"\n[pools.o]\nservers = [\"127.0.0.1:3\"]\n[[routes]]\nname = \"all\"\npool = \"o\"\n",
            )
            .unwrap();
            std::mem::forget(dir);
            path
        })
        .env("RAMPART_ADMIN_TOKEN", rampart_testkit::TEST_TOKEN)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("server.http1_loop") && text.contains("\"fast\""),
        "{text}"
    );
}

/// Sends one request on `s` and reads its answer (the head, then its
/// content-length's worth of body): its status and the rule its problem body
/// names.
async fn exchange(
    s: &mut TcpStream,
    method: &str,
    path: &str,
    client: &str,
    fields: &str,
) -> (u16, String) {
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {client}\r\n{fields}\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, length) = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before answering {method} {path}");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(at) = text.find("\r\n\r\n") {
            let length: usize = text[..at]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            break (at + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let rule = text
        .split_once("\"rule\":\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or(String::new(), |(rule, _)| rule.to_string());
    (statuses(&text)[0], rule)
}

/// Sends each request of `requests` (method, path, client, extra fields) and
/// reads its answer: all on one keep-alive connection, or each on a new one.
async fn answers(
    addr: SocketAddr,
    requests: &[(&str, &str, &str, &str)],
    one_connection: bool,
) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    let mut kept: Option<TcpStream> = None;
    for (method, path, client, fields) in requests {
        let mut s = match kept.take() {
            Some(s) if one_connection => s,
            _ => TcpStream::connect(addr).await.unwrap(),
        };
        out.push(exchange(&mut s, method, path, client, fields).await);
        kept = Some(s);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_gets_the_answers_a_new_connection_gets() {
    // After a refusal, the loop reads the next head itself and decides what it
    // can from the address and request line before Pingora reads it (refused
    // there, or handed on). The same requests from two clients, one on a single
    // keep-alive connection and one on a new connection each, must get the
    // same answers: buckets, bans, a 405, a deny list, a header-keyed bucket
    // (decided after Pingora's reading), and an enforced flag.
    let origin = MockOrigin::start("o").await;
    let template = ConfigBuilder::new()
        .server("http1_loop = \"rampart\"")
        .pool("o", &[origin.addr])
        .raw(
            r#"[[routes]]
name = "login"
path_prefix = "/login"
methods = ["POST"]
pool = "o"
[[routes]]
name = "keyed"
path_prefix = "/keyed"
pool = "o"
[[routes]]
name = "all"
path_prefix = "/"
pool = "o"
[client_ip]
trusted_proxies = ["127.0.0.1/32"]
[[access]]
name = "bad"
action = "deny"
cidrs = ["198.51.100.0/24"]
[[limits]]
name = "per-ip"
key = "ip"
rate = "1/min"
burst = 4
routes = ["all", "login"]
ban = { after = 2, within = "1m", for = "1m" }
[[limits]]
name = "api-key"
key = "header"
header = "x-api-key"
rate = "1/min"
burst = 1
routes = ["keyed"]
[[flags]]
name = "maintenance"
maintenance = { retry_after = "2m", message = "Back soon." }
"#,
        )
        .build();
    let r = Rampart::start(bin(), &template).await;
    // API keys differ per client: their buckets are the key's, not the address's.
    let sequence = |client: &'static str, k1: &'static str, k2: &'static str| {
        vec![
            ("GET", "/a", "198.51.100.9", ""),
            ("GET", "/a", client, ""),
            ("GET", "/login", client, ""),
            ("GET", "/b", "198.51.100.9", ""),
            ("GET", "/keyed", client, k1),
            ("GET", "/keyed/2", client, k1),
            ("GET", "/keyed/3", client, k2),
            ("GET", "/a", client, ""),
            ("GET", "/a", client, ""),
            ("GET", "/a", client, ""),
            ("GET", "/a", client, ""),
            ("GET", "/a", client, ""),
            ("GET", "/a", client, ""),
            ("POST", "/login", client, "Content-Length: 0\r\n"),
            ("GET", "/%61", client, ""),
        ]
    };
    let kept = answers(
        r.addr,
        &sequence("203.0.113.1", "X-Api-Key: a1\r\n", "X-Api-Key: a2\r\n"),
        true,
    )
    .await;
    let fresh = answers(
        r.addr,
        &sequence("203.0.113.2", "X-Api-Key: b1\r\n", "X-Api-Key: b2\r\n"),
        false,
    )
    .await;
    let expected: Vec<(u16, String)> = [
        (403, "bad"),
        (200, ""),
        (405, "method_not_allowed"),
        (403, "bad"),
        (200, ""),
        (429, "api-key"),
        (200, ""),
        // The bucket (4) holds three more, then two refusals start a ban.
        (200, ""),
        (200, ""),
        (200, ""),
        (429, "per-ip"),
        (429, "per-ip"),
        (429, "per-ip"),
        (429, "per-ip"),
        (429, "per-ip"),
    ]
    .into_iter()
    .map(|(s, r)| (s, r.to_string()))
    .collect();
    assert_eq!(fresh, expected);
    assert_eq!(kept, fresh);
    let banned = r
        .metric(r#"rampart_policy_rejections_total{reason="banned",route="all",rule="per-ip"}"#)
        .await;
    assert_eq!(banned, Some(4.0), "{}", r.metrics().await);
    let denied = r
        .metric(
            r#"rampart_policy_rejections_total{reason="denied_network",route="all",rule="bad"}"#,
        )
        .await;
    assert_eq!(denied, Some(4.0), "{}", r.metrics().await);
    let paths: Vec<String> = origin.requests().into_iter().map(|q| q.path).collect();
    assert_eq!(paths.len(), 12, "{paths:?}");

    // An enforced flag: decided after Pingora's reading, on both.
    let resp = r
        .admin_request(reqwest::Method::PUT, "/lockdown/maintenance")
        .json(&serde_json::json!({"reason": "test", "actor": "tester"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let flagged = |client: &'static str| {
        vec![
            ("GET", "/b", "198.51.100.9", ""),
            ("GET", "/c", client, ""),
            ("GET", "/d", "203.0.113.3", ""),
        ]
    };
    let kept = answers(r.addr, &flagged("203.0.113.4"), true).await;
    let fresh = answers(r.addr, &flagged("203.0.113.5"), false).await;
    assert_eq!(kept, fresh);
    assert_eq!(
        kept.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![403, 503, 503]
    );

    // A connection refused under the flag, waiting for its next request while
    // the flag is lifted: that request is decided on the flags of its arrival.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    assert_eq!(
        exchange(&mut s, "GET", "/e", "203.0.113.6", "").await.0,
        503
    );
    let resp = r
        .admin_request(reqwest::Method::DELETE, "/lockdown/maintenance")
        .json(&serde_json::json!({"reason": "over", "actor": "tester"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        exchange(&mut s, "GET", "/f", "203.0.113.6", "").await.0,
        200
    );
}

/// An origin that answers by the request's path with fixed bytes (see
/// `scripted_answer`), and keeps each connection for more requests.
async fn scripted_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut pending = Vec::new();
                loop {
                    let Some((head, _)) = read_request(&mut s, &mut pending).await else {
                        return;
                    };
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let (answer, close) = scripted_answer(&path);
                    if path == "/dribble" {
                        // In three writes, apart.
                        for piece in answer.chunks(answer.len() / 3 + 1) {
                            if s.write_all(piece).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    } else if s.write_all(&answer).await.is_err() {
                        return;
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// What the scripted origin answers to `path`, and whether it then closes.
fn scripted_answer(path: &str) -> (Vec<u8>, bool) {
    let big = "b".repeat(100_000);
    let answer = match path {
        "/plain" => "HTTP/1.1 200 OK\r\nX-Mixed-Case: A b\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nContent-Length: 5\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nhello".to_string(),
        "/reason" => "HTTP/1.1 404 Not Here\r\ncontent-length: 3\r\n\r\nnah".to_string(),
        "/empty" => "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_string(),
        "/error" => "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nRetry-After: 9\r\n\r\nbusy".to_string(),
        "/origin-closes" => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_string(),
        "/big" => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{big}", big.len()),
        "/chunked" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".to_string(),
        "/no-content" => "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
        "/two-lengths" => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok".to_string(),
        "/http10" => "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_string(),
        "/short" => "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".to_string(),
        "/interleaved" => "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-One: 1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok".to_string(),
        "/dribble" => "HTTP/1.1 200 OK\r\nX-Slow: yes\r\nContent-Length: 11\r\n\r\nhello world".to_string(),
        "/obs-fold" => "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok".to_string(),
        "/early-hints" => "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_string(),
        "/extra" => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA".to_string(),
        "/large-head" => format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok", "h".repeat(20_000)),
        _ => "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nunknown".to_string(),
    };
    let close = matches!(path, "/origin-closes" | "/http10" | "/short" | "/extra");
    (answer.into_bytes(), close)
}

/// Reads one response (head and a `Content-Length` or chunked body) off `s`:
/// its head without the `Date` line, and its body as it came.
async fn one_response(s: &mut TcpStream, pending: &mut Vec<u8>) -> (String, Vec<u8>) {
    let mut buf = vec![0u8; 65536];
    loop {
        if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..at + 4]).into_owned();
            let lower = head.to_ascii_lowercase();
            let chunked = lower.contains("transfer-encoding: chunked");
            let length: usize = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let body_end = |p: &[u8]| -> Option<usize> {
                if chunked {
                    p[at + 4..]
                        .windows(5)
                        .position(|w| w == b"0\r\n\r\n")
                        .map(|i| at + 4 + i + 5)
                } else {
                    (p.len() >= at + 4 + length).then_some(at + 4 + length)
                }
            };
            if let Some(end) = body_end(pending) {
                let body = pending[at + 4..end].to_vec();
                pending.drain(..end);
                // The status line, then the fields but for the date, sorted
                // by name (stable: repeated fields keep their order).
                let mut lines = head.lines().filter(|l| !l.is_empty());
                let status = lines.next().unwrap_or("").to_string();
                let mut fields: Vec<&str> = lines
                    .filter(|l| !l.to_ascii_lowercase().starts_with("date: "))
                    .collect();
                fields.sort_by_key(|l| l.split(':').next().unwrap_or("").to_ascii_lowercase());
                let head = std::iter::once(status.as_str())
                    .chain(fields)
                    .collect::<Vec<_>>()
                    .join("\n");
                return (head, body);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before a whole answer: {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&buf[..n]);
    }
}

/// The answers Rampart reads and renders itself (a plain GET whose origin
/// answer has a small `Content-Length` body) are the answers Pingora's reading
/// and writing give the same origin answer (a request with a body goes that
/// way): the same status line, fields and body, but for the date and the order
/// of fields of different names. Answers Rampart does not render (chunked, 1xx
/// first, 204, two lengths, HTTP/1.0, over 64 KiB, a folded field, a head over
/// 16 KiB) are read again by Pingora from their first byte and come out the
/// same too; so does one sent in pieces, or with bytes past its length. An
/// origin answer shorter than its `Content-Length` is a 502, not a cut answer,
/// on the rendered path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_rampart_renders_are_the_answers_pingora_writes() {
    let origin = scripted_origin().await;
    let r = Rampart::start(bin(), &config(origin, "")).await;
    let paths = [
        "/plain",
        "/reason",
        "/empty",
        "/error",
        "/origin-closes",
        "/big",
        "/chunked",
        "/no-content",
        "/two-lengths",
        "/http10",
        "/interleaved",
        "/dribble",
        "/obs-fold",
        "/early-hints",
        "/extra",
        "/large-head",
        "/plain",
    ];
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    let mut pending = Vec::new();
    for path in paths {
        let plain = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let with_body = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx");
        s.write_all(plain.as_bytes()).await.unwrap();
        let rendered = one_response(&mut s, &mut pending).await;
        s.write_all(with_body.as_bytes()).await.unwrap();
        let written = one_response(&mut s, &mut pending).await;
        assert_eq!(rendered, written, "{path}");
        assert!(
            rendered.0.contains("\nConnection: keep-alive"),
            "{path}: {}",
            rendered.0
        );
        if path == "/plain" {
            // The origin's spelling and repeated fields are kept; its own
            // Date and Connection are replaced.
            assert!(
                rendered.0.contains("\nSet-Cookie: a=1\nset-cookie: b=2\n"),
                "{}",
                rendered.0
            );
            assert!(rendered.0.contains("\nX-Mixed-Case: A b"), "{}", rendered.0);
            assert!(!rendered.0.contains("1970"), "{}", rendered.0);
            assert_eq!(rendered.1, b"hello");
        }
    }
    // Pipelined plain requests come back in order on the same connection.
    s.write_all(b"GET /reason HTTP/1.1\r\nHost: x\r\n\r\nGET /plain HTTP/1.1\r\nHost: x\r\n\r\nGET /empty HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut bodies = Vec::new();
    for _ in 0..3 {
        bodies.push(one_response(&mut s, &mut pending).await.1);
    }
    assert_eq!(bodies, vec![b"nah".to_vec(), b"hello".to_vec(), Vec::new()]);
    // A body shorter than its length, then the origin closes: 502.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(b"GET /short HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let text = read_all(&mut s, Duration::from_secs(10)).await;
    assert_eq!(statuses(&text), vec![502], "{text}");
    assert!(!text.contains("short"), "{text}");
    let proxied = r
        .metric(r#"rampart_http_requests_total{route="all",status_class="2xx",verdict="proxied"}"#)
        .await;
    assert!(proxied.is_some_and(|n| n >= 14.0), "{proxied:?}");
}
