//! A set of networks answering "is this address in any of them" with a binary
//! search over merged ranges: O(log n) whatever the size of the list.

use ipnet::IpNet;
use std::net::IpAddr;

/// A set of IPv4 and IPv6 networks.
#[derive(Debug, Clone, Default)]
pub struct CidrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl CidrSet {
    /// Builds the set; overlapping and adjacent networks are merged.
    pub fn new(nets: &[IpNet]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in IpNet::aggregate(&nets.to_vec()) {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        v4.sort_unstable();
        v6.sort_unstable();
        Self { v4, v6 }
    }

    /// Whether `ip` is in any network of the set. IPv4-mapped IPv6 addresses
    /// should be canonicalised by the caller.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => in_ranges(&self.v4, u32::from(a)),
            IpAddr::V6(a) => in_ranges(&self.v6, u128::from(a)),
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

fn in_ranges<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let after = ranges.partition_point(|r| r.0 <= x);
    after > 0 && ranges[after - 1].1 >= x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_over_merged_ranges() {
        let nets: Vec<IpNet> = [
            "10.0.0.0/8",
            "192.168.1.0/24",
            "192.168.0.0/24",
            "2001:db8::/32",
        ]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
        let set = CidrSet::new(&nets);
        for yes in [
            "10.255.0.1",
            "192.168.0.9",
            "192.168.1.255",
            "2001:db8:1::1",
        ] {
            assert!(set.contains(yes.parse().unwrap()), "{yes}");
        }
        for no in [
            "11.0.0.0",
            "192.168.2.0",
            "9.255.255.255",
            "2001:db9::1",
            "::1",
        ] {
            assert!(!set.contains(no.parse().unwrap()), "{no}");
        }
        assert!(!CidrSet::new(&[]).contains("1.1.1.1".parse().unwrap()));
    }
}
