//! Top sources of refused requests by address, network, AS and JA4 TLS
//! fingerprint, for `/debug/top`, without a global lock on the refusal path.
//!
//! The summaries are sharded by client address: a refused request locks one of
//! [`SHARDS`] small mutexes, so concurrent refusals from different sources
//! rarely meet. A reader merges the shards: an address lives in one shard, so
//! its count is exact up to Space-Saving's error; a network, AS or JA4 seen
//! from addresses in several shards is the sum of the shards' counts, each
//! over-estimated by at most its shard's error (see `rampart_policy::top`).
//! Memory is fixed: `SHARDS × 4 × 2 epochs × OFFENDER_CAPACITY` entries.

use rampart_policy::top::WindowedTop;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;

/// Keys per kind kept by each shard's summaries.
pub const OFFENDER_CAPACITY: usize = 64;
/// Length of one epoch of the top-offender window (the window is two epochs).
pub const OFFENDER_EPOCH_SECS: u64 = 60;
/// Independent summaries; a power of two.
pub const SHARDS: usize = 16;

#[derive(Debug)]
struct Shard {
    ips: WindowedTop<IpAddr>,
    prefixes: WindowedTop<ipnet::IpNet>,
    asns: WindowedTop<u32>,
    ja4s: WindowedTop<rampart_policy::Ja4>,
}

impl Default for Shard {
    fn default() -> Self {
        Self {
            ips: WindowedTop::new(OFFENDER_CAPACITY, OFFENDER_EPOCH_SECS),
            prefixes: WindowedTop::new(OFFENDER_CAPACITY, OFFENDER_EPOCH_SECS),
            asns: WindowedTop::new(OFFENDER_CAPACITY, OFFENDER_EPOCH_SECS),
            ja4s: WindowedTop::new(OFFENDER_CAPACITY, OFFENDER_EPOCH_SECS),
        }
    }
}

/// The top offenders of the last one to two minutes.
#[derive(Debug)]
pub struct Offenders {
    shards: Vec<Mutex<Shard>>,
}

impl Default for Offenders {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }
}

/// The top keys of each kind, largest count first.
#[derive(Debug, Default)]
pub struct TopOffenders {
    /// By client address.
    pub ips: Vec<(IpAddr, u64)>,
    /// By /24 (IPv4) or /48 (IPv6).
    pub prefixes: Vec<(ipnet::IpNet, u64)>,
    /// By AS number.
    pub asns: Vec<(u32, u64)>,
    /// By JA4 fingerprint of the TLS hello (requests on TLS listeners).
    pub ja4s: Vec<(rampart_policy::Ja4, u64)>,
    /// The window the counts cover, seconds.
    pub window_secs: u64,
}

fn shard_of(ip: IpAddr) -> usize {
    let folded = match ip {
        IpAddr::V4(v4) => u32::from(v4),
        IpAddr::V6(v6) => {
            let n = u128::from(v6);
            (n ^ (n >> 32) ^ (n >> 64) ^ (n >> 96)) as u32
        }
    };
    // Multiplicative hashing: neighbouring addresses land in different shards.
    (folded.wrapping_mul(0x9E37_79B9) >> 28) as usize & (SHARDS - 1)
}

fn merge<K: Hash + Eq + Clone + Ord>(lists: Vec<Vec<(K, u64)>>, n: usize) -> Vec<(K, u64)> {
    let mut sum: HashMap<K, u64> = HashMap::new();
    for (k, c) in lists.into_iter().flatten() {
        *sum.entry(k).or_default() += c;
    }
    let mut all: Vec<(K, u64)> = sum.into_iter().collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(n);
    all
}

impl Offenders {
    /// Counts one refused request from `ip` (in network `prefix`, AS `asn`,
    /// with TLS fingerprint `ja4`).
    pub fn record(
        &self,
        ip: IpAddr,
        prefix: ipnet::IpNet,
        asn: Option<u32>,
        ja4: Option<rampart_policy::Ja4>,
        now_secs: u64,
    ) {
        let Some(shard) = self.shards.get(shard_of(ip)) else {
            return;
        };
        // A poisoned shard only loses counts; the request path never panics.
        if let Ok(mut s) = shard.lock() {
            s.ips.add(ip, now_secs);
            s.prefixes.add(prefix, now_secs);
            if let Some(asn) = asn {
                s.asns.add(asn, now_secs);
            }
            if let Some(ja4) = ja4 {
                s.ja4s.add(ja4, now_secs);
            }
        }
    }

    /// The `n` top keys of each kind.
    pub fn top(&self, n: usize, now_secs: u64) -> TopOffenders {
        let (mut ips, mut prefixes, mut asns, mut ja4s) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut window_secs = 2 * OFFENDER_EPOCH_SECS;
        for shard in &self.shards {
            let Ok(mut s) = shard.lock() else { continue };
            window_secs = s.ips.window_secs();
            ips.push(s.ips.top(OFFENDER_CAPACITY, now_secs));
            prefixes.push(s.prefixes.top(OFFENDER_CAPACITY, now_secs));
            asns.push(s.asns.top(OFFENDER_CAPACITY, now_secs));
            ja4s.push(s.ja4s.top(OFFENDER_CAPACITY, now_secs));
        }
        TopOffenders {
            ips: merge(ips, n),
            prefixes: merge(prefixes, n),
            asns: merge(asns, n),
            ja4s: merge(ja4s, n),
            window_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_spread_neighbours_and_the_merge_sums_networks_and_ases() {
        let used: std::collections::HashSet<usize> = (0..=255u8)
            .map(|i| shard_of(IpAddr::from([198, 51, 100, i])))
            .collect();
        assert!(used.len() > SHARDS / 2, "{used:?}");
        let offenders = Offenders::default();
        let net: ipnet::IpNet = "198.51.100.0/24".parse().unwrap_or_default();
        for i in 0..=255u8 {
            offenders.record(
                IpAddr::from([198, 51, 100, i]),
                net,
                Some(64500),
                None,
                1_000,
            );
        }
        let ja4 = rampart_policy::Ja4::parse("t13d1516h2_8daaf6152771_e5627efa2ab1").ok();
        for _ in 0..10 {
            offenders.record(IpAddr::from([203, 0, 113, 5]), net, Some(64501), ja4, 1_000);
        }
        let top = offenders.top(2, 1_000);
        assert_eq!(top.prefixes, vec![(net, 266)]);
        assert_eq!(top.asns, vec![(64500, 256), (64501, 10)]);
        assert_eq!(top.ips[0], (IpAddr::from([203, 0, 113, 5]), 10));
        assert_eq!(top.ja4s.len(), 1);
        assert_eq!(Some(top.ja4s[0].0), ja4);
        assert_eq!(top.ja4s[0].1, 10);
    }
}
