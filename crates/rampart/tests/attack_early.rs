//! Attacks on the HTTP/1.1 loop's early reading of the head that follows a
//! refusal (`lean::Lean::early`): for each spelling of a request, the answer on
//! a connection whose previous request was refused must be the one a new
//! connection gets (status, rule, whether the connection goes on, and what the
//! origin receives).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::{ConfigBuilder, MockOrigin, Rampart};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

/// Loopback is a trusted proxy; 198.51.100.0/24 is denied everywhere;
/// `secret.example` is denied to everyone; `/ro` takes GET only; `/limited`
/// holds one request per client address.
fn config(origin: SocketAddr) -> String {
    ConfigBuilder::new()
        .server("http1_loop = \"rampart\"")
        .pool("o", &[origin])
        .raw(
            r#"[[routes]]
name = "secret"
host = "secret.example"
path_prefix = "/"
pool = "o"
[[routes]]
name = "ro"
path_prefix = "/ro"
methods = ["GET"]
pool = "o"
[[routes]]
name = "limited"
path_prefix = "/limited"
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
[[access]]
name = "closed"
action = "deny"
cidrs = ["0.0.0.0/0", "::/0"]
routes = ["secret"]
[[limits]]
name = "one"
key = "ip"
rate = "1/hour"
burst = 1
routes = ["limited"]
[[flags]]
name = "maintenance"
maintenance = { retry_after = "2m", message = "Back soon." }
"#,
        )
        .build()
}

const PREFACE: &[u8] = b"GET /preface HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.9\r\n\r\n";
const SENTINEL: &[u8] =
    b"GET /sentinel HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.250\r\nConnection: close\r\n\r\n";

/// Reads one whole response (head and content-length body) off `s`.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before answering");
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
            if buf.len() >= at + 4 + length {
                return text;
            }
        }
    }
}

/// What one probe came to: each answer (status, rule, `Connection: close`),
/// and what the origin received (method, path, client address, body).
#[derive(Debug, PartialEq, Eq, Clone)]
struct Outcome {
    answers: Vec<(u16, String, bool)>,
    origin: Vec<String>,
}

fn parse(text: &str) -> Vec<(u16, String, bool)> {
    let starts: Vec<usize> = text.match_indices("HTTP/1.").map(|(at, _)| at).collect();
    let mut out = Vec::new();
    for (i, &at) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(text.len());
        let one = &text[at..end];
        let status = one.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let rule = one
            .split_once("\"rule\":\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or(String::new(), |(rule, _)| rule.to_string());
        let close = one
            .split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .to_ascii_lowercase()
            .contains("connection: close");
        out.push((status, rule, close));
    }
    out
}

/// Sends `request` (in `parts`, with a pause between them) on a new
/// connection, after a refused request when `refused_first`, then a
/// `Connection: close` sentinel; returns everything answered after the
/// preface and what the origin received meanwhile.
async fn probe(
    r: &Rampart,
    origin: &MockOrigin,
    refused_first: bool,
    pipelined: bool,
    parts: &[&[u8]],
) -> Outcome {
    let before = origin.requests().len();
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    if refused_first && !pipelined {
        s.write_all(PREFACE).await.unwrap();
        let text = read_response(&mut s).await;
        assert!(text.starts_with("HTTP/1.1 403 "), "{text}");
    }
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        if i == 0 && refused_first && pipelined {
            let _ = s.write_all(&[PREFACE, part].concat()).await;
        } else {
            let _ = s.write_all(part).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    let _ = s.write_all(SENTINEL).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(4), s.read_to_end(&mut out)).await;
    let mut text = String::from_utf8_lossy(&out).into_owned();
    if refused_first && pipelined {
        // The preface's own answer is not part of the comparison.
        assert!(text.starts_with("HTTP/1.1 403 "), "{text}");
        text = text[1..]
            .find("HTTP/1.")
            .map_or(String::new(), |at| text[at + 1..].to_string());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let origin = origin
        .requests()
        .into_iter()
        .skip(before)
        .map(|q| {
            format!(
                "{} {} xff={:?} host={:?} len={}",
                q.method,
                q.path,
                q.headers.get("x-forwarded-for"),
                q.headers.get("host"),
                q.body.len()
            )
        })
        .collect();
    Outcome {
        answers: parse(&text),
        origin,
    }
}

/// Both outcomes of `parts`: on a new connection, and after a refusal.
async fn both(r: &Rampart, origin: &MockOrigin, parts: &[&[u8]]) -> (Outcome, Outcome, Outcome) {
    let fresh = probe(r, origin, false, false, parts).await;
    let kept = probe(r, origin, true, false, parts).await;
    let piped = probe(r, origin, true, true, parts).await;
    (fresh, kept, piped)
}

/// The spellings of the first attack on the early reading (all fixed, and
/// checked apart in `malformed_heads_after_a_refusal_get_pingoras_answer`):
/// heads Pingora refuses as malformed (400: Host with userinfo, a target
/// `http::Uri` rejects; 405: CONNECT) were decided early, answered with the
/// policy's status on a kept connection and charged to the client's buckets;
/// heads over the caps pipelined behind another request escaped the 431.
const KNOWN: [&str; 8] = [
    // Pipelined in one write after the refused request: see
    // `pipelined_heads_keep_their_size_limits`.
    "101 fields",
    "head over 32k",
    "host userinfo",
    "host userinfo x",
    "lt in path",
    "gt in query",
    "backtick in path",
    "connect",
];

/// Candidate spellings; `{ip}` is replaced by a denied and by an allowed
/// client address in turn.
fn candidates() -> Vec<(&'static str, Vec<String>)> {
    let one = |s: &str| vec![s.to_string()];
    let mut list: Vec<(&'static str, Vec<String>)> = vec![
        ("plain", one("GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("two hosts", one("GET /a HTTP/1.1\r\nHost: x\r\nHost: secret.example\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("two same hosts", one("GET /a HTTP/1.1\r\nHost: x\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("host secret", one("GET /a HTTP/1.1\r\nHost: secret.example\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("host upper", one("GET /a HTTP/1.1\r\nHost: SECRET.EXAMPLE\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("host port", one("GET /a HTTP/1.1\r\nHost: secret.example:80\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("host dot", one("GET /a HTTP/1.1\r\nHost: secret.example.\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("host tab", one("GET /a HTTP/1.1\r\nHost: secret.example\t\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("host inner tab", one("GET /a HTTP/1.1\r\nHost: secret\t.example\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("host empty", one("GET /a HTTP/1.1\r\nHost:\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("host missing", one("GET /a HTTP/1.1\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("host userinfo", one("GET /a HTTP/1.1\r\nHost: u@secret.example\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("host userinfo x", one("GET /a HTTP/1.1\r\nHost: u@x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("absolute other host", one("GET http://secret.example/a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("absolute same host", one("GET http://x/a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("two xff", one("GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\nX-Forwarded-For: 203.0.113.77\r\n\r\n")),
        ("two xff rev", one("GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.77\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("xff comma", one("GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.77, {ip}\r\n\r\n")),
        ("xff spaces", one("GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For:   {ip}   \r\n\r\n")),
        ("xff quoted", one("GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: \"{ip}\"\r\n\r\n")),
        ("xff port", one("GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}:1234\r\n\r\n")),
        ("xff garbage", one("GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}, zz\r\n\r\n")),
        ("xff empty items", one("GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip},,\r\n\r\n")),
        ("xff upper name", one("GET /a HTTP/1.1\r\nHost: x\r\nX-FORWARDED-FOR: {ip}\r\n\r\n")),
        ("xff underscore", one("GET /a HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: {ip}\r\n\r\n")),
        ("xff obs-fold", one("GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.77,\r\n {ip}\r\n\r\n")),
        ("xff non-ascii", one("GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\u{e9}\r\n\r\n")),
        ("forwarded", one("GET /a HTTP/1.1\r\nHost: x\r\nForwarded: for={ip}\r\n\r\n")),
        ("nine xff", one(&format!("GET /a HTTP/1.1\r\nHost: x\r\n{}X-Forwarded-For: {{ip}}\r\n\r\n", "X-Forwarded-For: 203.0.113.77\r\n".repeat(8)))),
        ("lower method", one("get /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("mixed method", one("GeT /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("post ro", one("POST /ro HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("patch ro", one("PATCH /ro HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("long method", one(&format!("{} /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {{ip}}\r\n\r\n", "X".repeat(200)))),
        ("connect", one("CONNECT /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("connect authority", one("CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("options star", one("OPTIONS * HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("dot escape", one("GET /%2e%2e/ro HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("dot segments", one("GET /x/../ro HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("double slash", one("GET //ro HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("unreserved escape", one("GET /%72o HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("lower hex", one("GET /a%c3%a9 HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("semicolon", one("GET /a;b HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("query", one("GET /a?b=/ro&c HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("empty query", one("GET /a? HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("fragment", one("GET /a#b HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("lt in path", one("GET /a<b HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("gt in query", one("GET /a?b>c HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("backtick in path", one("GET /a`b HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("braces quote", one("GET /a{\"}| HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("caret brackets", one("GET /a^[] HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("non-ascii target", one("GET /\u{e9} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("long target", one(&format!("GET /{} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {{ip}}\r\n\r\n", "a".repeat(6000)))),
        ("cl 0 twice", one("GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("cl 0 and 5", one("GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\nX-Forwarded-For: {ip}\r\n\r\nhello")),
        ("cl +0", one("GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("cl 00", one("GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 00\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("cl 0,0", one("GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 0\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("cl 0 te", one("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\nX-Forwarded-For: {ip}\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
        ("cl underscore", one("POST /a HTTP/1.1\r\nHost: x\r\nContent_Length: 5\r\nX-Forwarded-For: {ip}\r\n\r\nhello")),
        ("te underscore", one("POST /a HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\nX-Forwarded-For: {ip}\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
        ("body smuggle", one("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 53\r\nX-Forwarded-For: {ip}\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n")),
        ("bare lf", one("GET /a HTTP/1.1\nHost: x\nX-Forwarded-For: {ip}\n\n")),
        ("mixed lf", one("GET /a HTTP/1.1\r\nHost: x\nX-Forwarded-For: {ip}\r\n\n")),
        ("http 1.0", one("GET /a HTTP/1.0\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("http 1.0 keep-alive", one("GET /a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("keep-alive, close", one("GET /a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("two connection", one("GET /a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nConnection: close\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("connection upper", one("GET /a HTTP/1.1\r\nHost: x\r\nConnection: KEEP-ALIVE\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("expect", one("GET /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("upgrade", one("GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("many fields", one(&format!("GET /a HTTP/1.1\r\nHost: x\r\n{}X-Forwarded-For: {{ip}}\r\n\r\n", (0..70).map(|i| format!("X-F{i}: v\r\n")).collect::<String>()))),
        ("space before colon", one("GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For : {ip}\r\n\r\n")),
        ("leading crlf", one("\r\nGET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("two spaces", one("GET  /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("ctl in value", one("GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\u{1}b\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("del in host", one("GET /a HTTP/1.1\r\nHost: x\u{7f}\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("bar method", one("G|T /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("cl spaces", one("GET /a HTTP/1.1\r\nHost: x\r\nContent-Length:   0  \r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("cl tab", one("GET /a HTTP/1.1\r\nHost: x\r\nContent-Length:\t0\t\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("te empty", one("GET /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("te identity", one("GET /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\nX-Forwarded-For: {ip}\r\n\r\n")),
        ("101 fields", one(&format!("GET /a HTTP/1.1\r\nHost: x\r\n{}X-Forwarded-For: {{ip}}\r\n\r\n", (0..101).map(|i| format!("X-F{i}: v\r\n")).collect::<String>()))),
        ("head over 32k", one(&format!("GET /a HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nX-Forwarded-For: {{ip}}\r\n\r\n", "b".repeat(33 * 1024)))),
        ("pipelined two", one("GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.78\r\n\r\n")),
    ];
    list.push((
        "split head",
        vec![
            "GET /a HT".to_string(),
            "TP/1.1\r\nHost: x\r\nX-Forwa".to_string(),
            "rded-For: {ip}\r\n".to_string(),
            "\r\n".to_string(),
        ],
    ));
    list.push((
        "split before body",
        vec![
            "POST /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\nContent-Length: 53\r\n\r\n"
                .to_string(),
            "GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n".to_string(),
        ],
    ));
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_gets_the_same_answer_after_a_refusal() {
    let origin = MockOrigin::start("o").await;
    let r = Rampart::start(bin(), &config(origin.addr)).await;
    let mut differences = Vec::new();
    let mut report = String::new();
    for (name, parts) in candidates() {
        for ip in ["198.51.100.20", "203.0.113.20"] {
            let parts: Vec<Vec<u8>> = parts
                .iter()
                .map(|p| p.replace("{ip}", ip).into_bytes())
                .collect();
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let (fresh, kept, piped) = both(&r, &origin, &refs).await;
            report.push_str(&format!("{name} [{ip}]: {fresh:?}\n"));
            if fresh != kept {
                differences.push(format!(
                    "{name} [{ip}]:\n  fresh: {fresh:?}\n  kept:  {kept:?}"
                ));
            }
            if fresh != piped {
                differences.push(format!(
                    "{name} [{ip}] (pipelined):\n  fresh: {fresh:?}\n  piped: {piped:?}"
                ));
            }
        }
    }
    eprintln!("{report}");
    // Known findings (see the ignored tests below): denied clients only.
    let unexpected: Vec<&String> = differences
        .iter()
        .filter(|d| !KNOWN.iter().any(|k| d.starts_with(&format!("{k} ["))))
        .collect();
    eprintln!("differences:\n{}", differences.join("\n"));
    assert!(unexpected.is_empty(), "{unexpected:#?}");
}

/// Sends raw `bytes` on `s` and reads one answer: its status.
async fn status_of(s: &mut TcpStream, bytes: &[u8]) -> u16 {
    s.write_all(bytes).await.unwrap();
    let text = read_response(s).await;
    parse(&text)[0].0
}

/// A request Pingora refuses as malformed (400, before any policy) is charged
/// to its client's buckets when the early reading came first: the client's next
/// request, on any connection, is refused where it would have been let through.
async fn charged_by(malformed: &str) -> (Vec<u16>, Vec<u16>) {
    let origin = MockOrigin::start("o").await;
    let r = Rampart::start(bin(), &config(origin.addr)).await;
    let run = |client: &'static str, refused_first: bool| {
        let addr = r.addr;
        let malformed = malformed.replace("{ip}", client);
        async move {
            let mut out = Vec::new();
            let mut s = TcpStream::connect(addr).await.unwrap();
            if refused_first {
                out.push(status_of(&mut s, PREFACE).await);
            }
            out.push(status_of(&mut s, malformed.as_bytes()).await);
            let mut s = TcpStream::connect(addr).await.unwrap();
            let next =
                format!("GET /limited HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {client}\r\n\r\n");
            out.push(status_of(&mut s, next.as_bytes()).await);
            out
        }
    };
    let fresh = run("203.0.113.31", false).await;
    let kept = run("203.0.113.32", true).await;
    (fresh, kept)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_target_after_a_refusal_is_not_charged() {
    let (fresh, kept) =
        charged_by("GET /limited/<x HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n").await;
    assert_eq!(fresh, vec![400, 200]);
    assert_eq!(kept, vec![403, 400, 200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_userinfo_after_a_refusal_is_not_charged() {
    let (fresh, kept) =
        charged_by("GET /limited HTTP/1.1\r\nHost: u@x\r\nX-Forwarded-For: {ip}\r\n\r\n").await;
    assert_eq!(fresh, vec![400, 200]);
    assert_eq!(kept, vec![403, 400, 200]);
}

/// A refused request whose body is a whole request: the body is never read as
/// the next request, whether the refusal came first or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_body_is_never_a_request() {
    let origin = MockOrigin::start("o").await;
    let r = Rampart::start(bin(), &config(origin.addr)).await;
    let inner = "GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.40\r\n\r\n";
    let outer = format!(
        "POST /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.40\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    );
    for refused_first in [false, true] {
        for split in [false, true] {
            let before = origin.requests().len();
            let mut s = TcpStream::connect(r.addr).await.unwrap();
            if refused_first {
                s.write_all(PREFACE).await.unwrap();
                read_response(&mut s).await;
            }
            if split {
                let at = outer.find("\r\n\r\n").unwrap() + 4;
                s.write_all(&outer.as_bytes()[..at]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
                s.write_all(&outer.as_bytes()[at..]).await.unwrap();
            } else {
                s.write_all(outer.as_bytes()).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = s.write_all(SENTINEL).await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(4), s.read_to_end(&mut out)).await;
            let text = String::from_utf8_lossy(&out).into_owned();
            let paths: Vec<String> = origin
                .requests()
                .into_iter()
                .skip(before)
                .map(|q| q.path)
                .collect();
            assert!(!paths.iter().any(|p| p == "/smuggled"), "{paths:?} {text}");
            let statuses: Vec<u16> = parse(&text).into_iter().map(|a| a.0).collect();
            assert_eq!(statuses.first(), Some(&403), "{text}");
        }
    }
}

/// Under an enforced flag, the early reading refuses what Pingora's reading
/// would; spellings Pingora rejects as malformed stay 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spellings_under_a_flag_get_the_same_answer_after_a_refusal() {
    let origin = MockOrigin::start("o").await;
    let r = Rampart::start(bin(), &config(origin.addr)).await;
    let resp = r
        .admin_request(reqwest::Method::PUT, "/lockdown/maintenance")
        .json(&serde_json::json!({"reason": "test", "actor": "tester"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut differences = Vec::new();
    for (name, parts) in candidates() {
        if KNOWN.contains(&name) {
            continue;
        }
        let ip = "203.0.113.50";
        let parts: Vec<Vec<u8>> = parts
            .iter()
            .map(|p| p.replace("{ip}", ip).into_bytes())
            .collect();
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let (fresh, kept, piped) = both(&r, &origin, &refs).await;
        if fresh != kept || fresh != piped {
            differences.push(format!(
                "{name}:\n  fresh: {fresh:?}\n  kept:  {kept:?}\n  piped: {piped:?}"
            ));
        }
    }
    eprintln!("differences under the flag:\n{}", differences.join("\n"));
    assert!(differences.is_empty(), "{differences:#?}");
}

/// The known findings, one by one: a head Pingora refuses as malformed gets
/// Pingora's answer (and the connection closed) after a refusal too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_after_a_refusal_get_pingoras_answer() {
    let origin = MockOrigin::start("o").await;
    let r = Rampart::start(bin(), &config(origin.addr)).await;
    let mut differences = Vec::new();
    for (name, parts) in candidates() {
        if !KNOWN.contains(&name) {
            continue;
        }
        let parts: Vec<Vec<u8>> = parts
            .iter()
            .map(|p| p.replace("{ip}", "198.51.100.21").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let (fresh, kept, piped) = both(&r, &origin, &refs).await;
        if fresh != kept || fresh != piped {
            differences.push(format!(
                "{name}:\n  fresh: {fresh:?}\n  kept:  {kept:?}\n  piped: {piped:?}"
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_after_a_refusal_is_not_charged() {
    let (fresh, kept) =
        charged_by("CONNECT /limited HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n").await;
    assert_eq!(fresh, vec![405, 200]);
    assert_eq!(kept, vec![403, 405, 200]);
}

/// What a head over the caps gets: on a new connection, pipelined in one write
/// after an allowed request, and pipelined after a refused one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_heads_keep_their_size_limits() {
    let origin = MockOrigin::start("o").await;
    let r = Rampart::start(bin(), &config(origin.addr)).await;
    let allowed: &[u8] =
        b"GET /preface HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n";
    let heads = [
        format!(
            "GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nX-Forwarded-For: 203.0.113.60\r\n\r\n",
            "b".repeat(33 * 1024)
        ),
        format!(
            "GET /many HTTP/1.1\r\nHost: x\r\n{}X-Forwarded-For: 203.0.113.61\r\n\r\n",
            (0..101)
                .map(|i| format!("X-F{i}: v\r\n"))
                .collect::<String>()
        ),
    ];
    let mut seen = Vec::new();
    for head in &heads {
        for first in [None, Some(allowed), Some(PREFACE)] {
            let before = origin.requests().len();
            let mut s = TcpStream::connect(r.addr).await.unwrap();
            let bytes = [first.unwrap_or_default(), head.as_bytes()].concat();
            let _ = s.write_all(&bytes).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
            let _ = s.write_all(SENTINEL).await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(4), s.read_to_end(&mut out)).await;
            let mut answers = parse(&String::from_utf8_lossy(&out));
            if first.is_some() && !answers.is_empty() {
                answers.remove(0);
            }
            let paths: Vec<String> = origin
                .requests()
                .into_iter()
                .skip(before)
                .map(|q| q.path)
                .filter(|p| p != "/preface")
                .collect();
            seen.push(format!(
                "{} after {:?}: {answers:?} origin {paths:?}",
                &head[..9],
                first.map(|f| String::from_utf8_lossy(&f[..40]).into_owned())
            ));
        }
    }
    eprintln!("{}", seen.join("\n"));
    for line in &seen {
        assert!(
            line.contains("[(431, \"header_too_large\", true)] origin []"),
            "{}",
            seen.join("\n")
        );
    }
}
