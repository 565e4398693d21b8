//! PROXY protocol behind a real L4 load balancer that is not ours (HAProxy from
//! Debian, `send-proxy` and `send-proxy-v2`, plaintext and TLS, IPv4 and IPv6
//! clients), plus raw-socket tests for headers that are missing, malformed,
//! truncated, slow, LOCAL/UNKNOWN, of the wrong version, or sent by a source
//! that is not a listed balancer.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::{wait_until, ConfigBuilder, HeldPort, MockOrigin, Rampart};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

/// Rampart with a PROXY listener for the balancer at 127.0.0.1 (`{listen}`,
/// any version), a v2-only one (`{listen2}`) and optionally a TLS one.
fn config(origin: &MockOrigin) -> ConfigBuilder {
    ConfigBuilder::new()
        .server("client_header_timeout = \"1s\"\nmax_connections_per_source = 2")
        .first_listener(
            r#"proxy_protocol = "any"
proxy_protocol_from = ["127.0.0.1/32", "::1/128"]"#,
        )
        .listener(
            "{listen2}",
            r#"proxy_protocol = "v2"
proxy_protocol_from = ["127.0.0.1/32"]"#,
        )
        .pool("web", &[origin.addr])
        .catch_all_route("web", "web")
        .raw(
            r#"
[[access]]
name = "blocked-client"
action = "deny"
cidrs = ["127.0.0.9/32"]
"#,
        )
}

/// HAProxy in TCP mode, one frontend per (bind, backend server, proxy option).
struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn haproxy(frontends: &[(SocketAddr, SocketAddr, &str)]) -> Haproxy {
    assert!(
        Command::new("haproxy").arg("-v").output().is_ok(),
        "haproxy is not installed (scripts/test installs Debian's haproxy)"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = String::from(
        "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n",
    );
    for (i, (bind, server, option)) in frontends.iter().enumerate() {
        cfg.push_str(&format!(
            "frontend f{i}\n  bind {bind}\n  default_backend b{i}\nbackend b{i}\n  source 127.0.0.1\n  server s {server} {option}\n"
        ));
    }
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Haproxy { child, _dir: dir }
}

/// GET / through `to`, from local address `from`; (status, X-Forwarded-For seen
/// by the origin is read separately).
async fn get_from(from: &str, to: SocketAddr) -> Option<u16> {
    let socket = if from.contains(':') {
        TcpSocket::new_v6().ok()?
    } else {
        TcpSocket::new_v4().ok()?
    };
    let ip: std::net::IpAddr = from.parse().ok()?;
    socket.bind(SocketAddr::new(ip, 0)).ok()?;
    let mut s = socket.connect(to).await.ok()?;
    s.write_all(b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    if std::env::var_os("PP_DEBUG").is_some() {
        eprintln!("{from} -> {to}: {text:?}");
    }
    text.split(' ').nth(1)?.parse().ok()
}

fn last_client(origin: &MockOrigin) -> String {
    origin
        .requests()
        .last()
        .map(|r| r.headers["x-forwarded-for"].to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn wait_for_port(addr: SocketAddr) {
    let up = wait_until(Duration::from_secs(10), || async {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    assert!(up, "haproxy did not listen on {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_every_rule_sees_the_real_client() {
    let origin = MockOrigin::start("o").await;
    let r = Rampart::start(bin(), &config(&origin).build()).await;
    // HAProxy binds with SO_REUSEPORT (its default), so its ports can be held
    // until it listens.
    let held = [
        HeldPort::new("127.0.0.1"),
        HeldPort::new("127.0.0.1"),
        HeldPort::new("127.0.0.1"),
        HeldPort::new("::1"),
    ];
    let [v1, v2, v2_only, v6] = held.each_ref().map(HeldPort::addr);
    let _lb = haproxy(&[
        (v1, r.addr, "send-proxy"),
        (v2, r.addr, "send-proxy-v2"),
        (v2_only, r.addr2.unwrap(), "send-proxy-v2"),
        (v6, r.addr, "send-proxy-v2"),
    ]);
    for a in [v1, v2, v2_only, v6] {
        wait_for_port(a).await;
    }
    // The origin is told the client HAProxy saw, not HAProxy's address.
    assert_eq!(get_from("127.0.0.5", v1).await, Some(200), "{}", r.log());
    assert_eq!(last_client(&origin), "127.0.0.5");
    assert_eq!(get_from("127.0.0.6", v2).await, Some(200));
    assert_eq!(last_client(&origin), "127.0.0.6");
    assert_eq!(get_from("127.0.0.7", v2_only).await, Some(200));
    assert_eq!(last_client(&origin), "127.0.0.7");
    assert_eq!(get_from("::1", v6).await, Some(200));
    assert_eq!(last_client(&origin), "::1");
    // Access rules key on it: 127.0.0.9 is denied, through either version.
    assert_eq!(get_from("127.0.0.9", v1).await, Some(403));
    assert_eq!(get_from("127.0.0.9", v2).await, Some(403));
    // So does the per-source connection cap (2): HAProxy's own address is not
    // what is counted.
    let mut held = Vec::new();
    for _ in 0..2 {
        let s = TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.20:0".parse().unwrap()).unwrap();
        let mut c = s.connect(v2).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = c.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(c);
    }
    assert_eq!(
        get_from("127.0.0.20", v2).await,
        None,
        "third connection refused"
    );
    assert_eq!(
        get_from("127.0.0.21", v2).await,
        Some(200),
        "another client is not"
    );
    // A v1 header on the v2-only listener is refused.
    let lb_v1_to_v2only_port = HeldPort::new("127.0.0.1");
    let lb_v1_to_v2only = lb_v1_to_v2only_port.addr();
    let _lb2 = haproxy(&[(lb_v1_to_v2only, r.addr2.unwrap(), "send-proxy")]);
    wait_for_port(lb_v1_to_v2only).await;
    assert_eq!(get_from("127.0.0.5", lb_v1_to_v2only).await, None);
    let invalid = r
        .metric(r#"rampart_client_connections_closed_total{reason="proxy_protocol_invalid"}"#)
        .await;
    assert!(invalid.is_some_and(|n| n >= 1.0), "{}", r.metrics().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_behind_haproxy_reads_the_header_before_the_handshake() {
    let origin = MockOrigin::start("o").await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}\nproxy_protocol = \"v2\"\nproxy_protocol_from = [\"127.0.0.1/32\"]",
        cert_path.display(),
        key_path.display()
    );
    let r = Rampart::start(bin(), &config(&origin).listener("{listen3}", &tls).build()).await;
    let front_port = HeldPort::new("127.0.0.1");
    let front = front_port.addr();
    let _lb = haproxy(&[(front, r.addr3.unwrap(), "send-proxy-v2")]);
    wait_for_port(front).await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", front)
        .local_address("127.0.0.8".parse().ok())
        .build()
        .unwrap();
    let resp = client
        .get(format!("https://localhost:{}/tls", front.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(last_client(&origin), "127.0.0.8");
    drop(r);
}

/// Sends `bytes` to `to` from `from` and reads until the server closes.
async fn raw(from: &str, to: SocketAddr, bytes: &[u8]) -> (String, Duration) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(to).await.unwrap();
    let started = Instant::now();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

fn v2_header(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x20 | command);
    out.push(family);
    out.extend_from_slice(&u16::try_from(addresses.len()).unwrap().to_be_bytes());
    out.extend_from_slice(addresses);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_are_missing_malformed_slow_or_unexpected_close_the_connection() {
    let origin = MockOrigin::start("o").await;
    let r = Rampart::start(bin(), &config(&origin).build()).await;
    let get = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let with = |header: &[u8]| [header, &get[..]].concat();

    // From the listed balancer: a header is required and must be valid.
    for (bytes, what) in [
        (get.to_vec(), "no header"),
        (with(b"PROXY TCP4 1.2.3 10.0.0.1 5 6\r\n"), "bad address"),
        (with(b"PROXY TCP4 192.0.2.1 10.0.0.1 5\r\n"), "missing port"),
        (
            with(b"PROXY SCTP 192.0.2.1 10.0.0.1 5 6\r\n"),
            "bad protocol",
        ),
        (
            with(b"PROXY TCP4 0.0.0.0 10.0.0.1 5 6\r\n"),
            "unspecified client",
        ),
        (
            with(b"PROXY TCP4 255.255.255.255 10.0.0.1 5 6\r\n"),
            "broadcast client",
        ),
        (
            with(&v2_header(
                1,
                0x12,
                &[192, 0, 2, 1, 10, 0, 0, 1, 0, 5, 0, 6],
            )),
            "v2 over UDP",
        ),
    ] {
        let (text, _) = raw("127.0.0.1", r.addr, &bytes).await;
        assert!(text.is_empty(), "{what}: {text}");
    }
    // Truncated, then silent: closed at the header deadline (1 s).
    let (text, took) = raw("127.0.0.1", r.addr, b"PROXY TCP4 192.0.2.1").await;
    assert!(text.is_empty());
    assert!(took < Duration::from_secs(5), "held for {took:?}");
    // LOCAL (v2) and UNKNOWN (v1): the socket address is the client.
    let (text, _) = raw("127.0.0.1", r.addr, &with(&v2_header(0, 0, &[]))).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(last_client(&origin), "127.0.0.1");
    let (text, _) = raw("127.0.0.1", r.addr, &with(b"PROXY UNKNOWN\r\n")).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // A valid v1 header from the balancer: its client is used.
    let (text, _) = raw(
        "127.0.0.1",
        r.addr,
        &with(b"PROXY TCP4 198.51.100.23 10.0.0.1 40000 443\r\n"),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(last_client(&origin), "198.51.100.23");

    // From anyone else: a header is refused, no header is served as usual.
    let (text, _) = raw(
        "127.0.0.2",
        r.addr,
        &with(b"PROXY TCP4 203.0.113.1 10.0.0.1 40000 443\r\n"),
    )
    .await;
    assert!(text.is_empty(), "injected header accepted: {text}");
    let (text, _) = raw(
        "127.0.0.2",
        r.addr,
        &with(&v2_header(
            1,
            0x11,
            &[203, 0, 113, 1, 10, 0, 0, 1, 0, 5, 0, 6],
        )),
    )
    .await;
    assert!(text.is_empty(), "injected v2 header accepted: {text}");
    let (text, _) = raw("127.0.0.2", r.addr, get).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(last_client(&origin), "127.0.0.2");

    let m = r.metrics().await;
    for (reason, at_least) in [
        ("proxy_protocol_missing", 2.0),
        ("proxy_protocol_invalid", 6.0),
        ("proxy_protocol_untrusted", 2.0),
    ] {
        let n = r
            .metric(&format!(
                "rampart_client_connections_closed_total{{reason=\"{reason}\"}}"
            ))
            .await
            .unwrap_or(0.0);
        assert!(n >= at_least, "{reason}: {n}\n{m}");
    }
}
