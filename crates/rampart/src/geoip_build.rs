//! `rampart geoip build`: turns the free ASN CSV (ip-location-db format:
//! `first_ip,last_ip,asn,organisation`, IPv4 or IPv6) into an MMDB file in the
//! GeoLite2-ASN shape that Rampart (and `mmdblookup`) read.

use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};
use serde::Serialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(Serialize)]
struct AsnRecord<'a> {
    autonomous_system_number: u32,
    autonomous_system_organization: &'a str,
}

/// Splits one CSV line into fields, honouring double quotes.
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// The CIDRs that exactly cover `first..=last`.
fn range_to_nets(first: IpAddr, last: IpAddr) -> Option<Vec<IpNet>> {
    match (first, last) {
        (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => {
            Some(Ipv4Subnets::new(a, b, 0).map(IpNet::V4).collect())
        }
        (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => {
            Some(Ipv6Subnets::new(a, b, 0).map(IpNet::V6).collect())
        }
        _ => None,
    }
}

/// What a build wrote.
#[derive(Debug, Default)]
pub struct BuildReport {
    /// CSV ranges read.
    pub ranges: usize,
    /// Networks written.
    pub networks: usize,
    /// Networks skipped because they lie in reserved or IPv4-alias space
    /// (::ffff:0:0/96, 2001::/32, 2002::/16), which the database maps to IPv4.
    pub skipped: usize,
}

/// Builds `out` from the CSV files.
pub fn build(csvs: &[PathBuf], out: &Path) -> Result<BuildReport, String> {
    let mut writer = mmdb_writer::Writer::new("GeoLite2-ASN");
    let mut report = BuildReport::default();
    for csv in csvs {
        let text = std::fs::read_to_string(csv).map_err(|e| format!("{}: {e}", csv.display()))?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("{}:{}", csv.display(), n + 1);
            let f = csv_fields(line);
            if f.len() < 3 {
                return Err(format!(
                    "{}: expected first_ip,last_ip,asn,organisation",
                    at()
                ));
            }
            let first: IpAddr = f[0]
                .trim()
                .parse()
                .map_err(|_| format!("{}: bad address {:?}", at(), f[0]))?;
            let last: IpAddr = f[1]
                .trim()
                .parse()
                .map_err(|_| format!("{}: bad address {:?}", at(), f[1]))?;
            let asn: u32 = f[2]
                .trim()
                .parse()
                .map_err(|_| format!("{}: bad AS number {:?}", at(), f[2]))?;
            let org = f.get(3).map(String::as_str).unwrap_or("");
            let covering =
                range_to_nets(first, last).ok_or_else(|| format!("{}: bad range", at()))?;
            let record = AsnRecord {
                autonomous_system_number: asn,
                autonomous_system_organization: org,
            };
            for net in covering {
                match writer.insert(net, &record) {
                    Ok(()) => report.networks += 1,
                    Err(
                        mmdb_writer::Error::AliasedNetwork(_)
                        | mmdb_writer::Error::ReservedNetwork(_),
                    ) => report.skipped += 1,
                    Err(e) => return Err(format!("{}: {e}", at())),
                }
            }
            report.ranges += 1;
        }
    }
    let bytes = writer.to_bytes().map_err(|e| e.to_string())?;
    // Write a new file and rename it over the old one: a running Rampart keeps
    // its mapping of the old file and picks the new one up at its next check.
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_fields_and_ranges() {
        assert_eq!(
            csv_fields("1.0.0.0,1.0.0.255,13335,\"Cloudflare, Inc.\""),
            vec!["1.0.0.0", "1.0.0.255", "13335", "Cloudflare, Inc."]
        );
        let nets = range_to_nets("1.0.4.0".parse().unwrap(), "1.0.7.255".parse().unwrap()).unwrap();
        assert_eq!(nets, vec!["1.0.4.0/22".parse::<IpNet>().unwrap()]);
        let nets = range_to_nets("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(nets.len(), 2);
        assert!(range_to_nets("10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap()).is_none());
    }
}
