//! Network-facing input never panics the policy engine: deterministic
//! pseudo-random bytes (fixed seed) through the client IP resolver, the body
//! rule, phone normalisation, the route table and ban-key text, and mutated
//! configs through the config parser.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_config::{BodyRuleConfig, ClientIpConfig, ForwardedHeader};
use rampart_policy::body::{check_body, normalize_phone};
use rampart_policy::resolve_client_ip;
use std::path::Path;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, max: usize, alphabet: &[u8]) -> Vec<u8> {
        let n = (self.next() as usize) % max;
        (0..n)
            .map(|_| {
                if self.next().is_multiple_of(8) {
                    self.next() as u8
                } else {
                    alphabet[(self.next() as usize) % alphabet.len()]
                }
            })
            .collect()
    }
}

fn shipped_config() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../conf/rampart.toml"
    ))
    .unwrap()
}

#[test]
fn random_forwarding_headers_bodies_and_paths_never_panic() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let trusted = ClientIpConfig {
        trusted_proxies: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        header: ForwardedHeader::XForwardedFor,
    };
    let forwarded = ClientIpConfig {
        header: ForwardedHeader::Forwarded,
        ..trusted.clone()
    };
    let rule = BodyRuleConfig {
        route: 0,
        field: "phone".into(),
        pointer: vec!["phone".into()],
        allowed_calling_codes: vec!["86".into()],
        allowed_regions: vec!["CN".into()],
        number_types: vec![rampart_config::PhoneType::Mobile],
        methods: vec![],
        max_body_bytes: 512,
    };
    let config = rampart_config::parse(&shipped_config(), Path::new("conf/rampart.toml")).unwrap();
    let routes = rampart_policy::RouteTable::new(&config);
    for _ in 0..20_000 {
        let header = rng.bytes(80, b"0123456789abcdef.:,[] \"for=;");
        let peer = if rng.next().is_multiple_of(2) {
            "10.0.0.1"
        } else {
            "::1"
        };
        let values = [header.as_slice(), header.as_slice()];
        let _ = resolve_client_ip(peer.parse().unwrap(), values.into_iter(), &trusted);
        let _ = resolve_client_ip(peer.parse().unwrap(), values.into_iter(), &forwarded);
        let body = rng.bytes(600, b"{}\":,phone+86 0123456789-()&=%2B");
        let ct = if rng.next().is_multiple_of(2) {
            "application/json"
        } else {
            "application/x-www-form-urlencoded"
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(ct),
        );
        let query = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
        let _ = check_body(
            &rule,
            &rampart_policy::body::BodyInput {
                headers: &headers,
                query: Some(&query),
                body: &body,
            },
        );
        let _ = normalize_phone(&String::from_utf8_lossy(&body));
        let path = String::from_utf8_lossy(&rng.bytes(60, b"/api/auth/loginv1chat?%2e5Cf;.\\"))
            .into_owned();
        if let Ok(canonical) = rampart_policy::canonicalize_path(&path, Default::default()) {
            let again = rampart_policy::canonicalize_path(&canonical, Default::default());
            assert_eq!(again.as_deref(), Ok(&*canonical), "{path}");
        }
        let host = String::from_utf8_lossy(&rng.bytes(20, b"[]:.0123456789abc")).into_owned();
        let _ = routes.find(Some(&host), &path, "POST");
        // Ban keys typed by operators (DELETE /bans) or read from the fleet:
        // never a panic, and whatever parses prints back to itself.
        let text =
            String::from_utf8_lossy(&rng.bytes(24, b"ASash0123456789abcdef.:/?DE")).into_owned();
        if let Some(key) = rampart_policy::limits::LimitKey::parse_text(&text) {
            assert_eq!(
                rampart_policy::limits::LimitKey::parse_text(&key.text()),
                Some(key),
                "{text}"
            );
        }
    }
}

#[test]
fn mutated_configs_are_refused_or_accepted_never_a_panic() {
    let text = shipped_config();
    let mut rng = Rng(0x0ddc_0ffe_e000_0042);
    let bytes = text.as_bytes();
    let mut refused = 0;
    for _ in 0..1_000 {
        let mut mutated = bytes.to_vec();
        for _ in 0..(1 + rng.next() % 4) {
            let at = (rng.next() as usize) % mutated.len();
            match rng.next() % 3 {
                0 => {
                    mutated.remove(at);
                }
                1 => mutated.insert(at, b"=\"[]{}0x-.9/"[(rng.next() % 12) as usize]),
                _ => mutated[at] = rng.next() as u8,
            }
        }
        if rampart_config::parse(&String::from_utf8_lossy(&mutated), Path::new("m.toml")).is_err() {
            refused += 1;
        }
    }
    // Most random edits break something, and each is reported, not a panic.
    assert!(refused > 300, "{refused} of 1000 mutations refused");
}

/// Random rule names, messages and details (quotes, backslashes, control
/// characters, any Unicode) through the pre-rendered HTTP/1.1 refusal: the
/// head is well formed, `content-length` is the body's, and the JSON body
/// parses back to the very texts that went in.
#[test]
fn random_texts_render_into_well_formed_refusals_that_parse_back() {
    use rampart_config::RouteKind;
    use rampart_policy::Rejection;
    use std::sync::Arc;
    let mut rng = Rng(0x5eed_0f7e57);
    let alphabet = b"ab\"\\\n\r\t\x01\x1f<>&' /{}";
    let (mut out, mut scratch) = (Vec::new(), String::new());
    for _ in 0..20_000 {
        let text = |rng: &mut Rng| String::from_utf8_lossy(&rng.bytes(40, alphabet)).into_owned();
        let (rule, message) = (text(&mut rng), text(&mut rng));
        let rejections = [
            Rejection::DeniedByNetwork {
                rule: Arc::from(rule.as_str()),
            },
            Rejection::RateLimited {
                rule: Arc::from(rule.as_str()),
                retry_after: rng.next() % 100_000,
                quota: (rng.next() % 1_000) as u32,
                window: rng.next() % 3_600,
            },
            Rejection::Maintenance {
                flag: Arc::from(rule.as_str()),
                retry_after: rng.next() % 1_000,
                message: Arc::from(message.as_str()),
            },
            Rejection::BodyRefused {
                flag: Arc::from(rule.as_str()),
                status: 403,
                detail: message.clone(),
            },
        ];
        for r in rejections {
            r.write_http1(
                RouteKind::Api,
                b"Mon, 30 Nov 2026 10:00:00 GMT",
                false,
                &mut out,
                &mut scratch,
            );
            let at = out
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("end of head");
            let (head, body) = (&out[..at], &out[at + 4..]);
            let head = std::str::from_utf8(head).expect("head is text");
            assert!(
                !head.contains('\n') || head.split("\r\n").all(|l| !l.contains('\n')),
                "{head:?}"
            );
            let length: usize = head
                .split("\r\n")
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.parse().ok())
                .expect("content-length");
            assert_eq!(length, body.len());
            let json: serde_json::Value =
                serde_json::from_slice(body).expect("problem body is JSON");
            assert_eq!(
                json["detail"],
                serde_json::Value::from(r.detail().as_ref()),
                "{r:?}"
            );
            if let Some(rule) = r.rule() {
                assert_eq!(json["rule"], serde_json::Value::from(rule));
            }
        }
    }
}
