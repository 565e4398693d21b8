//! `[geoip]`: database files and the policy for clients they do not know.

use super::Validator;
use crate::*;

impl Validator {
    pub(super) fn geoip(&mut self, raw: file::FileGeoip) -> GeoipConfig {
        let country_db = raw.country_db.map(|f| self.relative_path(&f));
        let asn_db = raw.asn_db.map(|f| self.relative_path(&f));
        let mut unknown = |key: &str, value: Option<&str>, db: bool| match value {
            None | Some("allow") => UnknownPolicy::Allow,
            Some("deny") if !db => {
                let db_key = if key.ends_with("country") {
                    "country_db"
                } else {
                    "asn_db"
                };
                self.issue(
                    format!("geoip.{key}"),
                    format!(
                        "\"deny\" needs geoip.{db_key}; without a database every client is unknown"
                    ),
                );
                UnknownPolicy::Allow
            }
            Some("deny") => UnknownPolicy::Deny,
            Some(other) => {
                self.issue(
                    format!("geoip.{key}"),
                    format!("\"{other}\" is not a policy (use \"allow\" or \"deny\")"),
                );
                UnknownPolicy::Allow
            }
        };
        let unknown_country = unknown(
            "unknown_country",
            raw.unknown_country.as_deref(),
            country_db.is_some(),
        );
        let unknown_asn = unknown("unknown_asn", raw.unknown_asn.as_deref(), asn_db.is_some());
        GeoipConfig {
            check_interval: self.nonzero_duration(
                "geoip.check_interval",
                raw.check_interval.as_deref(),
                DEFAULT_GEOIP_CHECK_INTERVAL,
            ),
            country_db,
            asn_db,
            unknown_country,
            unknown_asn,
        }
    }
}
