//! Protects the per-connection cost of PROXY protocol on a listener behind an L4
//! load balancer: reading and parsing one v1 (text) and one v2 (binary, with an
//! authority TLV) header from the start of a stream, exactly its bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rampart_config::ProxyProtocolVersion;
use rampart_proxy::proxy_protocol::read_header;

fn v2_header() -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x21, 0x11]);
    let addrs = [192, 0, 2, 7, 10, 0, 0, 1, 0xC7, 0x38, 0x01, 0xBB];
    let sni = b"\x02\x00\x0bexample.com";
    let len = u16::try_from(addrs.len() + sni.len()).unwrap();
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&addrs);
    out.extend_from_slice(sni);
    out
}

fn headers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n".to_vec();
    let v2 = [v2_header(), b"GET / HTTP/1.1\r\n".to_vec()].concat();
    for (name, bytes) in [("v1_tcp4", v1), ("v2_tcp4_with_authority_tlv", v2)] {
        c.bench_function(&format!("proxy_protocol/{name}"), |b| {
            b.iter(|| {
                let mut stream = std::io::Cursor::new(black_box(bytes.as_slice()));
                rt.block_on(read_header(&mut stream, ProxyProtocolVersion::Any))
            })
        });
    }
}

criterion_group!(benches, headers);
criterion_main!(benches);
