//! `[[routes]]` and `[unmatched]`: which pool serves a request.

use super::{is_name, Validator};
use crate::*;
use std::collections::BTreeSet;

impl Validator {
    pub(super) fn routes(
        &mut self,
        raw: Vec<file::FileRoute>,
        pools: &[String],
    ) -> Vec<RouteConfig> {
        let mut names = BTreeSet::new();
        let mut out = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let key = format!("routes[{i}]");
            let name = match r.name {
                Some(n) if is_name(&n) => n,
                Some(n) => {
                    self.issue(
                        format!("{key}.name"),
                        format!(
                            "\"{n}\": route names use lower-case letters, digits, '_' and '-' only"
                        ),
                    );
                    n
                }
                None => {
                    self.issue(format!("{key}.name"), "is required");
                    format!("route{i}")
                }
            };
            if !names.insert(name.clone()) {
                self.issue(
                    format!("{key}.name"),
                    format!("\"{name}\" is used by another route"),
                );
            }
            let path_prefix = r.path_prefix.unwrap_or_else(|| "/".to_string());
            if !path_prefix.starts_with('/') {
                self.issue(
                    format!("{key}.path_prefix"),
                    format!("\"{path_prefix}\" must start with '/'"),
                );
            }
            let mut methods = Vec::new();
            for (j, m) in r.methods.unwrap_or_default().into_iter().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    self.issue(
                        format!("{key}.methods[{j}]"),
                        format!("\"{m}\" is not an HTTP method"),
                    );
                } else {
                    methods.push(m.to_ascii_uppercase());
                }
            }
            let host = r.host.map(|h| h.to_ascii_lowercase());
            let kind = match r.kind.as_deref() {
                None | Some("api") => RouteKind::Api,
                Some("browser") => RouteKind::Browser,
                Some(other) => {
                    self.issue(
                        format!("{key}.kind"),
                        format!("\"{other}\" is not a route kind (use \"api\" or \"browser\")"),
                    );
                    RouteKind::Api
                }
            };
            let pool = self.pool_ref(&format!("{key}.pool"), r.pool.as_deref(), pools);
            out.push(RouteConfig {
                name,
                host,
                path_prefix,
                methods,
                case_insensitive: r.case_insensitive.unwrap_or(false),
                pool: pool.unwrap_or(0),
                kind,
                close_on_reject: r.close_on_reject.unwrap_or(false),
            });
        }
        // Routes match on host and path only (methods answer 405, never route
        // elsewhere), so an earlier route that covers a later one's host and
        // path takes every request meant for it, with none of its flags, body
        // rules or limits.
        for (j, later) in out.iter().enumerate() {
            if let Some((i, earlier)) = out[..j]
                .iter()
                .enumerate()
                .find(|(_, earlier)| route_covers(earlier, later))
            {
                self.issue(
                    format!("routes[{j}].path_prefix"),
                    format!(
                        "route \"{}\" is never reached: route \"{}\" (routes[{i}], path_prefix \"{}\") comes first and takes every request under \"{}\"; list the narrower route first",
                        later.name, earlier.name, earlier.path_prefix, later.path_prefix
                    ),
                );
            }
        }
        out
    }

    pub(super) fn pool_ref(
        &mut self,
        key: &str,
        name: Option<&str>,
        pools: &[String],
    ) -> Option<usize> {
        let Some(name) = name else {
            self.issue(key, "is required");
            return None;
        };
        let found = pools.iter().position(|p| p == name);
        if found.is_none() {
            self.issue(
                key,
                format!(
                    "unknown pool \"{name}\" (known: {})",
                    if pools.is_empty() {
                        "none".to_string()
                    } else {
                        pools.join(", ")
                    }
                ),
            );
        }
        found
    }

    pub(super) fn unmatched(
        &mut self,
        raw: file::FileUnmatched,
        pools: &[String],
    ) -> Option<UnmatchedConfig> {
        match raw.action.as_deref() {
            None | Some("reject") => {
                if raw.pool.is_some() {
                    self.issue("unmatched.pool", "only used with action = \"proxy\"");
                }
                let status = match raw.status {
                    None => DEFAULT_UNMATCHED_STATUS,
                    Some(s) if (400..=599).contains(&s) => s as u16,
                    Some(s) => {
                        self.issue(
                            "unmatched.status",
                            format!("must be an error status from 400 to 599, got {s}"),
                        );
                        DEFAULT_UNMATCHED_STATUS
                    }
                };
                Some(UnmatchedConfig::Reject { status })
            }
            Some("proxy") => {
                if raw.status.is_some() {
                    self.issue("unmatched.status", "only used with action = \"reject\"");
                }
                let pool = self.pool_ref("unmatched.pool", raw.pool.as_deref(), pools);
                Some(UnmatchedConfig::Proxy {
                    pool: pool.unwrap_or(0),
                })
            }
            Some(other) => {
                self.issue(
                    "unmatched.action",
                    format!("\"{other}\" is not an action (use \"reject\" or \"proxy\")"),
                );
                None
            }
        }
    }
}

/// Whether route `a` (earlier) takes every request that route `b` would match:
/// same or no host, and `b`'s path prefix lies under `a`'s on whole segments
/// (without regard to case when `a` ignores case).
pub(super) fn route_covers(a: &RouteConfig, b: &RouteConfig) -> bool {
    let host = match (&a.host, &b.host) {
        (None, _) => true,
        (Some(x), Some(y)) => x == y,
        (Some(_), None) => false,
    };
    if !host {
        return false;
    }
    let (p, q) = (a.path_prefix.as_bytes(), b.path_prefix.as_bytes());
    if q.len() < p.len() {
        return false;
    }
    let head = &q[..p.len()];
    let same = if a.case_insensitive {
        head.eq_ignore_ascii_case(p)
    } else {
        head == p
    };
    // b's prefix may itself end mid-segment ("/api/x" vs "/api/xy"): only whole
    // segments count, as in matching.
    same && (p.ends_with(b"/") || q.len() == p.len() || matches!(q[p.len()], b'/' | b';'))
}
