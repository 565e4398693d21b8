//! Limits keyed by a verified JWT claim over real sockets: two users behind
//! one address get their own buckets, a forged or missing token falls back to
//! the address, a rotated JWKS file takes effect without a restart (and a bad
//! one is refused, the old keys kept), and no claim value is ever shown.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::jwt::{jwks, now, TestIssuer};
use rampart_testkit::{wait_until, ConfigBuilder, MockOrigin, Rampart};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

/// Subjects no other text in the logs could contain by chance.
const ALICE: &str = "subject-alice-5c1e";
const BOB: &str = "subject-bob-9d27";

fn config(origin: &MockOrigin) -> String {
    ConfigBuilder::new()
        .pool("chat", &[origin.addr])
        .route("chat", "/v1/", "chat")
        .raw(
            r#"
[jwt]
jwks_file = "jwks.json"
check_interval = "100ms"
[[limits]]
name = "per-user"
key = "jwt"
rate = "3/h"
burst = 3
[[concurrency]]
name = "user-in-flight"
key = "jwt"
max_in_flight = 50
[access_log]
enabled = true
path = "-"
rejected_lines_per_second = 100000
"#,
        )
        .build()
}

fn bearer(issuer: &TestIssuer, sub: &str) -> String {
    format!(
        "Bearer {}",
        issuer.sign(&json!({"sub": sub, "exp": now() + 3600, "iat": now()}))
    )
}

async fn chat(c: &reqwest::Client, r: &Rampart, auth: Option<&str>) -> u16 {
    let mut req = c.post(r.url("/v1/chat"));
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    req.send().await.unwrap().status().as_u16()
}

/// What explain says jwt rules made of this Authorization value.
async fn explained(r: &Rampart, auth: &str) -> serde_json::Value {
    let auth = auth.replace(' ', "%20");
    r.admin_json(&format!(
        "/debug/explain?ip=127.0.0.1&path=/v1/chat&method=POST&header=authorization:{auth}"
    ))
    .await
}

fn write_atomically(dir: &Path, text: &str) {
    let tmp = dir.join("jwks.json.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("jwks.json")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_behind_one_address_get_their_own_buckets() {
    let origin = MockOrigin::start("chat").await;
    let rsa = TestIssuer::rs256(Some("rsa-1"));
    let ed = TestIssuer::eddsa(Some("ed-1"));
    let set = jwks(&[&rsa, &ed]);
    let r = Rampart::start_with(bin(), &config(&origin), |dir| {
        std::fs::write(dir.join("jwks.json"), &set).unwrap();
    })
    .await;
    let c = reqwest::Client::new();
    let (alice, bob) = (bearer(&rsa, ALICE), bearer(&ed, BOB));

    // Alice (RS256) spends her three and is refused; Bob (EdDSA), from the
    // very same address, still has his.
    for _ in 0..3 {
        assert_eq!(chat(&c, &r, Some(&alice)).await, 200);
    }
    assert_eq!(chat(&c, &r, Some(&alice)).await, 429);
    for _ in 0..3 {
        assert_eq!(chat(&c, &r, Some(&bob)).await, 200);
    }
    assert_eq!(chat(&c, &r, Some(&bob)).await, 429);

    // A forged token (another key claiming Alice's kid) is counted by the
    // address: three, then refused; and so is a request without a token, on
    // the same address bucket.
    let forger = TestIssuer::rs256(Some("rsa-1"));
    let forged = bearer(&forger, BOB);
    for _ in 0..3 {
        assert_eq!(chat(&c, &r, Some(&forged)).await, 200);
    }
    assert_eq!(chat(&c, &r, Some(&forged)).await, 429);
    assert_eq!(chat(&c, &r, None).await, 429);
    let expired = format!(
        "Bearer {}",
        ed.sign(&json!({"sub": "carol", "exp": now() - 3600}))
    );
    assert_eq!(chat(&c, &r, Some(&expired)).await, 429);

    // Counted by reason; verified tokens came from the cache after the first.
    let metric = |s: &'static str| {
        let r = &r;
        async move { r.metric(s).await.unwrap_or(0.0) }
    };
    assert_eq!(
        metric("rampart_jwt_unverified_total{reason=\"bad_signature\"}").await,
        4.0
    );
    assert_eq!(
        metric("rampart_jwt_unverified_total{reason=\"absent\"}").await,
        1.0
    );
    assert_eq!(
        metric("rampart_jwt_unverified_total{reason=\"expired\"}").await,
        1.0
    );
    assert_eq!(
        metric("rampart_jwt_verified_total{cache=\"miss\"}").await,
        2.0
    );
    assert_eq!(
        metric("rampart_jwt_verified_total{cache=\"hit\"}").await,
        6.0
    );
    assert_eq!(metric("rampart_jwt_keys").await, 2.0);

    // Explain says which happened, for a good and a forged token.
    let good = explained(&r, &bob).await;
    assert_eq!(good["jwt"]["result"], "verified", "{good}");
    assert_eq!(good["verdict"], "rate_limited", "{good}");
    let bad = explained(&r, &forged).await;
    assert_eq!(bad["jwt"]["result"], "bad_signature", "{bad}");

    // The access log says whether the token verified, never whose it is; no
    // claim value anywhere.
    let log = r.log();
    assert!(log.contains("\"jwt\":\"verified\""), "{log}");
    assert!(log.contains("\"jwt\":\"bad_signature\""), "{log}");
    let top = r.admin_json("/debug/top").await.to_string();
    for text in [
        log,
        r.metrics().await,
        good.to_string(),
        bad.to_string(),
        top,
    ] {
        assert!(!text.contains(ALICE) && !text.contains(BOB), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_jwks_file_takes_effect_without_a_restart() {
    let origin = MockOrigin::start("chat").await;
    let old = TestIssuer::es256(Some("2026-old"));
    let new = TestIssuer::eddsa(Some("2026-new"));
    let first = jwks(&[&old]);
    let r = Rampart::start_with(bin(), &config(&origin), |dir| {
        std::fs::write(dir.join("jwks.json"), &first).unwrap();
    })
    .await;
    let c = reqwest::Client::new();
    let (old_token, new_token) = (bearer(&old, ALICE), bearer(&new, BOB));
    assert_eq!(explained(&r, &old_token).await["jwt"]["result"], "verified");
    assert_eq!(
        explained(&r, &new_token).await["jwt"]["result"],
        "unknown_key"
    );

    // The issuer rotates: the new key in, the old one out.
    write_atomically(r.dir(), &jwks(&[&new]));
    let rotated = wait_until(Duration::from_secs(20), || async {
        explained(&r, &new_token).await["jwt"]["result"] == "verified"
    })
    .await;
    assert!(rotated, "the new key was never loaded: {}", r.log());
    assert_eq!(
        explained(&r, &old_token).await["jwt"]["result"],
        "unknown_key",
        "a key taken out of the file stops verifying (its cached tokens too)"
    );
    assert_eq!(
        r.metric("rampart_jwt_jwks_reloads_total{result=\"success\"}")
            .await,
        Some(1.0)
    );

    // A bad file is refused: the keys in force keep serving.
    write_atomically(r.dir(), "{\"keys\": [");
    let refused = wait_until(Duration::from_secs(20), || async {
        r.metric("rampart_jwt_jwks_reloads_total{result=\"error\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert!(refused, "the bad file was never noticed: {}", r.log());
    assert_eq!(explained(&r, &new_token).await["jwt"]["result"], "verified");
    assert!(r.log().contains("old keys keep serving"), "{}", r.log());
    // Requests with the new token are counted per user all along.
    for _ in 0..3 {
        assert_eq!(chat(&c, &r, Some(&new_token)).await, 200);
    }
    assert_eq!(chat(&c, &r, Some(&new_token)).await, 429);
    assert_eq!(chat(&c, &r, Some(&bearer(&new, ALICE))).await, 200);
}

/// The text of every record file (`compress = false`).
fn records(r: &Rampart) -> String {
    let Ok(entries) = std::fs::read_dir(r.dir().join("record")) else {
        return String::new();
    };
    let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_run_replays_with_the_same_verdicts_and_no_subject_in_clear() {
    let origin = MockOrigin::start("chat").await;
    let issuer = TestIssuer::es256(Some("ec-1"));
    let set = jwks(&[&issuer]);
    let template = config(&origin).replace(
        "[access_log]",
        "[record]\nenabled = true\ndir = \"{dir}/record\"\ncompress = false\n[access_log]",
    );
    let r = Rampart::start_with(bin(), &template, |dir| {
        std::fs::write(dir.join("jwks.json"), &set).unwrap();
    })
    .await;
    let c = reqwest::Client::new();
    let forged = bearer(&TestIssuer::es256(Some("ec-1")), ALICE);
    let mut sent = 0;
    for auth in [
        Some(bearer(&issuer, ALICE)),
        Some(bearer(&issuer, BOB)),
        Some(forged),
        None,
    ] {
        for _ in 0..4 {
            chat(&c, &r, auth.as_deref()).await;
            sent += 1;
        }
    }
    assert!(
        wait_until(Duration::from_secs(10), || async {
            records(&r).lines().count() >= sent
        })
        .await,
        "{}",
        records(&r)
    );
    let text = records(&r);
    assert!(!text.contains(ALICE) && !text.contains(BOB), "{text}");
    assert!(text.contains("\"jwt\":{\"sub\":\"#"), "{text}");
    assert!(text.contains("\"jwt\":\"bad_signature\""), "{text}");
    assert!(text.contains("\"jwt\":\"absent\""), "{text}");

    let out = std::process::Command::new(bin())
        .arg("replay")
        .arg("--config")
        .arg(r.config_path())
        .arg("--json")
        .arg("--quiet")
        .args(
            std::fs::read_dir(r.dir().join("record"))
                .unwrap()
                .flatten()
                .map(|e| e.path()),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["records"], sent, "{report:#}");
    assert_eq!(report["differs_from_recorded"], 0, "{report:#}");
    // Alice and Bob: 3 each; the forged token and no token share the address: 3.
    assert_eq!(report["verdicts"]["candidate"]["proxied"], 9, "{report:#}");
}
