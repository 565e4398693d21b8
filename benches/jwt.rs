//! Protects the cost of `key = "jwt"` on the request path: verifying a bearer
//! token per algorithm (HS256, RS256, ES256, EdDSA) without the cache (a
//! client's first request, or a forged token: a full signature check) and
//! with it (the same token again: a hash and a lookup), and a whole policy
//! decision with a jwt-keyed limit on a cached token.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use governor::clock::DefaultClock;
use http::{HeaderMap, HeaderValue};
use rampart_config::JwtAlgorithm;
use rampart_policy::{
    Charging, GeoInfo, IdentityOutcome, IdentitySource, JwtKeys, JwtVerifier, Policy, RequestFacts,
};
use rampart_testkit::jwt::{jwks, now, TestIssuer};
use serde_json::json;
use std::path::Path;

const SECRET: &[u8] = b"a-bench-only-hs256-secret-of-32-bytes!";

const CONFIG: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"
[pools.chat]
servers = ["127.0.0.1:9001"]
[[routes]]
name = "chat"
path_prefix = "/v1/"
pool = "chat"
[jwt]
hs256_secret_env = "UNUSED"
[[limits]]
name = "chat-user"
key = "jwt"
rate = "1000000/s"
burst = 1000000
"#;

fn headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

fn bench(c: &mut Criterion) {
    let config = rampart_config::parse(CONFIG, Path::new("bench.toml")).unwrap();
    let jwt = config.jwt.clone().unwrap();
    let issuers = [
        TestIssuer::hs256(Some("hs"), SECRET),
        TestIssuer::rs256(Some("rs")),
        TestIssuer::es256(Some("es")),
        TestIssuer::eddsa(Some("ed")),
    ];
    let set = jwks(&issuers.iter().collect::<Vec<_>>());
    let keys = || JwtKeys::new(Some(set.as_bytes()), None, &JwtAlgorithm::ALL).unwrap();
    let claims = json!({"sub": "user-1234567", "exp": now() + 86_400, "iat": now()});
    // With a cache of one, filled by another token: nothing else is ever
    // remembered, so every verification is a full one.
    let mut uncached_config = jwt.clone();
    uncached_config.cache_size = std::num::NonZeroU32::new(1).unwrap();
    let uncached = JwtVerifier::new(&uncached_config, keys(), vec!["sub".into()]);
    let filler = issuers[0].sign(&json!({"sub": "filler", "exp": now() + 86_400}));
    assert!(matches!(
        uncached.verify(&filler),
        IdentityOutcome::Verified { .. }
    ));
    let cached = JwtVerifier::new(&jwt, keys(), vec!["sub".into()]);

    let mut group = c.benchmark_group("jwt");
    for issuer in &issuers {
        let token = issuer.sign(&claims);
        let request = headers(&token);
        assert!(matches!(
            uncached.verify_request(&request),
            IdentityOutcome::Verified { cached: false, .. }
        ));
        group.bench_function(format!("{}/uncached", issuer.alg()), |b| {
            b.iter(|| black_box(uncached.verify_request(black_box(&request))))
        });
        assert!(matches!(
            cached.verify_request(&request),
            IdentityOutcome::Verified { .. }
        ));
        group.bench_function(format!("{}/cached", issuer.alg()), |b| {
            b.iter(|| black_box(cached.verify_request(black_box(&request))))
        });
    }
    // A forged token with a known kid: what a flood of them costs each.
    let forged = headers(&TestIssuer::es256(Some("es")).sign(&claims));
    group.bench_function("ES256/forged", |b| {
        b.iter(|| black_box(cached.verify_request(black_box(&forged))))
    });
    group.finish();

    // A whole decision: route, one jwt-keyed bucket, cached token.
    let policy: Policy<DefaultClock> = Policy::new(&config, DefaultClock::default(), None);
    let request = headers(&issuers[3].sign(&claims));
    let facts = RequestFacts {
        ip: "203.0.113.7".parse().unwrap(),
        geo: GeoInfo::default(),
        host: None,
        path: "/v1/chat/completions",
        query: None,
        method: "POST",
        headers: &request,
        flags: &[],
        ja4: None,
        identity: IdentitySource::Verify(&cached),
    };
    let (verdict, _) = policy.run(&facts, Charging::Charge, None, |_| Vec::new());
    assert!(verdict.refusal.is_none());
    c.bench_function("policy/jwt_limit_cached_token", |b| {
        b.iter(|| {
            let (verdict, _) =
                policy.run(black_box(&facts), Charging::Charge, None, |_| Vec::new());
            black_box(verdict)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
