//! TLS certificates swap without a restart and without dropping connections:
//! the files replaced on disk are served on the next handshakes while a
//! connection opened before keeps working on the certificate it started
//! with; a corrupt or mismatched replacement is refused, counted, shown in
//! `/status`, and the certificate in place keeps serving; `POST /reload` and
//! SIGHUP load the files at once.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::{wait_until, ConfigBuilder, MockOrigin, Rampart};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

struct Pair {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn pair() -> Pair {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    Pair {
        cert_pem: c.cert.pem(),
        key_pem: c.key_pair.serialize_pem(),
        der: c.cert.der().to_vec(),
    }
}

/// Replaces `name` in `dir` the way deploy tools do: a new file renamed over it.
fn replace(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.new"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A client that trusts both test certificates and reports the one it got.
fn client(roots: &[&Pair], addr: SocketAddr) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_info(true)
        .resolve("localhost", addr);
    for p in roots {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(p.cert_pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// Status and served certificate of one request on `client`.
async fn get(client: &reqwest::Client, addr: SocketAddr) -> (u16, Vec<u8>) {
    let r = client
        .get(format!("https://localhost:{}/x", addr.port()))
        .send()
        .await
        .unwrap();
    let cert = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    (r.status().as_u16(), cert)
}

/// The certificate a new handshake gets.
async fn served(roots: &[&Pair], addr: SocketAddr) -> Vec<u8> {
    get(&client(roots, addr), addr).await.1
}

async fn reloads(rampart: &Rampart, result: &str) -> f64 {
    rampart
        .metric(&format!(
            "rampart_tls_certificate_reloads_total{{result=\"{result}\"}}"
        ))
        .await
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_files_are_served_on_new_handshakes_and_bad_ones_are_refused() {
    let origin = MockOrigin::start("o").await;
    let (a, b) = (pair(), pair());
    let config = ConfigBuilder::new()
        .listener(
            "{listen2}",
            "tls = { cert = \"{dir}/tls/cert.pem\", key = \"{dir}/tls/key.pem\" }",
        )
        .pool("web", &[origin.addr])
        .catch_all_route("all", "web")
        .build();
    let (cert, key) = (a.cert_pem.clone(), a.key_pem.clone());
    let rampart = Rampart::start_with(bin(), &config, move |dir| {
        std::fs::create_dir_all(dir.join("tls")).unwrap();
        std::fs::write(dir.join("tls/cert.pem"), &cert).unwrap();
        std::fs::write(dir.join("tls/key.pem"), &key).unwrap();
    })
    .await;
    let addr = rampart.addr2.unwrap();
    let tls = rampart.dir().join("tls");
    let both = [&a, &b];

    // A connection opened on certificate A, kept alive.
    let kept = client(&both, addr);
    assert_eq!(get(&kept, addr).await, (200, a.der.clone()));
    assert_eq!(served(&both, addr).await, a.der);

    // B is written over A (key first, then the certificate): new handshakes
    // get B once the watcher has seen the files settle.
    replace(&tls, "key.pem", &b.key_pem);
    replace(&tls, "cert.pem", &b.cert_pem);
    let swapped = wait_until(Duration::from_secs(20), || async {
        served(&both, addr).await == b.der
    })
    .await;
    assert!(swapped, "B never served:\n{}", rampart.log());
    assert!(reloads(&rampart, "success").await >= 1.0);
    // The connection opened before goes on, still on A.
    assert_eq!(get(&kept, addr).await, (200, a.der.clone()));

    // A corrupt certificate: refused, counted, shown; B keeps serving.
    replace(
        &tls,
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    );
    let refused = wait_until(Duration::from_secs(20), || async {
        reloads(&rampart, "error").await >= 1.0
    })
    .await;
    assert!(refused, "{}", rampart.log());
    let status = rampart.status().await;
    let error = status["tls"][0]["last_error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(!error.is_empty(), "{status}");
    assert_eq!(served(&both, addr).await, b.der);
    // The same broken files are not tried again by the watcher...
    let errors = reloads(&rampart, "error").await;
    // ...but a SIGHUP tries them again (and refuses them again).
    rampart.signal("HUP");
    let retried = wait_until(Duration::from_secs(20), || async {
        reloads(&rampart, "error").await > errors
    })
    .await;
    assert!(retried, "{}", rampart.log());
    assert_eq!(served(&both, addr).await, b.der);

    // A certificate whose key is another's: refused; B keeps serving.
    replace(&tls, "cert.pem", &a.cert_pem);
    let errors = reloads(&rampart, "error").await;
    let refused = wait_until(Duration::from_secs(20), || async {
        reloads(&rampart, "error").await > errors
    })
    .await;
    assert!(refused, "{}", rampart.log());
    assert!(
        rampart.status().await["tls"][0]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("key"),
        "{}",
        rampart.status().await
    );
    assert_eq!(served(&both, addr).await, b.der);

    // POST /reload loads the pair at once: A, whole again, is served on the
    // next handshake, before the watcher would have loaded it.
    replace(&tls, "key.pem", &a.key_pem);
    let r = rampart
        .admin_request(reqwest::Method::POST, "/reload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served(&both, addr).await, a.der);
    let status = rampart.status().await;
    assert_eq!(
        status["tls"][0]["last_error"],
        serde_json::Value::Null,
        "{status}"
    );
    assert_eq!(get(&kept, addr).await, (200, a.der.clone()));

    // A restart on a broken pair fails with the reason.
    replace(&tls, "key.pem", &b.key_pem);
    rampart.signal("KILL");
    let out = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(rampart.config_path())
        .env("RAMPART_ADMIN_TOKEN", rampart_testkit::TEST_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot serve the certificate"), "{stderr}");
}
