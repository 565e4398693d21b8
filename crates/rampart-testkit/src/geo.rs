//! Tiny MMDB fixtures for tests, written with `mmdb-writer` (no database file is
//! committed).

use ipnet::IpNet;
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
struct IsoCode<'a> {
    iso_code: &'a str,
}

#[derive(Serialize)]
struct MaxMindCountry<'a> {
    country: IsoCode<'a>,
}

#[derive(Serialize)]
struct IpLocationDbCountry<'a> {
    country_code: &'a str,
}

#[derive(Serialize)]
struct Asn<'a> {
    autonomous_system_number: u32,
    autonomous_system_organization: &'a str,
}

/// The record shape of a country database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountryShape {
    /// GeoLite2/GeoIP2: `country.iso_code`.
    MaxMind,
    /// ip-location-db: `country_code`.
    IpLocationDb,
}

/// Writes a country database mapping each network to a country code.
pub fn write_country_db(path: &Path, shape: CountryShape, entries: &[(&str, &str)]) {
    let mut w = mmdb_writer::Writer::new(match shape {
        CountryShape::MaxMind => "GeoLite2-Country",
        CountryShape::IpLocationDb => "geo-whois-asn-country",
    });
    for (net, code) in entries {
        let net: IpNet = net.parse().expect("fixture network");
        match shape {
            CountryShape::MaxMind => w.insert(
                net,
                &MaxMindCountry {
                    country: IsoCode { iso_code: code },
                },
            ),
            CountryShape::IpLocationDb => {
                w.insert(net, &IpLocationDbCountry { country_code: code })
            }
        }
        .expect("insert fixture record");
    }
    write_atomically(path, &w.to_bytes().expect("serialize fixture"));
}

/// Writes an ASN database (GeoLite2-ASN shape) mapping networks to (ASN, organisation).
pub fn write_asn_db(path: &Path, entries: &[(&str, u32, &str)]) {
    let mut w = mmdb_writer::Writer::new("GeoLite2-ASN");
    for (net, asn, org) in entries {
        let net: IpNet = net.parse().expect("fixture network");
        w.insert(
            net,
            &Asn {
                autonomous_system_number: *asn,
                autonomous_system_organization: org,
            },
        )
        .expect("insert fixture record");
    }
    write_atomically(path, &w.to_bytes().expect("serialize fixture"));
}

/// Replaces `path` the way operators must: a new file renamed over the old one.
fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write fixture");
    std::fs::rename(&tmp, path).expect("rename fixture");
}
