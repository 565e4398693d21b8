//! A randomized differential test of Rampart's own reading and writing of an
//! origin's answer (`answer::read_answer`, taken by a plain `GET`) against
//! Pingora's (taken by a `POST` with a one-byte body), for the same origin
//! bytes. A raw TCP origin answers `/case/<n>` with bytes generated from a
//! grammar by a fixed-seed xorshift generator (status lines of both versions,
//! 1xx preludes, 204/304, odd reasons, fields of random names and cases, `Date`,
//! `Connection`, repeated `Set-Cookie`, `Content-Length` spellings valid and
//! not, chunked bodies, obs-fold, long values, bodies up to just over 64 KiB,
//! bytes past the body, a close after the answer, answers in small writes).
//! For each case the client compares the status line, the fields but `Date`
//! (sorted stably by lower-cased name), the body (de-chunked, with its
//! framing), whether the connection then carries another request, and that
//! the origin received each request once. The only
//! accepted difference: a body shorter than its `Content-Length` is a 502 on
//! Rampart's path where Pingora's sends the head and cuts.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::{read_request, ConfigBuilder, Rampart};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

/// One route to `origin` on Rampart's loop, the pool's `read_timeout` 1 s.
fn config(origin: SocketAddr) -> String {
    ConfigBuilder::new()
        .server("http1_loop = \"rampart\"")
        .pool_with("o", &[origin], "read_timeout = \"1s\"")
        .route("all", "/", "o")
        .build()
}

/// xorshift64*, fixed seed per case.
struct Rng(u64);

impl Rng {
    fn new(case: u64) -> Self {
        let mut rng = Self(0x9e37_79b9_7f4a_7c15 ^ case.wrapping_mul(0xd6e8_feb8_6659_fd93));
        for _ in 0..4 {
            rng.next();
        }
        rng
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() >> 11) as usize % n.max(1)
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
    fn cased(&mut self, name: &str) -> String {
        match self.below(4) {
            0 => name.to_ascii_lowercase(),
            1 => name.to_ascii_uppercase(),
            2 => name
                .chars()
                .map(|c| {
                    if self.chance(50) {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
                .collect(),
            _ => name.to_string(),
        }
    }
}

/// An origin answer from the grammar.
#[derive(Debug, Clone)]
struct Case {
    /// The answer's bytes, in the writes the origin makes.
    pieces: Vec<Vec<u8>>,
    /// The origin closes the connection after the answer.
    close: bool,
    /// Rampart's reading renders it itself (by the grammar's reckoning).
    eligible: bool,
    /// Its body is shorter than its `Content-Length`.
    short: bool,
}

impl Case {
    fn bytes(&self) -> Vec<u8> {
        self.pieces.concat()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Framing {
    Length,
    BadLength,
    TwoSame,
    TwoDiffer,
    Chunked,
    ChunkedAndLength,
    OtherCoding,
    ToClose,
}

fn body_len(rng: &mut Rng) -> usize {
    match rng.below(20) {
        0..=2 => 0,
        3..=9 => 1 + rng.below(64),
        10..=13 => 64 + rng.below(4000),
        14 => 4096 + rng.below(16000),
        15 => 65535,
        16 | 17 => 65536,
        18 => 65537,
        _ => 65538 + rng.below(5000),
    }
}

fn body_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    let seed = rng.next();
    (0..n)
        .map(|i| {
            let x = seed.wrapping_add(i as u64).wrapping_mul(0x9e37_79b9) >> 24;
            b"abcdefghijklmnopqrstuvwxyz0123456789\r\n \x00\xff"[x as usize % 41]
        })
        .collect()
}

fn token(rng: &mut Rng) -> String {
    const T: &[u8] =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~";
    let len = 1 + rng.below(16);
    let mut name: String = (0..len).map(|_| T[rng.below(T.len())] as char).collect();
    if rng.chance(60) {
        name = format!("X-{name}");
    }
    name
}

fn value(rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0 => Vec::new(),
        1 => b"a\tb  c".to_vec(),
        2 => b"caf\xe9 \xff".to_vec(),
        3 => vec![b'v'; 1000 + rng.below(8000)],
        4 => b"\"quoted, with comma\"".to_vec(),
        _ => {
            const V: &[u8] = b"abcdefgh ABC=;,/:0123456789";
            let len = 1 + rng.below(40);
            let mut v: Vec<u8> = (0..len).map(|_| V[rng.below(V.len())]).collect();
            v[0] = b'v';
            let last = v.len() - 1;
            v[last] = b'z';
            v
        }
    }
}

/// The origin's answer for case `n`.
fn generate(n: u64) -> Case {
    let mut rng = Rng::new(n);
    let mut head = Vec::new();
    let mut eligible = true;
    let http10 = rng.chance(12);
    let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    eligible &= !http10;
    // 1xx preludes.
    if rng.chance(12) {
        eligible = false;
        for _ in 0..1 + rng.below(2) {
            let line: &str = rng.pick(&[
                "HTTP/1.1 100 Continue\r\n\r\n",
                "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
                "HTTP/1.1 102 Processing\r\n\r\n",
                "HTTP/1.1 199 Odd\r\nX-Odd: 1\r\n\r\n",
            ]);
            head.extend_from_slice(line.as_bytes());
        }
    }
    let status: u16 = *rng.pick(&[
        &200u16, &200, &200, &200, &201, &202, &206, &299, &301, &302, &400, &404, &418, &451,
        &499, &500, &502, &503, &599, &204, &304,
    ]);
    eligible &= status != 204 && status != 304;
    let reason: &[u8] = rng.pick(&[
        &b" OK"[..],
        b" OK",
        b" ",
        b" Not Here",
        b" wEiRd  Reason",
        b" tab\there",
        b" caf\xe9",
        b"",
        b" x",
        b" OK  ",
    ]);
    head.extend_from_slice(format!("{version} {status}").as_bytes());
    head.extend_from_slice(reason);
    head.extend_from_slice(b"\r\n");
    let no_body = status == 204 || status == 304;
    let framing = if no_body {
        Framing::Length
    } else {
        match rng.below(100) {
            0..=64 => Framing::Length,
            65..=66 => Framing::BadLength,
            67..=69 => Framing::TwoSame,
            70..=71 => Framing::TwoDiffer,
            72..=86 => Framing::Chunked,
            87..=89 => Framing::ChunkedAndLength,
            90..=91 => Framing::OtherCoding,
            _ => Framing::ToClose,
        }
    };
    eligible &= framing == Framing::Length;
    let mut len = if no_body { 0 } else { body_len(&mut rng) };
    let short = framing == Framing::Length && !no_body && len > 0 && rng.chance(5);
    let mut close = rng.chance(15)
        || http10
        || short
        || !matches!(
            framing,
            Framing::Length | Framing::Chunked | Framing::TwoSame
        );
    let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
    let mut folded = false;
    // Framing fields.
    let cl = |rng: &mut Rng| rng.cased("Content-Length");
    match framing {
        Framing::Length if no_body => {
            if rng.chance(40) {
                let v = if status == 204 {
                    "0".to_string()
                } else {
                    rng.below(500).to_string()
                };
                fields.push((cl(&mut rng), v.into_bytes()));
            }
        }
        Framing::Length => {
            let mut v = len.to_string();
            match rng.below(20) {
                0 | 1 => v = format!("0{v}"),
                2 => v = format!("  {v} \t"),
                _ => {}
            }
            let v_digits = v.trim();
            eligible &= v_digits.len() <= 6 && len <= 65536;
            fields.push((cl(&mut rng), v.into_bytes()));
        }
        Framing::BadLength => {
            let v: &str = rng.pick(&[
                "+5",
                "5, 5",
                "5,5",
                "0x5",
                "",
                "-1",
                "1234567",
                "99999999999999999999",
                "5 5",
                "abc",
                "0005.0",
            ]);
            len = len.min(40);
            fields.push((cl(&mut rng), v.as_bytes().to_vec()));
        }
        Framing::TwoSame | Framing::TwoDiffer => {
            fields.push((cl(&mut rng), len.to_string().into_bytes()));
            let other = if framing == Framing::TwoSame {
                len
            } else {
                len + 1
            };
            fields.push((cl(&mut rng), other.to_string().into_bytes()));
        }
        Framing::Chunked | Framing::ChunkedAndLength => {
            let v: &str = rng.pick(&["chunked", "Chunked", "CHUNKED"]);
            fields.push((rng.cased("Transfer-Encoding"), v.as_bytes().to_vec()));
            if framing == Framing::ChunkedAndLength {
                fields.push((cl(&mut rng), len.to_string().into_bytes()));
            }
        }
        Framing::OtherCoding => {
            let v: &str = rng.pick(&["identity", "gzip", "x-odd"]);
            fields.push(("Transfer-Encoding".to_string(), v.as_bytes().to_vec()));
        }
        Framing::ToClose => {}
    }
    // Other fields, inserted at random places.
    let many = rng.chance(3);
    let count = if many {
        60 + rng.below(15)
    } else {
        rng.below(9)
    };
    for _ in 0..count {
        let field = match rng.below(14) {
            0 => {
                let v: &str = rng.pick(&["Thu, 01 Jan 1970 00:00:00 GMT", "junk", ""]);
                (rng.cased("Date"), v.as_bytes().to_vec())
            }
            1 => {
                let v: &str = rng.pick(&[
                    "close",
                    "keep-alive",
                    "Keep-Alive",
                    "upgrade",
                    "x-foo",
                    "close, x-foo",
                    "keep-alive, close",
                    "CLOSE",
                ]);
                if v.to_ascii_lowercase().contains("close") && rng.chance(70) {
                    close = true;
                }
                (rng.cased("Connection"), v.as_bytes().to_vec())
            }
            2 | 3 => {
                let v = format!("c{}={}", rng.below(5), rng.below(100));
                (rng.cased("Set-Cookie"), v.into_bytes())
            }
            4 => ("Keep-Alive".to_string(), b"timeout=5, max=100".to_vec()),
            5 => {
                let v: &str = rng.pick(&["text/plain", "application/json; charset=utf-8"]);
                (rng.cased("Content-Type"), v.as_bytes().to_vec())
            }
            6 => ("Server".to_string(), b"origin/1.0".to_vec()),
            7 if rng.chance(30) => {
                folded = true;
                ("X-Folded".to_string(), b"a\r\n  b".to_vec())
            }
            // Heads about Rampart's 16 KiB limit of a head it reads itself.
            8 if rng.chance(20) => ("X-Huge".to_string(), vec![b'h'; 15_800 + rng.below(900)]),
            9 => (rng.cased("Proxy-Connection"), b"keep-alive".to_vec()),
            10 if rng.chance(30) => ("Upgrade".to_string(), b"h2c".to_vec()),
            _ => (token(&mut rng), value(&mut rng)),
        };
        let at = rng.below(fields.len() + 1);
        fields.insert(at, field);
    }
    eligible &= !folded && fields.len() <= 64;
    for (name, value) in &fields {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b":");
        if !value.is_empty() || rng.chance(50) {
            head.extend_from_slice(b" ");
        }
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    if rng.chance(4) {
        // Bare LF line ends throughout the head.
        let mut lf = Vec::with_capacity(head.len());
        for (i, &b) in head.iter().enumerate() {
            if !(b == b'\r' && head.get(i + 1) == Some(&b'\n')) {
                lf.push(b);
            }
        }
        head = lf;
    }
    let final_head = head.len();
    // A longer head is Rampart's too when it comes in one read with its end;
    // else Pingora's.
    eligible &= final_head <= 16 * 1024;
    let body = body_bytes(&mut rng, len);
    let mut bytes = head;
    if matches!(framing, Framing::Chunked | Framing::ChunkedAndLength) {
        let mut rest = &body[..];
        while !rest.is_empty() {
            let n = (1 + rng.below(9000)).min(rest.len());
            let size = match rng.below(3) {
                0 => format!("{n:x}"),
                1 => format!("{n:X}"),
                _ => format!("00{n:x}"),
            };
            bytes.extend_from_slice(size.as_bytes());
            if rng.chance(10) {
                bytes.extend_from_slice(b";ext=1");
            }
            bytes.extend_from_slice(b"\r\n");
            bytes.extend_from_slice(&rest[..n]);
            bytes.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        bytes.extend_from_slice(b"0\r\n");
        if rng.chance(10) {
            bytes.extend_from_slice(b"X-Trailer: t\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
    } else if short {
        let cut = rng.below(len);
        bytes.extend_from_slice(&body[..cut]);
    } else {
        bytes.extend_from_slice(&body);
    }
    if !no_body && rng.chance(5) {
        let extra: &[u8] = rng.pick(&[
            &b"EXTRA"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno",
        ]);
        bytes.extend_from_slice(extra);
    }
    // Sometimes cut inside the head (after at least one byte), then closed.
    let mut short = short;
    if rng.chance(3) {
        bytes.truncate(1 + rng.below(final_head - 1));
        close = true;
        short = true;
        eligible = false;
    }
    let mut pieces = Vec::new();
    if rng.chance(25) {
        let mut rest = &bytes[..];
        let writes = if rng.chance(20) { 40 } else { 1 + rng.below(5) };
        for _ in 0..writes {
            if rest.len() < 2 {
                break;
            }
            let at = 1 + rng.below(rest.len() - 1);
            pieces.push(rest[..at].to_vec());
            rest = &rest[at..];
        }
        pieces.push(rest.to_vec());
    } else {
        pieces.push(bytes);
    }
    Case {
        pieces,
        close,
        eligible,
        short,
    }
}

const PROBE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nprobe";

/// The request lines an origin received (lower-cased), in order.
type Seen = Arc<Mutex<Vec<String>>>;

/// An origin answering `/case/<n>` with [`generate`]'s bytes, `/cut` with a
/// body shorter than its length then a close, and anything else with
/// [`PROBE`], keeping each connection unless the case closes it.
async fn origin() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            let log = log.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                loop {
                    let Some((head, _)) = read_request(&mut s, &mut pending).await else {
                        return;
                    };
                    let head = head.to_ascii_lowercase();
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    log.lock()
                        .unwrap()
                        .push(head.lines().next().unwrap_or("").to_string());
                    let case = match path.strip_prefix("/case/").and_then(|n| n.parse().ok()) {
                        Some(n) => generate(n),
                        None if path.starts_with("/stall") => {
                            // Part of an answer (or none), then nothing for 3 s.
                            let part: &[u8] = match path.as_str() {
                                "/stall-head" => b"HTTP/1.1 200 OK\r\nContent-Le",
                                "/stall-body" => {
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nsho"
                                }
                                _ => b"",
                            };
                            if s.write_all(part).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            return;
                        }
                        None if path == "/cut-head" => Case {
                            pieces: vec![b"HTTP/1.1 200 OK\r\nContent-Le".to_vec()],
                            close: true,
                            eligible: false,
                            short: true,
                        },
                        None if path == "/cut" => Case {
                            pieces: vec![
                                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".to_vec()
                            ],
                            close: true,
                            eligible: true,
                            short: true,
                        },
                        None => Case {
                            pieces: vec![PROBE.to_vec()],
                            close: false,
                            eligible: true,
                            short: false,
                        },
                    };
                    for piece in &case.pieces {
                        if s.write_all(piece).await.is_err() || s.flush().await.is_err() {
                            return;
                        }
                        tokio::task::yield_now().await;
                    }
                    if case.close {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// How many times the origin received `line` (lower-cased request line).
fn received(seen: &Seen, line: &str) -> usize {
    seen.lock().unwrap().iter().filter(|l| *l == line).count()
}

/// What the client got for one request.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// A whole answer: status line and sorted fields (1xx heads first), body,
    /// framing, and whether the client may send another request.
    Answer {
        head: String,
        body: Vec<u8>,
        framing: &'static str,
        kept: bool,
    },
    /// A head, then the connection ended before the body did.
    Cut { head: String },
    /// No answer: the connection ended (or nothing came in time).
    Failed(&'static str),
}

impl Outcome {
    fn status(&self) -> Option<u16> {
        match self {
            Outcome::Answer { head, .. } => head.get(9..12)?.parse().ok(),
            _ => None,
        }
    }
}

/// Status line then fields (of `Date` only the name), sorted stably by lower-cased name.
fn normalized(head: &[u8]) -> String {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let status = lines.next().unwrap_or("").to_string();
    // A date differs by the second: its name and count are compared.
    let mut fields: Vec<&str> = lines
        .map(|l| match l.split_once(':') {
            Some((name, _)) if name.eq_ignore_ascii_case("date") => name,
            _ => l,
        })
        .collect();
    fields.sort_by_key(|l| l.split(':').next().unwrap_or("").to_ascii_lowercase());
    std::iter::once(status.as_str())
        .chain(fields)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A client connection and the bytes read past the last answer.
struct Client {
    addr: SocketAddr,
    conn: Option<(TcpStream, Vec<u8>)>,
}

impl Client {
    /// More bytes into `pending`; false at the end (or after 3 s).
    async fn fill(s: &mut TcpStream, pending: &mut Vec<u8>) -> bool {
        let mut buf = vec![0u8; 65536];
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                pending.extend_from_slice(&buf[..n]);
                true
            }
            _ => false,
        }
    }

    /// Sends `request` on the kept connection (a new one if there is none)
    /// and reads one answer.
    async fn exchange(&mut self, request: &[u8]) -> Outcome {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            self.conn = Some((s, Vec::new()));
        }
        let (mut s, mut pending) = self.conn.take().unwrap();
        if s.write_all(request).await.is_err() {
            return Outcome::Failed("write");
        }
        let mut informational = String::new();
        loop {
            let at = loop {
                if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                if !Self::fill(&mut s, &mut pending).await {
                    return Outcome::Failed(if pending.is_empty() {
                        "closed before an answer"
                    } else {
                        "closed in a head"
                    });
                }
            };
            let head = normalized(&pending[..at]);
            let lower = String::from_utf8_lossy(&pending[..at]).to_ascii_lowercase();
            pending.drain(..at);
            let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            if (100..200).contains(&status) {
                informational += &head;
                informational += "\n--\n";
                continue;
            }
            let head = informational + &head;
            let field = |name: &str| {
                lower
                    .split("\r\n")
                    .filter_map(|l| l.split_once(':'))
                    .filter(|(n, _)| *n == name)
                    .map(|(_, v)| v.trim().to_string())
                    .collect::<Vec<_>>()
            };
            let close = field("connection").iter().any(|v| v.contains("close"));
            let chunked = field("transfer-encoding")
                .iter()
                .any(|v| v.contains("chunked"));
            // A list of one repeated length ("5, 5") is that length, as
            // Pingora passes it on.
            let length = field("content-length").first().and_then(|v| {
                let mut values = v.split(',').map(|v| v.trim().parse::<usize>().ok());
                let first = values.next()??;
                values.all(|v| v == Some(first)).then_some(first)
            });
            let (body, framing, kept) = if status == 204 || status == 304 {
                (Vec::new(), "none", !close)
            } else if chunked {
                let mut body = Vec::new();
                loop {
                    let Some(line) = pending.windows(2).position(|w| w == b"\r\n") else {
                        if !Self::fill(&mut s, &mut pending).await {
                            return Outcome::Cut { head };
                        }
                        continue;
                    };
                    let size_text = String::from_utf8_lossy(&pending[..line]).into_owned();
                    let size_text = size_text.split(';').next().unwrap_or("").trim().to_string();
                    let Ok(size) = usize::from_str_radix(&size_text, 16) else {
                        return Outcome::Cut { head };
                    };
                    if size == 0 {
                        // Trailers, then the empty line.
                        while !pending[line..].windows(4).any(|w| w == b"\r\n\r\n") {
                            if !Self::fill(&mut s, &mut pending).await {
                                return Outcome::Cut { head };
                            }
                        }
                        let end = line
                            + pending[line..]
                                .windows(4)
                                .position(|w| w == b"\r\n\r\n")
                                .unwrap()
                            + 4;
                        pending.drain(..end);
                        break;
                    }
                    while pending.len() < line + 2 + size + 2 {
                        if !Self::fill(&mut s, &mut pending).await {
                            return Outcome::Cut { head };
                        }
                    }
                    body.extend_from_slice(&pending[line + 2..line + 2 + size]);
                    pending.drain(..line + 2 + size + 2);
                }
                (body, "chunked", !close)
            } else if let Some(length) = length {
                while pending.len() < length {
                    if !Self::fill(&mut s, &mut pending).await {
                        return Outcome::Cut { head };
                    }
                }
                (pending.drain(..length).collect(), "length", !close)
            } else {
                while Self::fill(&mut s, &mut pending).await {}
                (std::mem::take(&mut pending), "to close", false)
            };
            if kept {
                self.conn = Some((s, pending));
            }
            return Outcome::Answer {
                head,
                body,
                framing,
                kept,
            };
        }
    }

    /// The outcome of `request`, and whether the connection then carried a
    /// probe request (false when the answer did not keep it), pipelined
    /// behind `request` or sent after its answer.
    async fn exchange_and_probe(&mut self, request: &[u8], pipelined: bool) -> (Outcome, bool) {
        const PROBE_REQUEST: &[u8] = b"GET /probe HTTP/1.1\r\nHost: x\r\n\r\n";
        let outcome = if pipelined {
            // The probe goes in the same write, before the answer came.
            self.exchange(&[request, PROBE_REQUEST].concat()).await
        } else {
            self.exchange(request).await
        };
        let kept = matches!(outcome, Outcome::Answer { kept: true, .. });
        if !kept {
            self.conn = None;
            return (outcome, false);
        }
        let probe = self
            .exchange(if pipelined { b"" } else { PROBE_REQUEST })
            .await;
        let usable = matches!(&probe, Outcome::Answer { body, head, .. }
            if body == b"probe" && head.starts_with("HTTP/1.1 200 OK"));
        if !usable {
            self.conn = None;
        }
        (outcome, usable)
    }
}

fn show(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Answer {
            head,
            body,
            framing,
            kept,
        } => format!(
            "{:?} body {} bytes {:?}.. framing {framing} kept {kept}",
            head.chars().take(600).collect::<String>(),
            body.len(),
            String::from_utf8_lossy(&body[..body.len().min(40)])
        ),
        other => format!("{other:?}"),
    }
}

/// Every generated origin answer comes to the client the same whether Rampart
/// read it (plain `GET`) or Pingora did (`POST` with a body), but for the
/// accepted difference of a body shorter than its length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rampart_and_pingora_give_the_same_answers_for_random_origin_bytes() {
    // ANSWER_DIFF_CASES=<n> runs more cases (the default is bounded in time).
    let cases: u64 = std::env::var("ANSWER_DIFF_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let started = Instant::now();
    let (origin, seen) = origin().await;
    let r = Rampart::start(bin(), &config(origin)).await;
    let mut get_client = Client {
        addr: r.addr,
        conn: None,
    };
    let mut post_client = Client {
        addr: r.addr,
        conn: None,
    };
    let (mut eligible, mut agreed, mut short_accepted) = (0, 0, 0);
    let mut findings = Vec::new();
    for n in 0..cases {
        let case = generate(n);
        eligible += usize::from(case.eligible);
        let get = format!("GET /case/{n} HTTP/1.1\r\nHost: x\r\n\r\n");
        let post = format!("POST /case/{n} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx");
        let pipelined = n % 3 == 1;
        let (rendered, rendered_usable) = get_client
            .exchange_and_probe(get.as_bytes(), pipelined)
            .await;
        let (written, written_usable) = post_client
            .exchange_and_probe(post.as_bytes(), pipelined)
            .await;
        // A request is sent again only on a new connection when a kept one
        // had been closed before it got there: the origin sees each once.
        let sent = [
            received(&seen, &format!("get /case/{n} http/1.1")),
            received(&seen, &format!("post /case/{n} http/1.1")),
        ];
        if sent != [1, 1] {
            findings.push(format!(
                "case {n}: the origin received GET, POST {sent:?} times: {:?}",
                String::from_utf8_lossy(&case.bytes())
                    .chars()
                    .take(300)
                    .collect::<String>(),
            ));
        }
        if rendered == written && rendered_usable == written_usable {
            agreed += 1;
            continue;
        }
        // (The grammar's `eligible` is not asked: a head over 16 KiB that came
        // in one read is rendered too.)
        if case.short && rendered.status() == Some(502) && matches!(written, Outcome::Cut { .. }) {
            short_accepted += 1;
            continue;
        }
        findings.push(format!(
            "case {n} (eligible {}, close {}): origin {:?}\n  plain:   {} usable {rendered_usable}\n  pingora: {} usable {written_usable}",
            case.eligible,
            case.close,
            String::from_utf8_lossy(&case.bytes()).chars().take(700).collect::<String>(),
            show(&rendered),
            show(&written),
        ));
    }
    let cases = usize::try_from(cases).unwrap();
    println!(
        "{cases} cases, {eligible} plain-eligible, {agreed} agreed, {short_accepted} accepted (short body), {} findings, {:?}",
        findings.len(),
        started.elapsed()
    );
    for finding in &findings {
        println!("{finding}");
    }
    assert!(findings.is_empty(), "{} findings", findings.len());
    assert!(eligible * 10 >= cases * 3, "{eligible} plain-eligible");
    assert!(
        (cases - eligible) * 10 >= cases * 3,
        "{eligible} plain-eligible"
    );
}

/// Finding: a plain request whose answer, on a kept origin connection, ends
/// before its `Content-Length` (the head and part of the body came) was sent
/// to the origin a second time on a new connection, as if the kept connection
/// had been closed before answering; Pingora's path (a request with a body)
/// sends it once. A bodiless `POST` or `DELETE` is plain too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_after_its_head_is_not_a_reason_to_send_the_request_again() {
    let (origin, seen) = origin().await;
    let r = Rampart::start(bin(), &config(origin)).await;
    for (method, request) in [
        ("get", "GET /cut HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("delete", "DELETE /cut HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            "post",
            "POST /cut HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
        ),
    ] {
        let mut client = Client {
            addr: r.addr,
            conn: None,
        };
        // A kept origin connection first.
        let warm = client
            .exchange(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        assert_eq!(warm.status(), Some(200), "{warm:?}");
        let cut = client.exchange(request.as_bytes()).await;
        assert!(
            cut.status() == Some(502) || matches!(cut, Outcome::Cut { .. }),
            "{cut:?}"
        );
        assert_eq!(
            received(&seen, &format!("{method} /cut http/1.1")),
            1,
            "{method}: {:?}",
            seen.lock().unwrap()
        );
    }
}

/// An origin that stalls (no answer, part of a head, a head and part of its
/// body) past the pool's 1 s `read_timeout`: the same answer on both paths,
/// but for a head already come, which Pingora's path sends before it cuts
/// where Rampart's answers 504 (the accepted difference, by a timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_origins_get_the_same_answers_on_both_paths() {
    let (origin, _) = origin().await;
    let r = Rampart::start(bin(), &config(origin)).await;
    let mut runs = Vec::new();
    for path in ["/stall", "/stall-head", "/stall-body"] {
        for body in [false, true] {
            let addr = r.addr;
            runs.push(tokio::spawn(async move {
                let mut client = Client { addr, conn: None };
                let request = match body {
                    false => format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"),
                    true => {
                        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
                    }
                };
                let started = Instant::now();
                let outcome = client.exchange(request.as_bytes()).await;
                (path, body, outcome, started.elapsed())
            }));
        }
    }
    let mut outcomes = Vec::new();
    for run in runs {
        outcomes.push(run.await.unwrap());
    }
    for pair in outcomes.chunks(2) {
        let ((path, _, plain, t1), (_, _, pingora, t2)) = (&pair[0], &pair[1]);
        println!(
            "{path}: plain {} in {t1:?}\n  pingora {} in {t2:?}",
            show(plain),
            show(pingora)
        );
        if *path == "/stall-body" {
            // The accepted difference, timed out: Rampart's path had not
            // written the head, and answers 504 (the read timed out).
            assert_eq!(plain.status(), Some(504), "{plain:?}");
            assert!(matches!(pingora, Outcome::Cut { .. }), "{pingora:?}");
        } else {
            assert_eq!(plain, pingora, "{path}");
        }
    }
}

/// Sends `request` on a client connection after a warm-up request (so that the
/// origin connection it goes on is a kept one), then tells how many times the
/// origin received `line`.
async fn sent_after_a_kept_connection(
    r: &Rampart,
    seen: &Seen,
    request: &str,
    line: &str,
) -> usize {
    let mut client = Client {
        addr: r.addr,
        conn: None,
    };
    let warm = client
        .exchange(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(warm.status(), Some(200), "{warm:?}");
    let cut = client.exchange(request.as_bytes()).await;
    assert_eq!(cut.status(), Some(502), "{cut:?}");
    received(seen, line)
}

/// Finding (fixed for Rampart's path): an answer cut inside its head on a kept
/// origin connection was read again by Pingora (`Replay`), whose error there
/// sent a plain request to the origin a second time, although the origin had
/// begun to answer it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_in_its_head_is_not_a_reason_to_send_the_request_again() {
    let (origin, seen) = origin().await;
    let r = Rampart::start(bin(), &config(origin)).await;
    for (request, line) in [
        (
            "GET /cut-head HTTP/1.1\r\nHost: x\r\n\r\n",
            "get /cut-head http/1.1",
        ),
        (
            "DELETE /cut-head HTTP/1.1\r\nHost: x\r\n\r\n",
            "delete /cut-head http/1.1",
        ),
        (
            "POST /cut-head HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
            "post /cut-head http/1.1",
        ),
    ] {
        let sent = sent_after_a_kept_connection(&r, &seen, request, line).await;
        assert_eq!(sent, 1, "{line}: {:?}", seen.lock().unwrap());
    }
}

/// The same for a bodiless request whose answer Pingora reads from its first
/// byte (the client asked to close, so Rampart does not read it): still sent
/// again, as `lean` did before `answer` (Pingora's reading does not tell
/// whether any byte of the answer came before its error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "finding: a bodiless request whose answer is cut inside its head on a kept origin connection is sent to the origin again when Pingora reads the answer"]
async fn an_answer_cut_in_its_head_is_not_a_reason_to_send_a_closing_request_again() {
    let (origin, seen) = origin().await;
    let r = Rampart::start(bin(), &config(origin)).await;
    let sent = sent_after_a_kept_connection(
        &r,
        &seen,
        "GET /cut-head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "get /cut-head http/1.1",
    )
    .await;
    assert_eq!(sent, 1, "{:?}", seen.lock().unwrap());
}
