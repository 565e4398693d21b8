//! Attacks on Rampart's own HTTP/1.1 loop (`http1_loop = "rampart"`), each run
//! on both loops over raw sockets. Tests named `finding_*` assert the correct
//! behaviour and FAIL on the own loop today (the pingora-proxy loop passes);
//! tests named `held_*` pass on both.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::{ConfigBuilder, MockOrigin, Rampart};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LOOPS: [&str; 2] = ["rampart", "pingora-proxy"];

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

/// One route to `origin` on loop `http1_loop`; loopback is a trusted proxy and
/// 198.51.100.0/24 is denied (`X-Forwarded-For: 198.51.100.7` is a 403).
fn config(origin: SocketAddr, http1_loop: &str) -> String {
    ConfigBuilder::new()
        .server(&format!("http1_loop = \"{http1_loop}\""))
        .pool("o", &[origin])
        .route("all", "/", "o")
        .raw("[client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]")
        .raw("[[access]]\nname = \"bad\"\naction = \"deny\"\ncidrs = [\"198.51.100.0/24\"]")
        .build()
}

/// Everything the peer sends until it closes (or `limit` passes).
async fn read_all(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// Reads until `needle` was seen (or `limit` passes); everything read.
async fn read_until(s: &mut TcpStream, needle: &[u8], limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    while !out.windows(needle.len()).any(|w| w == needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    out
}

/// How a scripted origin answers.
#[derive(Clone, Copy, PartialEq)]
enum Script {
    /// `101` to any request with an `Upgrade` field, then records raw bytes.
    UpgradeAnything,
    /// A chunked response cut after its first chunk (connection closed).
    ChunkedThenClose,
    /// HEAD answered with a header, and 100 ms later a body (which HEAD must
    /// not carry) shaped as a whole response; other requests get `fresh`.
    HeadWithLateBody,
    /// `100 Continue` to `Expect: 100-continue`, then the body is read.
    Continue,
    /// `101` to every request but health checks, then records raw bytes.
    Always101,
}

/// What a scripted origin saw: raw bytes of all connections, in arrival order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<u8>>>);

impl Seen {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn push(&self, b: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(b);
    }
}

/// A raw origin that follows `script` on every connection (health checks too).
async fn scripted_origin(script: Script) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve_script(s, script, log.clone()));
        }
    });
    (addr, seen)
}

async fn serve_script(mut s: TcpStream, script: Script, seen: Seen) {
    let mut buf = [0u8; 8192];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        // One request head.
        let at = loop {
            if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    seen.push(&buf[..n]);
                    pending.extend_from_slice(&buf[..n]);
                }
            }
        };
        let head = String::from_utf8_lossy(&pending[..at]).to_ascii_lowercase();
        pending.drain(..at);
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let chunked = head.contains("transfer-encoding:") && head.contains("chunked");
        if script == Script::Continue && head.contains("expect: 100-continue") {
            let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        }
        let switch = match script {
            Script::UpgradeAnything => head.contains("\r\nupgrade:"),
            Script::Always101 => !head.starts_with("get /health"),
            _ => false,
        };
        if switch {
            let _ = s
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
                .await;
            // Whatever comes now is the "other protocol": record it.
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.push(&buf[..n]),
                }
            }
        }
        // The body.
        loop {
            let done = if chunked {
                pending.windows(5).any(|w| w == b"0\r\n\r\n")
            } else {
                pending.len() >= length
            };
            if done {
                break;
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    seen.push(&buf[..n]);
                    pending.extend_from_slice(&buf[..n]);
                }
            }
        }
        if chunked {
            let end = pending.windows(5).position(|w| w == b"0\r\n\r\n").unwrap() + 5;
            pending.drain(..end);
        } else {
            pending.drain(..length);
        }
        match script {
            Script::ChunkedThenClose if !head.starts_with("get /health") => {
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
            Script::HeadWithLateBody if head.starts_with("head ") => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n")
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nPWNED")
                    .await;
            }
            _ => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
                    .await;
            }
        }
    }
}

/// `Upgrade: h2c` (or any non-WebSocket upgrade) must not reach the origin:
/// if the origin switches protocols, everything the client sends afterwards
/// goes to the origin unchecked (h2c smuggling). pingora-proxy's default
/// upstream request policy (WebSocket only) strips it; the own loop forwards it
/// and tunnels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_h2c_upgrade_is_not_forwarded_or_tunnelled() {
    let mut failures = Vec::new();
    for http1_loop in LOOPS {
        let (origin, seen) = scripted_origin(Script::UpgradeAnything).await;
        let r = Rampart::start(bin(), &config(origin, http1_loop)).await;
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
              Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        )
        .await
        .unwrap();
        let answer = read_until(&mut s, b"\r\n\r\n", Duration::from_secs(5)).await;
        // A request the policy refuses, sent inside the "upgraded" connection.
        let _ = s
            .write_all(
                b"GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n",
            )
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let origin_saw = seen.text();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        if origin_saw.to_ascii_lowercase().contains("upgrade: h2c")
            || origin_saw.contains("/smuggled")
            || answer.starts_with("HTTP/1.1 101")
        {
            failures.push(format!(
                "{http1_loop}: client got {answer:?}; origin saw {origin_saw:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Fields a client nominates in `Connection` are hop-by-hop: forwarding the
/// nomination of `X-Forwarded-For` / `X-Real-IP` lets the next hop drop the
/// addresses Rampart resolved. pingora-proxy refuses (400) nominations of
/// X-Forwarded-For and strips the rest; the own loop forwards them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_connection_nominated_and_hop_by_hop_fields_are_not_forwarded() {
    let mut failures = Vec::new();
    for http1_loop in LOOPS {
        let origin = MockOrigin::start("o").await;
        let r = Rampart::start(bin(), &config(origin.addr, http1_loop)).await;
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(
            b"GET /nominated HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Forwarded-For, X-Real-IP\r\n\
              Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
              Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n",
        )
        .await
        .unwrap();
        let answer = read_until(&mut s, b"\r\n\r\n", Duration::from_secs(5)).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        tokio::time::sleep(Duration::from_millis(200)).await;
        for q in origin.requests().iter().filter(|q| q.path == "/nominated") {
            let forwarded: Vec<String> = [
                "connection",
                "keep-alive",
                "proxy-connection",
                "te",
                "proxy-authorization",
            ]
            .iter()
            .filter_map(|n| {
                q.headers
                    .get(*n)
                    .map(|v| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())))
            })
            .collect();
            let nominated = q.headers.get_all("connection").iter().any(|v| {
                v.to_str()
                    .unwrap_or("")
                    .to_ascii_lowercase()
                    .contains("x-forwarded-for")
            });
            if nominated || !forwarded.is_empty() {
                failures.push(format!(
                    "{http1_loop}: client got {:?}; origin got {forwarded:?}",
                    answer.lines().next()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// An origin that fails mid-way through a chunked response: the client must see
/// the response cut (no last chunk), not a complete, shorter one that a client
/// or a cache downstream takes as whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_chunked_response_cut_by_the_origin_is_not_completed() {
    let mut failures = Vec::new();
    for http1_loop in LOOPS {
        let (origin, _seen) = scripted_origin(Script::ChunkedThenClose).await;
        let r = Rampart::start(bin(), &config(origin, http1_loop)).await;
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_all(&mut s, Duration::from_secs(10)).await;
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(text.starts_with("HTTP/1.1 200"), "{http1_loop}: {text}");
        if text.ends_with("0\r\n\r\n") {
            failures.push(format!("{http1_loop}: {text:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// An origin that sends a body after a HEAD response (or any bytes after a
/// complete response) a little later: those bytes must never be read as the
/// response to the next request sent on that pooled origin connection, which
/// may come from another client (response desync). pingora's pool watches idle
/// connections and drops one that receives bytes; the own loop's pool checks
/// only after 1 s idle or for requests that cannot be sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_late_bytes_on_a_pooled_origin_connection_are_not_served_to_another_client() {
    let mut failures = Vec::new();
    for http1_loop in LOOPS {
        let (origin, _seen) = scripted_origin(Script::HeadWithLateBody).await;
        let r = Rampart::start(bin(), &config(origin, http1_loop)).await;
        // Attacker: a HEAD request, answered; its "body" arrives 100 ms later.
        let mut a = TcpStream::connect(r.addr).await.unwrap();
        a.write_all(b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let head = read_until(&mut a, b"\r\n\r\n", Duration::from_secs(5)).await;
        assert!(head.starts_with(b"HTTP/1.1 200"), "{http1_loop}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Victim: another client, another connection, within the second.
        let mut b = TcpStream::connect(r.addr).await.unwrap();
        b.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let got = read_all(&mut b, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&got).into_owned();
        if !text.ends_with("fresh") {
            failures.push(format!("{http1_loop}: victim got {text:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A client that sends `Expect: 100-continue` waits for `100 Continue` before
/// its body; the origin's `100` must reach it. The own loop reads the whole
/// body before it reads anything from the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_expect_continue_is_answered_before_the_body_arrives() {
    let mut failures = Vec::new();
    for http1_loop in LOOPS {
        let (origin, _seen) = scripted_origin(Script::Continue).await;
        let r = Rampart::start(bin(), &config(origin, http1_loop)).await;
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
        let interim = read_until(&mut s, b"\r\n\r\n", Duration::from_secs(3)).await;
        let interim = String::from_utf8_lossy(&interim).into_owned();
        if !interim.starts_with("HTTP/1.1 100") {
            failures.push(format!(
                "{http1_loop}: no 100 Continue within 3 s (got {interim:?})"
            ));
        }
        s.write_all(b"hello").await.unwrap();
        let rest = read_until(&mut s, b"fresh", Duration::from_secs(5)).await;
        let rest = String::from_utf8_lossy(&rest).into_owned();
        if !rest.contains("fresh") && !interim.contains("fresh") {
            failures.push(format!("{http1_loop}: final answer {rest:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Probes printed for the report (pass on both loops; the output says what each did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_upgrade_edge_cases() {
    for http1_loop in LOOPS {
        // HTTP/1.0 client asking for an upgrade.
        let (origin, seen) = scripted_origin(Script::UpgradeAnything).await;
        let r = Rampart::start(bin(), &config(origin, http1_loop)).await;
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(
            b"GET /ten HTTP/1.0\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
        let got = read_until(&mut s, b"\r\n\r\n", Duration::from_secs(3)).await;
        let _ = s
            .write_all(b"GET /after-ten HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        eprintln!(
            "PROBE {http1_loop} http/1.0 upgrade: client got {:?}; origin saw {:?}",
            String::from_utf8_lossy(&got),
            seen.text()
        );
        drop(r);
        // Origin answering 101 to a request that asked for no upgrade.
        let (origin, seen) = scripted_origin(Script::Always101).await;
        let r = Rampart::start(bin(), &config(origin, http1_loop)).await;
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut s, b"\r\n\r\n", Duration::from_secs(3)).await;
        let _ = s
            .write_all(b"GET /next HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n")
            .await;
        let more = read_all(&mut s, Duration::from_secs(2)).await;
        eprintln!(
            "PROBE {http1_loop} 101 to plain request: client got {:?} then {:?}; origin saw {:?}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&more),
            seen.text()
        );
    }
}

/// Framing attacks on requests, refused or proxied, followed by pipelined
/// requests: the origin must never receive `/smuggled` as a request, and the
/// request after must be answered by the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_framing_attacks_smuggle_nothing_past_the_policy() {
    let cases: [(&str, &[u8]); 8] = [
        ("refused CL body holding a request", b"POST /r HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\nContent-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        ("refused CL+TE", b"POST /r HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("proxied CL+TE", b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("proxied TE chunked, identity", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("duplicate differing CL", b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("obs-fold TE", b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("refused chunked with extension", b"POST /r HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\nTransfer-Encoding: chunked\r\n\r\n23;ext=\"a\"\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        ("refused with Expect and body", b"POST /r HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\nExpect: 100-continue\r\nContent-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ];
    let mut failures = Vec::new();
    for http1_loop in LOOPS {
        let origin = MockOrigin::start("o").await;
        let r = Rampart::start(bin(), &config(origin.addr, http1_loop)).await;
        for (name, bytes) in cases {
            let mut s = TcpStream::connect(r.addr).await.unwrap();
            s.write_all(bytes).await.unwrap();
            let got = read_all(&mut s, Duration::from_secs(3)).await;
            let text = String::from_utf8_lossy(&got).into_owned();
            let statuses: Vec<&str> = text
                .match_indices("HTTP/1.")
                .filter_map(|(at, _)| text.get(at + 9..at + 12))
                .collect();
            eprintln!("CASE {http1_loop} {name}: {statuses:?}");
            if origin.requests().iter().any(|q| q.path == "/smuggled") {
                failures.push(format!(
                    "{http1_loop} {name}: origin got /smuggled ({text:?})"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
