//! Lockdown flags as the policy sees them: compiled overlays and their mode.
//! Who turned a flag on, why and until when is the proxy's business; here a flag
//! is only off, enforced or previewed.

use crate::cidr::CidrSet;
use crate::geo::{CountryCode, GeoInfo};
use crate::Rejection;
use http::HeaderMap;
use rampart_config::{FlagConfig, LockdownConfig};
use std::net::IpAddr;
use std::sync::Arc;

/// The state of one flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlagMode {
    /// Not active.
    #[default]
    Off,
    /// Active and enforced.
    Enforce,
    /// Active in preview: what it would reject is counted, nothing is rejected.
    Preview,
}

#[derive(Debug)]
struct Restriction {
    routes: Vec<usize>,
    cidrs: CidrSet,
    asns: Vec<u32>,
    countries: Vec<CountryCode>,
}

/// One flag, compiled for matching.
#[derive(Debug)]
pub struct CompiledFlag {
    /// Flag name.
    pub name: Arc<str>,
    /// Its config.
    pub config: FlagConfig,
    maintenance_message: Arc<str>,
    block_messages: Vec<Arc<str>>,
    restrictions: Vec<Restriction>,
}

/// Every flag of a config.
#[derive(Debug, Default)]
pub struct CompiledFlags {
    /// In config order (the order of [`FlagMode`] slices).
    pub flags: Vec<CompiledFlag>,
}

impl CompiledFlags {
    /// Compiles the flags of `config`.
    pub fn new(config: &LockdownConfig) -> Self {
        let flags = config
            .flags
            .iter()
            .map(|f| CompiledFlag {
                name: f.name.as_str().into(),
                maintenance_message: f
                    .maintenance
                    .as_ref()
                    .map(|m| m.message.as_str().into())
                    .unwrap_or_else(|| "".into()),
                block_messages: f.blocks.iter().map(|b| b.message.as_str().into()).collect(),
                restrictions: f
                    .restrict
                    .iter()
                    .map(|r| Restriction {
                        routes: r.routes.clone(),
                        cidrs: CidrSet::new(&r.cidrs),
                        asns: r.asns.clone(),
                        countries: r
                            .countries
                            .iter()
                            .filter_map(|c| CountryCode::parse(c))
                            .collect(),
                    })
                    .collect(),
                config: f.clone(),
            })
            .collect();
        Self { flags }
    }
}

fn has_cookie(headers: &HeaderMap, name: &str) -> bool {
    headers.get_all("cookie").iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(';').any(|pair| {
                pair.trim()
                    .split_once('=')
                    .is_some_and(|(k, v)| k.trim() == name && !v.trim().is_empty())
            })
        })
    })
}

impl CompiledFlag {
    /// Whether, on `route`, this flag reads more of a request than its
    /// address and route: the fields (a session check) or the body (a body
    /// rule). The engine decides the others before the fields are read.
    pub fn reads_request(&self, route: Option<usize>) -> bool {
        let on = |routes: &[usize]| route.is_some_and(|r| routes.contains(&r));
        self.config
            .require_session
            .as_ref()
            .is_some_and(|s| on(&s.routes))
            || self
                .config
                .body_rules
                .iter()
                .any(|r| route == Some(r.route))
    }

    /// What this flag says about a request on `route` (not counting body rules
    /// or limit scaling, which the engine applies).
    pub fn check(
        &self,
        route: Option<usize>,
        ip: IpAddr,
        geo: &GeoInfo,
        headers: &HeaderMap,
    ) -> Option<Rejection> {
        let on = |routes: &[usize]| route.is_some_and(|r| routes.contains(&r));
        let c = &self.config;
        if let Some(m) = &c.maintenance {
            if m.routes.as_deref().is_none_or(on) {
                return Some(Rejection::Maintenance {
                    flag: self.name.clone(),
                    retry_after: m.retry_after.as_secs().max(1),
                    message: self.maintenance_message.clone(),
                });
            }
        }
        if let Some(open) = &c.allow_only_routes {
            if !on(open) {
                return Some(Rejection::LockedDown {
                    flag: self.name.clone(),
                    status: 503,
                    message: "Only some parts of the service are open right now.".into(),
                });
            }
        }
        for (block, message) in c.blocks.iter().zip(&self.block_messages) {
            if on(&block.routes) {
                return Some(Rejection::LockedDown {
                    flag: self.name.clone(),
                    status: block.status,
                    message: message.clone(),
                });
            }
        }
        if let Some(s) = &c.require_session {
            if on(&s.routes) {
                let by_header = s.header.as_deref().is_some_and(|h| headers.contains_key(h));
                let by_cookie = s
                    .cookie
                    .as_deref()
                    .is_some_and(|name| has_cookie(headers, name));
                if !by_header && !by_cookie {
                    return Some(Rejection::SessionRequired {
                        flag: self.name.clone(),
                    });
                }
            }
        }
        for r in &self.restrictions {
            if on(&r.routes) {
                let allowed = r.cidrs.contains(ip)
                    || geo.asn.is_some_and(|a| r.asns.contains(&a))
                    || geo.country.is_some_and(|c| r.countries.contains(&c));
                if !allowed {
                    return Some(Rejection::RestrictedByFlag {
                        flag: self.name.clone(),
                    });
                }
            }
        }
        None
    }
}
