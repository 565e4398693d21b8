//! `[jwt]`: the keys that verify bearer tokens for `key = "jwt"` rules.

use super::Validator;
use crate::*;
use std::path::PathBuf;

impl Validator {
    pub(super) fn jwt(&mut self, raw: file::FileJwt) -> JwtConfig {
        let has_source = raw.jwks_file.is_some()
            || raw.hs256_secret_file.is_some()
            || raw.hs256_secret_env.is_some();
        if !has_source {
            self.issue(
                "jwt",
                "needs a key source: jwks_file, hs256_secret_file or hs256_secret_env",
            );
        }
        let jwks_file = raw
            .jwks_file
            .as_deref()
            .and_then(|f| self.existing_file("jwt.jwks_file", f));
        let hs256_secret = match (raw.hs256_secret_file, raw.hs256_secret_env) {
            (Some(_), Some(_)) => {
                self.issue("jwt", "set hs256_secret_file or hs256_secret_env, not both");
                None
            }
            (Some(file), None) => self
                .existing_file("jwt.hs256_secret_file", &file)
                .map(TokenSource::File),
            (None, Some(env)) if env.is_empty() => {
                self.issue("jwt.hs256_secret_env", "must not be empty");
                None
            }
            (None, Some(env)) => Some(TokenSource::Env(env)),
            (None, None) => None,
        };
        let algorithms = match raw.algorithms {
            None => JwtAlgorithm::ALL.to_vec(),
            Some(names) if names.is_empty() => {
                self.issue("jwt.algorithms", "must name at least one algorithm");
                JwtAlgorithm::ALL.to_vec()
            }
            Some(names) => {
                let mut algorithms = Vec::new();
                for (i, name) in names.iter().enumerate() {
                    match JwtAlgorithm::parse(name) {
                        Some(a) if !algorithms.contains(&a) => algorithms.push(a),
                        Some(_) => {}
                        None if name.eq_ignore_ascii_case("none") => self.issue(
                            format!("jwt.algorithms[{i}]"),
                            "\"none\" is never accepted: an unsigned token proves nothing",
                        ),
                        None => self.issue(
                            format!("jwt.algorithms[{i}]"),
                            format!("\"{name}\" is not a supported algorithm (use HS256, RS256, ES256 or EdDSA)"),
                        ),
                    }
                }
                algorithms.sort();
                algorithms
            }
        };
        if hs256_secret.is_some() && !algorithms.contains(&JwtAlgorithm::Hs256) {
            self.issue(
                "jwt.algorithms",
                "an HS256 secret is set but HS256 is not accepted",
            );
        }
        let leeway = self.duration("jwt.leeway", raw.leeway.as_deref(), DEFAULT_JWT_LEEWAY);
        if leeway > MAX_JWT_LEEWAY {
            self.issue(
                "jwt.leeway",
                format!(
                    "must be at most {} s, got {} s",
                    MAX_JWT_LEEWAY.as_secs(),
                    leeway.as_secs()
                ),
            );
        }
        let mut text = |key: &str, value: Option<String>| match value {
            Some(v) if v.is_empty() => {
                self.issue(
                    format!("jwt.{key}"),
                    "must not be empty (leave it out to accept any)",
                );
                None
            }
            v => v,
        };
        let issuer = text("issuer", raw.issuer);
        let audience = text("audience", raw.audience);
        JwtConfig {
            jwks_file,
            hs256_secret,
            algorithms,
            leeway: leeway.min(MAX_JWT_LEEWAY),
            issuer,
            audience,
            check_interval: self.nonzero_duration(
                "jwt.check_interval",
                raw.check_interval.as_deref(),
                DEFAULT_JWT_CHECK_INTERVAL,
            ),
            cache_size: self.count("jwt.cache_size", raw.cache_size, DEFAULT_JWT_CACHE_SIZE),
        }
    }

    /// A file the config names, relative to the config's folder; an issue when
    /// it does not exist (a stat, like the TLS files).
    fn existing_file(&mut self, key: &str, name: &str) -> Option<PathBuf> {
        let path = self.relative_path(name);
        if !path.is_file() {
            self.issue(key, format!("file {} does not exist", path.display()));
            return None;
        }
        Some(path)
    }
}
