//! The text form of JA4 TLS client fingerprints (FoxIO's JA4 specification) as
//! a config names them: `t13d1516h2_8daaf6152771_e5627efa2ab1`, or a pattern
//! with `*` for a whole part (`t13d1516h2_*_e5627efa2ab1`, the "JA4_ac" a
//! client keeps when it reorders or changes its cipher list).
//!
//! The fingerprint itself is computed by `rampart_policy::ja4`; this module
//! only reads and writes its text, so that the config, explain, bans and the
//! policy agree on one spelling.

use std::fmt;

/// Length of a fingerprint's text form.
pub const JA4_TEXT_LEN: usize = 36;

/// A JA4 fingerprint, or a pattern where any part may be `*`. Parts are kept
/// as they are written in the fingerprint: part a as its 10 ASCII characters,
/// parts b and c as the 6 bytes of their 12 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ja4Pattern {
    /// `t13d1516h2`: protocol, TLS version, SNI, cipher and extension counts,
    /// ALPN; `None` for `*`.
    pub a: Option<[u8; 10]>,
    /// Truncated hash of the sorted cipher suites; `None` for `*`.
    pub b: Option<[u8; 6]>,
    /// Truncated hash of the sorted extensions and signature algorithms;
    /// `None` for `*`.
    pub c: Option<[u8; 6]>,
}

impl Ja4Pattern {
    /// Reads a fingerprint or pattern. The reason names what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('_').collect();
        let [a, b, c] = parts.as_slice() else {
            return Err(format!(
                "\"{text}\" is not a JA4 fingerprint: three parts joined by \"_\", e.g. \"t13d1516h2_8daaf6152771_e5627efa2ab1\" (a part may be \"*\")"
            ));
        };
        let a = match *a {
            "*" => None,
            a => Some(parse_a(a).map_err(|why| format!("\"{text}\": {why}"))?),
        };
        let b = match *b {
            "*" => None,
            b => Some(parse_hash(b).map_err(|why| format!("\"{text}\": the second part {why}"))?),
        };
        let c = match *c {
            "*" => None,
            c => Some(parse_hash(c).map_err(|why| format!("\"{text}\": the third part {why}"))?),
        };
        if a.is_none() && b.is_none() && c.is_none() {
            return Err(format!("\"{text}\" matches every fingerprint"));
        }
        Ok(Self { a, b, c })
    }

    /// Whether every part is given (a fingerprint, not a pattern).
    pub fn is_exact(&self) -> bool {
        self.a.is_some() && self.b.is_some() && self.c.is_some()
    }
}

impl fmt::Display for Ja4Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.a {
            // Part a is checked ASCII when parsed or computed.
            Some(a) => f.write_str(std::str::from_utf8(a).unwrap_or("?"))?,
            None => f.write_str("*")?,
        }
        for part in [&self.b, &self.c] {
            f.write_str("_")?;
            match part {
                Some(bytes) => {
                    for byte in bytes {
                        write!(f, "{byte:02x}")?;
                    }
                }
                None => f.write_str("*")?,
            }
        }
        Ok(())
    }
}

/// Part a: `t`, a version (`13`, `12`, `11`, `10`, `s3`, `s2`, `d1`, `d2`,
/// `d3`, `00`), `d` or `i`, two digits of ciphers, two of extensions, and two
/// ALPN characters (ASCII letters and digits).
fn parse_a(a: &str) -> Result<[u8; 10], String> {
    let bytes = a.as_bytes();
    let Ok(out) = <[u8; 10]>::try_from(bytes) else {
        return Err(format!(
            "the first part \"{a}\" must be 10 characters, e.g. \"t13d1516h2\""
        ));
    };
    match out[0] {
        b't' => {}
        b'q' | b'd' => {
            return Err(
                "fingerprints of QUIC (\"q\") and DTLS (\"d\") clients never reach a TCP listener: JA4 of TLS over TCP starts with \"t\"".into(),
            )
        }
        _ => return Err(format!("the first part \"{a}\" must start with \"t\" (TLS over TCP)")),
    }
    if !matches!(
        &out[1..3],
        b"13" | b"12" | b"11" | b"10" | b"s3" | b"s2" | b"d1" | b"d2" | b"d3" | b"00"
    ) {
        return Err(format!(
            "the first part \"{a}\" has no TLS version at characters 2-3 (13, 12, 11, 10, s3, s2, d1, d2, d3 or 00)"
        ));
    }
    if !matches!(out[3], b'd' | b'i') {
        return Err(format!(
            "the first part \"{a}\" must have \"d\" (SNI) or \"i\" (no SNI) as its fourth character"
        ));
    }
    if !out[4..8].iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "the first part \"{a}\" must have the cipher and extension counts as four digits at characters 5-8"
        ));
    }
    if !out[8..].iter().all(u8::is_ascii_alphanumeric) {
        return Err(format!(
            "the first part \"{a}\" must end in two ALPN characters (letters or digits)"
        ));
    }
    Ok(out)
}

/// Parts b and c: 12 lower-case hex digits.
fn parse_hash(part: &str) -> Result<[u8; 6], String> {
    let bytes = part.as_bytes();
    if bytes.len() != 12 || !bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "\"{part}\" must be 12 lower-case hex digits (a truncated SHA-256)"
        ));
    }
    let mut out = [0u8; 6];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hex = |b: u8| {
            if b.is_ascii_digit() {
                b - b'0'
            } else {
                b - b'a' + 10
            }
        };
        out[i] = hex(pair[0]) << 4 | hex(pair[1]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_and_patterns_round_trip() {
        for text in [
            "t13d1516h2_8daaf6152771_e5627efa2ab1",
            "t12i860500_e18388e7f3a3_a1e935682795",
            "t13d151699_*_e5627efa2ab1",
            "*_8daaf6152771_*",
            "t10d230100_6a57a6f57151_000000000000",
        ] {
            let p = Ja4Pattern::parse(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p.to_string(), text);
        }
        assert!(
            Ja4Pattern::parse("t13d1516h2_8daaf6152771_e5627efa2ab1").is_ok_and(|p| p.is_exact())
        );
        assert!(Ja4Pattern::parse("t13d1516h2_*_e5627efa2ab1").is_ok_and(|p| !p.is_exact()));
    }

    #[test]
    fn bad_text_is_refused_with_a_reason() {
        for (text, reason) in [
            ("t13d1516h2", "three parts"),
            ("*_*_*", "matches every fingerprint"),
            ("q13d1516h2_8daaf6152771_e5627efa2ab1", "QUIC"),
            ("t13d1516h_8daaf6152771_e5627efa2ab1", "10 characters"),
            ("t14d1516h2_8daaf6152771_e5627efa2ab1", "TLS version"),
            ("t13x1516h2_8daaf6152771_e5627efa2ab1", "\"d\" (SNI)"),
            ("t13d15a6h2_8daaf6152771_e5627efa2ab1", "four digits"),
            ("t13d1516h-_8daaf6152771_e5627efa2ab1", "ALPN"),
            ("t13d1516h2_8DAAF6152771_e5627efa2ab1", "second part"),
            ("t13d1516h2_8daaf6152771_e5627efa2ab", "third part"),
        ] {
            let e = Ja4Pattern::parse(text).expect_err(text);
            assert!(e.contains(reason), "{text}: {e}");
        }
    }
}
