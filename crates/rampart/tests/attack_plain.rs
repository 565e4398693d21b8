//! Attacks on the HTTP/1.1 loop's plain fast path: a request with no body
//! written to the origin as bytes (`proxy::write_forwarded_head`) and a small
//! `Content-Length` answer read whole and written by Rampart
//! (`lean::plain_length`, `lean::write_response_head`). Each test compares the
//! fast path with the path Pingora's writers take (a request with a body) or
//! states what must hold; a misbehaving origin is scripted over raw TCP.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::{read_request, ConfigBuilder, Rampart};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

/// One route to `origin` on the chosen loop, the pool's `read_timeout` 1 s.
fn config(origin: SocketAddr, http1_loop: &str) -> String {
    ConfigBuilder::new()
        .server(&format!("http1_loop = \"{http1_loop}\""))
        .pool_with("o", &[origin], "read_timeout = \"1s\"")
        .route("all", "/", "o")
        .build()
}

/// The request heads an origin received, in order.
type Heads = Arc<Mutex<Vec<String>>>;

/// An origin that records every request head and answers by the request's
/// path with [`script`]'s bytes (written in the pieces it gives, flushed one by
/// one), then keeps the connection for more unless the script closes it.
async fn scripted_origin() -> (SocketAddr, Heads) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads: Heads = Arc::default();
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                loop {
                    let Some((head, _)) = read_request(&mut s, &mut pending).await else {
                        return;
                    };
                    seen.lock().unwrap().push(head.clone());
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let (pieces, after) = script(&path);
                    for piece in pieces {
                        if s.write_all(&piece).await.is_err() || s.flush().await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    match after {
                        After::Keep => {}
                        After::Close => return,
                        After::Stall => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// What the scripted origin does after its answer.
enum After {
    Keep,
    Close,
    Stall,
}

/// The scripted origin's answer to `path`: pieces written one by one.
fn script(path: &str) -> (Vec<Vec<u8>>, After) {
    let one = |s: &str| vec![s.as_bytes().to_vec()];
    let ok = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    if let Some(id) = path.strip_prefix("/id/") {
        // The answer names the request, in two writes for odd ids (the read of
        // its body waits on the origin between them).
        let body = format!("id={id};{}", "p".repeat(id.len() * 97 % 3000));
        let answer = format!(
            "HTTP/1.1 200 OK\r\nX-Id: {id}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let bytes = answer.into_bytes();
        let pieces = match id.len() % 2 {
            1 => {
                let (a, b) = bytes.split_at(bytes.len() - 7);
                vec![a.to_vec(), b.to_vec()]
            }
            _ => vec![bytes],
        };
        return (pieces, After::Keep);
    }
    let (pieces, after) = match path {
        "/plain" => (one("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain"), After::Keep),
        "/cl-05" => (one("HTTP/1.1 200 OK\r\nContent-Length: 05\r\n\r\nhello"), After::Keep),
        "/cl-6digits" => (one("HTTP/1.1 200 OK\r\nContent-Length: 000005\r\n\r\nhello"), After::Keep),
        "/cl-plus" => (one("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"), After::Keep),
        "/cl-space" => (one("HTTP/1.1 200 OK\r\nContent-Length:    5   \r\n\r\nhello"), After::Keep),
        "/cl-list" => (one("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello"), After::Keep),
        "/cl-same-twice" => (
            one("HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello"),
            After::Keep,
        ),
        "/cl-two" => (
            one("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            After::Close,
        ),
        "/cl-te" => (
            one("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            After::Keep,
        ),
        "/cl-case" => (one("HTTP/1.1 200 OK\r\ncOnTeNt-LeNgTh: 5\r\n\r\nhello"), After::Keep),
        // More bytes than the length, in the same write: a second answer.
        "/extra" => (
            one("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"),
            After::Keep,
        ),
        // The same, the second answer written a moment later.
        "/extra-late" => (
            vec![
                ok.as_bytes().to_vec(),
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL".to_vec(),
            ],
            After::Keep,
        ),
        "/early-hints" => (
            one("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
            After::Keep,
        ),
        "/continue" => (
            one("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
            After::Keep,
        ),
        // Every byte its own write.
        "/split" => (
            "HTTP/1.1 201 Created\r\nX-A: 1\r\nContent-Length: 5\r\n\r\nhello"
                .bytes()
                .map(|b| vec![b])
                .collect(),
            After::Keep,
        ),
        "/64k" => (
            vec![format!("HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n{}", "a".repeat(65536)).into_bytes()],
            After::Keep,
        ),
        "/64k1" => (
            vec![format!("HTTP/1.1 200 OK\r\nContent-Length: 65537\r\n\r\n{}", "a".repeat(65537)).into_bytes()],
            After::Keep,
        ),
        "/origin-close" => (
            one("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"),
            After::Close,
        ),
        "/origin-close-odd" => (
            one("HTTP/1.1 200 OK\r\nconnection: Close\r\nCONNECTION: keep-alive\r\nContent-Length: 5\r\n\r\nhello"),
            After::Close,
        ),
        "/hop-fields" => (
            one("HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 5\r\n\r\nhello"),
            After::Keep,
        ),
        "/dates" => (
            one("HTTP/1.1 200 OK\r\ndate: a\r\nX-B: 1\r\nDate: b\r\nContent-Length: 5\r\n\r\nhello"),
            After::Keep,
        ),
        "/obs-text" => (
            vec![b"HTTP/1.1 200 OK\r\nX-Obs: caf\xe9 \xff\r\nContent-Length: 5\r\n\r\nhello".to_vec()],
            After::Keep,
        ),
        "/no-reason" => (one("HTTP/1.1 200 \r\nContent-Length: 5\r\n\r\nhello"), After::Keep),
        "/odd-reason" => (one("HTTP/1.1 299 Whatever You Say\r\nContent-Length: 5\r\n\r\nhello"), After::Keep),
        "/many" => {
            let mut head = String::from("HTTP/1.1 200 OK\r\n");
            for i in 0..90 {
                head.push_str(&format!("X-Field-{i}: {}\r\n", "v".repeat(i)));
            }
            head.push_str("Content-Length: 5\r\n\r\nhello");
            (one(&head), After::Keep)
        }
        "/long" => (
            vec![format!("HTTP/1.1 200 OK\r\nX-Long: {}\r\nContent-Length: 5\r\n\r\nhello", "l".repeat(40_000)).into_bytes()],
            After::Keep,
        ),
        "/not-modified-cl" => (one("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"), After::Keep),
        "/no-content-cl" => (one("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"), After::Keep),
        "/http10-ka" => (
            one("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello"),
            After::Keep,
        ),
        "/switch" => (
            one("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw"),
            After::Close,
        ),
        "/status-600" => (one("HTTP/1.1 600 Odd\r\nContent-Length: 5\r\n\r\nhello"), After::Keep),
        "/fold" => (one("HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 5\r\n\r\nhello"), After::Keep),
        "/bare-lf" => (one("HTTP/1.1 200 OK\nX-A: 1\nContent-Length: 5\n\nhello"), After::Keep),
        "/cl-minus" => (one("HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello"), After::Close),
        "/cl-huge" => (
            one("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nhello"),
            After::Close,
        ),
        "/cl-garbage" => (one("HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello"), After::Close),
        "/cl-empty" => (one("HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\nhello"), After::Close),
        "/te-identity" => (
            one("HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello"),
            After::Close,
        ),
        "/hints-with-length" => (
            one("HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
            After::Keep,
        ),
        "/not-modified-body" => (
            one("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"),
            After::Keep,
        ),
        "/empty-extra" => (
            one("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"),
            After::Keep,
        ),
        "/extra-split" => (
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel".to_vec(),
                b"loHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL".to_vec(),
            ],
            After::Keep,
        ),
        "/stall" => (one("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"), After::Stall),
        _ => (one("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nunknown"), After::Keep),
    };
    (pieces, after)
}

/// Everything the peer sends until it closes (or 10 s pass), with each `Date`
/// line's value blanked.
async fn transcript(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .split("\r\n")
        .map(|l| match l.to_ascii_lowercase().starts_with("date: ") {
            true => "Date: *",
            false => l,
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// `first` then a `GET /plain` with `Connection: close`, pipelined on one new
/// connection: what comes back until Rampart closes.
async fn exchange(r: &Rampart, first: &[u8]) -> String {
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    let mut bytes = first.to_vec();
    bytes.extend_from_slice(b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(&bytes).await.unwrap();
    transcript(&mut s).await
}

/// Every scripted origin answer, to a plain GET (the fast path: bytes written
/// by Rampart when the answer qualifies) and to a POST with a one-byte body
/// (Pingora's writer): the client gets the same bytes but the date, and the
/// request pipelined behind it gets the origin's answer to it, never bytes left
/// over from the first. Answers that end in an error differ by design (a body
/// cut short is a 502 on the fast path, a cut answer on the other) and are
/// checked on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_origin_answers_reach_the_client_as_pingora_writes_them() {
    let (origin, _) = scripted_origin().await;
    let r = Rampart::start(bin(), &config(origin, "rampart")).await;
    let paths = [
        "/cl-05",
        "/cl-6digits",
        "/cl-plus",
        "/cl-space",
        "/cl-list",
        "/cl-same-twice",
        "/cl-two",
        "/cl-te",
        "/cl-case",
        "/extra",
        "/early-hints",
        "/continue",
        "/split",
        "/64k",
        "/64k1",
        "/origin-close",
        "/origin-close-odd",
        "/hop-fields",
        "/dates",
        "/obs-text",
        "/no-reason",
        "/odd-reason",
        "/many",
        "/long",
        "/not-modified-cl",
        "/no-content-cl",
        "/http10-ka",
        "/switch",
        "/status-600",
        "/fold",
        "/bare-lf",
        "/cl-minus",
        "/cl-huge",
        "/cl-garbage",
        "/cl-empty",
        "/te-identity",
        "/hints-with-length",
        "/not-modified-body",
        "/empty-extra",
        "/extra-split",
    ];
    for path in paths {
        let get = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let post = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx");
        let fast = exchange(&r, get.as_bytes()).await;
        let written = exchange(&r, post.as_bytes()).await;
        assert_eq!(fast, written, "{path}");
        assert!(!fast.contains("EVIL"), "{path}: {fast}");
        // An origin failure (502) closes the connection after its answer, as
        // does an answer that ends when the connection does.
        if !fast.starts_with("HTTP/1.1 502 ") && !matches!(path, "/switch" | "/te-identity") {
            assert!(
                fast.ends_with("\r\n\r\nplain"),
                "{path}: the request behind it is answered: {fast}"
            );
        }
    }
    assert!(!r.log().contains("panicked"), "{}", r.log());
}

/// An origin that writes a second answer a moment after the first, on a
/// connection it keeps: the pooled connection is not used again (Rampart
/// checks a pooled connection before reuse), so the next request never reads
/// the stale answer, on either path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_behind_a_plain_one_reaches_no_one() {
    let (origin, _) = scripted_origin().await;
    let r = Rampart::start(bin(), &config(origin, "rampart")).await;
    for first in [
        &b"GET /extra-late HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"POST /extra-late HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"[..],
    ] {
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(first).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.ends_with(b"hello") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        // Long enough for the origin's late bytes to arrive on its connection.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..3 {
            let mut s = TcpStream::connect(r.addr).await.unwrap();
            s.write_all(b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let text = transcript(&mut s).await;
            assert!(text.ends_with("\r\n\r\nplain"), "{text}");
        }
    }
}

/// An origin that sends part of a body and then nothing: on the fast path the
/// answer is a 504 at the pool's read timeout (nothing was written yet), and
/// the connection closes; no hang, no partial answer taken for a whole one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_stalled_mid_body_is_a_504_on_the_fast_path() {
    let (origin, _) = scripted_origin().await;
    let r = Rampart::start(bin(), &config(origin, "rampart")).await;
    let text = exchange(&r, b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 504 "), "{text}");
    assert!(!text.contains("hello"), "{text}");
    assert!(!text.contains("plain"), "{text}");
}

/// One answer off `s` (its head and a `Content-Length` body), as text.
async fn read_one(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..at]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= at + 4 + length {
                return String::from_utf8_lossy(&got).into_owned();
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf));
        let n = read.await.expect("an answer in time").unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

/// The request heads an origin gets for `requests` (each on its own
/// connection, answered before the next), names in lower case, sorted, and the
/// request line, `Content-Length` and `Transfer-Encoding` left out.
async fn fields_sent(r: &Rampart, heads: &Heads, requests: &[Vec<u8>]) -> Vec<Vec<String>> {
    fields_sent_keeping(r, heads, requests, false).await
}

/// [`fields_sent`], keeping the framing fields when `framing`.
async fn fields_sent_keeping(
    r: &Rampart,
    heads: &Heads,
    requests: &[Vec<u8>],
    framing: bool,
) -> Vec<Vec<String>> {
    heads.lock().unwrap().clear();
    for request in requests {
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        read_one(&mut s).await;
    }
    heads
        .lock()
        .unwrap()
        .iter()
        .map(|head| {
            let target = head.split(' ').nth(1).unwrap_or_default().to_string();
            let mut fields: Vec<String> = head
                .split("\r\n")
                .skip(1)
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (name, value) = l.split_once(':').unwrap();
                    format!("{}:{}", name.to_ascii_lowercase(), value)
                })
                .filter(|l| {
                    framing
                        || !(l.starts_with("content-length:")
                            || l.starts_with("transfer-encoding:"))
                })
                .collect();
            fields.sort();
            fields.insert(0, target);
            fields
        })
        .collect()
}

/// Requests whose fields test what is dropped, as a plain GET (written as
/// bytes) and as a POST with a body (through the header map): the origin gets
/// the same fields either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_gets_the_same_fields_from_a_plain_request_and_one_with_a_body() {
    let (origin, heads) = scripted_origin().await;
    let r = Rampart::start(bin(), &config(origin, "rampart")).await;
    let reference = Rampart::start(bin(), &config(origin, "pingora-proxy")).await;
    let cases: [(&str, &str); 9] = [
        ("HTTP/1.1", "Host: x\r\nConnection: keep-alive, X-Foo\r\nX-Foo: 1\r\nX-Bar: 2\r\n"),
        ("HTTP/1.1", "Host: x\r\nConnection: close, x-foo, KEEP-ALIVE\r\nX-Foo: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nTrailer: x\r\n"),
        ("HTTP/1.1", "Host: x\r\nX-Obs: caf\u{e9}\r\nX-Forwarded-For: 203.0.113.9\r\nX-Real-IP: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n"),
        ("HTTP/1.1", "Host: x\r\nx_forwarded_for: 203.0.113.9\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic x\r\nHTTP2-Settings: AAA\r\n"),
        ("HTTP/1.1", "Host: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAA\r\n"),
        ("HTTP/1.1", "Host: x\r\nUpgrade: websocket\r\n"),
        ("HTTP/1.0", "Host: x\r\nConnection: keep-alive\r\nX-A: 1\r\nX-A: 2\r\n"),
        ("HTTP/1.0", "Host: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"),
        ("HTTP/1.0", "Host: x\r\nConnection: Upgrade, keep-alive\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"),
    ];
    // Field values with obs-text bytes (not UTF-8), and a tab inside.
    let get = b"GET /plain HTTP/1.1\r\nHost: x\r\nX-Latin: caf\xe9\t\xff\x80\r\n\r\n".to_vec();
    let post = b"POST /plain HTTP/1.1\r\nHost: x\r\nX-Latin: caf\xe9\t\xff\x80\r\nContent-Length: 1\r\n\r\nx".to_vec();
    let sent = fields_sent(&r, &heads, &[get, post]).await;
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0], sent[1]);
    assert!(
        sent[0]
            .iter()
            .any(|f| f.starts_with("x-latin: caf\u{fffd}\t")),
        "{sent:?}"
    );
    for (version, fields) in cases {
        let get = format!("GET /plain {version}\r\n{fields}\r\n").into_bytes();
        let post =
            format!("POST /plain {version}\r\n{fields}Content-Length: 1\r\n\r\nx").into_bytes();
        let sent = fields_sent(&r, &heads, &[get.clone(), post.clone()]).await;
        assert_eq!(sent.len(), 2, "{fields}");
        assert_eq!(sent[0], sent[1], "{version} {fields}");
        // pingora-proxy's loop sends the origin the same fields, but for an
        // `Upgrade: websocket` that `Connection` does not name: Pingora's
        // sanitising makes it an upgrade (`Connection: Upgrade` added) before
        // Rampart's filter sees it; RFC 9110 §7.8 makes it no upgrade, as
        // this loop reads it.
        if !fields.ends_with("Upgrade: websocket\r\n") || fields.contains("Connection") {
            let old = fields_sent(&reference, &heads, &[get, post]).await;
            assert_eq!(old, sent, "pingora-proxy: {version} {fields}");
        }
        for field in &sent[0] {
            for dropped in [
                "connection:",
                "upgrade:",
                "keep-alive:",
                "te:",
                "x-foo:",
                "proxy-",
            ] {
                assert!(!field.starts_with(dropped), "{version} {fields}: {field}");
            }
        }
    }
}

/// Request targets and `Host` spellings, as a plain GET (written as bytes) and
/// as a POST with a body (through the header map), on this loop and on
/// pingora-proxy's: the origin gets the same target and fields, or none of them
/// get anything (refused alike).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_and_hosts_reach_the_origin_alike() {
    let (origin, heads) = scripted_origin().await;
    let r = Rampart::start(bin(), &config(origin, "rampart")).await;
    let reference = Rampart::start(bin(), &config(origin, "pingora-proxy")).await;
    let cases: [(&str, &str); 14] = [
        ("*", "Host: x\r\n"),
        ("http://x/plain?q=1", "Host: x\r\n"),
        ("http://x", "Host: x\r\n"),
        ("/plain?a=%20&b=%zz", "Host: x\r\n"),
        ("/plain?", "Host: x\r\n"),
        ("/plain#frag", "Host: x\r\n"),
        ("/a/../plain", "Host: x\r\n"),
        ("/plain;p=1", "Host: x\r\n"),
        ("/pl%61in", "Host: x\r\n"),
        ("/plain", "HOST: X\r\n"),
        ("/plain", "Host: x:80\r\n"),
        ("/plain", "Host: x\r\nHost: x\r\n"),
        ("/plain", "Host: x.\r\n"),
        ("/plain", "Host:\r\n"),
    ];
    let methods = ["head", "Get", "PURGE", "TRACE", "DELETE"];
    let cases = cases
        .iter()
        .map(|&(target, fields)| ("OPTIONS", target, fields))
        .chain(methods.iter().map(|&m| (m, "/plain", "Host: x\r\n")));
    for (method, target, fields) in cases {
        let get = format!("{method} {target} HTTP/1.1\r\n{fields}\r\n").into_bytes();
        let post = format!("{method} {target} HTTP/1.1\r\n{fields}Content-Length: 1\r\n\r\nx")
            .into_bytes();
        let sent = fields_sent(&r, &heads, &[get.clone(), post.clone()]).await;
        let old = fields_sent(&reference, &heads, &[get, post]).await;
        match sent.len() {
            0 => {}
            2 => assert_eq!(sent[0], sent[1], "{method} {target} {fields}"),
            _ => panic!("{target} {fields}: one of two went on: {sent:?}"),
        }
        assert_eq!(old, sent, "pingora-proxy: {target} {fields}");
    }
}

/// Many clients at once, each its own requests on one kept-alive connection,
/// answers read whole and written by Rampart from buffers kept per thread:
/// each answer reaches the request it answers, never another's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_plain_answers_never_cross() {
    let (origin, _) = scripted_origin().await;
    let r = Rampart::start(bin(), &config(origin, "rampart")).await;
    let addr = r.addr;
    let mut tasks = Vec::new();
    for client in 0..24u32 {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            for round in 0..15u32 {
                let id = format!("{client}x{}", "r".repeat(round as usize));
                let request = format!("GET /id/{id} HTTP/1.1\r\nHost: x\r\n\r\n");
                s.write_all(request.as_bytes()).await.unwrap();
                let text = read_one(&mut s).await;
                let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
                assert!(
                    text.contains(&format!("\r\nX-Id: {id}\r\n")),
                    "{id}: {text}"
                );
                assert!(body.starts_with(&format!("id={id};")), "{id}: {text}");
                assert_eq!(body.len(), id.len() + 4 + id.len() * 97 % 3000, "{id}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Plain requests with a zero length, `Expect` or both, written as bytes: the
/// origin gets what pingora-proxy's loop sends it, framing fields included,
/// and the answer comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_lengths_and_expect_on_plain_requests_go_on_as_pingora_proxy_sends_them() {
    let (origin, heads) = scripted_origin().await;
    let r = Rampart::start(bin(), &config(origin, "rampart")).await;
    let reference = Rampart::start(bin(), &config(origin, "pingora-proxy")).await;
    for fields in [
        "Content-Length: 0\r\n",
        "Content-Length: 00\r\n",
        "Content-Length: 0\r\nContent-Length: 0\r\n",
        "Expect: 100-continue\r\n",
        "Expect: 100-continue\r\nContent-Length: 0\r\n",
    ] {
        for method in ["GET", "DELETE"] {
            let request =
                format!("{method} /plain HTTP/1.1\r\nHost: x\r\n{fields}\r\n").into_bytes();
            let sent = fields_sent_keeping(&r, &heads, std::slice::from_ref(&request), true).await;
            let old = fields_sent_keeping(&reference, &heads, &[request], true).await;
            assert_eq!(sent, old, "{method} {fields}");
        }
    }
}

/// Plain requests that carry upgrade fields `Connection` does not name (Pingora's
/// session still reads them as an upgrade request), or a `Connection` of
/// keep-alive spelled twice or with close behind: the answer and the request
/// pipelined behind come back as they do through Pingora's writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_and_connection_spellings_on_plain_requests_answer_alike() {
    let (origin, _) = scripted_origin().await;
    let r = Rampart::start(bin(), &config(origin, "rampart")).await;
    for fields in [
        "Upgrade: websocket\r\n",
        "Upgrade: h2c\r\nConnection: keep-alive\r\n",
        "Connection: Keep-Alive\r\n",
        "Connection: keep-alive\r\nConnection: close\r\n",
        "Connection: close\r\nConnection: keep-alive\r\n",
        "Connection: keep-alive, close\r\n",
        "Connection: keep-alive\r\nX-A: 1\r\n",
    ] {
        let get = format!("GET /cl-05 HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
        let post = format!("POST /cl-05 HTTP/1.1\r\nHost: x\r\n{fields}Content-Length: 1\r\n\r\nx");
        let fast = exchange(&r, get.as_bytes()).await;
        let written = exchange(&r, post.as_bytes()).await;
        assert_eq!(fast, written, "{fields}");
        assert!(fast.starts_with("HTTP/1.1 200 "), "{fields}: {fast}");
    }
}

/// A client that sends a plain GET and shuts its side at once still gets the
/// whole answer, on both writers, before Rampart closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_gets_its_whole_answer() {
    let (origin, _) = scripted_origin().await;
    let r = Rampart::start(bin(), &config(origin, "rampart")).await;
    let mut answers = Vec::new();
    for request in [
        &b"GET /64k HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"POST /64k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"[..],
    ] {
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        s.shutdown().await.unwrap();
        let text = transcript(&mut s).await;
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        assert!(text.ends_with(&"a".repeat(65536)), "{}", text.len());
        answers.push(text);
    }
    assert_eq!(answers[0], answers[1]);
}

/// `strip_headers` naming the body's framing fields (not the fast path: any
/// request with a body): the origin still gets the body, framed. Stripping them
/// after the framing was set sent a `POST` with neither `Content-Length` nor
/// `Transfer-Encoding`, which Pingora's writer frames as no body: the body was
/// dropped and the client told 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_headers_never_strips_a_body_of_its_framing() {
    let (origin, heads) = scripted_origin().await;
    let template = ConfigBuilder::new()
        .server("http1_loop = \"rampart\"")
        .pool_with("o", &[origin], "read_timeout = \"1s\"")
        .route("all", "/", "o")
        .raw("[request]\nstrip_headers = [\"content-length\", \"transfer_encoding\", \"x-secret\"]")
        .build();
    let r = Rampart::start(bin(), &template).await;
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    for request in [
        &b"POST /plain HTTP/1.1\r\nHost: x\r\nX-Secret: 1\r\nContent-Length: 5\r\n\r\nhello"[..],
        &b"GET /plain HTTP/1.1\r\nHost: x\r\nContent_Length: 9\r\nContent-Length: 0\r\n\r\n"[..],
        &b"POST /plain HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
    ] {
        s.write_all(request).await.unwrap();
        let text = read_one(&mut s).await;
        assert!(text.ends_with("plain"), "{text}");
    }
    let heads = heads.lock().unwrap().clone();
    let lower: Vec<String> = heads.iter().map(|h| h.to_ascii_lowercase()).collect();
    assert!(lower[0].contains("\r\ncontent-length: 5\r\n"), "{heads:?}");
    assert!(!lower[0].contains("x-secret"), "{heads:?}");
    // The body went on with its length: the next head is the next request's.
    assert!(lower[1].starts_with("get /plain "), "{heads:?}");
    assert!(lower[1].contains("\r\ncontent-length: 0\r\n"), "{heads:?}");
    assert!(!lower[1].contains("content_length"), "{heads:?}");
    assert!(
        lower[2].contains("\r\ntransfer-encoding: chunked\r\n"),
        "{heads:?}"
    );
}
