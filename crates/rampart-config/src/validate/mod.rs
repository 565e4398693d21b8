//! The step from file structs to the typed config: one [`Validator`] collects
//! every problem; each section of the file has its own module.

mod access;
mod body;
mod escalations;
mod fleet;
mod geoip;
mod jwt;
mod limits;
mod listeners;
mod lockdown;
mod pools;
mod routes;
mod server;

use crate::*;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Turns file structs into typed config, recording every problem it meets in
/// one list instead of stopping at the first.
pub(crate) struct Validator {
    file: PathBuf,
    pub(super) issues: Vec<ConfigIssue>,
}

impl Validator {
    pub(super) fn new(path: &Path) -> Self {
        Self {
            file: path.to_path_buf(),
            issues: Vec::new(),
        }
    }

    pub(super) fn into_error(self) -> ConfigError {
        ConfigError {
            file: self.file,
            issues: self.issues,
        }
    }

    pub(super) fn whole_file(&mut self, reason: String) {
        self.issue(String::new(), reason);
    }

    pub(super) fn issue(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: key.into(),
            reason: reason.into(),
        });
    }

    /// Resolves a file name relative to the config file's folder.
    pub(super) fn relative_path(&self, name: &str) -> PathBuf {
        let p = Path::new(name);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file
                .parent()
                .map(|dir| dir.join(p))
                .unwrap_or_else(|| p.to_path_buf())
        }
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Duration {
        self.duration_min(key, value, default, Duration::ZERO)
    }

    pub(super) fn nonzero_duration(
        &mut self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Duration {
        self.duration_min(key, value, default, Duration::from_millis(1))
    }

    pub(super) fn duration_min(
        &mut self,
        key: &str,
        value: Option<&str>,
        default: Duration,
        min: Duration,
    ) -> Duration {
        let Some(text) = value else { return default };
        match parse_duration(text) {
            Ok(d) if d < min => {
                self.issue(key, "must be longer than zero");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.issue(key, e);
                default
            }
        }
    }

    pub(super) fn count(&mut self, key: &str, value: Option<i64>, default: u32) -> NonZeroU32 {
        let fallback = NonZeroU32::new(default).unwrap_or(NonZeroU32::MIN);
        match value {
            None => fallback,
            Some(n) => match u32::try_from(n).ok().and_then(NonZeroU32::new) {
                Some(n) => n,
                None => {
                    self.issue(key, format!("must be a whole number from 1 up, got {n}"));
                    fallback
                }
            },
        }
    }

    pub(super) fn socket_addr(&mut self, key: &str, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.issue(
                    key,
                    format!("\"{text}\" is not an IP:PORT address (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")"),
                );
                None
            }
        }
    }

    pub(super) fn config(&mut self, raw: file::FileConfig) -> Option<Config> {
        let server = self.server(raw.server);
        let client_ip = self.client_ip(raw.client_ip);
        let listeners = self.listeners(raw.listeners);
        let admin = self.admin(raw.admin, &listeners);
        let pools: Vec<PoolConfig> = raw
            .pools
            .into_iter()
            .filter_map(|(name, pool)| self.pool(name, pool))
            .collect();
        let pool_names: Vec<String> = pools.iter().map(|p| p.name.clone()).collect();
        let routes = self.routes(raw.routes, &pool_names);
        let unmatched = self.unmatched(raw.unmatched, &pool_names);
        let route_names: Vec<String> = routes.iter().map(|r| r.name.clone()).collect();
        let geoip = self.geoip(raw.geoip);
        let jwt = raw.jwt.map(|j| self.jwt(j));
        let mut rule_names = BTreeSet::new();
        let access: Vec<AccessRuleConfig> = raw
            .access
            .into_iter()
            .enumerate()
            .map(|(i, a)| self.access(i, a, &route_names, &geoip, &mut rule_names))
            .collect();
        let flag_names: Vec<String> = raw.flags.iter().filter_map(|f| f.name.clone()).collect();
        let limits: Vec<LimitConfig> = raw
            .limits
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let sources = limits::KeySources {
                    geoip: &geoip,
                    jwt: jwt.is_some(),
                };
                self.limit(i, l, &route_names, &mut rule_names, &flag_names, sources)
            })
            .collect();
        let concurrency: Vec<ConcurrencyConfig> = raw
            .concurrency
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let sources = limits::KeySources {
                    geoip: &geoip,
                    jwt: jwt.is_some(),
                };
                self.concurrency(i, c, &route_names, &mut rule_names, sources)
            })
            .collect();
        let referenced: Vec<usize> = limits
            .iter()
            .filter_map(|l: &LimitConfig| l.only_with_flag)
            .collect();
        let lockdown = self.lockdown(raw.lockdown, raw.flags, &route_names, &geoip, &referenced);
        let mut escalation_names = BTreeSet::new();
        let escalations = raw
            .escalations
            .into_iter()
            .enumerate()
            .filter_map(|(i, e)| {
                self.escalation(
                    i,
                    e,
                    &route_names,
                    &pool_names,
                    &flag_names,
                    &mut escalation_names,
                )
            })
            .collect();
        let access_log = self.access_log(raw.access_log);
        let record = self.record(raw.record);
        let fleet = raw.fleet.map(|f| self.fleet(f));
        let request = self.request(raw.request);
        if fleet.is_none() {
            for (i, l) in limits.iter().enumerate() {
                if matches!(l.scope, LimitScope::Fleet { .. }) {
                    self.issue(
                        format!("limits[{i}].scope"),
                        "\"fleet\" needs a [fleet] section",
                    );
                }
            }
        }
        if !listeners.iter().any(|l| l.tls.is_some()) {
            self.ja4_needs_tls(&access, &limits, &concurrency);
        }
        Some(Config {
            escalations,
            request,
            fleet,
            access_log,
            record,
            server,
            client_ip,
            listeners,
            admin: admin?,
            pools,
            routes,
            unmatched: unmatched?,
            geoip,
            access,
            limits,
            concurrency,
            lockdown,
            jwt,
        })
    }

    /// Without a TLS listener no request has a JA4: rules that read it would
    /// key everyone by address or never match.
    fn ja4_needs_tls(
        &mut self,
        access: &[AccessRuleConfig],
        limits: &[LimitConfig],
        concurrency: &[ConcurrencyConfig],
    ) {
        let why = "needs a listener with tls (JA4 is the fingerprint of a TLS hello; plaintext requests have none)";
        let lists = |c: &ClientCondition| {
            [("ja4", c.ja4.is_empty()), ("not_ja4", c.not_ja4.is_empty())]
                .into_iter()
                .filter(|(_, empty)| !empty)
                .map(|(name, _)| name)
                .collect::<Vec<_>>()
        };
        for (i, a) in access.iter().enumerate() {
            for name in lists(&a.clients) {
                self.issue(format!("access[{i}].{name}"), why);
            }
        }
        for (i, l) in limits.iter().enumerate() {
            if l.key == KeyKind::Ja4 {
                self.issue(format!("limits[{i}].key"), format!("\"ja4\" {why}"));
            }
            for name in lists(&l.clients) {
                self.issue(format!("limits[{i}].{name}"), why);
            }
        }
        for (i, c) in concurrency.iter().enumerate() {
            if c.key == KeyKind::Ja4 {
                self.issue(format!("concurrency[{i}].key"), format!("\"ja4\" {why}"));
            }
        }
    }

    pub(super) fn rule_name(
        &mut self,
        key: &str,
        name: Option<String>,
        index: usize,
        seen: &mut BTreeSet<String>,
    ) -> String {
        let name = match name {
            Some(n) if is_name(&n) => n,
            Some(n) => {
                self.issue(
                    format!("{key}.name"),
                    format!("\"{n}\": rule names use lower-case letters, digits, '_' and '-' only"),
                );
                n
            }
            None => {
                self.issue(format!("{key}.name"), "is required");
                format!("rule{index}")
            }
        };
        if !seen.insert(name.clone()) {
            self.issue(
                format!("{key}.name"),
                format!("\"{name}\" is used by another rule"),
            );
        }
        name
    }

    pub(super) fn route_refs(
        &mut self,
        key: &str,
        names: Option<Vec<String>>,
        routes: &[String],
    ) -> Option<Vec<usize>> {
        let names = names?;
        let mut out = Vec::new();
        for (j, name) in names.iter().enumerate() {
            match routes.iter().position(|r| r == name) {
                Some(i) => out.push(i),
                None => self.issue(
                    format!("{key}.routes[{j}]"),
                    format!(
                        "unknown route \"{name}\" (known: {})",
                        if routes.is_empty() {
                            "none".to_string()
                        } else {
                            routes.join(", ")
                        }
                    ),
                ),
            }
        }
        Some(out)
    }
}

pub(super) fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

pub(super) fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
