//! `[[access]]`: allow and deny rules by network, AS and country.

use super::Validator;
use crate::*;
use ipnet::IpNet;
use std::collections::BTreeSet;

impl Validator {
    pub(super) fn access(
        &mut self,
        i: usize,
        raw: file::FileAccess,
        routes: &[String],
        geoip: &GeoipConfig,
        seen: &mut BTreeSet<String>,
    ) -> AccessRuleConfig {
        let key = format!("access[{i}]");
        let name = self.rule_name(&key, raw.name, i, seen);
        let action = match raw.action.as_deref() {
            Some("allow") => AccessAction::Allow,
            Some("deny") => AccessAction::Deny,
            None => {
                self.issue(
                    format!("{key}.action"),
                    "is required (\"allow\" or \"deny\")",
                );
                AccessAction::Deny
            }
            Some(other) => {
                self.issue(
                    format!("{key}.action"),
                    format!("\"{other}\" is not an action (use \"allow\" or \"deny\")"),
                );
                AccessAction::Deny
            }
        };
        let given = [
            &raw.cidrs,
            &raw.countries,
            &raw.not_cidrs,
            &raw.not_countries,
            &raw.ja4,
            &raw.not_ja4,
        ]
        .iter()
        .any(|v| v.as_ref().is_some_and(|v| !v.is_empty()))
            || [&raw.asns, &raw.not_asns]
                .iter()
                .any(|v| v.as_ref().is_some_and(|v| !v.is_empty()));
        let clients = self.client_condition(
            &key,
            ClientLists {
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
        if !given {
            self.issue(
                &key,
                "matches nothing: give cidrs, asns, countries or ja4 (or not_cidrs, not_asns, not_countries, not_ja4)",
            );
        }
        AccessRuleConfig {
            routes: self.route_refs(&key, raw.routes, routes),
            name,
            action,
            clients,
        }
    }

    /// The client condition of a rule (`access`, `limits`): positive and
    /// negated network, AS, country and JA4 lists.
    pub(super) fn client_condition(
        &mut self,
        key: &str,
        lists: ClientLists,
        geoip: &GeoipConfig,
    ) -> ClientCondition {
        let (cidrs, asns, countries) =
            self.client_lists(key, lists.cidrs, lists.asns, lists.countries, geoip);
        let (not_cidrs, not_asns, not_countries) = self.named_client_lists(
            key,
            "not_",
            lists.not_cidrs,
            lists.not_asns,
            lists.not_countries,
            geoip,
        );
        let ja4 = self.ja4_list(key, "ja4", lists.ja4);
        let not_ja4 = self.ja4_list(key, "not_ja4", lists.not_ja4);
        ClientCondition {
            cidrs,
            asns,
            countries,
            not_cidrs,
            not_asns,
            not_countries,
            ja4,
            not_ja4,
        }
    }

    /// A list of JA4 fingerprints or patterns (`key.name[j]` in messages).
    fn ja4_list(&mut self, key: &str, name: &str, list: Option<Vec<String>>) -> Vec<Ja4Pattern> {
        let mut out = Vec::new();
        for (j, text) in list.unwrap_or_default().iter().enumerate() {
            match Ja4Pattern::parse(text) {
                Ok(p) => out.push(p),
                Err(e) => self.issue(format!("{key}.{name}[{j}]"), e),
            }
        }
        out
    }

    /// matches clients (access rules, flag restrictions).
    pub(super) fn client_lists(
        &mut self,
        key: &str,
        cidrs: Option<Vec<String>>,
        asns: Option<Vec<i64>>,
        countries: Option<Vec<String>>,
        geoip: &GeoipConfig,
    ) -> (Vec<IpNet>, Vec<u32>, Vec<String>) {
        self.named_client_lists(key, "", cidrs, asns, countries, geoip)
    }

    /// [`Validator::client_lists`] for lists whose keys start with `prefix`
    /// (`not_`).
    fn named_client_lists(
        &mut self,
        key: &str,
        prefix: &str,
        cidrs: Option<Vec<String>>,
        asns: Option<Vec<i64>>,
        countries: Option<Vec<String>>,
        geoip: &GeoipConfig,
    ) -> (Vec<IpNet>, Vec<u32>, Vec<String>) {
        let mut nets = Vec::new();
        for (j, text) in cidrs.unwrap_or_default().iter().enumerate() {
            match parse_cidr(text) {
                Ok(net) => nets.push(net),
                Err(e) => self.issue(format!("{key}.{prefix}cidrs[{j}]"), e),
            }
        }
        let mut numbers = Vec::new();
        for (j, n) in asns.unwrap_or_default().into_iter().enumerate() {
            match u32::try_from(n) {
                Ok(n) if n > 0 => numbers.push(n),
                _ => self.issue(
                    format!("{key}.{prefix}asns[{j}]"),
                    format!("{n} is not an AS number"),
                ),
            }
        }
        if !numbers.is_empty() && geoip.asn_db.is_none() {
            self.issue(format!("{key}.{prefix}asns"), "needs geoip.asn_db");
        }
        let mut codes = Vec::new();
        for (j, c) in countries.unwrap_or_default().into_iter().enumerate() {
            match country_code(&c) {
                Some(c) => codes.push(c),
                None => self.issue(
                    format!("{key}.{prefix}countries[{j}]"),
                    format!("\"{c}\" is not a two-letter country code (ISO 3166-1 alpha-2, e.g. \"US\")"),
                ),
            }
        }
        if !codes.is_empty() && geoip.country_db.is_none() {
            self.issue(format!("{key}.{prefix}countries"), "needs geoip.country_db");
        }
        (nets, numbers, codes)
    }
}

/// The client lists of a rule as written in the file.
pub(super) struct ClientLists {
    pub cidrs: Option<Vec<String>>,
    pub asns: Option<Vec<i64>>,
    pub countries: Option<Vec<String>>,
    pub not_cidrs: Option<Vec<String>>,
    pub not_asns: Option<Vec<i64>>,
    pub not_countries: Option<Vec<String>>,
    pub ja4: Option<Vec<String>>,
    pub not_ja4: Option<Vec<String>>,
}

/// `"cn"` becomes `"CN"`; anything but two ASCII letters is refused.
pub(super) fn country_code(text: &str) -> Option<String> {
    (text.len() == 2 && text.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| text.to_ascii_uppercase())
}
