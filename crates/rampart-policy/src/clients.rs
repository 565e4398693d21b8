//! Which clients a rule concerns: networks, autonomous systems and countries,
//! each list positive or negated (see `rampart_config::ClientCondition`).

use crate::cidr::CidrSet;
use crate::geo::{CountryCode, GeoInfo, UNKNOWN_COUNTRY};
use rampart_config::ClientCondition;
use std::net::IpAddr;

/// What made a client match, for the refusal of a deny rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedBy {
    /// Its address (in a listed network, or outside the excluded ones).
    Network,
    /// Its AS (0: unknown).
    Asn(u32),
    /// Its country (`??`: unknown).
    Country(CountryCode),
}

/// A compiled [`ClientCondition`].
#[derive(Debug, Clone, Default)]
pub struct ClientMatch {
    cidrs: CidrSet,
    asns: Vec<u32>,
    countries: Vec<CountryCode>,
    not_cidrs: CidrSet,
    not_asns: Vec<u32>,
    not_countries: Vec<CountryCode>,
    positive: bool,
}

fn codes(list: &[String]) -> Vec<CountryCode> {
    list.iter().filter_map(|c| CountryCode::parse(c)).collect()
}

fn sorted(list: &[u32]) -> Vec<u32> {
    let mut v = list.to_vec();
    v.sort_unstable();
    v
}

impl ClientMatch {
    /// Compiles `c`.
    pub fn new(c: &ClientCondition) -> Self {
        Self {
            cidrs: CidrSet::new(&c.cidrs),
            asns: sorted(&c.asns),
            countries: codes(&c.countries),
            not_cidrs: CidrSet::new(&c.not_cidrs),
            not_asns: sorted(&c.not_asns),
            not_countries: codes(&c.not_countries),
            positive: !(c.cidrs.is_empty() && c.asns.is_empty() && c.countries.is_empty()),
        }
    }

    /// How the client at `ip` with `geo` matches, or `None` when it does not:
    /// it must be in a positive list (when there is one) and in no negated list.
    pub fn matches(&self, ip: IpAddr, geo: &GeoInfo) -> Option<MatchedBy> {
        let excluded = self.not_cidrs.contains(ip)
            || geo
                .asn
                .is_some_and(|a| self.not_asns.binary_search(&a).is_ok())
            || geo.country.is_some_and(|c| self.not_countries.contains(&c));
        if excluded {
            return None;
        }
        if self.positive {
            if self.cidrs.contains(ip) {
                return Some(MatchedBy::Network);
            }
            if let Some(asn) = geo.asn.filter(|a| self.asns.binary_search(a).is_ok()) {
                return Some(MatchedBy::Asn(asn));
            }
            return geo
                .country
                .filter(|c| self.countries.contains(c))
                .map(MatchedBy::Country);
        }
        // Only negated lists: the client is outside them; name the first kind.
        Some(if !self.not_countries.is_empty() {
            MatchedBy::Country(geo.country.unwrap_or(UNKNOWN_COUNTRY))
        } else if !self.not_asns.is_empty() {
            MatchedBy::Asn(geo.asn.unwrap_or(0))
        } else {
            MatchedBy::Network
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(text: &str) -> ClientCondition {
        let config = rampart_config::parse(
            &format!(
                "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[geoip]\ncountry_db = \"/x.mmdb\"\nasn_db = \"/y.mmdb\"\n[pools.web]\nservers = [\"127.0.0.1:9000\"]\n[[routes]]\nname = \"all\"\npool = \"web\"\n[[limits]]\nname = \"l\"\nkey = \"ip\"\nrate = \"1/s\"\n{text}\n"
            ),
            std::path::Path::new("t.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        config.limits[0].clients.clone()
    }

    fn geo(country: Option<&str>, asn: Option<u32>) -> GeoInfo {
        GeoInfo {
            country: country.and_then(CountryCode::parse),
            asn,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn positive_lists_match_any_and_negated_lists_exclude() {
        let m = ClientMatch::new(&condition("asns = [64500, 64501]\ncountries = [\"RU\"]"));
        assert_eq!(
            m.matches(ip("192.0.2.1"), &geo(Some("DE"), Some(64501))),
            Some(MatchedBy::Asn(64501))
        );
        assert!(m.matches(ip("192.0.2.1"), &geo(Some("RU"), None)).is_some());
        assert!(m
            .matches(ip("192.0.2.1"), &geo(Some("DE"), Some(1)))
            .is_none());
        assert!(m.matches(ip("192.0.2.1"), &geo(None, None)).is_none());

        let carriers_excluded = ClientMatch::new(&condition(
            "not_asns = [4134, 9808]\nnot_cidrs = [\"10.0.0.0/8\"]",
        ));
        assert_eq!(
            carriers_excluded.matches(ip("192.0.2.1"), &geo(None, Some(64500))),
            Some(MatchedBy::Asn(64500))
        );
        assert!(carriers_excluded
            .matches(ip("192.0.2.1"), &geo(None, Some(4134)))
            .is_none());
        assert!(carriers_excluded
            .matches(ip("10.1.2.3"), &geo(None, Some(64500)))
            .is_none());
        // Unknown AS: in no list, so outside the excluded ones.
        assert_eq!(
            carriers_excluded.matches(ip("192.0.2.1"), &geo(None, None)),
            Some(MatchedBy::Asn(0))
        );

        let not_cn = ClientMatch::new(&condition("not_countries = [\"CN\"]"));
        assert!(not_cn
            .matches(ip("192.0.2.1"), &geo(Some("CN"), None))
            .is_none());
        assert_eq!(
            not_cn.matches(ip("192.0.2.1"), &geo(None, None)),
            Some(MatchedBy::Country(UNKNOWN_COUNTRY))
        );
        // Both: in the list and not excluded.
        let both = ClientMatch::new(&condition("countries = [\"US\"]\nnot_asns = [7922]"));
        assert!(both
            .matches(ip("192.0.2.1"), &geo(Some("US"), Some(7922)))
            .is_none());
        assert!(both
            .matches(ip("192.0.2.1"), &geo(Some("US"), Some(1)))
            .is_some());
    }
}
