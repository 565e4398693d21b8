//! Which clients a rule concerns: networks, autonomous systems, countries and
//! JA4 TLS fingerprints, each list positive or negated (see
//! `rampart_config::ClientCondition`).

use crate::cidr::CidrSet;
use crate::geo::{CountryCode, GeoInfo, UNKNOWN_COUNTRY};
use crate::ja4::Ja4;
use rampart_config::{ClientCondition, Ja4Pattern};
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
    /// Its TLS client's JA4 fingerprint (in a listed one, or outside the
    /// excluded ones).
    Ja4,
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
    ja4: Vec<Ja4Pattern>,
    not_ja4: Vec<Ja4Pattern>,
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
            ja4: c.ja4.clone(),
            not_ja4: c.not_ja4.clone(),
            positive: !(c.cidrs.is_empty()
                && c.asns.is_empty()
                && c.countries.is_empty()
                && c.ja4.is_empty()),
        }
    }

    /// Whether it reads the client's JA4 (which the address alone does not give).
    pub fn reads_ja4(&self) -> bool {
        !(self.ja4.is_empty() && self.not_ja4.is_empty())
    }

    /// How the client at `ip` with `geo` and TLS fingerprint `ja4` matches, or
    /// `None` when it does not: it must be in a positive list (when there is
    /// one) and in no negated list. A client without a JA4 is in no JA4 list.
    pub fn matches(&self, ip: IpAddr, geo: &GeoInfo, ja4: Option<&Ja4>) -> Option<MatchedBy> {
        let in_ja4 = |list: &[Ja4Pattern]| ja4.is_some_and(|j| list.iter().any(|p| j.matches(p)));
        if self.excluded_by_address(ip, geo) || in_ja4(&self.not_ja4) {
            return None;
        }
        if self.positive {
            if let Some(m) = self.address_match(ip, geo) {
                return Some(m);
            }
            return in_ja4(&self.ja4).then_some(MatchedBy::Ja4);
        }
        // Only negated lists: the client is outside them; name the first kind.
        Some(if !self.not_countries.is_empty() {
            MatchedBy::Country(geo.country.unwrap_or(UNKNOWN_COUNTRY))
        } else if !self.not_asns.is_empty() {
            MatchedBy::Asn(geo.asn.unwrap_or(0))
        } else if !self.not_ja4.is_empty() {
            MatchedBy::Ja4
        } else {
            MatchedBy::Network
        })
    }

    /// Whether some JA4 (or none) makes the client at `ip` with `geo` match:
    /// what can be said before the TLS hello is read.
    pub fn may_match(&self, ip: IpAddr, geo: &GeoInfo) -> bool {
        if self.excluded_by_address(ip, geo) {
            return false;
        }
        !self.positive || !self.ja4.is_empty() || self.address_match(ip, geo).is_some()
    }

    fn excluded_by_address(&self, ip: IpAddr, geo: &GeoInfo) -> bool {
        self.not_cidrs.contains(ip)
            || geo
                .asn
                .is_some_and(|a| self.not_asns.binary_search(&a).is_ok())
            || geo.country.is_some_and(|c| self.not_countries.contains(&c))
    }

    /// The positive address list the client is in, if any.
    fn address_match(&self, ip: IpAddr, geo: &GeoInfo) -> Option<MatchedBy> {
        if self.cidrs.contains(ip) {
            return Some(MatchedBy::Network);
        }
        if let Some(asn) = geo.asn.filter(|a| self.asns.binary_search(a).is_ok()) {
            return Some(MatchedBy::Asn(asn));
        }
        geo.country
            .filter(|c| self.countries.contains(c))
            .map(MatchedBy::Country)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(text: &str) -> ClientCondition {
        // A TLS listener, for JA4 lists; validation only checks that its files
        // exist.
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let config = rampart_config::parse(
            &format!(
                "[[listeners]]\naddress = \"127.0.0.1:8080\"\ntls = {{ cert = \"{file}\", key = \"{file}\" }}\n[geoip]\ncountry_db = \"/x.mmdb\"\nasn_db = \"/y.mmdb\"\n[pools.web]\nservers = [\"127.0.0.1:9000\"]\n[[routes]]\nname = \"all\"\npool = \"web\"\n[[limits]]\nname = \"l\"\nkey = \"ip\"\nrate = \"1/s\"\n{text}\n"
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
            m.matches(ip("192.0.2.1"), &geo(Some("DE"), Some(64501)), None),
            Some(MatchedBy::Asn(64501))
        );
        assert!(m
            .matches(ip("192.0.2.1"), &geo(Some("RU"), None), None)
            .is_some());
        assert!(m
            .matches(ip("192.0.2.1"), &geo(Some("DE"), Some(1)), None)
            .is_none());
        assert!(m.matches(ip("192.0.2.1"), &geo(None, None), None).is_none());

        let carriers_excluded = ClientMatch::new(&condition(
            "not_asns = [4134, 9808]\nnot_cidrs = [\"10.0.0.0/8\"]",
        ));
        assert_eq!(
            carriers_excluded.matches(ip("192.0.2.1"), &geo(None, Some(64500)), None),
            Some(MatchedBy::Asn(64500))
        );
        assert!(carriers_excluded
            .matches(ip("192.0.2.1"), &geo(None, Some(4134)), None)
            .is_none());
        assert!(carriers_excluded
            .matches(ip("10.1.2.3"), &geo(None, Some(64500)), None)
            .is_none());
        // Unknown AS: in no list, so outside the excluded ones.
        assert_eq!(
            carriers_excluded.matches(ip("192.0.2.1"), &geo(None, None), None),
            Some(MatchedBy::Asn(0))
        );

        let not_cn = ClientMatch::new(&condition("not_countries = [\"CN\"]"));
        assert!(not_cn
            .matches(ip("192.0.2.1"), &geo(Some("CN"), None), None)
            .is_none());
        assert_eq!(
            not_cn.matches(ip("192.0.2.1"), &geo(None, None), None),
            Some(MatchedBy::Country(UNKNOWN_COUNTRY))
        );
        // Both: in the list and not excluded.
        let both = ClientMatch::new(&condition("countries = [\"US\"]\nnot_asns = [7922]"));
        assert!(both
            .matches(ip("192.0.2.1"), &geo(Some("US"), Some(7922)), None)
            .is_none());
        assert!(both
            .matches(ip("192.0.2.1"), &geo(Some("US"), Some(1)), None)
            .is_some());
    }

    #[test]
    fn ja4_lists_match_the_fingerprint_and_clients_without_one_are_in_none() {
        let chrome = crate::ja4::Ja4::parse("t13d1516h2_8daaf6152771_e5627efa2ab1")
            .unwrap_or_else(|e| panic!("{e}"));
        let curl = crate::ja4::Ja4::parse("t13d3112h2_e8f1e7e78f70_b26ce05bbdd6")
            .unwrap_or_else(|e| panic!("{e}"));
        let any = geo(None, None);
        let m = ClientMatch::new(&condition("ja4 = [\"t13d1516h2_*_e5627efa2ab1\"]"));
        assert!(m.reads_ja4());
        assert_eq!(
            m.matches(ip("192.0.2.1"), &any, Some(&chrome)),
            Some(MatchedBy::Ja4)
        );
        assert_eq!(m.matches(ip("192.0.2.1"), &any, Some(&curl)), None);
        assert_eq!(m.matches(ip("192.0.2.1"), &any, None), None);
        // Before the hello is read it may match anyone.
        assert!(m.may_match(ip("192.0.2.1"), &any));
        let not = ClientMatch::new(&condition(
            "not_ja4 = [\"t13d1516h2_8daaf6152771_e5627efa2ab1\"]\nnot_cidrs = [\"10.0.0.0/8\"]",
        ));
        assert_eq!(not.matches(ip("192.0.2.1"), &any, Some(&chrome)), None);
        assert_eq!(
            not.matches(ip("192.0.2.1"), &any, Some(&curl)),
            Some(MatchedBy::Ja4)
        );
        assert_eq!(
            not.matches(ip("192.0.2.1"), &any, None),
            Some(MatchedBy::Ja4)
        );
        assert!(!not.may_match(ip("10.0.0.1"), &any));
        // Positive lists are alternatives: the network or the fingerprint.
        let either = ClientMatch::new(&condition(
            "cidrs = [\"198.51.100.0/24\"]\nja4 = [\"t13d1516h2_8daaf6152771_e5627efa2ab1\"]",
        ));
        assert_eq!(
            either.matches(ip("198.51.100.7"), &any, None),
            Some(MatchedBy::Network)
        );
        assert_eq!(
            either.matches(ip("192.0.2.1"), &any, Some(&chrome)),
            Some(MatchedBy::Ja4)
        );
        assert!(either.may_match(ip("192.0.2.1"), &any));
        let plain = ClientMatch::new(&condition("cidrs = [\"198.51.100.0/24\"]"));
        assert!(!plain.reads_ja4());
        assert!(!plain.may_match(ip("192.0.2.1"), &any));
    }
}
