//! Verified identity keys: the bearer token of a request, verified, and the
//! claims `key = "jwt"` rules count by.
//!
//! [`JwtKeys`] is a key set built from a JSON Web Key Set and/or an HS256
//! secret (the proxy reads the files; nothing here does I/O). A
//! [`JwtVerifier`] holds one key set, the `[jwt]` rules a token must satisfy
//! and a bounded cache of verified tokens; it is swapped whole when the JWKS
//! file changes, so a key taken out of the file stops verifying at once (its
//! cached tokens go with the old verifier).
//!
//! **What verifies.** `Authorization: Bearer <JWS compact token>`, at most
//! [`MAX_TOKEN_BYTES`], one `Authorization` field. Checks, cheapest first (a
//! token failing several is counted under the first):
//! 1. three base64url parts, a JSON header (else `malformed`);
//! 2. `alg` one of the accepted algorithms: `none` and every other name are
//!    `alg_not_allowed`;
//! 3. a key: by `kid` when the token names one (a key without `kid`, such as
//!    the HS256 secret, serves any `kid`); none is `unknown_key`, and a `kid`
//!    whose key is of another type than `alg` names is `alg_mismatch`
//!    (algorithm confusion: an RSA public key is never used as an HMAC
//!    secret). A JWK's own `alg`, when present, must be the one its type
//!    implies, and keys with `use` other than `sig` are skipped;
//! 4. the claims: a JSON object with a numeric `exp` (else `malformed`);
//!    `exp` passed by more than the leeway is `expired`, `nbf` ahead by more
//!    than the leeway `not_yet_valid`;
//! 5. the signature (`jsonwebtoken`, aws-lc-rs): `bad_signature`; then `iss`
//!    and `aud` when configured (`wrong_issuer`, `wrong_audience`).
//!
//! **The cache.** Verified tokens are remembered by two independent keyed
//! 64-bit hashes of the token (a forged token would need a 128-bit collision
//! under keys it cannot know), with their `exp`/`nbf`, which are checked again
//! on every hit. At most `cache_size` tokens: when full, a newly verified token
//! is not remembered (it pays a signature check each time) until the sweep
//! ([`JwtVerifier::sweep`]) drops expired ones; entries are never evicted early.
//! Only verified tokens are cached, so forged ones cannot fill it.

use crate::engine::TraceOutcome;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use dashmap::DashMap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rampart_config::{JwtAlgorithm, JwtConfig, KeyKind};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Longest bearer token read; a longer one is `malformed`.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// Most keys a token without `kid` is tried against.
const MAX_CANDIDATES: usize = 8;

/// Why a request's bearer token did not give the claim a rule counts by; the
/// rule then counts the request by its address. The label is the `reason` of
/// `rampart_jwt_unverified_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unverified {
    /// No `Authorization: Bearer` field.
    Absent,
    /// Not a JWS compact token, unreadable header or claims, no numeric `exp`,
    /// over [`MAX_TOKEN_BYTES`], or two `Authorization` fields.
    Malformed,
    /// `alg` is `none` or not an accepted algorithm.
    AlgNotAllowed,
    /// No key with the token's `kid` (or, without `kid`, none for its `alg`).
    UnknownKey,
    /// The key named by `kid` is of another type than `alg` names.
    AlgMismatch,
    /// The signature does not verify.
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    NotYetValid,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` does not name the configured audience.
    WrongAudience,
    /// The token verified but lacks the rule's claim (or it is not a string
    /// or number).
    ClaimMissing,
    /// No key set is loaded (no `[jwt]`): explain or a test without one.
    NoVerifier,
    /// `rampart replay`: the record holds no identity (recorded by a config
    /// without `key = "jwt"` rules).
    NotRecorded,
}

impl Unverified {
    /// Every reason, for metrics that list them all.
    pub const ALL: [Unverified; 13] = [
        Unverified::Absent,
        Unverified::Malformed,
        Unverified::AlgNotAllowed,
        Unverified::UnknownKey,
        Unverified::AlgMismatch,
        Unverified::BadSignature,
        Unverified::Expired,
        Unverified::NotYetValid,
        Unverified::WrongIssuer,
        Unverified::WrongAudience,
        Unverified::ClaimMissing,
        Unverified::NoVerifier,
        Unverified::NotRecorded,
    ];

    /// The metric label and record value.
    pub fn as_label(self) -> &'static str {
        match self {
            Unverified::Absent => "absent",
            Unverified::Malformed => "malformed",
            Unverified::AlgNotAllowed => "alg_not_allowed",
            Unverified::UnknownKey => "unknown_key",
            Unverified::AlgMismatch => "alg_mismatch",
            Unverified::BadSignature => "bad_signature",
            Unverified::Expired => "expired",
            Unverified::NotYetValid => "not_yet_valid",
            Unverified::WrongIssuer => "wrong_issuer",
            Unverified::WrongAudience => "wrong_audience",
            Unverified::ClaimMissing => "claim_missing",
            Unverified::NoVerifier => "no_verifier",
            Unverified::NotRecorded => "not_recorded",
        }
    }

    /// Reads [`Unverified::as_label`] back.
    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|u| u.as_label() == label)
    }

    /// For a person (explain).
    pub fn describe(self) -> &'static str {
        match self {
            Unverified::Absent => "no Authorization: Bearer token",
            Unverified::Malformed => "the bearer token is not a well-formed JWT with a numeric exp",
            Unverified::AlgNotAllowed => "the token's alg is none or not accepted",
            Unverified::UnknownKey => "no key for the token's kid (or alg)",
            Unverified::AlgMismatch => "the token's kid names a key of another type than its alg",
            Unverified::BadSignature => "the signature does not verify",
            Unverified::Expired => "the token has expired (exp passed)",
            Unverified::NotYetValid => "the token is not valid yet (nbf ahead)",
            Unverified::WrongIssuer => "the token's iss is not the configured issuer",
            Unverified::WrongAudience => "the token's aud does not name the configured audience",
            Unverified::ClaimMissing => "the verified token lacks the rule's claim",
            Unverified::NoVerifier => "no JWT keys are loaded",
            Unverified::NotRecorded => "the record holds no verified identity",
        }
    }
}

/// A token that verified: the claims the config's rules read, and how long
/// it stays valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// Its algorithm (`None` for an identity read from a record).
    pub alg: Option<JwtAlgorithm>,
    /// Its `kid`, when it named one.
    pub kid: Option<String>,
    /// `exp`, Unix seconds.
    pub exp: u64,
    /// `nbf`, Unix seconds, when present.
    pub nbf: Option<u64>,
    /// Claim name and value (numbers in their JSON text), for the claims the
    /// config's rules read. Never logged.
    claims: Vec<(String, String)>,
}

impl VerifiedToken {
    /// A verified identity made of claim values alone (`rampart replay`,
    /// tests): no algorithm, never expiring.
    pub fn from_claims(claims: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            alg: None,
            kid: None,
            exp: u64::MAX,
            nbf: None,
            claims: claims.into_iter().collect(),
        }
    }

    /// The value of `claim`, when the token carries it.
    pub fn claim(&self, claim: &str) -> Option<&str> {
        self.claims
            .iter()
            .find(|(name, _)| name == claim)
            .map(|(_, v)| v.as_str())
    }

    /// Every claim kept, name and value.
    pub fn claims(&self) -> impl Iterator<Item = (&str, &str)> {
        self.claims.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// What a request's bearer token gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityOutcome {
    /// Verified now or earlier.
    Verified {
        /// The token's claims.
        token: Arc<VerifiedToken>,
        /// Whether it came from the cache (no signature check).
        cached: bool,
    },
    /// Not verified: `jwt` rules count the request by address.
    Unverified(Unverified),
}

impl IdentityOutcome {
    /// The value of `claim` of a verified token.
    pub fn claim(&self, claim: &str) -> Option<&str> {
        match self {
            IdentityOutcome::Verified { token, .. } => token.claim(claim),
            IdentityOutcome::Unverified(_) => None,
        }
    }

    /// The explain line and trace outcome.
    pub fn describe(&self) -> (String, TraceOutcome) {
        match self {
            IdentityOutcome::Verified { token, cached } => (
                format!(
                    "bearer token verified{}{}{}; jwt rules count its claims (hashed)",
                    token
                        .alg
                        .map(|a| format!(" ({})", a.as_str()))
                        .unwrap_or_else(|| " (from the record)".into()),
                    token
                        .kid
                        .as_deref()
                        .map(|k| format!(", kid {}", crate::rejection::json_string(k)))
                        .unwrap_or_default(),
                    if *cached { ", from the cache" } else { "" }
                ),
                TraceOutcome::Passed,
            ),
            IdentityOutcome::Unverified(why) => (
                format!(
                    "no verified identity ({}: {}); jwt rules count this request by its address",
                    why.as_label(),
                    why.describe()
                ),
                TraceOutcome::NoMatch,
            ),
        }
    }
}

/// One verification key.
#[derive(Clone)]
struct KeyEntry {
    kid: Option<String>,
    alg: JwtAlgorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

/// Why a key set could not be built: the old one keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JwtKeysError(pub String);

/// A set of verification keys. Immutable; a changed file makes a new one.
#[derive(Debug, Clone, Default)]
pub struct JwtKeys {
    keys: Vec<KeyEntry>,
    /// JWKS entries left out (other types, curves, algorithms or uses).
    skipped: usize,
}

/// Shortest HS256 secret (RFC 7518 3.2: at least the hash's size).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

impl JwtKeys {
    /// The keys of a JWKS document (`jwks`) and an HS256 `secret`, restricted
    /// to the `accepted` algorithms. Refused: a JWKS that is not a key set, a
    /// key that does not decode, a secret shorter than
    /// [`MIN_HS256_SECRET_BYTES`], and no usable key at all.
    pub fn new(
        jwks: Option<&[u8]>,
        secret: Option<&[u8]>,
        accepted: &[JwtAlgorithm],
    ) -> Result<Self, JwtKeysError> {
        let mut keys = Vec::new();
        let mut skipped = 0;
        if let Some(text) = jwks {
            let set: JwkSet = serde_json::from_slice(text)
                .map_err(|e| JwtKeysError(format!("not a JSON Web Key Set: {e}")))?;
            for (i, jwk) in set.keys.iter().enumerate() {
                let Some(alg) = jwk_algorithm(jwk) else {
                    skipped += 1;
                    continue;
                };
                if !accepted.contains(&alg) {
                    skipped += 1;
                    continue;
                }
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| JwtKeysError(format!("keys[{i}] does not decode: {e}")))?;
                if alg == JwtAlgorithm::Hs256 && key_len(&key) < MIN_HS256_SECRET_BYTES {
                    return Err(JwtKeysError(format!(
                        "keys[{i}]: an HS256 key must be at least {MIN_HS256_SECRET_BYTES} bytes"
                    )));
                }
                keys.push(KeyEntry {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                });
            }
        }
        if let Some(secret) = secret {
            if secret.len() < MIN_HS256_SECRET_BYTES {
                return Err(JwtKeysError(format!(
                    "the HS256 secret must be at least {MIN_HS256_SECRET_BYTES} bytes"
                )));
            }
            let key = DecodingKey::from_secret(secret)
                .map_err(|e| JwtKeysError(format!("the HS256 secret is not usable: {e}")))?;
            keys.push(KeyEntry {
                kid: None,
                alg: JwtAlgorithm::Hs256,
                key,
            });
        }
        if keys.is_empty() {
            return Err(JwtKeysError(format!(
                "no usable key ({skipped} left out: other types, curves, algorithms or uses)"
            )));
        }
        Ok(Self { keys, skipped })
    }

    /// Keys loaded.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is loaded.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// JWKS entries left out.
    pub fn skipped(&self) -> usize {
        self.skipped
    }
}

fn key_len(key: &DecodingKey) -> usize {
    key.try_get_as_bytes().map_or(0, <[u8]>::len)
}

/// The one algorithm a JWK verifies: implied by its type (and curve), and
/// equal to its own `alg` when it states one. `None`: not usable for signatures.
fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<JwtAlgorithm> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => JwtAlgorithm::Rs256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            JwtAlgorithm::Es256
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            JwtAlgorithm::EdDsa
        }
        AlgorithmParameters::OctetKey(_) => JwtAlgorithm::Hs256,
        _ => return None,
    };
    let stated = match jwk.common.key_algorithm {
        None => return Some(implied),
        Some(KeyAlgorithm::HS256) => JwtAlgorithm::Hs256,
        Some(KeyAlgorithm::RS256) => JwtAlgorithm::Rs256,
        Some(KeyAlgorithm::ES256) => JwtAlgorithm::Es256,
        Some(KeyAlgorithm::EdDSA) => JwtAlgorithm::EdDsa,
        Some(_) => return None,
    };
    (stated == implied).then_some(implied)
}

fn to_jsonwebtoken(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::Hs256 => Algorithm::HS256,
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Es256 => Algorithm::ES256,
        JwtAlgorithm::EdDsa => Algorithm::EdDSA,
    }
}

/// Where a verifier reads the time.
#[derive(Debug, Clone, Default)]
pub enum JwtClock {
    /// The system clock.
    #[default]
    System,
    /// A clock a test sets (Unix seconds).
    Manual(Arc<AtomicU64>),
}

impl JwtClock {
    /// Now, Unix seconds.
    pub fn now(&self) -> u64 {
        match self {
            JwtClock::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            JwtClock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }
}

/// The claims the `key = "jwt"` rules of `config` read, sorted, once each.
pub fn claims_of(config: &rampart_config::Config) -> Vec<String> {
    let mut claims: Vec<String> = config
        .limits
        .iter()
        .map(|l| &l.key)
        .chain(config.concurrency.iter().map(|c| &c.key))
        .filter_map(|k| match k {
            KeyKind::Jwt { claim } => Some(claim.clone()),
            _ => None,
        })
        .collect();
    claims.sort();
    claims.dedup();
    claims
}

/// Verifies bearer tokens against one key set (see the module doc).
#[derive(Debug)]
pub struct JwtVerifier {
    keys: JwtKeys,
    accepted: Vec<JwtAlgorithm>,
    leeway: u64,
    /// Signature, `iss` and `aud` checks per algorithm (`exp` and `nbf` are
    /// checked here, against [`JwtClock`]).
    validation: [Validation; 4],
    claims: Vec<String>,
    cache: TokenCache,
    clock: JwtClock,
    /// Tokens verified with a signature check (cache misses).
    checked: AtomicU64,
}

impl JwtVerifier {
    /// A verifier of `keys` under `config`, keeping the values of `claims`
    /// (see [`claims_of`]).
    pub fn new(config: &JwtConfig, keys: JwtKeys, claims: Vec<String>) -> Self {
        // `jsonwebtoken` picks its crypto backend from its crate features and
        // panics on decode when it cannot (both backends enabled by some
        // other crate, through feature unification): name ours once, here.
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
        );
        let validation = JwtAlgorithm::ALL.map(|alg| {
            let mut v = Validation::new(to_jsonwebtoken(alg));
            v.validate_exp = false;
            v.validate_nbf = false;
            v.required_spec_claims.clear();
            v.leeway = 0;
            match &config.issuer {
                Some(iss) => {
                    v.set_issuer(&[iss]);
                    v.required_spec_claims.insert("iss".into());
                }
                None => v.iss = None,
            }
            match &config.audience {
                Some(aud) => {
                    v.set_audience(&[aud]);
                    v.required_spec_claims.insert("aud".into());
                }
                None => v.validate_aud = false,
            }
            v
        });
        Self {
            keys,
            accepted: config.algorithms.clone(),
            leeway: config.leeway.as_secs(),
            validation,
            claims,
            cache: TokenCache::new(config.cache_size.get() as usize),
            clock: JwtClock::System,
            checked: AtomicU64::new(0),
        }
    }

    /// This verifier reading the time from `clock`.
    pub fn with_clock(mut self, clock: JwtClock) -> Self {
        self.clock = clock;
        self
    }

    /// The key set.
    pub fn keys(&self) -> &JwtKeys {
        &self.keys
    }

    /// The claims it keeps.
    pub fn claim_names(&self) -> &[String] {
        &self.claims
    }

    /// Verified tokens remembered now.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Signature checks made so far (tokens not found in the cache).
    pub fn signature_checks(&self) -> u64 {
        self.checked.load(Ordering::Relaxed)
    }

    /// Drops cached tokens that have expired; returns how many.
    pub fn sweep(&self) -> usize {
        self.cache.sweep(self.clock.now(), self.leeway)
    }

    /// The identity of a request: its `Authorization: Bearer` token, verified.
    pub fn verify_request(&self, headers: &http::HeaderMap) -> IdentityOutcome {
        match bearer_token(headers) {
            Ok(Some(token)) => self.verify(token),
            Ok(None) => IdentityOutcome::Unverified(Unverified::Absent),
            Err(why) => IdentityOutcome::Unverified(why),
        }
    }

    /// Verifies one token (the cache first).
    pub fn verify(&self, token: &str) -> IdentityOutcome {
        if token.len() > MAX_TOKEN_BYTES {
            return IdentityOutcome::Unverified(Unverified::Malformed);
        }
        let now = self.clock.now();
        let id = self.cache.id(token);
        if let Some(hit) = self.cache.get(id) {
            return match self.in_time(hit.exp, hit.nbf, now) {
                Ok(()) => IdentityOutcome::Verified {
                    token: hit,
                    cached: true,
                },
                Err(why) => {
                    if why == Unverified::Expired {
                        self.cache.remove(id);
                    }
                    IdentityOutcome::Unverified(why)
                }
            };
        }
        match self.verify_uncached(token, now) {
            Ok(verified) => {
                let verified = Arc::new(verified);
                self.cache.insert(id, verified.clone());
                IdentityOutcome::Verified {
                    token: verified,
                    cached: false,
                }
            }
            Err(why) => IdentityOutcome::Unverified(why),
        }
    }

    fn in_time(&self, exp: u64, nbf: Option<u64>, now: u64) -> Result<(), Unverified> {
        if now > exp.saturating_add(self.leeway) {
            return Err(Unverified::Expired);
        }
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway)) {
            return Err(Unverified::NotYetValid);
        }
        Ok(())
    }

    fn verify_uncached(&self, token: &str, now: u64) -> Result<VerifiedToken, Unverified> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Unverified::Malformed);
        };
        if header.is_empty() || payload.is_empty() || signature.is_empty() {
            return Err(Unverified::Malformed);
        }
        #[derive(serde::Deserialize)]
        struct RawHeader {
            alg: String,
            #[serde(default)]
            kid: Option<String>,
        }
        let header: RawHeader = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(Unverified::Malformed)?;
        let alg = JwtAlgorithm::parse(&header.alg)
            .filter(|a| self.accepted.contains(a))
            .ok_or(Unverified::AlgNotAllowed)?;
        let kid = header.kid.as_deref();
        let candidates: Vec<&KeyEntry> = self
            .keys
            .keys
            .iter()
            .filter(|k| k.alg == alg)
            .filter(|k| match (k.kid.as_deref(), kid) {
                (Some(have), Some(want)) => have == want,
                _ => true,
            })
            .take(MAX_CANDIDATES)
            .collect();
        if candidates.is_empty() {
            let other_type = kid.is_some_and(|want| {
                self.keys
                    .keys
                    .iter()
                    .any(|k| k.kid.as_deref() == Some(want))
            });
            return Err(if other_type {
                Unverified::AlgMismatch
            } else {
                Unverified::UnknownKey
            });
        }
        let claims: serde_json::Map<String, Value> = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(Unverified::Malformed)?;
        let exp = claims
            .get("exp")
            .and_then(seconds)
            .ok_or(Unverified::Malformed)?;
        let nbf = match claims.get("nbf") {
            None => None,
            Some(v) => Some(seconds(v).ok_or(Unverified::Malformed)?),
        };
        self.in_time(exp, nbf, now)?;
        self.checked.fetch_add(1, Ordering::Relaxed);
        let slot = JwtAlgorithm::ALL
            .iter()
            .position(|a| *a == alg)
            .unwrap_or_default();
        let validation = &self.validation[slot];
        let mut failure = Unverified::BadSignature;
        let mut verified = false;
        for key in candidates {
            match jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &key.key, validation) {
                Ok(_) => {
                    verified = true;
                    break;
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as E;
                    failure = match e.kind() {
                        E::InvalidSignature => continue,
                        E::InvalidIssuer => Unverified::WrongIssuer,
                        E::InvalidAudience => Unverified::WrongAudience,
                        E::InvalidClaimFormat(c) | E::MissingRequiredClaim(c) if c == "iss" => {
                            Unverified::WrongIssuer
                        }
                        E::InvalidClaimFormat(c) | E::MissingRequiredClaim(c) if c == "aud" => {
                            Unverified::WrongAudience
                        }
                        _ => Unverified::Malformed,
                    };
                    break;
                }
            }
        }
        if !verified {
            return Err(failure);
        }
        let kept = self
            .claims
            .iter()
            .filter_map(|name| {
                let value = match claims.get(name)? {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                Some((name.clone(), value))
            })
            .collect();
        Ok(VerifiedToken {
            alg: Some(alg),
            kid: header.kid,
            exp,
            nbf,
            claims: kept,
        })
    }
}

/// A NumericDate (RFC 7519): seconds, fractions cut.
fn seconds(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

/// The bearer token of a request: `Ok(None)` without an `Authorization`
/// field or with another scheme; refused when the field is repeated (an
/// origin might read the other one) or not text.
pub fn bearer_token(headers: &http::HeaderMap) -> Result<Option<&str>, Unverified> {
    let mut all = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(Unverified::Malformed);
    }
    let value = value.to_str().map_err(|_| Unverified::Malformed)?;
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(Unverified::Malformed);
    }
    Ok(Some(token))
}

/// The cache of verified tokens (see the module doc).
#[derive(Debug)]
struct TokenCache {
    map: DashMap<(u64, u64), Arc<VerifiedToken>, ahash::RandomState>,
    len: AtomicUsize,
    cap: usize,
    keys: (ahash::RandomState, ahash::RandomState),
}

impl TokenCache {
    fn new(cap: usize) -> Self {
        Self {
            map: DashMap::with_hasher(ahash::RandomState::new()),
            len: AtomicUsize::new(0),
            cap,
            keys: (ahash::RandomState::new(), ahash::RandomState::new()),
        }
    }

    fn id(&self, token: &str) -> (u64, u64) {
        (self.keys.0.hash_one(token), self.keys.1.hash_one(token))
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn get(&self, id: (u64, u64)) -> Option<Arc<VerifiedToken>> {
        self.map.get(&id).map(|e| e.value().clone())
    }

    fn insert(&self, id: (u64, u64), token: Arc<VerifiedToken>) {
        if self.len() >= self.cap {
            return;
        }
        if self.map.insert(id, token).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn remove(&self, id: (u64, u64)) {
        if self.map.remove(&id).is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn sweep(&self, now: u64, leeway: u64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, t| now <= t.exp.saturating_add(leeway));
        let after = self.map.len();
        self.len.store(after, Ordering::Relaxed);
        before.saturating_sub(after)
    }
}

/// The identity of a request as a record keeps it: each claim the config's
/// rules read as a keyed hash, or the reason no token verified.
pub fn recorded_claims(
    outcome: &IdentityOutcome,
) -> Result<impl Iterator<Item = (&str, &str)>, Unverified> {
    match outcome {
        IdentityOutcome::Verified { token, .. } => Ok(token.claims()),
        IdentityOutcome::Unverified(why) => Err(*why),
    }
}

/// A claim map read back from a record (see [`crate::record::RecordedIdentity`]).
pub fn outcome_from_record(claims: &BTreeMap<String, String>) -> IdentityOutcome {
    IdentityOutcome::Verified {
        token: Arc::new(VerifiedToken::from_claims(
            claims.iter().map(|(k, v)| (k.clone(), v.clone())),
        )),
        cached: false,
    }
}
