//! `[lockdown]` and `[[flags]]`: lockdown flags and what each one does when on.

use super::{list_or_none, Validator};
use crate::*;
use std::collections::BTreeSet;

impl Validator {
    pub(super) fn lockdown(
        &mut self,
        raw: file::FileLockdown,
        flags: Vec<file::FileFlag>,
        routes: &[String],
        geoip: &GeoipConfig,
        referenced: &[usize],
    ) -> LockdownConfig {
        let state_file = self.relative_path(
            raw.state_file
                .as_deref()
                .unwrap_or(DEFAULT_LOCKDOWN_STATE_FILE),
        );
        let audit_log = self.relative_path(
            raw.audit_log
                .as_deref()
                .unwrap_or(DEFAULT_LOCKDOWN_AUDIT_LOG),
        );
        if state_file == audit_log {
            self.issue("lockdown.audit_log", "must not be the state file");
        }
        let mut seen = BTreeSet::new();
        let flags = flags
            .into_iter()
            .enumerate()
            .map(|(i, f)| self.flag(i, f, routes, geoip, &mut seen, referenced.contains(&i)))
            .collect();
        let max_ttl = self.nonzero_duration(
            "lockdown.max_ttl",
            raw.max_ttl.as_deref(),
            DEFAULT_LOCKDOWN_MAX_TTL,
        );
        LockdownConfig {
            state_file,
            audit_log,
            flags,
            max_ttl,
        }
    }

    pub(super) fn required_routes(
        &mut self,
        key: &str,
        names: Option<Vec<String>>,
        routes: &[String],
    ) -> Vec<usize> {
        match names {
            Some(list) if !list.is_empty() => {
                self.route_refs(key, Some(list), routes).unwrap_or_default()
            }
            _ => {
                self.issue(format!("{key}.routes"), "at least one route is required");
                Vec::new()
            }
        }
    }

    pub(super) fn flag(
        &mut self,
        i: usize,
        raw: file::FileFlag,
        routes: &[String],
        geoip: &GeoipConfig,
        seen: &mut BTreeSet<String>,
        referenced: bool,
    ) -> FlagConfig {
        let key = format!("flags[{i}]");
        let name = self.rule_name(&key, raw.name, i, seen);
        let maintenance = raw.maintenance.map(|m| {
            let mkey = format!("{key}.maintenance");
            MaintenanceConfig {
                routes: self.route_refs(&mkey, m.routes, routes),
                retry_after: self.nonzero_duration(
                    &format!("{mkey}.retry_after"),
                    m.retry_after.as_deref(),
                    DEFAULT_MAINTENANCE_RETRY_AFTER,
                ),
                message: m
                    .message
                    .unwrap_or_else(|| "The service is down for maintenance.".to_string()),
            }
        });
        let blocks = raw
            .block
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(j, b)| {
                let bkey = format!("{key}.block[{j}]");
                let status = match b.status {
                    None => 403,
                    Some(s) if (400..=599).contains(&s) => s as u16,
                    Some(s) => {
                        self.issue(
                            format!("{bkey}.status"),
                            format!("must be an error status from 400 to 599, got {s}"),
                        );
                        403
                    }
                };
                BlockConfig {
                    routes: self.required_routes(&bkey, b.routes, routes),
                    status,
                    message: b.message.unwrap_or_else(|| {
                        "This part of the service is temporarily closed.".to_string()
                    }),
                }
            })
            .collect();
        let allow_only_routes = raw.allow_only_routes.map(|list| {
            if list.is_empty() {
                self.issue(
                    format!("{key}.allow_only_routes"),
                    "an empty list would block everything; use maintenance instead",
                );
            }
            let mut out = Vec::new();
            for (j, name) in list.iter().enumerate() {
                match routes.iter().position(|r| r == name) {
                    Some(r) => out.push(r),
                    None => self.issue(
                        format!("{key}.allow_only_routes[{j}]"),
                        format!("unknown route \"{name}\" (known: {})", list_or_none(routes)),
                    ),
                }
            }
            out
        });
        let require_session = raw.require_session.map(|s| {
            let skey = format!("{key}.require_session");
            if s.cookie.is_none() && s.header.is_none() {
                self.issue(&skey, "give a cookie or a header that marks a session");
            }
            SessionConfig {
                routes: self.required_routes(&skey, s.routes, routes),
                cookie: s.cookie,
                header: s.header.map(|h| h.to_ascii_lowercase()),
            }
        });
        let restrict = raw
            .restrict
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(j, r)| {
                let rkey = format!("{key}.restrict[{j}]");
                let (cidrs, asns, countries) =
                    self.client_lists(&rkey, r.cidrs, r.asns, r.countries, geoip);
                RestrictConfig {
                    routes: self.required_routes(&rkey, r.routes, routes),
                    cidrs,
                    asns,
                    countries,
                }
            })
            .collect();
        let body_rules = raw
            .body_rules
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter_map(|(j, b)| self.body_rule(&format!("{key}.body_rules[{j}]"), b, routes))
            .collect();
        let limit_scale = raw.limit_scale.filter(|s| {
            let ok = *s > 0.0 && *s <= 1.0;
            if !ok {
                self.issue(
                    format!("{key}.limit_scale"),
                    format!("must be above 0 and at most 1 (it tightens buckets), got {s}"),
                );
            }
            ok
        });
        let flag = FlagConfig {
            name,
            description: raw.description.unwrap_or_default(),
            default_active: raw.default_active.unwrap_or(false),
            maintenance,
            blocks,
            allow_only_routes,
            require_session,
            restrict,
            body_rules,
            limit_scale,
        };
        let does_something = flag.maintenance.is_some()
            || !flag.blocks.is_empty()
            || flag.allow_only_routes.is_some()
            || flag.require_session.is_some()
            || !flag.restrict.is_empty()
            || !flag.body_rules.is_empty()
            || flag.limit_scale.is_some();
        if !does_something && !referenced {
            self.issue(
                &key,
                "does nothing: give maintenance, block, allow_only_routes, require_session, restrict, body_rules or limit_scale (or reference it from a limit's only_with_flag)",
            );
        }
        flag
    }
}
