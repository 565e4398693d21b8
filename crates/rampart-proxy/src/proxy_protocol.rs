//! PROXY protocol (HAProxy's v1 text and v2 binary headers) on listeners behind
//! an L4 load balancer, so that every key, geo rule and cap sees the real client
//! instead of the balancer.
//!
//! - A listener with `proxy_protocol` requires the header from the sources in
//!   `proxy_protocol_from` and refuses it from anyone else: a connection from a
//!   listed source without a valid header, or from an unlisted source with one,
//!   is closed and counted. Unlisted sources without a header are served as
//!   usual (health checks straight to the node, say).
//! - The header is read before anything else, byte for byte exactly (never a
//!   byte of what follows), within `client_header_timeout`, and parsed by the
//!   `ppp` crate. v1 is at most 107 bytes; v2 headers are capped at 4 KiB.
//! - `PROXY` (v2) with a TCP source: that address becomes the connection's peer
//!   (its socket digest is replaced), for client IP resolution (a forwarding
//!   header is then believed only if *that* address is a trusted proxy), limits,
//!   geo rules, the access log and the per-source connection cap. `LOCAL` (v2)
//!   and `UNKNOWN` (v1): the socket address stays, as the specification says.
//! - v2 TLVs that say where the client came from (authority, i.e. the TLS SNI
//!   the balancer saw, and the AWS VPC endpoint id) are logged with the address.
//!
//! Plaintext listeners read it in `edge::EdgeApp`; TLS listeners in Pingora's
//! pre-TLS hook (`crate::ja4::PreTls`), before the handshake and the JA4 read.

use crate::state::Shared;
use ipnet::IpNet;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::{GetSocketDigest, Peek, SocketDigest};
use rampart_config::{ProxyProtocolConfig, ProxyProtocolVersion};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The v1 signature and the first bytes of the v2 signature.
const V1_PREFIX: &[u8] = b"PROXY";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header (the specification's bound, CRLF included).
const V1_MAX: usize = 107;
/// Largest v2 address-and-TLV block accepted.
const V2_MAX_PAYLOAD: usize = 4096;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyRefusal {
    /// A listed source sent no header, or not in time.
    Missing,
    /// The header is malformed, truncated, of a version the listener does not
    /// take, or not TCP.
    Invalid,
    /// A source not in `proxy_protocol_from` sent a header.
    Untrusted,
}

impl ProxyRefusal {
    /// Label of `rampart_client_connections_closed_total`.
    pub fn as_label(self) -> &'static str {
        match self {
            ProxyRefusal::Missing => "proxy_protocol_missing",
            ProxyRefusal::Invalid => "proxy_protocol_invalid",
            ProxyRefusal::Untrusted => "proxy_protocol_untrusted",
        }
    }
}

/// What a header said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client, when the header carried one (`None` for LOCAL / UNKNOWN).
    pub source: Option<SocketAddr>,
    /// Where the client connected to, as the balancer saw it.
    pub destination: Option<SocketAddr>,
    /// TLVs worth logging, as `name=value` pairs.
    pub tlvs: Vec<(&'static str, String)>,
}

/// Reads one header from the start of `stream`, exactly its bytes.
pub async fn read_header<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    version: ProxyProtocolVersion,
) -> Result<ProxyHeader, ProxyRefusal> {
    let mut buf = vec![0u8; 5];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|_| ProxyRefusal::Missing)?;
    if buf == V1_PREFIX {
        if version == ProxyProtocolVersion::V2 {
            return Err(ProxyRefusal::Invalid);
        }
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyRefusal::Invalid);
            }
            stream
                .read_exact(&mut byte)
                .await
                .map_err(|_| ProxyRefusal::Invalid)?;
            buf.push(byte[0]);
        }
        parse_v1(&buf)
    } else if V2_SIGNATURE.starts_with(&buf) {
        if version == ProxyProtocolVersion::V1 {
            return Err(ProxyRefusal::Invalid);
        }
        buf.resize(16, 0);
        stream
            .read_exact(&mut buf[5..])
            .await
            .map_err(|_| ProxyRefusal::Invalid)?;
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if len > V2_MAX_PAYLOAD {
            return Err(ProxyRefusal::Invalid);
        }
        buf.resize(16 + len, 0);
        stream
            .read_exact(&mut buf[16..])
            .await
            .map_err(|_| ProxyRefusal::Invalid)?;
        parse_v2(&buf)
    } else {
        Err(ProxyRefusal::Missing)
    }
}

fn parse_v1(bytes: &[u8]) -> Result<ProxyHeader, ProxyRefusal> {
    use ppp::v1::{Addresses, Header};
    let header = Header::try_from(bytes).map_err(|_| ProxyRefusal::Invalid)?;
    let (source, destination) = match header.addresses {
        Addresses::Unknown => (None, None),
        Addresses::Tcp4(a) => (
            Some(SocketAddr::from((a.source_address, a.source_port))),
            Some(SocketAddr::from((
                a.destination_address,
                a.destination_port,
            ))),
        ),
        Addresses::Tcp6(a) => (
            Some(SocketAddr::from((a.source_address, a.source_port))),
            Some(SocketAddr::from((
                a.destination_address,
                a.destination_port,
            ))),
        ),
    };
    Ok(ProxyHeader {
        source,
        destination,
        tlvs: Vec::new(),
    })
}

fn parse_v2(bytes: &[u8]) -> Result<ProxyHeader, ProxyRefusal> {
    use ppp::v2::{Addresses, Command, Header, Protocol};
    let header = Header::try_from(bytes).map_err(|_| ProxyRefusal::Invalid)?;
    let mut tlvs = Vec::new();
    for tlv in header.tlvs() {
        let Ok(tlv) = tlv else {
            return Err(ProxyRefusal::Invalid);
        };
        match tlv.kind {
            // PP2_TYPE_AUTHORITY: the host name the client asked for (TLS SNI).
            0x02 => tlvs.push(("authority", printable_bytes(&tlv.value))),
            // PP2_TYPE_AWS, subtype 0x01: the VPC endpoint id.
            0xEA if tlv.value.first() == Some(&0x01) => {
                tlvs.push(("aws_vpce_id", printable_bytes(&tlv.value[1..])))
            }
            _ => {}
        }
    }
    if header.command == Command::Local {
        return Ok(ProxyHeader {
            source: None,
            destination: None,
            tlvs,
        });
    }
    let (source, destination) = match header.addresses {
        Addresses::IPv4(a) if header.protocol == Protocol::Stream => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        Addresses::IPv6(a) if header.protocol == Protocol::Stream => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        // UNSPEC with PROXY: the receiver uses its own addresses (the spec);
        // anything but TCP over IP is not a client this proxy can serve.
        Addresses::Unspecified => {
            return Ok(ProxyHeader {
                source: None,
                destination: None,
                tlvs,
            })
        }
        _ => return Err(ProxyRefusal::Invalid),
    };
    Ok(ProxyHeader {
        source: Some(source),
        destination: Some(destination),
        tlvs,
    })
}

fn printable_bytes(bytes: &[u8]) -> String {
    crate::lockdown::printable(&String::from_utf8_lossy(bytes))
}

/// Whether `bytes` (what a peek saw) starts like a PROXY header.
pub fn looks_like_header(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && (V1_PREFIX.starts_with(&bytes[..bytes.len().min(5)])
            || V2_SIGNATURE.starts_with(&bytes[..bytes.len().min(12)]))
}

/// Handles the PROXY header of a new connection from `peer` (its socket address)
/// on a listener with `config`: reads it when the peer is listed, and then
/// replaces the stream's socket digest (descriptor `fd`) so that the header's
/// source is the peer from here on; refuses a header from anyone else.
pub async fn accept<S>(
    stream: &mut S,
    fd: i32,
    peer: IpAddr,
    config: &ProxyProtocolConfig,
    deadline: Duration,
) -> Result<(), ProxyRefusal>
where
    S: AsyncRead + GetSocketDigest + Peek + Unpin + Send + ?Sized,
{
    let peer = rampart_config::canonical_ip(peer);
    let listed = config.from.iter().any(|net: &IpNet| net.contains(&peer));
    if !listed {
        // A peek blocks until its 5 bytes arrive; every HTTP request and TLS
        // ClientHello is longer. What arrives is left in place.
        let mut first = [0u8; 5];
        let peeked = tokio::time::timeout(deadline, stream.try_peek(&mut first)).await;
        if matches!(peeked, Ok(Ok(true))) && looks_like_header(&first) {
            return Err(ProxyRefusal::Untrusted);
        }
        return Ok(());
    }
    let header = tokio::time::timeout(deadline, read_header(stream, config.version))
        .await
        .map_err(|_| ProxyRefusal::Missing)??;
    // No balancer has a client at 0.0.0.0, ::, a broadcast or multicast address.
    if header.source.is_some_and(|s| {
        let ip = rampart_config::canonical_ip(s.ip());
        ip.is_unspecified()
            || ip.is_multicast()
            || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
    }) {
        return Err(ProxyRefusal::Invalid);
    }
    if let Some(source) = header.source {
        let digest = SocketDigest::from_raw_fd(fd);
        let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(source)));
        if let Some(local) = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().cloned())
        {
            let _ = digest.local_addr.set(Some(local));
        }
        stream.set_socket_digest(digest);
    }
    if !header.tlvs.is_empty() {
        let tlvs: Vec<String> = header
            .tlvs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        log::info!(
            "PROXY header from {peer}: client {} {}",
            header
                .source
                .map_or_else(|| "(local)".to_string(), |s| s.to_string()),
            tlvs.join(" ")
        );
    }
    Ok(())
}

/// The PROXY settings of the listener a stream was accepted on.
pub fn listener_config(
    listeners: &[rampart_config::ListenerConfig],
    local: Option<SocketAddr>,
) -> Option<&ProxyProtocolConfig> {
    let local = local?;
    listeners
        .iter()
        .find(|l| {
            l.address.port() == local.port()
                && (l.address.ip() == local.ip() || l.address.ip().is_unspecified())
        })
        .and_then(|l| l.proxy_protocol.as_ref())
}

/// The PROXY step of a new connection (descriptor `fd`), wherever it is read:
/// finds the listener the stream was accepted on, and when that listener takes
/// PROXY headers, runs [`accept`] with the config in force. A refusal is
/// counted and returned; the caller closes the connection.
pub async fn on_accept<S>(stream: &mut S, fd: i32, shared: &Shared) -> Result<(), ProxyRefusal>
where
    S: AsyncRead + GetSocketDigest + Peek + Unpin + Send + ?Sized,
{
    let snapshot = shared.snapshot();
    let digest = stream.get_socket_digest();
    let local = digest
        .as_ref()
        .and_then(|d| d.local_addr().and_then(|a| a.as_inet().copied()));
    let peer = digest
        .as_ref()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().map(|a| a.ip())));
    let (Some(config), Some(peer)) = (listener_config(&snapshot.config.listeners, local), peer)
    else {
        return Ok(());
    };
    let deadline = snapshot.config.server.client.header_timeout;
    let read = accept(stream, fd, peer, config, deadline).await;
    if let Err(why) = read {
        shared.metrics.client_connection_closed(why.as_label());
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(
        bytes: &[u8],
        version: ProxyProtocolVersion,
    ) -> Result<ProxyHeader, ProxyRefusal> {
        let mut cursor = std::io::Cursor::new(bytes.to_vec());
        read_header(&mut cursor, version).await
    }

    #[tokio::test]
    async fn v1_headers() {
        let h = read(
            b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443\r\nGET /",
            ProxyProtocolVersion::Any,
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(h.source, "192.0.2.7:51000".parse().ok());
        let h = read(
            b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n",
            ProxyProtocolVersion::V1,
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(h.source, "[2001:db8::7]:51000".parse().ok());
        let h = read(b"PROXY UNKNOWN\r\n", ProxyProtocolVersion::Any)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(h.source, None);
        for bad in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 51000\r\n"[..],
            b"PROXY TCP4 300.0.2.7 10.0.0.1 51000 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443 x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x\r\n",
        ] {
            assert!(read(bad, ProxyProtocolVersion::Any).await.is_err(), "{bad:?}");
        }
        assert_eq!(
            read(b"PROXY UNKNOWN\r\n", ProxyProtocolVersion::V2).await,
            Err(ProxyRefusal::Invalid)
        );
        assert_eq!(
            read(b"GET / HTTP/1.1\r\n", ProxyProtocolVersion::Any).await,
            Err(ProxyRefusal::Missing)
        );
    }

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        let len = u16::try_from(addresses.len() + tlvs.len()).unwrap_or(0);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(addresses);
        out.extend_from_slice(tlvs);
        out
    }

    #[tokio::test]
    async fn v2_headers() {
        let addrs = [192, 0, 2, 7, 10, 0, 0, 1, 0xC7, 0x38, 0x01, 0xBB];
        let sni = [
            0x02, 0x00, 0x0B, b'e', b'x', b'a', b'm', b'p', b'l', b'e', b'.', b'c', b'o', b'm',
        ];
        let mut bytes = v2(1, 0x11, &addrs, &sni);
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut cursor = std::io::Cursor::new(bytes);
        let h = read_header(&mut cursor, ProxyProtocolVersion::V2)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(h.source, "192.0.2.7:51000".parse().ok());
        assert_eq!(h.tlvs, vec![("authority", "example.com".to_string())]);
        // Exactly the header was consumed.
        let mut rest = String::new();
        let _ = cursor.read_to_string(&mut rest).await;
        assert_eq!(rest, "GET / HTTP/1.1\r\n");
        // LOCAL: no client, the socket address stays.
        let h = read(&v2(0, 0x00, &[], &[]), ProxyProtocolVersion::Any)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(h.source, None);
        // Truncated, UDP, a v2 header on a v1 listener.
        let full = v2(1, 0x11, &addrs, &[]);
        assert!(read(&full[..20], ProxyProtocolVersion::Any).await.is_err());
        assert!(read(&v2(1, 0x12, &addrs, &[]), ProxyProtocolVersion::Any)
            .await
            .is_err());
        assert_eq!(
            read(&full, ProxyProtocolVersion::V1).await,
            Err(ProxyRefusal::Invalid)
        );
        // An oversized length is refused before reading it.
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert_eq!(
            read(&huge, ProxyProtocolVersion::Any).await,
            Err(ProxyRefusal::Invalid)
        );
    }

    #[test]
    fn peeked_prefixes() {
        assert!(looks_like_header(b"PROXY TCP4"));
        assert!(looks_like_header(b"\r\n\r\n\0\r\nQUIT\n"));
        assert!(!looks_like_header(b"GET / HTTP/1.1"));
        assert!(!looks_like_header(b"\x16\x03\x01"));
    }
}
