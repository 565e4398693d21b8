//! Which address is the client: the socket peer, unless the peer is a trusted
//! proxy, in which case the rightmost address of the forwarding chain that is not
//! itself trusted.
//!
//! A forwarding header from an untrusted peer is never read: anyone can write one.

use rampart_config::{canonical_ip, ClientIpConfig, ForwardedHeader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Resolves the client address.
///
/// `header_values` are the values of the configured forwarding header in the order
/// they appeared (several header lines form one list). The chain is walked from the
/// right; trusted hops are skipped; the first untrusted address is the client. If a
/// hop cannot be parsed the walk stops and the last good hop is used, so a client
/// cannot hide behind garbage. If every hop is trusted, the leftmost one is used.
pub fn resolve_client_ip<'a>(
    peer: IpAddr,
    header_values: impl DoubleEndedIterator<Item = &'a [u8]>,
    config: &ClientIpConfig,
) -> IpAddr {
    let peer = canonical_ip(peer);
    if !config.is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for value in header_values.rev() {
        // The usual value, plain IPv4 hops, is walked as bytes; a hop read
        // otherwise goes to the general walk below, from where it stopped.
        let value = if config.header == ForwardedHeader::XForwardedFor && value.is_ascii() {
            match walk_plain_hops(value, &mut client, config) {
                Walk::Done(ip) => return ip,
                Walk::Next => continue,
                Walk::Other(rest) => rest,
            }
        } else {
            value
        };
        let Ok(value) = std::str::from_utf8(value) else {
            return client;
        };
        for hop in value.rsplit(',') {
            let parsed = match config.header {
                ForwardedHeader::XForwardedFor => parse_hop(hop),
                ForwardedHeader::Forwarded => parse_forwarded_element(hop),
            };
            let Some(ip) = parsed.map(canonical_ip) else {
                return client;
            };
            client = ip;
            if !config.is_trusted(ip) {
                return ip;
            }
        }
    }
    client
}

/// Where [`walk_plain_hops`] stopped.
enum Walk<'a> {
    /// At the client.
    Done(IpAddr),
    /// Every hop was a trusted proxy: on to the value before.
    Next,
    /// At a hop that is not plain IPv4: the value up to and including it.
    Other(&'a [u8]),
}

/// Walks an ASCII X-Forwarded-For value from the right while its hops are
/// plain IPv4 (`parse_v4_canonical`, around spaces and quotes as `parse_hop`
/// trims them), updating `client` as `resolve_client_ip` does.
fn walk_plain_hops<'a>(value: &'a [u8], client: &mut IpAddr, config: &ClientIpConfig) -> Walk<'a> {
    let mut end = value.len();
    loop {
        let start = hop_start(&value[..end]);
        let hop = trim_hop(&value[start..end]);
        let Some(v4) = parse_v4_canonical(hop) else {
            return Walk::Other(&value[..end]);
        };
        let ip = IpAddr::V4(v4);
        *client = ip;
        if !config.is_trusted(ip) {
            return Walk::Done(ip);
        }
        if start == 0 {
            return Walk::Next;
        }
        end = start - 1;
    }
}

/// Where the hop ending the slice starts: just after its last comma, or 0.
fn hop_start(text: &[u8]) -> usize {
    text.iter().rposition(|&b| b == b',').map_or(0, |at| at + 1)
}

/// A hop without the spaces and quotes around it (ASCII whitespace only; a
/// hop with other spacing is not plain and goes to `parse_hop`).
fn trim_hop(hop: &[u8]) -> &[u8] {
    let mut hop = hop.trim_ascii();
    while let [b'"', rest @ ..] = hop {
        hop = rest;
    }
    while let [rest @ .., b'"'] = hop {
        hop = rest;
    }
    hop
}

/// One X-Forwarded-For hop: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Some(v4) = parse_v4_canonical(hop.as_bytes()) {
        return Some(IpAddr::V4(v4));
    }
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = hop.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse().ok())
}

/// `a.b.c.d` in its one plain spelling (decimal octets without leading
/// zeros), the common hop, read in one pass; anything else is `None` and goes
/// to the standard parser, which agrees with this one wherever this one answers.
fn parse_v4_canonical(text: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let (mut at, mut value, mut digits) = (0usize, 0u32, 0u32);
    for &c in text {
        match c {
            b'0'..=b'9' => {
                if digits > 0 && value == 0 {
                    return None; // a leading zero
                }
                value = value * 10 + u32::from(c - b'0');
                digits += 1;
                if value > 255 {
                    return None;
                }
            }
            b'.' if digits > 0 && at < 3 => {
                *octets.get_mut(at)? = value as u8;
                at += 1;
                (value, digits) = (0, 0);
            }
            _ => return None,
        }
    }
    if digits == 0 || at != 3 {
        return None;
    }
    octets[3] = value as u8;
    Some(Ipv4Addr::from(octets))
}

/// One RFC 7239 element (`for=192.0.2.60;proto=http;by=...`): its `for` address.
fn parse_forwarded_element(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        if name.trim().eq_ignore_ascii_case("for") {
            parse_hop(value)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_config::parse_cidr;

    fn cfg(header: ForwardedHeader) -> ClientIpConfig {
        ClientIpConfig {
            trusted_proxies: vec![
                parse_cidr("10.0.0.0/8").unwrap(),
                parse_cidr("2001:db8:ffff::/48").unwrap(),
            ],
            header,
        }
    }

    fn resolve(peer: &str, values: &[&str], header: ForwardedHeader) -> String {
        let values: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
        resolve_client_ip(peer.parse().unwrap(), values.into_iter(), &cfg(header)).to_string()
    }

    use ForwardedHeader::{Forwarded, XForwardedFor as Xff};

    /// The one-pass IPv4 reader answers as the standard parser does wherever
    /// it answers, and leaves every other spelling to it.
    #[test]
    fn the_fast_ipv4_reader_agrees_with_the_standard_parser() {
        let mut x: u64 = 1;
        let alphabet = b"0123456789.";
        for n in 0..200_000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let text: String = if n % 2 == 0 {
                let o = x.to_le_bytes();
                format!(
                    "{}.{}.{}.{}",
                    o[0],
                    o[1],
                    o[2],
                    o[3] as u32 * (1 + (o[4] % 2) as u32)
                )
            } else {
                (0..(x % 17) as usize)
                    .map(|i| alphabet[((x >> (i * 3 + 5)) % 11) as usize] as char)
                    .collect()
            };
            let std = text.parse::<Ipv4Addr>().ok();
            if let Some(fast) = parse_v4_canonical(text.as_bytes()) {
                assert_eq!(Some(fast), std, "{text}");
            } else if n % 2 == 0 && !text.contains(".0") {
                assert_eq!(std, None, "{text} should have been read fast");
            }
        }
        assert_eq!(parse_v4_canonical(b"01.2.3.4"), None);
        assert_eq!(parse_v4_canonical(b"0.0.0.0"), Some(Ipv4Addr::UNSPECIFIED));
        assert_eq!(parse_v4_canonical(b"1.2.3"), None);
        assert_eq!(parse_v4_canonical(b"1.2.3.4.5"), None);
        assert_eq!(parse_v4_canonical(b"256.1.1.1"), None);
        assert_eq!(parse_v4_canonical(b"1..2.3"), None);
    }

    /// The walk as it was before plain hops were read as bytes: the byte walk
    /// must give the same client for any header.
    fn reference(peer: IpAddr, values: &[&[u8]], config: &ClientIpConfig) -> IpAddr {
        let peer = canonical_ip(peer);
        if !config.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        for value in values.iter().rev() {
            let Ok(value) = std::str::from_utf8(value) else {
                return client;
            };
            for hop in value.rsplit(',') {
                let Some(ip) = parse_hop(hop).map(canonical_ip) else {
                    return client;
                };
                client = ip;
                if !config.is_trusted(ip) {
                    return ip;
                }
            }
        }
        client
    }

    #[test]
    fn the_byte_walk_finds_the_client_the_string_walk_finds() {
        let config = cfg(Xff);
        let pieces: &[&[u8]] = &[
            b"10.1.2.3",
            b"10.0.0.1",
            b"198.51.100.7",
            b"0.0.0.0",
            b"01.2.3.4",
            b"1.2.3",
            b"2001:db8::1",
            b"[2001:db8::1]:80",
            b"1.2.3.4:80",
            b"nonsense",
            b"",
            b" ",
            b"\"",
            b",",
            b", ",
            b"\t",
            b"\x0b",
            b"\xff",
            b"256.1.1.1",
            b"10.255.255.255",
        ];
        let mut x: u64 = 3;
        for _ in 0..100_000 {
            let mut values: Vec<Vec<u8>> = Vec::new();
            for _ in 0..1 + (x % 3) {
                let mut v = Vec::new();
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                for i in 0..(x >> 60) {
                    v.extend_from_slice(
                        pieces[((x >> ((i * 5 + 3) % 60)) % pieces.len() as u64) as usize],
                    );
                }
                values.push(v);
            }
            let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            let peer: IpAddr = "10.9.9.9".parse().unwrap();
            assert_eq!(
                resolve_client_ip(peer, refs.iter().copied(), &config),
                reference(peer, &refs, &config),
                "{:?}",
                values
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn untrusted_peer_header_is_ignored() {
        assert_eq!(resolve("203.0.113.9", &["1.1.1.1"], Xff), "203.0.113.9");
    }

    #[test]
    fn trusted_peer_gives_rightmost_untrusted_hop() {
        assert_eq!(
            resolve("10.0.0.1", &["6.6.6.6, 198.51.100.7, 10.1.1.1"], Xff),
            "198.51.100.7"
        );
        assert_eq!(
            resolve("10.0.0.1", &["6.6.6.6", "198.51.100.7:4711"], Xff),
            "198.51.100.7"
        );
    }

    #[test]
    fn ipv6_hops_and_peers() {
        assert_eq!(
            resolve(
                "2001:db8:ffff::1",
                &["2001:db8:1::5, 2001:db8:ffff::2"],
                Xff
            ),
            "2001:db8:1::5"
        );
        assert_eq!(
            resolve("10.0.0.1", &["[2001:db8::9]:443"], Xff),
            "2001:db8::9"
        );
        assert_eq!(resolve("::ffff:10.0.0.1", &["192.0.2.1"], Xff), "192.0.2.1");
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_good_hop() {
        assert_eq!(resolve("10.0.0.1", &["1.2.3.4, nonsense"], Xff), "10.0.0.1");
        assert_eq!(
            resolve("10.0.0.1", &["nonsense, 10.0.0.2"], Xff),
            "10.0.0.2"
        );
        assert_eq!(resolve("10.0.0.1", &[], Xff), "10.0.0.1");
    }

    #[test]
    fn forwarded_header_for_parameter() {
        assert_eq!(
            resolve(
                "10.0.0.1",
                &["for=192.0.2.43, for=\"[2001:db8:cafe::17]:4711\";proto=https"],
                Forwarded
            ),
            "2001:db8:cafe::17"
        );
        assert_eq!(resolve("10.0.0.1", &["for=unknown"], Forwarded), "10.0.0.1");
    }
}
