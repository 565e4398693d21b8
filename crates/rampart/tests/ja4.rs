//! JA4 over real TLS sockets: two TLS clients with different configurations
//! (TLS 1.3 with h2, TLS 1.2 with two cipher suites and http/1.1) reach a real
//! Rampart through a relay that keeps the bytes each client sent. Rampart's
//! fingerprint of each connection is the JA4 of those bytes; a limit keyed by
//! JA4 refuses one client and not the other; its penalty box bans the
//! fingerprint; explain, the access log and top offenders show it; a deny rule
//! on a fingerprint refuses that client; plaintext requests are keyed by
//! address; bytes that are not TLS and a silent client are counted.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_policy::ja4::{HelloError, Ja4};
use rampart_testkit::{wait_until, ConfigBuilder, MockOrigin, Rampart};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

/// A loopback relay to `target` that keeps the first bytes each client sends
/// (up to its whole ClientHello).
struct Capture {
    addr: SocketAddr,
    hellos: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Capture {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hellos = Arc::new(Mutex::new(Vec::new()));
        let kept = hellos.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut first = Vec::new();
                    let mut buf = [0u8; 4096];
                    while matches!(Ja4::from_stream(&first), Err(HelloError::Incomplete)) {
                        match client.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => first.extend_from_slice(&buf[..n]),
                        }
                    }
                    if server.write_all(&first).await.is_err() {
                        return;
                    }
                    kept.lock().unwrap().push(first);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Self { addr, hellos }
    }

    /// The JA4 of every hello relayed so far, computed here from the bytes.
    fn fingerprints(&self) -> Vec<String> {
        self.hellos
            .lock()
            .unwrap()
            .iter()
            .map(|h| Ja4::from_stream(h).unwrap().to_string())
            .collect()
    }
}

/// A reqwest client on its own rustls configuration: no session resumption
/// (a resumed TLS 1.3 hello carries one more extension, so another JA4), the
/// test certificate as the only root, `localhost` sent to `via`.
fn client(
    cert: &rustls::pki_types::CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: Option<Vec<rustls::SupportedCipherSuite>>,
    alpn: &[&[u8]],
    via: SocketAddr,
) -> reqwest::Client {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(suites) = suites {
        provider.cipher_suites = suites;
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .resolve("localhost", via)
        .build()
        .unwrap()
}

async fn status_of(client: &reqwest::Client, url: &str) -> u16 {
    client.get(url).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tls_clients_get_their_own_fingerprint_bucket_and_rules() {
    let origin = MockOrigin::start("o").await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = cert.cert.pem();
    let key_pem = cert.key_pair.serialize_pem();
    let limit = "[[limits]]\nname = \"per-tls-client\"\nkey = \"ja4\"\nrate = \"1/h\"\nburst = 3\nban = { after = 2, within = \"1h\", for = \"1h\" }";
    let base = ConfigBuilder::new()
        .server("client_header_timeout = \"1s\"")
        .listener(
            "{listen2}",
            "tls = { cert = \"{dir}/cert.pem\", key = \"{dir}/key.pem\" }",
        )
        .pool("web", &[origin.addr])
        .catch_all_route("all", "web")
        .raw("[access_log]\nenabled = true\npath = \"{dir}/access.log\"\nrejected_lines_per_second = 1000");
    let (c, k) = (cert_pem.clone(), key_pem.clone());
    let rampart = Rampart::start_with(bin(), &base.clone().raw(limit).build(), move |dir| {
        std::fs::write(dir.join("cert.pem"), &c).unwrap();
        std::fs::write(dir.join("key.pem"), &k).unwrap();
    })
    .await;
    let tls_addr = rampart.addr2.unwrap();
    let capture = Capture::start(tls_addr).await;
    let url = format!("https://localhost:{}/x", capture.addr.port());

    // Client A: TLS 1.3 and 1.2, rustls' default suites, h2 then http/1.1.
    let der = cert.cert.der().clone();
    let a = client(
        &der,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        None,
        &[b"h2", b"http/1.1"],
        capture.addr,
    );
    // Client B: TLS 1.2 only, two ECDSA suites, http/1.1.
    let b = client(
        &der,
        &[&rustls::version::TLS12],
        Some(vec![
            rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ]),
        &[b"http/1.1"],
        capture.addr,
    );

    // A spends its fingerprint's bucket (burst 3) and is refused twice: banned.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(status_of(&a, &url).await);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429], "{}", rampart.log());
    // B's fingerprint has its own bucket.
    assert_eq!(status_of(&b, &url).await, 200);
    assert_eq!(status_of(&b, &url).await, 200);

    // What Rampart fingerprinted is the JA4 of the bytes each client sent.
    let mut seen = capture.fingerprints();
    // A client that opened another connection sent the same hello again.
    seen.dedup();
    assert_eq!(seen.len(), 2, "one fingerprint per client: {seen:?}");
    let (ja4_a, ja4_b) = (seen[0].clone(), seen[1].clone());
    assert_ne!(ja4_a, ja4_b);
    assert!(
        ja4_a.starts_with("t13d") && ja4_a[8..10] == *"h2",
        "{ja4_a}"
    );
    // Two suites and the renegotiation SCSV rustls adds (JA4 counts SCSVs).
    assert!(
        ja4_b.starts_with("t12d03") && ja4_b[8..10] == *"h1",
        "{ja4_b}"
    );
    let log_path = rampart.dir().join("access.log");
    let logged = wait_until(Duration::from_secs(10), || async {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        log.contains(&format!("\"ja4\":\"{ja4_a}\""))
            && log.contains(&format!("\"ja4\":\"{ja4_b}\""))
    })
    .await;
    assert!(
        logged,
        "access log lacks the fingerprints {ja4_a} / {ja4_b}:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );

    // The penalty box holds A's fingerprint.
    let bans = rampart.admin_json("/bans").await;
    let banned: Vec<&str> = bans["bans"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["key"].as_str())
        .collect();
    assert_eq!(banned, [ja4_a.as_str()], "{bans}");

    // Explain: A's fingerprint is refused (banned), B's passes, and the
    // explain answer names the fingerprint it was given.
    let explain_a = rampart
        .admin_json(&format!("/debug/explain?ip=127.0.0.1&path=/x&ja4={ja4_a}"))
        .await;
    assert_eq!(explain_a["ja4"], ja4_a.as_str(), "{explain_a}");
    assert_eq!(explain_a["verdict"], "banned", "{explain_a}");
    let explain_b = rampart
        .admin_json(&format!("/debug/explain?ip=127.0.0.1&path=/x&ja4={ja4_b}"))
        .await;
    assert_eq!(explain_b["verdict"], "proxied", "{explain_b}");
    let rule = explain_b["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "per-tls-client")
        .cloned()
        .unwrap();
    assert_eq!(rule["key"], ja4_b.as_str(), "{explain_b}");
    assert_eq!(rule["outcome"], "passed", "{explain_b}");
    // Without a fingerprint (a plaintext request) the rule keys by address.
    let explain_plain = rampart
        .admin_json("/debug/explain?ip=127.0.0.1&path=/x")
        .await;
    assert_eq!(explain_plain["ja4"], serde_json::Value::Null);
    let rule = explain_plain["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "per-tls-client")
        .cloned()
        .unwrap();
    assert_eq!(rule["key"], "127.0.0.1", "{explain_plain}");
    let bad = rampart
        .admin_request(
            reqwest::Method::GET,
            "/debug/explain?ip=127.0.0.1&path=/x&ja4=t13d1516h2_nothex",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // Plaintext requests have no JA4: their own bucket, by address.
    let plain = reqwest::Client::new();
    let plain_statuses = [
        status_of(&plain, &rampart.url("/x")).await,
        status_of(&plain, &rampart.url("/x")).await,
        status_of(&plain, &rampart.url("/x")).await,
        status_of(&plain, &rampart.url("/x")).await,
    ];
    assert_eq!(plain_statuses, [200, 200, 200, 429]);

    // Top offenders count A's refusals under its fingerprint.
    let top = rampart.admin_json("/debug/top").await;
    let by_ja4 = top["ja4"].as_array().unwrap();
    assert!(
        by_ja4
            .iter()
            .any(|r| r["key"] == ja4_a.as_str() && r["rejected"].as_u64() >= Some(2)),
        "{top}"
    );
    assert!(!by_ja4.iter().any(|r| r["key"] == ja4_b.as_str()), "{top}");

    // A deny rule on B's fingerprint, by reload: B is refused, A's fate is
    // unchanged (its bucket and ban are kept across the reload).
    let deny = format!("[[access]]\nname = \"deny-b\"\naction = \"deny\"\nja4 = [\"{ja4_b}\"]");
    let text = std::fs::read_to_string(rampart.config_path()).unwrap();
    let text = text.replace("[[limits]]", &format!("{deny}\n[[limits]]"));
    std::fs::write(rampart.config_path(), text).unwrap();
    let reload = rampart
        .admin_request(reqwest::Method::POST, "/reload")
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200, "{}", reload.text().await.unwrap());
    let refused = b.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["rule"], "deny-b", "{problem}");
    assert_eq!(status_of(&a, &url).await, 429);
    let metric = rampart
        .metric(
            "rampart_policy_rejections_total{reason=\"denied_ja4\",route=\"all\",rule=\"deny-b\"}",
        )
        .await;
    assert_eq!(metric, Some(1.0));
    assert!(
        rampart
            .metric("rampart_tls_client_hellos_total{result=\"fingerprinted\"}")
            .await
            >= Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_a_hello_and_silent_clients_are_counted() {
    let origin = MockOrigin::start("o").await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (c, k) = (cert.cert.pem(), cert.key_pair.serialize_pem());
    let config = ConfigBuilder::new()
        .server("client_header_timeout = \"1s\"")
        .listener(
            "{listen2}",
            "tls = { cert = \"{dir}/cert.pem\", key = \"{dir}/key.pem\" }",
        )
        .pool("web", &[origin.addr])
        .catch_all_route("all", "web")
        .build();
    let rampart = Rampart::start_with(bin(), &config, move |dir| {
        std::fs::write(dir.join("cert.pem"), &c).unwrap();
        std::fs::write(dir.join("key.pem"), &k).unwrap();
    })
    .await;
    let tls_addr = rampart.addr2.unwrap();

    // Plain HTTP on the TLS port: no fingerprint, and the TLS library refuses it.
    let mut s = TcpStream::connect(tls_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(!rest.starts_with(b"HTTP/1.1 200"), "{rest:?}");
    // A client that sends nothing is closed once client_header_timeout passes.
    let mut silent = TcpStream::connect(tls_addr).await.unwrap();
    let counted = wait_until(Duration::from_secs(15), || async {
        rampart
            .metric("rampart_client_connections_closed_total{reason=\"tls_hello_timeout\"}")
            .await
            == Some(1.0)
            && rampart
                .metric("rampart_tls_client_hellos_total{result=\"not_tls\"}")
                .await
                == Some(1.0)
    })
    .await;
    assert!(counted, "{}", rampart.metrics().await);
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");

    // A client that does speak TLS still gets through, with HTTP/2.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", tls_addr)
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{}/x", tls_addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
}
