//! Protects the limiter's memory bound: prints bytes per tracked key, then feeds
//! 10 million distinct source addresses to a rule with the default key cap
//! (100 000) and prints tracked keys and process RSS as it goes. The keys must
//! stay under the cap plus its documented headroom, and RSS must level off.
//! Run: `cargo bench -p rampart-benches --bench limiter_memory`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use governor::clock::DefaultClock;
use rampart_config::{KeyKind, LimitConfig};
use rampart_policy::limits::{LimitKey, RateRule, ENTRY_SIZE};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn rule(max_keys: u32) -> RateRule<DefaultClock> {
    RateRule::new(
        LimitConfig {
            name: "mem".into(),
            key: KeyKind::Ip,
            rate: rampart_config::parse_rate("10/s").unwrap(),
            burst: NonZeroU32::new(20).unwrap(),
            cost: NonZeroU32::MIN,
            routes: None,
            max_keys: NonZeroU32::new(max_keys).unwrap(),
            shadow: false,
            only_with_flag: None,
            scope: rampart_config::LimitScope::Local,
            clients: Default::default(),
            ban: None,
        },
        DefaultClock::default(),
    )
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let n = 1_000_000u32;
    let r = rule(2 * n);
    let before = rss_bytes();
    for i in 0..n {
        r.check(LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i))));
    }
    let after = rss_bytes();
    println!(
        "bytes per tracked key: {:.0} (entry {} B + map overhead), {} keys, RSS +{:.1} MiB",
        (after - before) as f64 / n as f64,
        ENTRY_SIZE,
        r.tracked_keys(),
        (after - before) as f64 / 1048576.0
    );
    drop(r);

    let cap = 100_000u32;
    let r = rule(cap);
    let limit = cap as usize + cap as usize / 10 + 1 + 1;
    let start = rss_bytes();
    println!("10M distinct sources against max_keys = {cap} (bound {limit} keys)");
    println!(
        "{:>12} {:>14} {:>12} {:>12}",
        "sources", "tracked_keys", "fallbacks", "rss_MiB"
    );
    let mut worst = 0;
    for i in 0..10_000_000u64 {
        // Half IPv4, half IPv6, spread over many prefixes.
        let key = if i % 2 == 0 {
            LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(
                0x0100_0000u32.wrapping_add((i as u32).wrapping_mul(2_654_435_761)),
            )))
        } else {
            LimitKey::Ip(IpAddr::V6(Ipv6Addr::from(
                0x2001_0db8_0000_0000_0000_0000_0000_0000u128 + (i as u128) * 0x1_0000_0000_0001,
            )))
        };
        r.check(key);
        worst = worst.max(r.tracked_keys());
        if (i + 1) % 1_000_000 == 0 {
            println!(
                "{:>12} {:>14} {:>12} {:>12.1}",
                i + 1,
                r.tracked_keys(),
                r.fallbacks(),
                rss_bytes() as f64 / 1048576.0
            );
        }
    }
    println!(
        "max tracked keys {worst} (bound {limit}): {}; RSS grew {:.1} MiB over the run",
        if worst <= limit {
            "within the bound"
        } else {
            "OVER THE BOUND"
        },
        (rss_bytes() as f64 - start as f64) / 1048576.0
    );
}
