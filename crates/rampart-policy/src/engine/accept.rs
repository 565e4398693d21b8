//! Closing a connection at accept: whether **every** request a connection from
//! a source address could carry would be refused, decided from the address
//! alone, before TLS or HTTP. The proxy closes such a connection at once
//! instead of reading, parsing and answering its requests one by one.
//!
//! Only refusals that nothing later in a request can change qualify; the rest
//! is left to the request path. For a source address (canonical, see
//! [`rampart_config::canonical_ip`]) that is the client itself:
//!
//! - **Access rules**, read in config order like the request path reads them:
//!   the first that matches decides. A matching `allow` rule, whatever routes
//!   it is scoped to, means "accept" (it lets the client through on its routes,
//!   past unknown origin and bans). A matching `deny` rule without `routes`
//!   refuses (403 on every route, and on requests that match no route). A
//!   `deny` rule with `routes` is passed over: it refuses on its routes only,
//!   and the other routes are decided by the rules after it. A rule with `ja4`
//!   or `not_ja4` lists reads the TLS hello, which comes after accept: such an
//!   `allow` rule means "accept" when some fingerprint would make it match,
//!   and such a `deny` rule is passed over.
//! - **Unknown origin**: `geoip.unknown_country` / `unknown_asn = "deny"` and a
//!   client the database does not place, when no allow rule matched.
//! - **Penalty boxes**: a banned key of a `[[limits]]` rule that applies to all
//!   routes (no `routes`), is enforced (not `shadow`), is always in force (no
//!   `only_with_flag`), concerns the client (its `cidrs`, `asns`, `countries`
//!   and negations; no JA4 lists), and counts by something the address alone
//!   gives: `ip`, `prefix`, `asn`, `country`. Bans of rules keyed by a header,
//!   the body or the JA4 name a value the request or its connection carries (a
//!   client without it is counted by address, one with it by the value), so
//!   they are left to the request path, as are bans of rules scoped to routes,
//!   in shadow mode or tied to a flag.
//!
//! Lockdown flags never make a refusal here: they come after the access rules
//! on the request path, only refuse, and can be switched at any time. A route's
//! own refusals (no route, method not allowed, a non-canonical target) and
//! flags may answer a request before the rule named here would; it is refused
//! either way.
//!
//! When the peer is a trusted proxy (`client_ip.trusted_proxies`) or a PROXY
//! protocol balancer of any listener (`proxy_protocol_from`), the client is not
//! known until the request (or the PROXY header) is read: such connections are
//! always accepted.
//!
//! The check runs once per connection in the listener's accept loop: it
//! allocates nothing, does nothing at all when no rule can refuse at accept,
//! and looks the address up in the GeoIP databases only when a rule it reads
//! needs the country or AS.

use super::{denied, Policy};
use crate::cidr::CidrSet;
use crate::geo::GeoInfo;
use crate::limits::KeyFacts;
use crate::Rejection;
use governor::clock::Clock;
use rampart_config::{canonical_ip, AccessAction, Config, KeyKind, UnknownPolicy};
use std::net::IpAddr;

/// What [`Policy::refusal_at_accept`] reads, compiled once per config.
#[derive(Debug, Default)]
pub(super) struct AcceptPlan {
    /// Socket peers that are not the client: trusted proxies and PROXY
    /// protocol balancers. Never refused at accept.
    forwarders: CidrSet,
    /// Access rules read at accept, in config order (indices into the
    /// policy's rules): every allow rule, and every deny rule without routes.
    access: Vec<usize>,
    /// Whether a client with no country (no AS) is refused on every route.
    unknown_country: bool,
    unknown_asn: bool,
    /// Limit rules whose penalty boxes are read at accept.
    bans: Vec<usize>,
    /// Whether any of the above reads the client's country or AS.
    needs_geo: bool,
    /// Whether anything can refuse at accept at all.
    active: bool,
}

impl AcceptPlan {
    /// The plan for `config`.
    pub(super) fn new(config: &Config) -> Self {
        let access: Vec<usize> = (0..config.access.len())
            .filter(|&i| {
                let rule = &config.access[i];
                rule.action == AccessAction::Allow || rule.routes.is_none()
            })
            .collect();
        let bans: Vec<usize> = (0..config.limits.len())
            .filter(|&i| {
                let l = &config.limits[i];
                l.ban.is_some()
                    && l.routes.is_none()
                    && !l.shadow
                    && l.only_with_flag.is_none()
                    && matches!(
                        l.key,
                        KeyKind::Ip | KeyKind::Prefix { .. } | KeyKind::Asn | KeyKind::Country
                    )
                    && l.clients.ja4.is_empty()
                    && l.clients.not_ja4.is_empty()
            })
            .collect();
        let unknown_country = config.geoip.unknown_country == UnknownPolicy::Deny;
        let unknown_asn = config.geoip.unknown_asn == UnknownPolicy::Deny;
        let refuses = access
            .iter()
            .any(|&i| config.access[i].action == AccessAction::Deny)
            || unknown_country
            || unknown_asn
            || !bans.is_empty();
        let reads_geo = |c: &rampart_config::ClientCondition| {
            !(c.asns.is_empty()
                && c.countries.is_empty()
                && c.not_asns.is_empty()
                && c.not_countries.is_empty())
        };
        let needs_geo = unknown_country
            || unknown_asn
            || access.iter().any(|&i| reads_geo(&config.access[i].clients))
            || bans.iter().any(|&i| {
                let l = &config.limits[i];
                matches!(l.key, KeyKind::Asn | KeyKind::Country) || reads_geo(&l.clients)
            });
        let forwarders: Vec<ipnet::IpNet> = config
            .client_ip
            .trusted_proxies
            .iter()
            .chain(
                config
                    .listeners
                    .iter()
                    .filter_map(|l| l.proxy_protocol.as_ref())
                    .flat_map(|p| p.from.iter()),
            )
            .copied()
            .collect();
        Self {
            forwarders: CidrSet::new(&forwarders),
            access,
            unknown_country,
            unknown_asn,
            bans,
            needs_geo,
            active: refuses,
        }
    }
}

impl<C: Clock + Clone> Policy<C> {
    /// The refusal every request of a connection from socket peer `peer` would
    /// get, when one refusal is certain from the address alone; `None` when
    /// the connection must be accepted (see the module doc for what counts).
    /// The result is one of `DeniedByNetwork`, `DeniedByAsn`,
    /// `DeniedByCountry`, `UnknownCountry`, `UnknownAsn` or `Banned`, with the
    /// rule that decided, as the request path would name it.
    ///
    /// `geo` gives the address's country and AS; it is called at most once,
    /// and only when a rule read here needs them. Allocates nothing.
    pub fn refusal_at_accept(
        &self,
        peer: IpAddr,
        geo: impl FnOnce(IpAddr) -> GeoInfo,
    ) -> Option<Rejection> {
        let plan = &self.accept;
        if !plan.active {
            return None;
        }
        let ip = canonical_ip(peer);
        if plan.forwarders.contains(ip) {
            return None;
        }
        let geo = if plan.needs_geo {
            geo(ip)
        } else {
            GeoInfo::default()
        };
        for &i in &plan.access {
            let Some(rule) = self.access.get(i) else {
                continue;
            };
            if rule.clients.reads_ja4() {
                // Decided by the TLS hello, after accept.
                if rule.action == AccessAction::Allow && rule.clients.may_match(ip, &geo) {
                    return None;
                }
                continue;
            }
            let Some(matched) = rule.clients.matches(ip, &geo, None) else {
                continue;
            };
            return match rule.action {
                AccessAction::Allow => None,
                AccessAction::Deny => Some(denied(&rule.name, matched)),
            };
        }
        if plan.unknown_country && geo.country.is_none() {
            return Some(Rejection::UnknownCountry);
        }
        if plan.unknown_asn && geo.asn.is_none() {
            return Some(Rejection::UnknownAsn);
        }
        let facts = KeyFacts {
            ip,
            geo,
            header: None,
            body: None,
            ja4: None,
            jwt: None,
        };
        for &i in &plan.bans {
            let (Some(rule), Some(Some(table))) = (self.limits.get(i), self.bans.get(i)) else {
                continue;
            };
            if let Some(Some(clients)) = self.limit_clients.get(i) {
                if clients.matches(ip, &geo, None).is_none() {
                    continue;
                }
            }
            if let Some(remaining) = table.banned(&rule.key(&facts)) {
                return Some(self.banned_refusal(i, remaining));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::CountryCode;
    use crate::limits::LimitKey;
    use governor::clock::FakeRelativeClock;
    use std::cell::Cell;
    use std::path::Path;
    use std::time::Duration;

    const BASE: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"
[[listeners]]
address = "127.0.0.1:8081"
proxy_protocol = "any"
proxy_protocol_from = ["10.9.0.0/16"]
[client_ip]
trusted_proxies = ["10.8.0.0/16"]
[geoip]
country_db = "/nonexistent/country.mmdb"
asn_db = "/nonexistent/asn.mmdb"
#GEOIP
[pools.web]
servers = ["127.0.0.1:9000"]
[[routes]]
name = "login"
path_prefix = "/login"
pool = "web"
[[routes]]
name = "chat"
pool = "web"
"#;

    fn policy(extra: &str) -> Policy<FakeRelativeClock> {
        policy_geo("", extra)
    }

    /// A policy with `geoip` keys added to `[geoip]`.
    fn policy_geo(geoip: &str, extra: &str) -> Policy<FakeRelativeClock> {
        let text = format!("{}{extra}", BASE.replace("#GEOIP", geoip));
        let config =
            rampart_config::parse(&text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
        Policy::new(&config, FakeRelativeClock::default(), None)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn geo(country: Option<&str>, asn: Option<u32>) -> GeoInfo {
        GeoInfo {
            country: country.and_then(CountryCode::parse),
            asn,
        }
    }

    /// The refusal at accept of `addr` placed at (`country`, `asn`), as
    /// (label, rule).
    fn at_accept(
        p: &Policy<FakeRelativeClock>,
        addr: &str,
        country: Option<&str>,
        asn: Option<u32>,
    ) -> Option<(&'static str, String)> {
        p.refusal_at_accept(ip(addr), |_| geo(country, asn))
            .map(|r| (r.label(), r.rule().unwrap_or_default().to_string()))
    }

    fn refused(label: &'static str, rule: &str) -> Option<(&'static str, String)> {
        Some((label, rule.to_string()))
    }

    #[test]
    fn unscoped_deny_rules_refuse_by_network_asn_and_country() {
        let p = policy(
            r#"
[[access]]
name = "bad-net"
action = "deny"
cidrs = ["203.0.113.0/24", "2001:db8:bad::/48"]
[[access]]
name = "bad-as"
action = "deny"
asns = [64666]
[[access]]
name = "bad-country"
action = "deny"
countries = ["KP"]
"#,
        );
        assert_eq!(
            at_accept(&p, "203.0.113.9", Some("DE"), Some(1)),
            refused("denied_network", "bad-net")
        );
        assert_eq!(
            at_accept(&p, "2001:db8:bad::1", None, None),
            refused("denied_network", "bad-net")
        );
        // An IPv4 client on an IPv6 socket is the same client.
        assert_eq!(
            at_accept(&p, "::ffff:203.0.113.9", None, None),
            refused("denied_network", "bad-net")
        );
        assert_eq!(
            at_accept(&p, "198.51.100.1", Some("DE"), Some(64666)),
            refused("denied_asn", "bad-as")
        );
        assert_eq!(
            at_accept(&p, "198.51.100.1", Some("KP"), Some(1)),
            refused("denied_country", "bad-country")
        );
        assert_eq!(at_accept(&p, "198.51.100.1", Some("DE"), Some(1)), None);
        assert_eq!(at_accept(&p, "198.51.100.1", None, None), None);
    }

    #[test]
    fn rules_scoped_to_routes_and_allow_rules_keep_the_connection() {
        // A deny rule scoped to a route refuses there only.
        let p = policy(
            "[[access]]\nname = \"login-only\"\naction = \"deny\"\ncidrs = [\"203.0.113.0/24\"]\nroutes = [\"login\"]\n",
        );
        assert_eq!(at_accept(&p, "203.0.113.9", None, None), None);
        // An allow rule before the deny lets the client through on its route,
        // even when that is one route of several.
        let p = policy(
            r#"
[[access]]
name = "office-chat"
action = "allow"
cidrs = ["203.0.113.128/25"]
routes = ["chat"]
[[access]]
name = "bad-net"
action = "deny"
cidrs = ["203.0.113.0/24"]
"#,
        );
        assert_eq!(at_accept(&p, "203.0.113.200", None, None), None);
        assert_eq!(
            at_accept(&p, "203.0.113.9", None, None),
            refused("denied_network", "bad-net")
        );
        // An allow rule after the deny changes nothing: the first match decides.
        // A scoped deny before an unscoped one: refused either way, and the
        // unscoped rule is the one that refuses on every route.
        let p = policy(
            r#"
[[access]]
name = "login-bad"
action = "deny"
cidrs = ["203.0.113.0/24"]
routes = ["login"]
[[access]]
name = "bad-net"
action = "deny"
cidrs = ["203.0.113.0/24"]
[[access]]
name = "too-late"
action = "allow"
cidrs = ["203.0.113.0/24"]
"#,
        );
        assert_eq!(
            at_accept(&p, "203.0.113.9", None, None),
            refused("denied_network", "bad-net")
        );
    }

    #[test]
    fn trusted_proxies_and_proxy_protocol_balancers_are_never_refused() {
        let p = policy(
            "[[access]]\nname = \"everyone\"\naction = \"deny\"\nnot_cidrs = [\"192.0.2.0/24\"]\n",
        );
        assert_eq!(
            at_accept(&p, "198.51.100.1", None, None),
            refused("denied_network", "everyone")
        );
        assert_eq!(at_accept(&p, "10.8.1.1", None, None), None, "trusted proxy");
        assert_eq!(
            at_accept(&p, "10.9.1.1", None, None),
            None,
            "PROXY balancer"
        );
        assert_eq!(at_accept(&p, "::ffff:10.9.1.1", None, None), None);
        assert_eq!(at_accept(&p, "192.0.2.1", None, None), None);
    }

    #[test]
    fn unknown_origin_is_refused_unless_an_allow_rule_matches() {
        let p = policy_geo(
            "unknown_country = \"deny\"",
            r#"
[[access]]
name = "monitoring"
action = "allow"
cidrs = ["192.0.2.0/24"]
routes = ["chat"]
"#,
        );
        assert_eq!(
            at_accept(&p, "198.51.100.1", None, Some(1)),
            refused("unknown_country", "")
        );
        assert_eq!(at_accept(&p, "198.51.100.1", Some("DE"), None), None);
        assert_eq!(at_accept(&p, "192.0.2.1", None, None), None);
        let p = policy_geo("unknown_asn = \"deny\"", "");
        assert_eq!(
            at_accept(&p, "198.51.100.1", Some("DE"), None),
            refused("unknown_asn", "")
        );
    }

    #[test]
    fn geo_is_looked_up_only_when_a_rule_needs_it() {
        let calls = Cell::new(0);
        let lookup = |_: IpAddr| {
            calls.set(calls.get() + 1);
            GeoInfo::default()
        };
        // Nothing can refuse: nothing is looked at.
        let p = policy("[[access]]\nname = \"office\"\naction = \"allow\"\ncountries = [\"DE\"]\n");
        assert!(p.refusal_at_accept(ip("203.0.113.9"), lookup).is_none());
        assert_eq!(calls.get(), 0);
        // A deny list of networks only: no lookup.
        let p =
            policy("[[access]]\nname = \"n\"\naction = \"deny\"\ncidrs = [\"203.0.113.0/24\"]\n");
        assert!(p.refusal_at_accept(ip("203.0.113.9"), lookup).is_some());
        assert!(p.refusal_at_accept(ip("198.51.100.9"), lookup).is_none());
        assert_eq!(calls.get(), 0);
        // A country list: one lookup per connection.
        let p = policy("[[access]]\nname = \"c\"\naction = \"deny\"\ncountries = [\"KP\"]\n");
        assert!(p.refusal_at_accept(ip("198.51.100.9"), lookup).is_none());
        assert_eq!(calls.get(), 1);
    }

    const BANS: &str = r#"
[[limits]]
name = "by-ip"
key = "ip"
rate = "1/min"
ban = { after = 2, within = "1m", for = "5m" }
[[limits]]
name = "by-prefix"
key = "prefix"
prefix_v4 = 24
rate = "1/min"
not_countries = ["DE"]
ban = { after = 2, within = "1m", for = "5m" }
[[limits]]
name = "login-ip"
key = "ip"
rate = "1/min"
routes = ["login"]
ban = { after = 2, within = "1m", for = "5m" }
[[limits]]
name = "shadow-ip"
key = "ip"
rate = "1/min"
shadow = true
ban = { after = 2, within = "1m", for = "5m" }
[[limits]]
name = "attack-ip"
key = "ip"
rate = "1/min"
only_with_flag = "under_attack"
ban = { after = 2, within = "1m", for = "5m" }
[[limits]]
name = "api-key"
key = "header"
header = "x-api-key"
rate = "1/min"
ban = { after = 2, within = "1m", for = "5m" }
[[flags]]
name = "under_attack"
limit_scale = 0.5
"#;

    fn ban(p: &Policy<FakeRelativeClock>, rule: &str, key: LimitKey) {
        let Some((table, _)) = p.ban_table(rule) else {
            panic!("no ban table {rule}")
        };
        table.impose(key, Duration::from_secs(300), 1);
    }

    #[test]
    fn bans_of_rules_on_every_route_keyed_by_the_address_refuse() {
        let p = policy(BANS);
        assert_eq!(at_accept(&p, "198.51.100.1", None, None), None);
        ban(&p, "by-ip", LimitKey::Ip(ip("198.51.100.1")));
        assert_eq!(
            at_accept(&p, "198.51.100.1", None, None),
            refused("banned", "by-ip")
        );
        assert_eq!(
            at_accept(&p, "::ffff:198.51.100.1", None, None),
            refused("banned", "by-ip")
        );
        assert_eq!(at_accept(&p, "198.51.100.2", None, None), None);
        // Lifted: accepted again.
        if let Some((table, _)) = p.ban_table("by-ip") {
            assert!(table.lift(&LimitKey::Ip(ip("198.51.100.1"))));
        }
        assert_eq!(at_accept(&p, "198.51.100.1", None, None), None);
        // A banned prefix, for the clients the rule concerns (not DE).
        ban(
            &p,
            "by-prefix",
            LimitKey::Net("203.0.113.0/24".parse().unwrap_or_default()),
        );
        assert_eq!(
            at_accept(&p, "203.0.113.77", Some("FR"), None),
            refused("banned", "by-prefix")
        );
        assert_eq!(at_accept(&p, "203.0.113.77", Some("DE"), None), None);
    }

    #[test]
    fn bans_the_request_could_escape_are_left_to_the_request_path() {
        let p = policy(BANS);
        let client = LimitKey::Ip(ip("198.51.100.1"));
        // Scoped to a route, in shadow mode, tied to a flag, keyed by a header
        // (a client without it is counted by address): never at accept.
        for rule in ["login-ip", "shadow-ip", "attack-ip", "api-key"] {
            ban(&p, rule, client);
        }
        assert_eq!(at_accept(&p, "198.51.100.1", None, None), None);
    }

    #[test]
    fn an_allow_rule_spares_banned_keys() {
        let p = policy(&format!(
            "{BANS}[[access]]\nname = \"office\"\naction = \"allow\"\ncidrs = [\"198.51.100.0/24\"]\nroutes = [\"chat\"]\n"
        ));
        ban(&p, "by-ip", LimitKey::Ip(ip("198.51.100.1")));
        assert_eq!(at_accept(&p, "198.51.100.1", None, None), None);
    }
}
