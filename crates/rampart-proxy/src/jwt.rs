//! The key set of `key = "jwt"` rules, read from the files and environment
//! `[jwt]` names: at start-up, on a reload that changes `[jwt]`, its claims
//! or the JWKS file, and when the JWKS file changes on disk
//! ([`crate::background::JwtRefresh`]). A file that cannot be read or holds
//! no usable key is refused: the old key set keeps serving, the error is
//! logged and counted (`rampart_jwt_jwks_reloads_total{result="error"}`).

use rampart_config::{Config, JwtConfig, TokenSource};
use rampart_policy::geo::FileStamp;
use rampart_policy::jwt::claims_of;
use rampart_policy::{JwtKeys, JwtVerifier};
use std::path::PathBuf;

/// A verifier and where its keys came from.
#[derive(Debug)]
pub struct JwtLoaded {
    /// Verifies bearer tokens (and caches verified ones).
    pub verifier: JwtVerifier,
    config: JwtConfig,
    claims: Vec<String>,
    /// The JWKS file's stamp when read.
    stamp: Option<FileStamp>,
}

/// Why the keys could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {reason}", .path.display())]
pub struct JwtLoadError {
    /// The file (or `$NAME` of the variable) it came from.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

impl JwtLoaded {
    /// Reads the keys `config` names (blocking file reads: call off the
    /// async workers). `Ok(None)` without `[jwt]`.
    pub fn open(config: &Config) -> Result<Option<JwtLoaded>, JwtLoadError> {
        let Some(jwt) = &config.jwt else {
            return Ok(None);
        };
        let err = |path: PathBuf, reason: String| JwtLoadError { path, reason };
        let stamp = jwt.jwks_file.as_deref().and_then(FileStamp::of);
        let jwks = match &jwt.jwks_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| err(path.clone(), format!("cannot read the JWKS file: {e}")))?,
            ),
            None => None,
        };
        let secret = match &jwt.hs256_secret {
            None => None,
            Some(TokenSource::Env(name)) => Some(
                std::env::var(name)
                    .map_err(|_| {
                        err(
                            PathBuf::from(format!("${name}")),
                            "the HS256 secret's environment variable is not set".into(),
                        )
                    })?
                    .trim()
                    .to_string(),
            ),
            Some(TokenSource::File(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| err(path.clone(), format!("cannot read the HS256 secret: {e}")))?
                    .trim()
                    .to_string(),
            ),
        };
        let keys = JwtKeys::new(
            jwks.as_deref(),
            secret.as_deref().map(str::as_bytes),
            &jwt.algorithms,
        )
        .map_err(|e| {
            let path = jwt
                .jwks_file
                .clone()
                .unwrap_or_else(|| PathBuf::from("[jwt]"));
            err(path, e.0)
        })?;
        let claims = claims_of(config);
        Ok(Some(JwtLoaded {
            verifier: JwtVerifier::new(jwt, keys, claims.clone()),
            config: jwt.clone(),
            claims,
            stamp,
        }))
    }

    /// Whether `config` would load the same keys as this: same `[jwt]`, same
    /// claims, and the JWKS file unchanged on disk. (The HS256 secret is read
    /// again only when something else changed, or at restart.)
    pub fn is_current(&self, config: &Config) -> bool {
        config.jwt.as_ref() == Some(&self.config)
            && claims_of(config) == self.claims
            && !self.jwks_changed()
    }

    /// Whether the JWKS file differs from the one read.
    pub fn jwks_changed(&self) -> bool {
        match &self.config.jwks_file {
            Some(path) => FileStamp::of(path) != self.stamp,
            None => false,
        }
    }

    /// The JWKS file, if any.
    pub fn jwks_file(&self) -> Option<&std::path::Path> {
        self.config.jwks_file.as_deref()
    }
}
