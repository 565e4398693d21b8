//! Protects the per-handshake cost of JA4 on TLS listeners: fingerprinting a
//! ClientHello from its raw record bytes (the parser, GREASE filtering, the
//! sorts and both SHA-256 hashes), for the hellos of FoxIO's sample captures
//! (Chrome 517 and 596 bytes, Firefox, a TLS 1.2 client with 86 cipher suites),
//! one hello split over four records, and the proxy's read of a hello from a
//! stream (what the pre-TLS hook does before it puts the bytes back).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rampart_policy::ja4::Ja4;
use rampart_proxy::ja4::read_hello;
use std::time::Duration;

/// `(name, bytes)` of the vectors the policy crate's JA4 test reads.
fn vectors() -> Vec<(String, Vec<u8>)> {
    let text = include_str!("../crates/rampart-policy/tests/ja4-vectors.txt");
    let mut name = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("# ") {
            name = c.split(',').next().unwrap_or("").to_string()
                + "_"
                + c.split("port ")
                    .nth(1)
                    .and_then(|p| p.split(':').next())
                    .unwrap_or("");
        } else if let Some(h) = line.strip_prefix("hex ") {
            let bytes = (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect();
            out.push((name.clone(), bytes));
        }
    }
    out
}

/// The handshake message of `records` in records of `size` bytes.
fn resplit(records: &[u8], size: usize) -> Vec<u8> {
    let len = usize::from(u16::from_be_bytes([records[3], records[4]]));
    let message = &records[5..5 + len];
    let mut out = Vec::new();
    for chunk in message.chunks(size) {
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

fn fingerprints(c: &mut Criterion) {
    let vectors = vectors();
    let pick = |prefix: &str| {
        vectors
            .iter()
            .find(|(n, _)| n.starts_with(prefix))
            .map(|(_, b)| b.clone())
            .unwrap()
    };
    let cases = [
        ("chrome_517b", pick("tls3.pcapng_63248")),
        ("chrome_596b", pick("tls3.pcapng_63250")),
        ("firefox_517b", pick("tls12.pcap_")),
        ("tls12_86_ciphers", pick("https-connect.pcap_")),
        (
            "chrome_in_4_records",
            resplit(&pick("tls3.pcapng_63248"), 128),
        ),
    ];
    for (name, bytes) in &cases {
        assert!(Ja4::from_stream(bytes).is_ok(), "{name}");
        c.bench_function(&format!("ja4/fingerprint/{name}"), |b| {
            b.iter(|| Ja4::from_stream(black_box(bytes)))
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let chrome = pick("tls3.pcapng_63248");
    c.bench_function("ja4/read_hello_from_stream/chrome_517b", |b| {
        b.iter(|| {
            let mut stream = std::io::Cursor::new(black_box(chrome.as_slice()));
            rt.block_on(read_hello(&mut stream, Duration::from_secs(5)))
        })
    });
}

criterion_group!(benches, fingerprints);
criterion_main!(benches);
