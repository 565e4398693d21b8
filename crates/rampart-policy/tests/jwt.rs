//! Verified identity keys: each algorithm, every reason a token does not
//! verify, the cache, key sets, and the engine counting by a verified claim.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use governor::clock::FakeRelativeClock;
use http::{HeaderMap, HeaderValue};
use rampart_config::{JwtAlgorithm, JwtConfig};
use rampart_policy::engine::RuleKind;
use rampart_policy::jwt::{bearer_token, JwtClock};
use rampart_policy::{
    Charging, GeoInfo, IdentityOutcome, IdentitySource, JwtKeys, JwtVerifier, Policy, Rejection,
    RequestFacts, Unverified,
};
use rampart_testkit::jwt::{jwks, TestIssuer};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const NOW: u64 = 1_800_000_000;
const SECRET: &[u8] = b"a-test-only-hs256-secret-of-32-bytes!!";

fn config() -> JwtConfig {
    let text = r#"
[[listeners]]
address = "127.0.0.1:8080"
[pools.web]
servers = ["127.0.0.1:9000"]
[[routes]]
name = "chat"
pool = "web"
[jwt]
hs256_secret_env = "UNUSED"
"#;
    rampart_config::parse(text, Path::new("t.toml"))
        .unwrap()
        .jwt
        .unwrap()
}

fn verifier_with(config: &JwtConfig, keys: JwtKeys) -> (JwtVerifier, Arc<AtomicU64>) {
    let time = Arc::new(AtomicU64::new(NOW));
    let v = JwtVerifier::new(config, keys, vec!["sub".into(), "tenant".into()])
        .with_clock(JwtClock::Manual(time.clone()));
    (v, time)
}

fn verifier(issuers: &[&TestIssuer]) -> (JwtVerifier, Arc<AtomicU64>) {
    let set = jwks(issuers);
    let keys = JwtKeys::new(Some(set.as_bytes()), None, &JwtAlgorithm::ALL).unwrap();
    verifier_with(&config(), keys)
}

fn claims(sub: &str) -> serde_json::Value {
    json!({"sub": sub, "exp": NOW + 600, "iat": NOW})
}

fn verified_sub(outcome: &IdentityOutcome) -> Option<&str> {
    match outcome {
        IdentityOutcome::Verified { token, .. } => token.claim("sub"),
        IdentityOutcome::Unverified(_) => None,
    }
}

fn unverified(outcome: IdentityOutcome) -> Unverified {
    match outcome {
        IdentityOutcome::Unverified(why) => why,
        other => panic!("verified: {other:?}"),
    }
}

#[test]
fn every_algorithm_verifies_from_a_jwks() {
    let issuers = [
        TestIssuer::rs256(Some("rsa")),
        TestIssuer::es256(Some("ec")),
        TestIssuer::eddsa(Some("ed")),
        TestIssuer::hs256(Some("oct"), SECRET),
    ];
    let (v, _) = verifier(&issuers.iter().collect::<Vec<_>>());
    assert_eq!(v.keys().len(), 4);
    for issuer in &issuers {
        let token = issuer.sign(&claims(&format!("user-{}", issuer.alg())));
        let outcome = v.verify(&token);
        assert_eq!(
            verified_sub(&outcome),
            Some(format!("user-{}", issuer.alg()).as_str()),
            "{}: {outcome:?}",
            issuer.alg()
        );
    }
}

#[test]
fn tokens_without_kid_find_the_key_of_their_algorithm() {
    let issuers = [TestIssuer::rs256(None), TestIssuer::eddsa(None)];
    let (v, _) = verifier(&issuers.iter().collect::<Vec<_>>());
    for issuer in &issuers {
        assert_eq!(
            verified_sub(&v.verify(&issuer.sign(&claims("a")))),
            Some("a")
        );
    }
}

#[test]
fn the_hs256_secret_verifies_and_short_secrets_are_refused() {
    let keys = JwtKeys::new(None, Some(SECRET), &JwtAlgorithm::ALL).unwrap();
    let (v, _) = verifier_with(&config(), keys);
    let issuer = TestIssuer::hs256(None, SECRET);
    assert_eq!(
        verified_sub(&v.verify(&issuer.sign(&claims("h")))),
        Some("h")
    );
    // A kid on the token does not matter to a key without one.
    let named = TestIssuer::hs256(Some("whatever"), SECRET);
    assert_eq!(
        verified_sub(&v.verify(&named.sign(&claims("h")))),
        Some("h")
    );
    let other = TestIssuer::hs256(None, b"another-test-only-secret-of-32-bytes!!");
    assert_eq!(
        unverified(v.verify(&other.sign(&claims("h")))),
        Unverified::BadSignature
    );
    let err = JwtKeys::new(None, Some(b"short"), &JwtAlgorithm::ALL).unwrap_err();
    assert!(err.0.contains("at least 32 bytes"), "{err}");
}

#[test]
fn exp_and_nbf_are_checked_with_the_leeway() {
    let issuer = TestIssuer::es256(Some("ec"));
    let (v, time) = verifier(&[&issuer]);
    let expired = issuer.sign(&json!({"sub": "a", "exp": NOW - 31}));
    assert_eq!(unverified(v.verify(&expired)), Unverified::Expired);
    let just = issuer.sign(&json!({"sub": "a", "exp": NOW - 30}));
    assert_eq!(
        verified_sub(&v.verify(&just)),
        Some("a"),
        "within the 30 s leeway"
    );
    let early = issuer.sign(&json!({"sub": "a", "exp": NOW + 600, "nbf": NOW + 31}));
    assert_eq!(unverified(v.verify(&early)), Unverified::NotYetValid);
    let soon = issuer.sign(&json!({"sub": "a", "exp": NOW + 600, "nbf": NOW + 30}));
    assert_eq!(verified_sub(&v.verify(&soon)), Some("a"));
    // No exp at all: refused, a token must expire.
    let forever = issuer.sign(&json!({"sub": "a"}));
    assert_eq!(unverified(v.verify(&forever)), Unverified::Malformed);
    let text_exp = issuer.sign(&json!({"sub": "a", "exp": "tomorrow"}));
    assert_eq!(unverified(v.verify(&text_exp)), Unverified::Malformed);
    // Later, `early` becomes valid.
    time.store(NOW + 10, Ordering::Relaxed);
    assert_eq!(verified_sub(&v.verify(&early)), Some("a"));
}

#[test]
fn alg_none_and_unaccepted_algorithms_are_refused() {
    let issuer = TestIssuer::rs256(Some("rsa"));
    let (v, _) = verifier(&[&issuer]);
    for alg in [
        "none", "None", "NONE", "RS512", "PS256", "HS384", "rs256", "",
    ] {
        let token = issuer.sign_with_header(&json!({"alg": alg, "kid": "rsa"}), &claims("a"));
        assert_eq!(
            unverified(v.verify(&token)),
            Unverified::AlgNotAllowed,
            "{alg}"
        );
    }
    // The classic unsigned token: an empty signature part.
    let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = base64_url(claims("a").to_string().as_bytes());
    assert_eq!(
        unverified(v.verify(&format!("{header}.{payload}."))),
        Unverified::Malformed
    );
    // An algorithm the config does not accept, though the key would verify it.
    let mut only_es = config();
    only_es.algorithms = vec![JwtAlgorithm::Es256];
    let set = jwks(&[&issuer]);
    assert!(
        JwtKeys::new(Some(set.as_bytes()), None, &only_es.algorithms).is_err(),
        "an RS256-only set under ES256 has no usable key"
    );
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn unknown_kids_and_forged_signatures_are_refused() {
    let issuer = TestIssuer::eddsa(Some("k1"));
    let (v, _) = verifier(&[&issuer]);
    let stranger = TestIssuer::eddsa(Some("k2"));
    assert_eq!(
        unverified(v.verify(&stranger.sign(&claims("a")))),
        Unverified::UnknownKey
    );
    // Another key claiming the known kid: the signature does not verify.
    let impostor = TestIssuer::eddsa(Some("k1"));
    assert_eq!(
        unverified(v.verify(&impostor.sign(&claims("a")))),
        Unverified::BadSignature
    );
    // No key of the token's algorithm at all.
    let es = TestIssuer::es256(None);
    assert_eq!(
        unverified(v.verify(&es.sign(&claims("a")))),
        Unverified::UnknownKey
    );
    // A tampered payload.
    let token = issuer.sign(&claims("a"));
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged_payload = base64_url(claims("admin").to_string().as_bytes());
    parts[1] = &forged_payload;
    assert_eq!(
        unverified(v.verify(&parts.join("."))),
        Unverified::BadSignature
    );
    for junk in ["", "abc", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.e30"] {
        assert!(
            matches!(
                unverified(v.verify(junk)),
                Unverified::Malformed | Unverified::AlgNotAllowed
            ),
            "{junk}"
        );
    }
}

#[test]
fn algorithm_confusion_is_refused() {
    // The attack: take the RSA public key (public knowledge) and use it as an
    // HMAC secret, naming the RSA key's kid with alg HS256.
    let rsa = TestIssuer::rs256(Some("rsa"));
    let set = jwks(&[&rsa]);
    let keys = JwtKeys::new(Some(set.as_bytes()), None, &JwtAlgorithm::ALL).unwrap();
    let (v, _) = verifier_with(&config(), keys);
    let public = rsa.jwk()["n"].as_str().unwrap().to_string();
    let forger = TestIssuer::hs256(Some("rsa"), public.as_bytes());
    assert_eq!(
        unverified(v.verify(&forger.sign(&claims("admin")))),
        Unverified::AlgMismatch
    );
    let anonymous = TestIssuer::hs256(None, public.as_bytes());
    assert_eq!(
        unverified(v.verify(&anonymous.sign(&claims("admin")))),
        Unverified::UnknownKey
    );
    // A JWK whose stated alg disagrees with its type is left out.
    let mut jwk = rsa.jwk();
    jwk["alg"] = json!("HS256");
    let confused = json!({"keys": [jwk]}).to_string();
    let err = JwtKeys::new(Some(confused.as_bytes()), None, &JwtAlgorithm::ALL).unwrap_err();
    assert!(err.0.contains("no usable key"), "{err}");
    // Encryption keys never verify signatures.
    let mut jwk = rsa.jwk();
    jwk["use"] = json!("enc");
    let enc = json!({"keys": [jwk]}).to_string();
    assert!(JwtKeys::new(Some(enc.as_bytes()), None, &JwtAlgorithm::ALL).is_err());
}

#[test]
fn bad_key_sets_are_refused_with_a_reason() {
    for (text, want) in [
        ("not json", "not a JSON Web Key Set"),
        (r#"{"keys": "x"}"#, "not a JSON Web Key Set"),
        (r#"{"keys": []}"#, "no usable key"),
        (
            r#"{"keys": [{"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}]}"#,
            "no usable key",
        ),
        (
            r#"{"keys": [{"kty": "oct", "k": "c2hvcnQ"}]}"#,
            "at least 32 bytes",
        ),
    ] {
        let err = JwtKeys::new(Some(text.as_bytes()), None, &JwtAlgorithm::ALL).unwrap_err();
        assert!(err.0.contains(want), "{text}: {err}");
    }
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let issuer = TestIssuer::es256(None);
    let set = jwks(&[&issuer]);
    let mut config = config();
    config.issuer = Some("https://id.example".into());
    config.audience = Some("chat".into());
    let keys = JwtKeys::new(Some(set.as_bytes()), None, &JwtAlgorithm::ALL).unwrap();
    let (v, _) = verifier_with(&config, keys);
    let token = |c: serde_json::Value| issuer.sign(&c);
    let good =
        json!({"sub": "a", "exp": NOW + 60, "iss": "https://id.example", "aud": ["x", "chat"]});
    assert_eq!(verified_sub(&v.verify(&token(good))), Some("a"));
    let wrong_iss = json!({"sub": "a", "exp": NOW + 60, "iss": "https://evil", "aud": "chat"});
    assert_eq!(
        unverified(v.verify(&token(wrong_iss))),
        Unverified::WrongIssuer
    );
    let no_iss = json!({"sub": "a", "exp": NOW + 60, "aud": "chat"});
    assert_eq!(
        unverified(v.verify(&token(no_iss))),
        Unverified::WrongIssuer
    );
    let wrong_aud =
        json!({"sub": "a", "exp": NOW + 60, "iss": "https://id.example", "aud": "admin"});
    assert_eq!(
        unverified(v.verify(&token(wrong_aud))),
        Unverified::WrongAudience
    );
}

#[test]
fn verified_tokens_are_cached_until_they_expire() {
    let issuer = TestIssuer::rs256(Some("rsa"));
    let (v, time) = verifier(&[&issuer]);
    let token = issuer.sign(&json!({"sub": "a", "exp": NOW + 100}));
    assert!(matches!(
        v.verify(&token),
        IdentityOutcome::Verified { cached: false, .. }
    ));
    assert!(matches!(
        v.verify(&token),
        IdentityOutcome::Verified { cached: true, .. }
    ));
    assert_eq!(v.signature_checks(), 1);
    assert_eq!(v.cached_tokens(), 1);
    // Forged tokens are never cached.
    let forged = TestIssuer::rs256(Some("rsa")).sign(&claims("b"));
    for _ in 0..3 {
        assert_eq!(unverified(v.verify(&forged)), Unverified::BadSignature);
    }
    assert_eq!(v.cached_tokens(), 1);
    // The cached token expires like any other.
    time.store(NOW + 131, Ordering::Relaxed);
    assert_eq!(unverified(v.verify(&token)), Unverified::Expired);
    assert_eq!(v.cached_tokens(), 0);
    // The sweep drops expired entries.
    let short = issuer.sign(&json!({"sub": "c", "exp": NOW + 200}));
    assert!(matches!(v.verify(&short), IdentityOutcome::Verified { .. }));
    assert_eq!(v.sweep(), 0);
    time.store(NOW + 231, Ordering::Relaxed);
    assert_eq!(v.sweep(), 1);
    assert_eq!(v.cached_tokens(), 0);
}

#[test]
fn a_full_cache_verifies_without_remembering() {
    let issuer = TestIssuer::hs256(None, SECRET);
    let mut config = config();
    config.cache_size = std::num::NonZeroU32::new(1).unwrap();
    let keys = JwtKeys::new(None, Some(SECRET), &JwtAlgorithm::ALL).unwrap();
    let (v, _) = verifier_with(&config, keys);
    let (a, b) = (issuer.sign(&claims("a")), issuer.sign(&claims("b")));
    assert!(matches!(
        v.verify(&a),
        IdentityOutcome::Verified { cached: false, .. }
    ));
    assert!(matches!(
        v.verify(&b),
        IdentityOutcome::Verified { cached: false, .. }
    ));
    assert!(matches!(
        v.verify(&b),
        IdentityOutcome::Verified { cached: false, .. }
    ));
    assert!(matches!(
        v.verify(&a),
        IdentityOutcome::Verified { cached: true, .. }
    ));
    assert_eq!(v.cached_tokens(), 1);
}

#[test]
fn numeric_claims_are_read_and_others_are_missing() {
    let issuer = TestIssuer::hs256(None, SECRET);
    let keys = JwtKeys::new(None, Some(SECRET), &JwtAlgorithm::ALL).unwrap();
    let (v, _) = verifier_with(&config(), keys);
    let token = issuer.sign(&json!({"sub": 12345, "tenant": {"id": 1}, "exp": NOW + 60}));
    let outcome = v.verify(&token);
    assert_eq!(outcome.claim("sub"), Some("12345"));
    assert_eq!(outcome.claim("tenant"), None);
}

fn headers(auth: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for a in auth {
        h.append(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(a).unwrap(),
        );
    }
    h
}

#[test]
fn the_bearer_token_is_read_from_one_authorization_field() {
    assert_eq!(bearer_token(&headers(&[])), Ok(None));
    assert_eq!(bearer_token(&headers(&["Bearer abc"])), Ok(Some("abc")));
    assert_eq!(bearer_token(&headers(&["bearer   abc "])), Ok(Some("abc")));
    assert_eq!(bearer_token(&headers(&["Basic dXNlcjpwdw=="])), Ok(None));
    assert_eq!(
        bearer_token(&headers(&["Bearer a", "Bearer b"])),
        Err(Unverified::Malformed)
    );
    let long = format!("Bearer {}", "a".repeat(9000));
    assert_eq!(bearer_token(&headers(&[&long])), Err(Unverified::Malformed));
}

const ENGINE: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"
[pools.web]
servers = ["127.0.0.1:9000"]
[[routes]]
name = "chat"
pool = "web"
[jwt]
hs256_secret_env = "UNUSED"
[[limits]]
name = "per-user"
key = "jwt"
rate = "1/min"
burst = 2
[[limits]]
name = "per-tenant"
key = "jwt"
claim = "tenant"
rate = "1/min"
burst = 100
shadow = true
"#;

fn run(
    policy: &Policy<FakeRelativeClock>,
    verifier: &JwtVerifier,
    ip: &str,
    auth: Option<&str>,
    charging: Charging,
) -> (rampart_policy::Verdict, Vec<rampart_policy::TraceEntry>) {
    let headers = headers(auth.as_slice());
    let facts = RequestFacts {
        ip: ip.parse().unwrap(),
        geo: GeoInfo::default(),
        host: None,
        path: "/v1/chat",
        query: None,
        method: "POST",
        headers: &headers,
        flags: &[],
        ja4: None,
        identity: IdentitySource::Verify(verifier),
    };
    policy.run(&facts, charging, None, |_| Vec::new())
}

#[test]
fn the_engine_counts_verified_users_apart_and_the_rest_by_address() {
    let config = rampart_config::parse(ENGINE, Path::new("t.toml")).unwrap();
    let policy = Policy::new(&config, FakeRelativeClock::default(), None);
    let keys = JwtKeys::new(None, Some(SECRET), &JwtAlgorithm::ALL).unwrap();
    let verifier = JwtVerifier::new(
        config.jwt.as_ref().unwrap(),
        keys,
        rampart_policy::jwt::claims_of(&config),
    )
    .with_clock(JwtClock::System);
    let issuer = TestIssuer::hs256(None, SECRET);
    let now = rampart_testkit::jwt::now();
    let alice = format!(
        "Bearer {}",
        issuer.sign(&json!({"sub": "alice", "exp": now + 600}))
    );
    let bob = format!(
        "Bearer {}",
        issuer.sign(&json!({"sub": "bob", "exp": now + 600}))
    );
    let forged = format!(
        "Bearer {}",
        TestIssuer::hs256(None, b"not-the-secret-not-the-secret-not-the")
            .sign(&json!({"sub": "bob", "exp": now + 600}))
    );
    let ip = "203.0.113.7";
    // Alice spends her burst of 2 and is refused; Bob, same address, is not.
    for _ in 0..2 {
        let (v, _) = run(&policy, &verifier, ip, Some(&alice), Charging::Charge);
        assert!(v.refusal.is_none(), "{:?}", v.refusal);
        assert!(matches!(v.identity, Some(IdentityOutcome::Verified { .. })));
    }
    let (v, _) = run(&policy, &verifier, ip, Some(&alice), Charging::Charge);
    assert!(matches!(v.refusal, Some(Rejection::RateLimited { .. })));
    let (v, _) = run(&policy, &verifier, ip, Some(&bob), Charging::Charge);
    assert!(v.refusal.is_none());
    // The tenant claim is missing: that rule counted by address, and says so.
    assert!(v.claim_missing);
    // A forged token counts against the address: two, then refused.
    for i in 0..3 {
        let (v, _) = run(&policy, &verifier, ip, Some(&forged), Charging::Charge);
        assert_eq!(
            v.identity,
            Some(IdentityOutcome::Unverified(Unverified::BadSignature))
        );
        assert_eq!(v.refusal.is_some(), i == 2, "request {i}");
    }
    // So does no token at all, from the same address.
    let (v, _) = run(&policy, &verifier, ip, None, Charging::Charge);
    assert!(v.refusal.is_some());
    assert_eq!(
        v.identity,
        Some(IdentityOutcome::Unverified(Unverified::Absent))
    );
    // Explain says which happened, and never shows a claim.
    let (_, trace) = run(&policy, &verifier, ip, Some(&forged), Charging::DryRun);
    let jwt = trace.iter().find(|t| t.kind == RuleKind::Identity).unwrap();
    assert!(jwt.detail.contains("bad_signature"), "{}", jwt.detail);
    let rule = trace.iter().find(|t| &*t.name == "per-user").unwrap();
    assert!(
        rule.key.contains("203.0.113.7") && rule.key.contains("bad_signature"),
        "{}",
        rule.key
    );
    let (_, trace) = run(&policy, &verifier, ip, Some(&bob), Charging::DryRun);
    let rule = trace.iter().find(|t| &*t.name == "per-user").unwrap();
    assert_eq!(rule.key, "jwt claim sub (hashed)");
    let text = format!("{trace:?}");
    assert!(!text.contains("bob"), "{text}");
}

#[test]
fn a_request_refused_before_a_jwt_rule_costs_no_verification() {
    let text = ENGINE.replace(
        "[[limits]]\nname = \"per-user\"",
        "[[limits]]\nname = \"per-ip\"\nkey = \"ip\"\nrate = \"1/min\"\nburst = 1\n[[limits]]\nname = \"per-user\"",
    );
    let config = rampart_config::parse(&text, Path::new("t.toml")).unwrap();
    let policy = Policy::new(&config, FakeRelativeClock::default(), None);
    let keys = JwtKeys::new(None, Some(SECRET), &JwtAlgorithm::ALL).unwrap();
    let verifier = JwtVerifier::new(config.jwt.as_ref().unwrap(), keys, vec!["sub".into()]);
    let issuer = TestIssuer::hs256(None, b"not-the-secret-not-the-secret-not-the");
    let forged = format!(
        "Bearer {}",
        issuer.sign(&json!({"sub": "x", "exp": rampart_testkit::jwt::now() + 60}))
    );
    let (v, _) = run(
        &policy,
        &verifier,
        "198.51.100.1",
        Some(&forged),
        Charging::Charge,
    );
    assert!(v.identity.is_some());
    assert_eq!(verifier.signature_checks(), 1);
    for _ in 0..5 {
        let (v, _) = run(
            &policy,
            &verifier,
            "198.51.100.1",
            Some(&forged),
            Charging::Charge,
        );
        assert!(v.refusal.is_some());
        assert!(v.identity.is_none(), "refused by the address limit first");
    }
    assert_eq!(verifier.signature_checks(), 1);
}

#[test]
fn in_flight_caps_count_verified_users_apart() {
    let text = ENGINE.replace(
        "[[limits]]\nname = \"per-user\"",
        "[[concurrency]]\nname = \"user-streams\"\nkey = \"jwt\"\nmax_in_flight = 1\n[[limits]]\nname = \"per-user\"",
    );
    let config = rampart_config::parse(&text, Path::new("t.toml")).unwrap();
    let policy = Policy::new(&config, FakeRelativeClock::default(), None);
    let keys = JwtKeys::new(None, Some(SECRET), &JwtAlgorithm::ALL).unwrap();
    let verifier = JwtVerifier::new(config.jwt.as_ref().unwrap(), keys, vec!["sub".into()]);
    let issuer = TestIssuer::hs256(None, SECRET);
    let exp = rampart_testkit::jwt::now() + 600;
    let alice = format!(
        "Bearer {}",
        issuer.sign(&json!({"sub": "alice", "exp": exp}))
    );
    let bob = format!("Bearer {}", issuer.sign(&json!({"sub": "bob", "exp": exp})));
    let ip = "192.0.2.1";
    let (held, _) = run(&policy, &verifier, ip, Some(&alice), Charging::Charge);
    assert!(held.refusal.is_none() && held.permits.len() == 1);
    let (second, _) = run(&policy, &verifier, ip, Some(&alice), Charging::Charge);
    assert!(matches!(
        second.refusal,
        Some(Rejection::TooManyInFlight { .. })
    ));
    let (other, _) = run(&policy, &verifier, ip, Some(&bob), Charging::Charge);
    assert!(
        other.refusal.is_none(),
        "Bob has his own slot: {:?}",
        other.refusal
    );
    drop(held);
    // Her slot is free again (her rate bucket, burst 2, is spent by now).
    let (again, _) = run(&policy, &verifier, ip, Some(&alice), Charging::Charge);
    assert!(
        !matches!(again.refusal, Some(Rejection::TooManyInFlight { .. })),
        "{:?}",
        again.refusal
    );
}
