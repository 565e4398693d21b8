//! JA4 against the fingerprints FoxIO publishes for its sample captures
//! (`tests/ja4-vectors.txt`), the same hellos cut into records and reads, and
//! the refusals of the parser: not TLS, too large, malformed; never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_policy::ja4::{HelloError, Ja4, MAX_HELLO_BYTES, MAX_HELLO_RECORDS, MAX_READ_BYTES};

struct Vector {
    name: String,
    ja4: String,
    bytes: Vec<u8>,
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("ja4-vectors.txt");
    let mut out = Vec::new();
    let mut name = String::new();
    let mut ja4 = String::new();
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("# ") {
            name = c.to_string();
        } else if let Some(j) = line.strip_prefix("ja4 ") {
            ja4 = j.to_string();
        } else if let Some(h) = line.strip_prefix("hex ") {
            out.push(Vector {
                name: name.clone(),
                ja4: ja4.clone(),
                bytes: hex(h),
            });
        }
    }
    assert!(out.len() >= 10, "vectors missing");
    out
}

/// The handshake message (header included) the records of `v` carry.
fn message(records: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 5 <= records.len() {
        let len = usize::from(u16::from_be_bytes([records[pos + 3], records[pos + 4]]));
        out.extend_from_slice(&records[pos + 5..pos + 5 + len]);
        pos += 5 + len;
    }
    let total = 4 + (usize::from(out[1]) << 16 | usize::from(out[2]) << 8 | usize::from(out[3]));
    out.truncate(total);
    out
}

/// `message` in handshake records of at most `size` bytes each.
fn records(message: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in message.chunks(size) {
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// A ClientHello message around `body`.
fn hello(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut out = vec![0x01, len[1], len[2], len[3]];
    out.extend_from_slice(body);
    out
}

#[test]
fn published_fingerprints() {
    for v in vectors() {
        let got = Ja4::from_stream(&v.bytes).map(|j| j.to_string());
        assert_eq!(got.as_deref(), Ok(v.ja4.as_str()), "{}", v.name);
        // What follows the hello (a ChangeCipherSpec, early data) changes nothing.
        let mut more = v.bytes.clone();
        more.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
        assert_eq!(
            Ja4::from_stream(&more).map(|j| j.to_string()).as_deref(),
            Ok(v.ja4.as_str()),
            "{}",
            v.name
        );
    }
}

#[test]
fn every_prefix_asks_for_more() {
    for v in vectors() {
        for n in 0..v.bytes.len() {
            assert_eq!(
                Ja4::from_stream(&v.bytes[..n]),
                Err(HelloError::Incomplete),
                "{} cut at {n}",
                v.name
            );
        }
    }
}

#[test]
fn a_hello_spread_over_records_has_the_same_fingerprint() {
    for v in vectors() {
        let message = message(&v.bytes);
        let expected = Ja4::from_stream(&v.bytes).unwrap();
        let smallest = message.len().div_ceil(MAX_HELLO_RECORDS);
        for size in [smallest, smallest + 1, message.len() / 2 + 1, 300, 4096] {
            let split = records(&message, size);
            let got = Ja4::from_stream(&split);
            if message.len().div_ceil(size) <= MAX_HELLO_RECORDS {
                assert_eq!(got, Ok(expected), "{} in records of {size}", v.name);
                for n in (0..split.len()).step_by(7) {
                    assert_eq!(Ja4::from_stream(&split[..n]), Err(HelloError::Incomplete));
                }
            }
        }
        // More records than the cap: no fingerprint, whatever follows.
        let tiny = records(&message, 1);
        assert_eq!(
            Ja4::from_stream(&tiny),
            Err(HelloError::TooLarge),
            "{}",
            v.name
        );
    }
}

#[test]
fn what_is_not_a_client_hello_is_refused_early() {
    assert_eq!(
        Ja4::from_stream(b"GET / HTTP/1.1\r\n"),
        Err(HelloError::NotTls)
    );
    assert_eq!(Ja4::from_stream(b"G"), Err(HelloError::NotTls));
    assert_eq!(Ja4::from_stream(&[0x16, 0x02]), Err(HelloError::NotTls));
    // An SSL 2 compatible hello.
    assert_eq!(
        Ja4::from_stream(&[0x80, 0x2e, 0x01, 0x00, 0x02]),
        Err(HelloError::NotTls)
    );
    assert_eq!(Ja4::from_stream(&[]), Err(HelloError::Incomplete));
    assert_eq!(Ja4::from_stream(&[0x16]), Err(HelloError::Incomplete));
    // A ServerHello, known from the record's first four payload bytes.
    assert!(matches!(
        Ja4::from_stream(&[0x16, 0x03, 0x03, 0x00, 0x50, 0x02, 0x00, 0x00, 0x4c]),
        Err(HelloError::Malformed(_))
    ));
    // Too large, known from the message header before the rest arrives.
    let len = u32::try_from(MAX_HELLO_BYTES).unwrap().to_be_bytes();
    assert_eq!(
        Ja4::from_stream(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01, len[1], len[2], len[3]]),
        Err(HelloError::TooLarge)
    );
    // Records: empty, over 2^14, an alert inside the hello.
    assert!(matches!(
        Ja4::from_stream(&[0x16, 0x03, 0x01, 0x00, 0x00]),
        Err(HelloError::Malformed(_))
    ));
    assert!(matches!(
        Ja4::from_stream(&[0x16, 0x03, 0x01, 0x40, 0x01]),
        Err(HelloError::Malformed(_))
    ));
    let v = &vectors()[0];
    let message = message(&v.bytes);
    let mut split = records(&message[..100], 100);
    split.extend_from_slice(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
    assert!(matches!(
        Ja4::from_stream(&split),
        Err(HelloError::Malformed(_))
    ));
    const { assert!(MAX_READ_BYTES > MAX_HELLO_BYTES) };
}

/// A minimal TLS 1.2 hello: version, random, empty session id, `ciphers`,
/// null compression, then `extensions` (left out entirely when `None`).
fn body(ciphers: &[u16], extensions: Option<&[(u16, Vec<u8>)]>) -> Vec<u8> {
    let mut b = vec![0x03, 0x03];
    b.extend_from_slice(&[7; 32]);
    b.push(0);
    b.extend_from_slice(&u16::try_from(ciphers.len() * 2).unwrap().to_be_bytes());
    for c in ciphers {
        b.extend_from_slice(&c.to_be_bytes());
    }
    b.extend_from_slice(&[1, 0]);
    if let Some(exts) = extensions {
        let mut e = Vec::new();
        for (kind, data) in exts {
            e.extend_from_slice(&kind.to_be_bytes());
            e.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
            e.extend_from_slice(data);
        }
        b.extend_from_slice(&u16::try_from(e.len()).unwrap().to_be_bytes());
        b.extend_from_slice(&e);
    }
    b
}

fn ja4_of(body: &[u8]) -> Result<String, HelloError> {
    Ja4::from_stream(&records(&hello(body), 16_384)).map(|j| j.to_string())
}

#[test]
fn crafted_hellos() {
    // No extensions at all: version from the hello, no SNI, no ALPN, empty hashes.
    let got = ja4_of(&body(&[0x1301, 0x0a0a], None)).unwrap();
    assert!(got.starts_with("t12i010000_"), "{got}");
    assert!(got.ends_with("_000000000000"), "{got}");
    // supported_versions wins over the hello's version, GREASE left out of it.
    let versions = vec![6, 0x3a, 0x3a, 0x03, 0x04, 0x03, 0x03];
    let alpn = vec![0, 6, 2, b'h', b'2', 2, b'x', b'y'];
    let got = ja4_of(&body(
        &[0x1301],
        Some(&[
            (0x002b, versions.clone()),
            (0x0010, alpn.clone()),
            (0x0000, vec![0, 0]),
            (0xdada, vec![]),
        ]),
    ))
    .unwrap();
    // 3 extensions (GREASE not counted), ALPN "h2"; part c hashes only 002b.
    assert!(got.starts_with("t13d0103h2_"), "{got}");
    // Malformed: each is refused, never fingerprinted.
    let bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "duplicate extension",
            body(&[0x1301], Some(&[(0x0017, vec![]), (0x0017, vec![])])),
        ),
        ("odd cipher list", {
            let mut b = body(&[0x1301], None);
            b[35] = 0;
            b[36] = 3;
            b
        }),
        ("bytes after extensions", {
            let mut b = body(&[0x1301], Some(&[(0x0017, vec![])]));
            b.push(0);
            b
        }),
        (
            "ALPN list length",
            body(&[0x1301], Some(&[(0x0010, vec![0, 9, 2, b'h', b'2'])])),
        ),
        (
            "ALPN trailing bytes",
            body(&[0x1301], Some(&[(0x0010, vec![0, 3, 2, b'h', b'2', 0])])),
        ),
        (
            "supported_versions odd",
            body(&[0x1301], Some(&[(0x002b, vec![3, 3, 4, 3])])),
        ),
        (
            "signature_algorithms short",
            body(&[0x1301], Some(&[(0x000d, vec![0, 4, 4, 3])])),
        ),
        ("no compression", {
            let mut b = body(&[0x1301], None);
            let at = b.len() - 2;
            b.truncate(at);
            b.push(0);
            b
        }),
        ("truncated random", vec![3, 3, 1, 2, 3]),
        ("session id over 32", {
            let mut b = vec![3, 3];
            b.extend_from_slice(&[0; 32]);
            b.push(33);
            b.extend_from_slice(&[0; 33]);
            b.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
            b
        }),
    ];
    for (what, b) in bad {
        assert!(
            matches!(ja4_of(&b), Err(HelloError::Malformed(_))),
            "{what}: {:?}",
            ja4_of(&b)
        );
    }
    // Counts stop at 99.
    let many: Vec<u16> = (1..=150).collect();
    let got = ja4_of(&body(&many, None)).unwrap();
    assert!(got.starts_with("t12i9900"), "{got}");
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutated_hellos_never_panic_and_stay_consistent() {
    let vectors = vectors();
    let mut rng = Rng(0x0a4f_5eed_0000_0001);
    let mut fingerprinted = 0;
    for round in 0..20_000 {
        let v = &vectors[round % vectors.len()];
        let mut bytes = if rng.below(4) == 0 {
            records(&message(&v.bytes), 1 + rng.below(800))
        } else {
            v.bytes.clone()
        };
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len());
            match rng.below(5) {
                0 => bytes[at] ^= 1 << rng.below(8),
                1 => bytes[at] = rng.next() as u8,
                2 => bytes.truncate(at),
                3 => bytes.insert(at, rng.next() as u8),
                _ => {
                    // Lengths are where parsers break: hit two bytes at once.
                    if at + 1 < bytes.len() {
                        bytes[at] = rng.next() as u8;
                        bytes[at + 1] = rng.next() as u8;
                    }
                }
            }
            if bytes.is_empty() {
                break;
            }
        }
        let whole = Ja4::from_stream(&bytes);
        if let Ok(j) = whole {
            fingerprinted += 1;
            assert_eq!(Ja4::parse(&j.to_string()), Ok(j));
        }
        // A definite answer on a prefix is the answer on the whole.
        let cut = rng.below(bytes.len() + 1);
        match Ja4::from_stream(&bytes[..cut]) {
            Err(HelloError::Incomplete) => {}
            Ok(j) => assert_eq!(whole, Ok(j)),
            Err(_) => assert!(whole.is_err(), "prefix refused, whole accepted"),
        }
    }
    // The mutations keep enough hellos intact to exercise the fingerprint.
    assert!(fingerprinted > 1_000, "{fingerprinted}");
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x0a4f_5eed_0000_0002);
    for _ in 0..20_000 {
        let len = rng.below(600);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if !bytes.is_empty() && rng.below(2) == 0 {
            // A plausible record header, so the hello parser is reached.
            let body_len = bytes.len().saturating_sub(5);
            let head = [
                0x16,
                0x03,
                0x01,
                (body_len >> 8) as u8,
                body_len as u8,
                0x01,
            ];
            for (i, b) in head.iter().enumerate() {
                if i < bytes.len() {
                    bytes[i] = *b;
                }
            }
        }
        let _ = Ja4::from_stream(&bytes);
    }
}
