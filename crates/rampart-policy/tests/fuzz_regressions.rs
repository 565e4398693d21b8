//! Inputs kept from the cargo-fuzz targets in `fuzz/`, replayed on stable.
//!
//! This file is also the fuzz targets' property code: each target in
//! `fuzz/fuzz_targets/` includes it with `#[path]` and calls one of the `pub fn`s
//! below, so a fuzz run and this test check exactly the same things. (The
//! `#[test]` at the bottom is compiled out of the fuzz targets.)
//!
//! Inputs live in `tests/fuzz-regressions/<target>/`; a crash found by a fuzzer
//! is kept as `tests/fuzz-regressions/<target>-<short name>`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    dead_code
)]

use http::{HeaderMap, HeaderValue};
use rampart_config::{canonical_ip, BodyRuleConfig, ClientIpConfig, ForwardedHeader, PhoneType};
use rampart_policy::body::{check_body, normalize_phone, phone_allowed, read_field};
use rampart_policy::body::{BodyInput, BodyRefusal};
use rampart_policy::{canonicalize_path, check_method, resolve_client_ip, CanonicalOptions};
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

/// A target's properties: panics when one does not hold for the input.
pub type Property = fn(&[u8]);

/// The targets, by name: `fuzz/fuzz_targets/<name>.rs` and `tests/fuzz-regressions/<name>/`.
pub const TARGETS: &[(&str, Property)] = &[
    ("canonical", canonical),
    ("body", body),
    ("client_ip", client_ip),
    ("config", config),
    ("ja4", ja4),
    ("jwt", jwt),
];

// ---------------------------------------------------------------- canonical

/// `canonicalize_path` output is canonical: absolute, idempotent (and borrowed
/// the second time), free of empty and dot segments, encoded slashes, controls
/// and backslashes; allowing `;` only ever accepts more. `check_method` refuses
/// exactly the methods with lower-case letters.
pub fn canonical(data: &[u8]) {
    let path = String::from_utf8_lossy(data);
    let strict = CanonicalOptions {
        allow_semicolons: false,
    };
    let lenient = CanonicalOptions {
        allow_semicolons: true,
    };
    let a = canonicalize_path(&path, strict);
    let b = canonicalize_path(&path, lenient);
    if let Ok(out) = &a {
        canonical_output(&path, out, strict);
        assert!(!out.contains(';'), "{path:?} -> {out:?}: ';' kept");
        assert!(
            !out.to_ascii_lowercase().contains("%3b"),
            "{path:?} -> {out:?}: '%3B' kept"
        );
        assert_eq!(
            b.as_deref(),
            Ok(&**out),
            "{path:?}: allow_semicolons changed the result"
        );
    }
    if let Ok(out) = &b {
        canonical_output(&path, out, lenient);
    }
    let lower = path.bytes().any(|c| c.is_ascii_lowercase());
    assert_eq!(
        check_method(&path).is_err(),
        lower,
        "check_method({path:?})"
    );
}

fn canonical_output(path: &str, out: &str, options: CanonicalOptions) {
    assert!(out.starts_with('/'), "{path:?} -> {out:?}: not absolute");
    for bad in ["//", "/./", "/../"] {
        assert!(!out.contains(bad), "{path:?} -> {out:?}: contains {bad:?}");
    }
    assert!(
        !out.ends_with("/.") && !out.ends_with("/.."),
        "{path:?} -> {out:?}: ends in a dot segment"
    );
    let lower = out.to_ascii_lowercase();
    assert!(
        !lower.contains("%2f") && !lower.contains("%5c"),
        "{path:?} -> {out:?}: encoded slash"
    );
    assert!(
        !out.chars().any(|c| c.is_control() || c == '\\'),
        "{path:?} -> {out:?}: control character or backslash"
    );
    match canonicalize_path(out, options) {
        Ok(Cow::Borrowed(again)) => assert_eq!(again, out, "{path:?}: not idempotent"),
        Ok(Cow::Owned(again)) => {
            assert_eq!(again, out, "{path:?}: not idempotent");
            panic!("{path:?} -> {out:?}: canonical output was rewritten (not borrowed)");
        }
        Err(e) => panic!("{path:?} -> {out:?}: canonical output refused: {e:?}"),
    }
}

// ---------------------------------------------------------------- body

const CONTENT_TYPES: [&str; 4] = [
    "application/json",
    "application/x-www-form-urlencoded",
    "application/json; charset=utf-8",
    "text/plain",
];

fn phone_rule(field: &str, pointer: &[&str], max_body_bytes: usize) -> BodyRuleConfig {
    BodyRuleConfig {
        route: 0,
        field: field.into(),
        pointer: pointer.iter().map(|s| s.to_string()).collect(),
        allowed_calling_codes: vec![],
        allowed_regions: vec!["CN".into()],
        number_types: vec![PhoneType::Mobile],
        methods: vec![],
        max_body_bytes,
    }
}

/// Cuts `rest` at the first `\n`.
fn take_line<'a>(rest: &mut &'a [u8]) -> &'a [u8] {
    let at = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let line = &rest[..at];
    *rest = rest.get(at + 1..).unwrap_or(&[]);
    line
}

/// Input layout: one selector byte, then
/// - if the content type is "arbitrary" (selector & 7 == 4): one line, the value;
/// - if selector & 0x20: one line, the query string;
/// - the rest: the body.
///
/// Selector: bits 0-2 content type (0-3 `CONTENT_TYPES`, 4 arbitrary, 5 none,
/// 6 `application/vnd.api+json`, 7 form with a quoted charset); bits 3-4 an extra
/// header (none, a second `Content-Type`, `Content-Encoding: identity`,
/// `Content-Encoding: gzip`); bit 6 a 64-byte limit instead of 4096.
///
/// Properties: `check_body` agrees with `read_field` + `phone_allowed`; an
/// allowed number normalises to `+86...`; `normalize_phone` output is `+digits`
/// and a fixed point.
pub fn body(data: &[u8]) {
    phone_text(&String::from_utf8_lossy(data));
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    let ct = http::header::CONTENT_TYPE;
    match sel & 7 {
        n @ 0..=3 => {
            headers.append(&ct, HeaderValue::from_static(CONTENT_TYPES[usize::from(n)]));
        }
        4 => {
            if let Ok(v) = HeaderValue::from_bytes(take_line(&mut rest)) {
                headers.append(&ct, v);
            }
        }
        5 => {}
        6 => {
            headers.append(&ct, HeaderValue::from_static("application/vnd.api+json"));
        }
        _ => {
            headers.append(
                &ct,
                HeaderValue::from_static("application/x-www-form-urlencoded;charset=\"UTF-8\""),
            );
        }
    }
    match (sel >> 3) & 3 {
        0 => {}
        1 => {
            headers.append(&ct, HeaderValue::from_static("application/json"));
        }
        2 => {
            headers.append(
                http::header::CONTENT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        _ => {
            headers.append(
                http::header::CONTENT_ENCODING,
                HeaderValue::from_static("gzip"),
            );
        }
    }
    let query = (sel & 0x20 != 0).then(|| String::from_utf8_lossy(take_line(&mut rest)));
    let limit = if sel & 0x40 != 0 { 64 } else { 4096 };
    let input = BodyInput {
        headers: &headers,
        query: query.as_deref(),
        body: rest,
    };
    for rule in [
        phone_rule("phone", &["phone"], limit),
        phone_rule("/user/phone", &["user", "phone"], limit),
    ] {
        let checked = check_body(&rule, &input);
        let read = read_field(&rule, &input);
        match &checked {
            Ok(()) => {
                let value = read.as_ref().expect("check_body Ok but read_field Err");
                assert!(phone_allowed(&rule, value), "check_body Ok for {value:?}");
            }
            Err(BodyRefusal::TooLarge { limit }) => assert!(rest.len() > *limit),
            Err(BodyRefusal::NotAllowed(_)) => {
                let value = read.as_ref().expect("NotAllowed but read_field Err");
                assert!(!phone_allowed(&rule, value), "NotAllowed for {value:?}");
            }
            Err(refused) => assert_eq!(read.as_ref().err(), Some(refused)),
        }
        if let Err(refused) = &checked {
            assert!([400, 403, 413, 415].contains(&refused.status()));
        }
        if let Ok(value) = &read {
            phone_text(value);
        }
    }
}

/// Properties of the phone helpers on any text.
fn phone_text(raw: &str) {
    let normal = normalize_phone(raw);
    if let Some(e164) = &normal {
        let digits = e164
            .strip_prefix('+')
            .expect("normalised number without '+'");
        assert!(
            (4..=17).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()),
            "{raw:?} -> {e164:?}"
        );
        assert_eq!(
            normalize_phone(e164).as_ref(),
            Some(e164),
            "{raw:?}: not a fixed point"
        );
    }
    let rule = phone_rule("phone", &["phone"], 4096);
    if phone_allowed(&rule, raw) {
        let e164 = normal.as_deref().expect("allowed but not normalisable");
        assert!(
            e164.starts_with("+86"),
            "{raw:?} -> {e164:?} allowed for CN"
        );
        assert!(phone_allowed(&rule, e164), "{raw:?} allowed, {e164:?} not");
    }
}

// ---------------------------------------------------------------- client_ip

/// Every address a liberal tokenizer finds in a header value: split at
/// `, ; = " [ ]` and white space, each token read as an address, `addr:port`,
/// or `addr%scope`.
fn addresses_in(value: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for token in value.split(|c: char| ",;=\"[]".contains(c) || c.is_whitespace()) {
        let mut forms = vec![token];
        if let Some((host, _port)) = token.rsplit_once(':') {
            forms.push(host);
        }
        if let Some((host, _scope)) = token.split_once('%') {
            forms.push(host);
        }
        for form in forms {
            if let Ok(ip) = form.parse::<IpAddr>() {
                out.push(canonical_ip(ip));
            } else if let Ok(sa) = form.parse::<SocketAddr>() {
                out.push(canonical_ip(sa.ip()));
            }
        }
    }
    out
}

/// Input layout: one selector byte (bits 0-1 the peer, bits 2-3 how many header
/// values, 1-3), then the header values separated by `\n`.
///
/// Properties, for X-Forwarded-For and Forwarded, with some and with all peers
/// trusted: an untrusted peer is the client; otherwise the client is the peer or
/// an address written in the header values.
pub fn client_ip(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let peers: [IpAddr; 4] = [
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        "::ffff:10.0.0.1".parse().unwrap(),
        "2001:db8:ffff::1".parse().unwrap(),
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
    ];
    let peer = peers[usize::from(sel & 3)];
    let count = 1 + usize::from((sel >> 2) & 3) % 3;
    let values: Vec<&[u8]> = rest.splitn(count, |&b| b == b'\n').collect();
    let written: Vec<IpAddr> = values
        .iter()
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(addresses_in)
        .collect();
    let some = vec![
        "10.0.0.0/8".parse().unwrap(),
        "2001:db8:ffff::/48".parse().unwrap(),
    ];
    let all = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
    for trusted in [some, all] {
        for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
            let config = ClientIpConfig {
                trusted_proxies: trusted.clone(),
                header,
            };
            let got = resolve_client_ip(peer, values.iter().copied(), &config);
            let peer = canonical_ip(peer);
            if !config.is_trusted(peer) {
                assert_eq!(got, peer, "untrusted peer, header read");
            }
            assert!(
                got == peer || written.contains(&got),
                "{header:?}: {got} is neither the peer nor in {values:?}"
            );
        }
    }
}

// ---------------------------------------------------------------- config

/// Any text is a config or a list of issues, never a panic. (Pool servers that
/// are not IP literals are resolved with the system resolver.)
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = rampart_config::parse(&text, Path::new("fuzz.toml")) {
        assert!(!e.issues.is_empty(), "an error without issues");
    }
}

// ---------------------------------------------------------------- ja4

/// Input layout: one selector byte. Bit 0 clear: the rest is the stream as
/// sent. Bit 0 set: the rest is a ClientHello body, wrapped in a handshake
/// message and cut into records of `1 + selector / 2 * 16` bytes (so the
/// fuzzer reaches the hello parser without having to find the framing).
///
/// Properties: never a panic; a fingerprint reads back from its text; a
/// definite answer on a prefix of the stream is the answer on the whole
/// stream (no early refusal of what the whole would fingerprint), and bytes
/// after the hello change nothing.
pub fn ja4(data: &[u8]) {
    use rampart_policy::ja4::{HelloError, Ja4};
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let stream = if sel & 1 == 0 {
        rest.to_vec()
    } else {
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX).to_be_bytes();
        let mut message = vec![0x01, len[1], len[2], len[3]];
        message.extend_from_slice(rest);
        let size = 1 + usize::from(sel / 2) * 16;
        let mut out = Vec::new();
        for chunk in message.chunks(size) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    };
    let whole = Ja4::from_stream(&stream);
    if let Ok(j) = whole {
        assert_eq!(Ja4::parse(&j.to_string()), Ok(j), "text does not read back");
        let mut more = stream.clone();
        more.extend_from_slice(b"\x14\x03\x03\x00\x01\x01");
        assert_eq!(Ja4::from_stream(&more), Ok(j), "trailing bytes changed it");
    }
    let step = (stream.len() / 64).max(1);
    for cut in (0..stream.len()).step_by(step) {
        match Ja4::from_stream(&stream[..cut]) {
            Err(HelloError::Incomplete) => {}
            Ok(j) => assert_eq!(whole, Ok(j), "prefix {cut} fingerprinted differently"),
            Err(e) => assert!(whole.is_err(), "prefix {cut} refused ({e}), whole accepted"),
        }
    }
}

// ---------------------------------------------------------------- jwt

/// Bearer tokens never panic the verifier, and never verify unless signed
/// with the key: the first byte picks the shape. 0: the rest as a token. 1:
/// the rest as a payload, signed HS256 with the verifier's secret (it may
/// verify; a second look gives the same answer, from the cache). 2: the same
/// payload under `alg: none` or a header from the input, unsigned or signed
/// with another secret (never verifies). The Authorization field itself, in
/// any spelling, goes through `verify_request` too.
pub fn jwt(data: &[u8]) {
    use base64::Engine as _;
    use rampart_policy::jwt::{JwtClock, JwtKeys, JwtVerifier};
    use rampart_policy::IdentityOutcome;
    const SECRET: &[u8] = b"a-fuzz-only-hs256-secret-of-32-bytes!!";
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let config = rampart_config::parse(
        "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[pools.web]\nservers = [\"127.0.0.1:9000\"]\n[[routes]]\nname = \"r\"\npool = \"web\"\n[jwt]\nhs256_secret_env = \"UNUSED\"\n",
        Path::new("fuzz.toml"),
    )
    .expect("config")
    .jwt
    .expect("[jwt]");
    let keys = JwtKeys::new(None, Some(SECRET), &config.algorithms).expect("keys");
    let now = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1_800_000_000));
    let verifier =
        JwtVerifier::new(&config, keys, vec!["sub".into()]).with_clock(JwtClock::Manual(now));
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let sign = |key: &[u8], text: &str| {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        b64(ring::hmac::sign(&key, text.as_bytes()).as_ref())
    };
    let verified = |o: &IdentityOutcome| matches!(o, IdentityOutcome::Verified { .. });
    match sel % 3 {
        0 => {
            let token = String::from_utf8_lossy(rest);
            assert!(
                !verified(&verifier.verify(&token)),
                "an unsigned token verified"
            );
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(rest) {
                headers.append(http::header::AUTHORIZATION, v);
                assert!(
                    !verified(&verifier.verify_request(&headers)),
                    "a header verified"
                );
            }
        }
        1 => {
            let head = format!("{}.{}", b64(br#"{"alg":"HS256","typ":"JWT"}"#), b64(rest));
            let token = format!("{head}.{}", sign(SECRET, &head));
            let first = verifier.verify(&token);
            let second = verifier.verify(&token);
            assert_eq!(
                verified(&first),
                verified(&second),
                "the cache answered otherwise"
            );
            if rest == br#"{"sub":"alice","exp":1900000000}"# {
                assert!(
                    verified(&first),
                    "a well-signed token did not verify: {first:?}"
                );
            }
        }
        _ => {
            let (header, payload) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (rest[..i].to_vec(), &rest[i + 1..]),
                None => (br#"{"alg":"none"}"#.to_vec(), rest),
            };
            let head = format!("{}.{}", b64(&header), b64(payload));
            for token in [
                format!("{head}."),
                format!(
                    "{head}.{}",
                    sign(b"another-secret-another-secret-32b!", &head)
                ),
            ] {
                assert!(
                    !verified(&verifier.verify(&token)),
                    "forged token verified: {token}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------- the test

#[test]
fn kept_fuzz_inputs_still_hold() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut failed = Vec::new();
    for &(target, check) in TARGETS {
        let mut files: Vec<_> = std::fs::read_dir(root.join(target))
            .map(|dir| dir.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        assert!(!files.is_empty(), "no kept inputs for {target}");
        // Crashes found by a fuzzer: `<target>-<short name>` next to the folders.
        for entry in std::fs::read_dir(&root).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_file() && name.starts_with(&format!("{target}-")) {
                files.push(path);
            }
        }
        files.sort();
        for path in files {
            let data = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failed.push(path.strip_prefix(&root).unwrap().display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "properties broken by: {failed:?}");
}
