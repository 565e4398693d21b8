//! The per-thread cache of recent GeoIP lookups answers what the files say,
//! for the database it was asked of: two databases opened on one thread (a
//! reload, or another config) never see each other's answers, and a cached
//! answer equals a fresh reading over many addresses that share slots.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_config::GeoipConfig;
use rampart_policy::{CountryCode, GeoDb};
use rampart_testkit::geo::{write_asn_db, write_country_db, CountryShape};
use std::net::IpAddr;

fn open(dir: &std::path::Path, name: &str, country: &str, asn: u32) -> GeoDb {
    let (c, a) = (
        dir.join(format!("{name}-c.mmdb")),
        dir.join(format!("{name}-a.mmdb")),
    );
    write_country_db(
        &c,
        CountryShape::MaxMind,
        &[("198.51.100.0/24", country), ("2001:db8::/32", country)],
    );
    write_asn_db(
        &a,
        &[
            ("198.51.100.0/25", asn, "Example"),
            ("2001:db8::/48", asn, "Example"),
        ],
    );
    let config = GeoipConfig {
        country_db: Some(c),
        asn_db: Some(a),
        check_interval: std::time::Duration::from_secs(60),
        unknown_country: rampart_config::UnknownPolicy::Allow,
        unknown_asn: rampart_config::UnknownPolicy::Allow,
    };
    GeoDb::open(&config).unwrap()
}

#[test]
fn cached_answers_are_the_files_answers_for_each_database() {
    let dir = std::env::temp_dir().join(format!("rampart-geo-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = open(&dir, "first", "DE", 64501);
    let second = open(&dir, "second", "FR", 64502);
    let ip: IpAddr = "198.51.100.7".parse().unwrap();
    for _ in 0..3 {
        let a = first.lookup(ip);
        let b = second.lookup(ip);
        assert_eq!(a.country, CountryCode::parse("DE"));
        assert_eq!(a.asn, Some(64501));
        assert_eq!(b.country, CountryCode::parse("FR"));
        assert_eq!(b.asn, Some(64502));
    }
    // Many addresses (more than the cache holds, so slots are shared and
    // replaced), each looked up twice, in and out of the networks.
    for round in 0..2 {
        for i in 0..5_000u32 {
            let v4 = IpAddr::from([198, 51, (100 + i % 3) as u8, (i % 256) as u8]);
            let v6: IpAddr = format!("2001:db8:{:x}::{:x}", i % 2, i).parse().unwrap();
            for ip in [v4, v6] {
                let in_country = matches!(ip, IpAddr::V4(v) if v.octets()[2] == 100)
                    || matches!(ip, IpAddr::V6(_));
                let in_asn = match ip {
                    IpAddr::V4(v) => v.octets()[2] == 100 && v.octets()[3] < 128,
                    IpAddr::V6(v) => v.segments()[2] == 0,
                };
                let got = first.lookup(ip);
                assert_eq!(got.country.is_some(), in_country, "{ip} round {round}");
                assert_eq!(got.asn.is_some(), in_asn, "{ip} round {round}");
                assert_eq!(
                    second.lookup(ip).asn.map(|_| ()),
                    got.asn.map(|_| ()),
                    "{ip}"
                );
                if in_asn {
                    assert_eq!(second.lookup(ip).asn, Some(64502));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
