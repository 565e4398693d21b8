//! Token issuers for tests and benches: keys generated at run time (no
//! private key is committed), tokens signed here with aws-lc-rs directly, so
//! the verifier under test is checked against an independent signer.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

/// A signing key of one algorithm, with its `kid`.
pub struct TestIssuer {
    /// The `kid` of its tokens and JWK (`None`: no `kid`).
    pub kid: Option<String>,
    signer: Signer,
}

enum Signer {
    Hs256(Vec<u8>),
    Rs256(Box<RsaKeyPair>),
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

impl std::fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestIssuer")
            .field("kid", &self.kid)
            .field("alg", &self.alg())
            .finish()
    }
}

impl TestIssuer {
    /// HS256 with `secret`.
    pub fn hs256(kid: Option<&str>, secret: &[u8]) -> Self {
        Self::new(kid, Signer::Hs256(secret.to_vec()))
    }

    /// RS256 with a fresh 2048-bit key.
    pub fn rs256(kid: Option<&str>) -> Self {
        let key = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
        Self::new(kid, Signer::Rs256(Box::new(key)))
    }

    /// ES256 with a fresh P-256 key.
    pub fn es256(kid: Option<&str>) -> Self {
        let key =
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 key generation");
        Self::new(kid, Signer::Es256(key))
    }

    /// EdDSA with a fresh Ed25519 key.
    pub fn eddsa(kid: Option<&str>) -> Self {
        let key = Ed25519KeyPair::generate().expect("Ed25519 key generation");
        Self::new(kid, Signer::EdDsa(key))
    }

    fn new(kid: Option<&str>, signer: Signer) -> Self {
        Self {
            kid: kid.map(str::to_string),
            signer,
        }
    }

    /// The algorithm's name.
    pub fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Hs256(_) => "HS256",
            Signer::Rs256(_) => "RS256",
            Signer::Es256(_) => "ES256",
            Signer::EdDsa(_) => "EdDSA",
        }
    }

    /// The public JWK (the secret itself for HS256), with `kid` and `alg`.
    pub fn jwk(&self) -> Value {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let mut jwk = match &self.signer {
            Signer::Hs256(secret) => json!({"kty": "oct", "k": b64(secret)}),
            Signer::Rs256(key) => {
                let c = PublicKeyComponents::<Vec<u8>>::from(key.public_key());
                json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Signer::Es256(key) => {
                let point = key.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            Signer::EdDsa(key) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(key.public_key().as_ref())})
            }
        };
        jwk["alg"] = json!(self.alg());
        jwk["use"] = json!("sig");
        if let Some(kid) = &self.kid {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    /// A token with these claims, its header `{"alg", "typ": "JWT", "kid"}`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = json!({"alg": self.alg(), "typ": "JWT"});
        if let Some(kid) = &self.kid {
            header["kid"] = json!(kid);
        }
        self.sign_with_header(&header, claims)
    }

    /// A token with this header (any `alg`: the signature is always this
    /// issuer's) and these claims.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = match &self.signer {
            Signer::Hs256(secret) => {
                let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
                aws_lc_rs::hmac::sign(&key, message.as_bytes())
                    .as_ref()
                    .to_vec()
            }
            Signer::Rs256(key) => {
                let mut sig = vec![0; key.public_modulus_len()];
                key.sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    message.as_bytes(),
                    &mut sig,
                )
                .expect("RSA signing");
                sig
            }
            Signer::Es256(key) => key
                .sign(&SystemRandom::new(), message.as_bytes())
                .expect("ECDSA signing")
                .as_ref()
                .to_vec(),
            Signer::EdDsa(key) => key.sign(message.as_bytes()).as_ref().to_vec(),
        };
        format!("{message}.{}", b64(&signature))
    }
}

/// A JWKS document holding the public keys of `issuers`.
pub fn jwks(issuers: &[&TestIssuer]) -> String {
    json!({"keys": issuers.iter().map(|i| i.jwk()).collect::<Vec<_>>()}).to_string()
}

/// Now, Unix seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
