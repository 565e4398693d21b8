//! `[[limits]]` and `[[concurrency]]`: rate limits and in-flight caps, and what they key on.

use super::{list_or_none, Validator};
use crate::*;
use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::time::Duration;

/// What the rest of the config provides to keys: GeoIP databases (`asn`,
/// `country`) and a `[jwt]` section (`jwt`).
#[derive(Clone, Copy)]
pub(super) struct KeySources<'a> {
    pub(super) geoip: &'a GeoipConfig,
    pub(super) jwt: bool,
}

impl Validator {
    pub(super) fn key_kind(
        &mut self,
        key: &str,
        kind: Option<&str>,
        prefix: (Option<i64>, Option<i64>),
        header: Option<String>,
        claim: Option<String>,
        sources: KeySources<'_>,
    ) -> KeyKind {
        let KeySources { geoip, jwt } = sources;
        let kind = match kind {
            Some("ip") => KeyKind::Ip,
            Some("prefix") => {
                let mut len = |k: &str, v: Option<i64>, default: u8, max: i64| match v {
                    None => default,
                    Some(n) if (1..=max).contains(&n) => n as u8,
                    Some(n) => {
                        self.issue(
                            format!("{key}.{k}"),
                            format!("must be from 1 to {max}, got {n}"),
                        );
                        default
                    }
                };
                KeyKind::Prefix {
                    v4: len("prefix_v4", prefix.0, DEFAULT_PREFIX_V4, 32),
                    v6: len("prefix_v6", prefix.1, DEFAULT_PREFIX_V6, 128),
                }
            }
            Some("asn") => {
                if geoip.asn_db.is_none() {
                    self.issue(format!("{key}.key"), "\"asn\" needs geoip.asn_db");
                }
                KeyKind::Asn
            }
            Some("country") => {
                if geoip.country_db.is_none() {
                    self.issue(format!("{key}.key"), "\"country\" needs geoip.country_db");
                }
                KeyKind::Country
            }
            Some("header") => match &header {
                Some(h)
                    if !h.is_empty()
                        && h.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                {
                    KeyKind::Header(h.to_ascii_lowercase())
                }
                Some(h) => {
                    self.issue(
                        format!("{key}.header"),
                        format!("\"{h}\" is not a header name"),
                    );
                    KeyKind::Ip
                }
                None => {
                    self.issue(format!("{key}.header"), "is required with key = \"header\"");
                    KeyKind::Ip
                }
            },
            Some("route") => KeyKind::Route,
            Some("jwt") => {
                if !jwt {
                    self.issue(
                        format!("{key}.key"),
                        "\"jwt\" needs a [jwt] section (jwks_file, hs256_secret_file or hs256_secret_env)",
                    );
                }
                let claim = match &claim {
                    None => DEFAULT_JWT_CLAIM.to_string(),
                    Some(c) if c.is_empty() => {
                        self.issue(format!("{key}.claim"), "must not be empty");
                        DEFAULT_JWT_CLAIM.to_string()
                    }
                    Some(c) => c.clone(),
                };
                KeyKind::Jwt { claim }
            }
            Some("ja4") => KeyKind::Ja4,
            None => {
                self.issue(
                    format!("{key}.key"),
                    "is required (ip, prefix, asn, country, header, jwt, ja4 or route)",
                );
                KeyKind::Ip
            }
            Some(other) => {
                self.issue(
                    format!("{key}.key"),
                    format!("\"{other}\" is not a key kind (use ip, prefix, asn, country, header, jwt, ja4 or route)"),
                );
                KeyKind::Ip
            }
        };
        if !matches!(kind, KeyKind::Prefix { .. }) {
            if prefix.0.is_some() {
                self.issue(
                    format!("{key}.prefix_v4"),
                    "only used with key = \"prefix\"",
                );
            }
            if prefix.1.is_some() {
                self.issue(
                    format!("{key}.prefix_v6"),
                    "only used with key = \"prefix\"",
                );
            }
        }
        if header.is_some() && !matches!(kind, KeyKind::Header(_)) {
            self.issue(format!("{key}.header"), "only used with key = \"header\"");
        }
        if claim.is_some() && !matches!(kind, KeyKind::Jwt { .. }) {
            self.issue(format!("{key}.claim"), "only used with key = \"jwt\"");
        }
        kind
    }

    pub(super) fn limit(
        &mut self,
        i: usize,
        raw: file::FileLimit,
        routes: &[String],
        seen: &mut BTreeSet<String>,
        flags: &[String],
        sources: KeySources<'_>,
    ) -> LimitConfig {
        let geoip = sources.geoip;
        let key = format!("limits[{i}]");
        let name = self.rule_name(&key, raw.name, i, seen);
        let kind = if raw.key.as_deref() == Some("body") {
            if raw.routes.as_ref().is_none_or(|r| r.is_empty()) {
                self.issue(
                    format!("{key}.routes"),
                    "is required with key = \"body\" (the routes whose bodies carry the field)",
                );
            }
            if raw.claim.is_some() {
                self.issue(format!("{key}.claim"), "only used with key = \"jwt\"");
            }
            KeyKind::Body(self.body_key(
                &key,
                raw.field,
                raw.normalize,
                raw.number_prefix,
                raw.max_body_bytes,
            ))
        } else {
            for (name, set) in [
                ("field", raw.field.is_some()),
                ("normalize", raw.normalize.is_some()),
                ("number_prefix", raw.number_prefix.is_some()),
                ("max_body_bytes", raw.max_body_bytes.is_some()),
            ] {
                if set {
                    self.issue(format!("{key}.{name}"), "only with key = \"body\"");
                }
            }
            self.key_kind(
                &key,
                raw.key.as_deref(),
                (raw.prefix_v4, raw.prefix_v6),
                raw.header,
                raw.claim,
                sources,
            )
        };
        let rate = match raw.rate.as_deref() {
            None => {
                self.issue(format!("{key}.rate"), "is required (e.g. \"10/s\")");
                None
            }
            Some(text) => match parse_rate(text) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.issue(format!("{key}.rate"), e);
                    None
                }
            },
        };
        let rate = rate.unwrap_or(Rate {
            count: NonZeroU32::MIN,
            per: Duration::from_secs(1),
        });
        let burst = self.count(&format!("{key}.burst"), raw.burst, rate.count.get());
        let cost = self.count(&format!("{key}.cost"), raw.cost, 1);
        if cost > burst {
            self.issue(
                format!("{key}.cost"),
                format!("{cost} is more than the burst of {burst}: no request could ever pass"),
            );
        }
        let only_with_flag = raw.only_with_flag.and_then(|name| {
            let found = flags.iter().position(|f| *f == name);
            if found.is_none() {
                self.issue(
                    format!("{key}.only_with_flag"),
                    format!("unknown flag \"{name}\" (known: {})", list_or_none(flags)),
                );
            }
            found
        });
        let scope = match raw.scope.as_deref() {
            None | Some("local") => {
                if raw.fleet_failure.is_some() {
                    self.issue(
                        format!("{key}.fleet_failure"),
                        "only used with scope = \"fleet\"",
                    );
                }
                LimitScope::Local
            }
            Some("fleet") => {
                let failure = match raw.fleet_failure.as_deref() {
                    None | Some("local") => {
                        let share = raw.fleet_local_share.unwrap_or(0.5);
                        if !(share > 0.0 && share <= 1.0) {
                            self.issue(
                                format!("{key}.fleet_local_share"),
                                format!("must be above 0 and at most 1, got {share}"),
                            );
                        }
                        FleetFailure::Local {
                            share: share.clamp(0.001, 1.0),
                        }
                    }
                    Some("open") => FleetFailure::Open,
                    Some("closed") => FleetFailure::Closed,
                    Some(other) => {
                        self.issue(
                            format!("{key}.fleet_failure"),
                            format!("\"{other}\" is not a failure mode (use \"open\", \"closed\" or \"local\")"),
                        );
                        FleetFailure::Closed
                    }
                };
                LimitScope::Fleet { failure }
            }
            Some(other) => {
                self.issue(
                    format!("{key}.scope"),
                    format!("\"{other}\" is not a scope (use \"local\" or \"fleet\")"),
                );
                LimitScope::Local
            }
        };
        let clients = self.client_condition(
            &key,
            super::access::ClientLists {
                cidrs: raw.cidrs,
                asns: raw.asns,
                countries: raw.countries,
                not_cidrs: raw.not_cidrs,
                not_asns: raw.not_asns,
                not_countries: raw.not_countries,
                ja4: raw.ja4,
                not_ja4: raw.not_ja4,
            },
            geoip,
        );
        let ban = raw.ban.map(|b| self.ban(&key, b));
        if ban.is_some() && kind == KeyKind::Route {
            self.issue(
                format!("{key}.ban"),
                "not with key = \"route\": one client's refusals would ban the route for everyone",
            );
        }
        LimitConfig {
            clients,
            ban,
            scope,
            only_with_flag,
            max_keys: self.count(&format!("{key}.max_keys"), raw.max_keys, DEFAULT_MAX_KEYS),
            routes: self.route_refs(&key, raw.routes, routes),
            shadow: raw.shadow.unwrap_or(false),
            name,
            key: kind,
            rate,
            burst,
            cost,
        }
    }

    /// `ban = { after, within, for, increment, max, memory, max_keys }`.
    fn ban(&mut self, key: &str, raw: file::FileBan) -> BanConfig {
        let key = format!("{key}.ban");
        if raw.after.is_none() {
            self.issue(
                format!("{key}.after"),
                "is required (refusals that ban the key)",
            );
        }
        let after = self.count(&format!("{key}.after"), raw.after, 10);
        let within = match raw.within.as_deref() {
            None => {
                self.issue(format!("{key}.within"), "is required (e.g. \"10s\")");
                Duration::from_secs(10)
            }
            Some(t) => {
                self.nonzero_duration(&format!("{key}.within"), Some(t), Duration::from_secs(10))
            }
        };
        let duration = match raw.duration.as_deref() {
            None => {
                self.issue(
                    format!("{key}.for"),
                    "is required (the first ban's length, e.g. \"1m\")",
                );
                Duration::from_secs(60)
            }
            Some(t) => {
                self.nonzero_duration(&format!("{key}.for"), Some(t), Duration::from_secs(60))
            }
        };
        let increment = raw.increment.unwrap_or(DEFAULT_BAN_INCREMENT);
        if !(1.0..=100.0).contains(&increment) {
            self.issue(
                format!("{key}.increment"),
                format!("must be from 1 to 100, got {increment}"),
            );
        }
        let max = self.nonzero_duration(
            &format!("{key}.max"),
            raw.max.as_deref(),
            duration.max(Duration::from_secs(3600)),
        );
        if max < duration {
            self.issue(
                format!("{key}.max"),
                format!(
                    "{} s is shorter than the first ban ({} s)",
                    max.as_secs(),
                    duration.as_secs()
                ),
            );
        }
        let memory = self.nonzero_duration(
            &format!("{key}.memory"),
            raw.memory.as_deref(),
            Duration::from_secs(24 * 3600),
        );
        BanConfig {
            after,
            within,
            duration,
            increment: increment.clamp(1.0, 100.0),
            max: max.max(duration),
            memory,
            max_keys: self.count(
                &format!("{key}.max_keys"),
                raw.max_keys,
                DEFAULT_BAN_MAX_KEYS,
            ),
        }
    }

    pub(super) fn concurrency(
        &mut self,
        i: usize,
        raw: file::FileConcurrency,
        routes: &[String],
        seen: &mut BTreeSet<String>,
        sources: KeySources<'_>,
    ) -> ConcurrencyConfig {
        let key = format!("concurrency[{i}]");
        let name = self.rule_name(&key, raw.name, i, seen);
        let kind = self.key_kind(
            &key,
            raw.key.as_deref(),
            (raw.prefix_v4, raw.prefix_v6),
            raw.header,
            raw.claim,
            sources,
        );
        if raw.max_in_flight.is_none() {
            self.issue(format!("{key}.max_in_flight"), "is required");
        }
        ConcurrencyConfig {
            max_in_flight: self.count(&format!("{key}.max_in_flight"), raw.max_in_flight, 1),
            max_keys: self.count(&format!("{key}.max_keys"), raw.max_keys, DEFAULT_MAX_KEYS),
            routes: self.route_refs(&key, raw.routes, routes),
            shadow: raw.shadow.unwrap_or(false),
            name,
            key: kind,
        }
    }
}
