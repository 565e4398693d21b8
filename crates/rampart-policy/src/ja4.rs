//! JA4 TLS client fingerprints (FoxIO's JA4 specification, BSD 3-Clause) from
//! the raw bytes a client sends first on a TLS connection.
//!
//! [`Ja4::from_stream`] takes the bytes from the start of the stream (what the
//! proxy peeked before the TLS handshake) and returns the fingerprint, or why
//! there is none: [`HelloError::Incomplete`] asks the caller to read more.
//! Everything is bounded: the ClientHello message is at most
//! [`MAX_HELLO_BYTES`] and spread over at most [`MAX_HELLO_RECORDS`] records;
//! every length is checked against what encloses it, and nothing panics on any
//! input (a fuzz target and a no-panic test hold it to that).
//!
//! The fingerprint, `t13d1516h2_8daaf6152771_e5627efa2ab1`:
//! - part a: `t` (TLS over TCP), the highest version of `supported_versions`
//!   (else the hello's own version), `d` with an SNI extension or `i` without,
//!   the counts of cipher suites and of extensions (two digits each, at most
//!   99), and the first and last character of the first ALPN value (`00`
//!   without one; the first and last hex digit when either byte is not an
//!   ASCII letter or digit);
//! - part b: the first 12 hex digits of the SHA-256 of the cipher suites,
//!   sorted, as 4-digit hex joined by `,`;
//! - part c: the same of the extensions, sorted, without SNI (`0000`) and ALPN
//!   (`0010`), then `_` and the signature algorithms in the order sent.
//!
//! GREASE values (RFC 8701) are left out everywhere. An empty list hashes to
//! `000000000000`. Checked against the fingerprints FoxIO publishes for its
//! sample captures (`tests/ja4.rs`). One rule follows the specification
//! where FoxIO's own tools do not: a first ALPN value whose first or last
//! byte is not an ASCII letter or digit gives its first and last hex digit
//! (`0xba 0xad` is `bd`), where those tools print `99`. Clients send `h2` and
//! `http/1.1`; the difference only shows for odd ALPN values.

use rampart_config::Ja4Pattern;
use std::borrow::Cow;
use std::fmt;

/// Largest ClientHello handshake message fingerprinted, its 4-byte header
/// included. Browsers send 0.5 to 2 KiB (post-quantum key shares included); a
/// larger hello gets no fingerprint (the handshake goes on without one).
pub const MAX_HELLO_BYTES: usize = 16 * 1024;

/// Most TLS records a ClientHello may be spread over. Clients put it in one;
/// a hello larger than a record (16 KiB) needs two.
pub const MAX_HELLO_RECORDS: usize = 8;

/// Most bytes a caller needs to read to fingerprint any hello within the caps:
/// the message, plus a record header per record, plus what the last record
/// may carry after the message.
pub const MAX_READ_BYTES: usize = MAX_HELLO_BYTES + MAX_HELLO_RECORDS * RECORD_HEADER + MAX_RECORD;

/// Largest TLS record payload (2^14).
const MAX_RECORD: usize = 16 * 1024;
const RECORD_HEADER: usize = 5;
const HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 0x01;

const EXT_SNI: u16 = 0x0000;
const EXT_ALPN: u16 = 0x0010;
const EXT_SIGNATURE_ALGORITHMS: u16 = 0x000d;
const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;

/// Why bytes give no fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloError {
    /// The bytes are the start of a ClientHello: read more.
    Incomplete,
    /// The stream does not start with a TLS handshake record (plain HTTP on a
    /// TLS port, an SSL 2 hello).
    NotTls,
    /// The hello is larger than [`MAX_HELLO_BYTES`], or spread over more than
    /// [`MAX_HELLO_RECORDS`] records.
    TooLarge,
    /// The records or the hello are malformed.
    Malformed(&'static str),
}

impl HelloError {
    /// Closed-set label for metrics.
    pub fn as_label(self) -> &'static str {
        match self {
            HelloError::Incomplete => "incomplete",
            HelloError::NotTls => "not_tls",
            HelloError::TooLarge => "too_large",
            HelloError::Malformed(_) => "malformed",
        }
    }
}

impl fmt::Display for HelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HelloError::Incomplete => f.write_str("the ClientHello is incomplete"),
            HelloError::NotTls => f.write_str("not a TLS handshake"),
            HelloError::TooLarge => write!(
                f,
                "the ClientHello is larger than {MAX_HELLO_BYTES} bytes or spread over more than {MAX_HELLO_RECORDS} records"
            ),
            HelloError::Malformed(why) => write!(f, "malformed ClientHello: {why}"),
        }
    }
}

impl std::error::Error for HelloError {}

/// A JA4 fingerprint: 22 bytes, `Copy`, cheap to hash and compare (a limit's
/// key, a top-offender key). Its text form is 36 characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ja4 {
    a: [u8; 10],
    b: [u8; 6],
    c: [u8; 6],
}

impl Ja4 {
    /// The fingerprint of the ClientHello at the start of `stream` (the raw
    /// bytes a client sent first on a TLS connection).
    pub fn from_stream(stream: &[u8]) -> Result<Ja4, HelloError> {
        let message = handshake_message(stream)?;
        fingerprint(&message)
    }

    /// Reads the text form (`t13d1516h2_8daaf6152771_e5627efa2ab1`).
    pub fn parse(text: &str) -> Result<Ja4, String> {
        let pattern = Ja4Pattern::parse(text)?;
        match pattern {
            Ja4Pattern {
                a: Some(a),
                b: Some(b),
                c: Some(c),
            } => Ok(Ja4 { a, b, c }),
            _ => Err(format!("\"{text}\" is a pattern, not a fingerprint")),
        }
    }

    /// Part a, `t13d1516h2`.
    pub fn a(&self) -> &[u8; 10] {
        &self.a
    }

    /// Part b, the truncated cipher hash.
    pub fn b(&self) -> &[u8; 6] {
        &self.b
    }

    /// Part c, the truncated extension hash.
    pub fn c(&self) -> &[u8; 6] {
        &self.c
    }

    /// Whether `pattern` matches: each part it gives is equal.
    pub fn matches(&self, pattern: &Ja4Pattern) -> bool {
        pattern.a.is_none_or(|a| a == self.a)
            && pattern.b.is_none_or(|b| b == self.b)
            && pattern.c.is_none_or(|c| c == self.c)
    }

    /// The text form, on the stack.
    pub fn text(&self) -> Ja4Text {
        let mut out = [0u8; rampart_config::JA4_TEXT_LEN];
        out[..10].copy_from_slice(&self.a);
        out[10] = b'_';
        write_hex(&mut out[11..23], &self.b);
        out[23] = b'_';
        write_hex(&mut out[24..36], &self.c);
        Ja4Text(out)
    }
}

/// The text form of a [`Ja4`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ja4Text([u8; rampart_config::JA4_TEXT_LEN]);

impl Ja4Text {
    /// As a string slice.
    pub fn as_str(&self) -> &str {
        // Part a is ASCII letters, digits and `_`-free by construction (computed
        // or parsed), the rest hex: always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Display for Ja4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl fmt::Debug for Ja4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ja4({self})")
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 15)];
    }
}

/// GREASE values (RFC 8701): `0x?a?a` with both bytes equal.
pub fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

/// The ClientHello handshake message (its 4-byte header included) from the
/// handshake records at the start of `stream`: borrowed when one record holds
/// it, else reassembled.
fn handshake_message(stream: &[u8]) -> Result<Cow<'_, [u8]>, HelloError> {
    let mut message: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut need: Option<usize> = None;
    let mut pos = 0usize;
    for record in 0..MAX_HELLO_RECORDS {
        let header = stream.get(pos..).unwrap_or(&[]);
        // Refuse what is not TLS as soon as its first bytes show it.
        match header.first() {
            None => return Err(HelloError::Incomplete),
            Some(&HANDSHAKE) => {}
            Some(_) if record == 0 => return Err(HelloError::NotTls),
            Some(_) => {
                return Err(HelloError::Malformed(
                    "a non-handshake record inside the hello",
                ))
            }
        }
        match header.get(1) {
            None => return Err(HelloError::Incomplete),
            Some(3) => {}
            Some(_) if record == 0 => return Err(HelloError::NotTls),
            Some(_) => return Err(HelloError::Malformed("a record version other than 3.x")),
        }
        let Some(len) = header.get(3..5) else {
            return Err(HelloError::Incomplete);
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len == 0 {
            return Err(HelloError::Malformed("an empty handshake record"));
        }
        if len > MAX_RECORD {
            return Err(HelloError::Malformed("a record longer than 2^14 bytes"));
        }
        let available = &header[RECORD_HEADER..];
        // The message header may be known before the record is complete: fail
        // fast on a message that is no ClientHello or too large.
        let known = message.len() + available.len().min(len);
        if need.is_none() && known >= 4 {
            let mut head = [0u8; 4];
            for (i, b) in message.iter().chain(available.iter()).take(4).enumerate() {
                head[i] = *b;
            }
            if head[0] != CLIENT_HELLO {
                return Err(HelloError::Malformed(
                    "the first handshake message is not a ClientHello",
                ));
            }
            let total =
                4 + (usize::from(head[1]) << 16 | usize::from(head[2]) << 8 | usize::from(head[3]));
            if total > MAX_HELLO_BYTES {
                return Err(HelloError::TooLarge);
            }
            need = Some(total);
        }
        let Some(fragment) = available.get(..len) else {
            return Err(HelloError::Incomplete);
        };
        message = if message.is_empty() {
            Cow::Borrowed(fragment)
        } else {
            let mut joined = message.into_owned();
            joined.extend_from_slice(fragment);
            Cow::Owned(joined)
        };
        if let Some(total) = need.filter(|&t| message.len() >= t) {
            return Ok(match message {
                Cow::Borrowed(b) => Cow::Borrowed(&b[..total]),
                Cow::Owned(mut v) => {
                    v.truncate(total);
                    Cow::Owned(v)
                }
            });
        }
        pos += RECORD_HEADER + len;
    }
    Err(HelloError::TooLarge)
}

/// A bounds-checked reader: every take is checked, none panics.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if n > self.bytes.len() {
            return Err(HelloError::Malformed(what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a `width`-byte length prefix.
    fn vector(&mut self, width: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        let len = match width {
            1 => usize::from(self.u8(what)?),
            _ => usize::from(self.u16(what)?),
        };
        self.take(len, what)
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The 16-bit values of a list, GREASE left out.
fn u16s(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes
        .chunks_exact(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .filter(|v| !is_grease(*v))
}

/// The fingerprint of one ClientHello handshake message (header included).
fn fingerprint(message: &[u8]) -> Result<Ja4, HelloError> {
    let body = message.get(4..).unwrap_or(&[]);
    let mut r = Reader { bytes: body };
    let legacy_version = r.u16("truncated before the version")?;
    r.take(32, "truncated in the random")?;
    let session_id = r.vector(1, "truncated in the session id")?;
    if session_id.len() > 32 {
        return Err(HelloError::Malformed("a session id longer than 32 bytes"));
    }
    let ciphers = r.vector(2, "truncated in the cipher suites")?;
    if ciphers.is_empty() || ciphers.len() % 2 != 0 {
        return Err(HelloError::Malformed(
            "an empty or odd-length cipher suite list",
        ));
    }
    let compression = r.vector(1, "truncated in the compression methods")?;
    if compression.is_empty() {
        return Err(HelloError::Malformed("no compression method"));
    }
    // TLS 1.2 hellos may end here; everything else has extensions.
    let extensions = if r.is_empty() {
        &[][..]
    } else {
        let e = r.vector(2, "truncated in the extensions")?;
        if !r.is_empty() {
            return Err(HelloError::Malformed("bytes after the extensions"));
        }
        e
    };

    let mut sni = false;
    let mut alpn: Option<&[u8]> = None;
    let mut versions: Option<&[u8]> = None;
    let mut signatures: Option<&[u8]> = None;
    let mut types: Vec<u16> = Vec::with_capacity(24);
    let mut r = Reader { bytes: extensions };
    while !r.is_empty() {
        let kind = r.u16("truncated in an extension type")?;
        let data = r.vector(2, "truncated in an extension")?;
        if is_grease(kind) {
            continue;
        }
        types.push(kind);
        match kind {
            EXT_SNI => sni = true,
            EXT_ALPN => alpn = Some(first_alpn(data)?),
            EXT_SUPPORTED_VERSIONS => {
                let mut d = Reader { bytes: data };
                let list = d.vector(1, "truncated supported_versions")?;
                if !d.is_empty() || list.len() % 2 != 0 {
                    return Err(HelloError::Malformed("malformed supported_versions"));
                }
                versions = Some(list);
            }
            EXT_SIGNATURE_ALGORITHMS => {
                let mut d = Reader { bytes: data };
                let list = d.vector(2, "truncated signature_algorithms")?;
                if !d.is_empty() || list.len() % 2 != 0 {
                    return Err(HelloError::Malformed("malformed signature_algorithms"));
                }
                signatures = Some(list);
            }
            _ => {}
        }
    }
    let extension_count = types.len();
    types.sort_unstable();
    if types.windows(2).any(|w| w[0] == w[1]) {
        return Err(HelloError::Malformed("an extension sent twice"));
    }

    let version = versions
        .and_then(|list| u16s(list).max())
        .unwrap_or(legacy_version);
    let mut a = [0u8; 10];
    a[0] = b't';
    a[1..3].copy_from_slice(version_code(version));
    a[3] = if sni { b'd' } else { b'i' };
    let cipher_count = u16s(ciphers).count();
    a[4..6].copy_from_slice(&two_digits(cipher_count));
    a[6..8].copy_from_slice(&two_digits(extension_count));
    a[8..10].copy_from_slice(&alpn_chars(alpn.unwrap_or(&[])));

    let mut sorted_ciphers: Vec<u16> = u16s(ciphers).collect();
    sorted_ciphers.sort_unstable();
    let b = truncated_hash(&sorted_ciphers, &[]);
    // Sorted extensions without SNI and ALPN (already in part a).
    types.retain(|&t| t != EXT_SNI && t != EXT_ALPN);
    let signature_list: Vec<u16> = signatures.map(|s| u16s(s).collect()).unwrap_or_default();
    let c = truncated_hash(&types, &signature_list);
    Ok(Ja4 { a, b, c })
}

/// The first protocol name of an ALPN extension's data (empty when the list
/// is). The whole list must be well formed.
fn first_alpn(data: &[u8]) -> Result<&[u8], HelloError> {
    let mut d = Reader { bytes: data };
    let list = d.vector(2, "truncated ALPN")?;
    if !d.is_empty() {
        return Err(HelloError::Malformed("bytes after the ALPN list"));
    }
    let mut names = Reader { bytes: list };
    let mut first = None;
    while !names.is_empty() {
        let name = names.vector(1, "truncated ALPN name")?;
        first.get_or_insert(name);
    }
    Ok(first.unwrap_or(&[]))
}

fn version_code(v: u16) -> &'static [u8; 2] {
    match v {
        0x0304 => b"13",
        0x0303 => b"12",
        0x0302 => b"11",
        0x0301 => b"10",
        0x0300 => b"s3",
        0x0002 => b"s2",
        0xfeff => b"d1",
        0xfefd => b"d2",
        0xfefc => b"d3",
        _ => b"00",
    }
}

fn two_digits(n: usize) -> [u8; 2] {
    let n = n.min(99) as u8;
    [b'0' + n / 10, b'0' + n % 10]
}

/// First and last character of the first ALPN value: themselves when both are
/// ASCII letters or digits, else the first and last hex digit of the value.
fn alpn_chars(value: &[u8]) -> [u8; 2] {
    let (Some(&first), Some(&last)) = (value.first(), value.last()) else {
        return *b"00";
    };
    if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() {
        [first, last]
    } else {
        [HEX[usize::from(first >> 4)], HEX[usize::from(last & 15)]]
    }
}

/// The first 6 bytes of SHA-256 over `list` as 4-digit hex joined by `,`,
/// then `_` and `extra` the same way when it is not empty; zeros for an empty
/// list. Fed piecewise: nothing is formatted into a string.
fn truncated_hash(list: &[u16], extra: &[u16]) -> [u8; 6] {
    if list.is_empty() {
        return [0; 6];
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    hash_list(&mut ctx, list);
    if !extra.is_empty() {
        ctx.update(b"_");
        hash_list(&mut ctx, extra);
    }
    let digest = ctx.finish();
    let mut out = [0u8; 6];
    out.copy_from_slice(&digest.as_ref()[..6]);
    out
}

/// Feeds `values` as 4-digit hex joined by `,`, 64 values at a time.
fn hash_list(ctx: &mut ring::digest::Context, values: &[u16]) {
    let mut buf = [0u8; 5 * 64];
    for (c, chunk) in values.chunks(64).enumerate() {
        let mut n = 0;
        for (i, v) in chunk.iter().enumerate() {
            if c > 0 || i > 0 {
                buf[n] = b',';
                n += 1;
            }
            write_hex(&mut buf[n..n + 4], &v.to_be_bytes());
            n += 4;
        }
        ctx.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grease_values() {
        let grease: Vec<u16> = (0..=0xffffu16).filter(|v| is_grease(*v)).collect();
        assert_eq!(grease.len(), 16);
        assert_eq!(grease[0], 0x0a0a);
        assert_eq!(grease[15], 0xfafa);
        assert!(!is_grease(0x0a1a));
    }

    #[test]
    fn the_specification_example_hashes() {
        // JA4.md: the sorted cipher list and the extension list with the
        // signature algorithms, and the extension list without them.
        let ciphers = [
            0x002f, 0x0035, 0x009c, 0x009d, 0x1301, 0x1302, 0x1303, 0xc013, 0xc014, 0xc02b, 0xc02c,
            0xc02f, 0xc030, 0xcca8, 0xcca9,
        ];
        let extensions = [
            0x0005, 0x000a, 0x000b, 0x000d, 0x0012, 0x0015, 0x0017, 0x001b, 0x0023, 0x002b, 0x002d,
            0x0033, 0x4469, 0xff01,
        ];
        let signatures = [
            0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
        ];
        let hex = |b: [u8; 6]| {
            let mut out = [0u8; 12];
            write_hex(&mut out, &b);
            String::from_utf8_lossy(&out).into_owned()
        };
        assert_eq!(hex(truncated_hash(&ciphers, &[])), "8daaf6152771");
        assert_eq!(
            hex(truncated_hash(&extensions, &signatures)),
            "e5627efa2ab1"
        );
        assert_eq!(hex(truncated_hash(&extensions, &[])), "6d807ffa2a79");
        assert_eq!(hex(truncated_hash(&[], &signatures)), "000000000000");
        // Long lists are joined across the 64-value chunks exactly as short ones.
        let long: Vec<u16> = (1..=200).collect();
        let text: Vec<String> = long.iter().map(|v| format!("{v:04x}")).collect();
        let expected = ring::digest::digest(&ring::digest::SHA256, text.join(",").as_bytes());
        assert_eq!(truncated_hash(&long, &[]), expected.as_ref()[..6]);
    }

    #[test]
    fn alpn_characters_follow_the_specification_examples() {
        for (value, chars) in [
            (&b"h2"[..], "h2"),
            (b"http/1.1", "h1"),
            (b"", "00"),
            (b"x", "xx"),
            (&[0xab], "ab"),
            (&[0x20], "20"),
            (&[0xab, 0xcd], "ad"),
            (&[0x20, 0x61], "21"),
            (&[0x30, 0xab], "3b"),
            (&[0x61, 0x20], "60"),
            (&[0x30, 0x31, 0xab, 0xcd], "3d"),
            (&[0x30, 0xab, 0xcd, 0x31], "01"),
        ] {
            assert_eq!(&alpn_chars(value), chars.as_bytes(), "{value:?}");
        }
    }

    #[test]
    fn text_round_trips() {
        let text = "t13d1516h2_8daaf6152771_e5627efa2ab1";
        let ja4 = Ja4::parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ja4.to_string(), text);
        assert_eq!(ja4.text().as_str(), text);
        assert!(Ja4::parse("t13d1516h2_*_e5627efa2ab1").is_err());
        let pattern =
            Ja4Pattern::parse("t13d1516h2_*_e5627efa2ab1").unwrap_or_else(|e| panic!("{e}"));
        assert!(ja4.matches(&pattern));
        let other =
            Ja4Pattern::parse("t13d1516h1_*_e5627efa2ab1").unwrap_or_else(|e| panic!("{e}"));
        assert!(!ja4.matches(&other));
    }
}
