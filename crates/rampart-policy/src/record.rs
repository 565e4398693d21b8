//! The request record `rampart replay` reads: one JSON line per request with
//! what the policy read of it and what it decided.
//!
//! ```json
//! {"t":1764496800123,"ip":"203.0.113.7","cc":"CN","asn":4134,"host":"api.example",
//!  "m":"POST","p":"/api/auth/register","h":[["content-type","application/json"]],
//!  "fl":[["registration_cn_mobile_only","enforce"]],
//!  "b":{"len":31,"fields":{"/phone":"+8613800138000"}},
//!  "ms":3,"s":200,"v":"proxied","route":"register"}
//! ```
//!
//! | field | meaning |
//! |---|---|
//! | `t` | arrival, milliseconds since the Unix epoch |
//! | `ip`, `cc`, `asn` | resolved client address, its country and ASN |
//! | `ja4` | the JA4 fingerprint of the connection's TLS hello (TLS listeners) |
//! | `host`, `m`, `p` | host, method and canonical path (the query is never kept) |
//! | `h` | the request headers the config reads (header keys, session checks, body media types) and any listed in `[record] headers`; every value but `Content-Type` and `Content-Encoding` as a keyed hash (`#` and 16 hex digits), cookies as `name=#hash` |
//! | `fl` | flags on when the request came (`enforce` or `preview`) |
//! | `auto` | those of them an escalation turned on |
//! | `b` | the body as the rules read it: its length and each field the config reads, or why it could not be read; or `"timeout"`, `"gone"`, `"malformed"` when reading it failed |
//! | `ms`, `s` | time to answer and the status sent |
//! | `v`, `rule`, `route`, `allow` | the policy's verdict (`proxied` or the refusal label), the refusing rule, the route, the allow rule that matched |
//! | `w` | weight: under a flood one request in `w` is recorded (absent: 1) |
//! | `jwt` | the verified identity, when the config has `key = "jwt"` rules: each claim they read as a keyed hash (`{"sub":"#…"}`), or why the bearer token did not verify (`"expired"`, `"absent"`, … as in `rampart_jwt_unverified_total`) |
//!
//! A recording holds addresses, paths and the body fields the rules read (phone
//! numbers, account names): keep it like the access log. Keyed hashes use a key
//! made at process start: equal values hash equal within one process's files.

use crate::body::RecordedBody;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::net::IpAddr;

/// One recorded request (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record<'a> {
    /// Arrival, milliseconds since the Unix epoch.
    pub t: u64,
    /// Resolved client address.
    pub ip: IpAddr,
    /// Country (ISO code), when known.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub cc: Option<Cow<'a, str>>,
    /// ASN, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    /// JA4 fingerprint of the TLS hello, when the request came over TLS and
    /// the hello could be fingerprinted.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub ja4: Option<Cow<'a, str>>,
    /// The host the request named.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub host: Option<Cow<'a, str>>,
    /// Method.
    #[serde(borrow)]
    pub m: Cow<'a, str>,
    /// Canonical path.
    #[serde(borrow)]
    pub p: Cow<'a, str>,
    /// Headers kept: name (lower case) and value (hashed but for media types).
    #[serde(default, skip_serializing_if = "Vec::is_empty", borrow)]
    pub h: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Flags on, with their mode (`enforce`, `preview`).
    #[serde(default, skip_serializing_if = "Vec::is_empty", borrow)]
    pub fl: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Flags among `fl` that an escalation turned on (a replay derives those
    /// from its own escalations).
    #[serde(default, skip_serializing_if = "Vec::is_empty", borrow)]
    pub auto: Vec<Cow<'a, str>>,
    /// The body as the rules read it, when they read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<RecordedRead>,
    /// Milliseconds until the answer was complete.
    #[serde(default)]
    pub ms: u32,
    /// Status sent.
    #[serde(default)]
    pub s: u16,
    /// The policy's verdict label (`proxied` or the refusal's).
    #[serde(borrow)]
    pub v: Cow<'a, str>,
    /// The rule or flag that refused.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub rule: Option<Cow<'a, str>>,
    /// The route's name.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub route: Option<Cow<'a, str>>,
    /// The allow rule that let the request skip the limits.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub allow: Option<Cow<'a, str>>,
    /// Requests this record stands for (sampling under a flood).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub w: u32,
    /// The verified identity `key = "jwt"` rules read (absent: the config
    /// had no such rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<RecordedIdentity>,
}

/// A request's verified identity as recorded. A replay cannot verify the
/// token (the record keeps `Authorization` only as a hash), so it counts by
/// these: the same subject hashes alike within one process's records, which
/// keeps one bucket per subject; a rule of the candidate config reading a
/// claim the record lacks counts by address, like an unverified token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RecordedIdentity {
    /// The token verified: claim name and keyed hash of its value.
    Verified(std::collections::BTreeMap<String, String>),
    /// It did not: the reason label.
    Unverified(String),
}

impl RecordedIdentity {
    /// The outcome the engine takes in a replay.
    pub fn outcome(&self) -> crate::jwt::IdentityOutcome {
        use crate::jwt::{IdentityOutcome, Unverified};
        match self {
            RecordedIdentity::Verified(claims) => crate::jwt::outcome_from_record(claims),
            RecordedIdentity::Unverified(label) => IdentityOutcome::Unverified(
                Unverified::from_label(label).unwrap_or(Unverified::Malformed),
            ),
        }
    }
}

fn one() -> u32 {
    1
}

fn is_one(w: &u32) -> bool {
    *w == 1
}

/// How the body read went, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RecordedRead {
    /// Read: the fields the rules read.
    Read(RecordedBody),
    /// Reading it failed.
    Failed(ReadFailure),
}

/// Why reading a body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFailure {
    /// It did not arrive within `client_body_timeout`.
    Timeout,
    /// The client went away while sending it.
    Gone,
    /// Its framing was malformed.
    Malformed,
}

impl RecordedRead {
    /// The body as the engine takes it.
    pub fn to_body_read(&self) -> crate::BodyRead {
        match self {
            RecordedRead::Read(body) => crate::BodyRead::Recorded(body.clone()),
            RecordedRead::Failed(ReadFailure::Timeout) => crate::BodyRead::TimedOut,
            RecordedRead::Failed(ReadFailure::Gone) => crate::BodyRead::ClientGone,
            RecordedRead::Failed(ReadFailure::Malformed) => crate::BodyRead::Malformed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_record_reads_back_as_written() {
        let record = Record {
            t: 1_764_496_800_123,
            ip: "203.0.113.7".parse().unwrap(),
            cc: Some("CN".into()),
            asn: Some(4134),
            ja4: Some("t13d1516h2_8daaf6152771_e5627efa2ab1".into()),
            host: Some("api.example".into()),
            m: "POST".into(),
            p: "/api/auth/register".into(),
            h: vec![("content-type".into(), "application/json".into())],
            fl: vec![("registration_cn_mobile_only".into(), "enforce".into())],
            auto: vec![],
            b: Some(RecordedRead::Read(RecordedBody {
                len: 31,
                fields: BTreeMap::from([("/phone".into(), "+8613800138000".into())]),
                refused: BTreeMap::from([("/name".into(), (400, "no \"name\"".into()))]),
            })),
            ms: 3,
            s: 200,
            v: "proxied".into(),
            rule: None,
            route: Some("register".into()),
            allow: None,
            w: 1,
            jwt: Some(RecordedIdentity::Verified(BTreeMap::from([(
                "sub".into(),
                "#0123456789abcdef".into(),
            )]))),
        };
        let line = serde_json::to_string(&record).unwrap();
        assert!(!line.contains("\"w\""), "{line}");
        let back: Record<'_> = serde_json::from_str(&line).unwrap();
        assert_eq!(back, record);
        for failure in ["timeout", "gone", "malformed"] {
            let line = format!(
                r#"{{"t":1,"ip":"::1","m":"GET","p":"/","b":"{failure}","v":"proxied","w":7}}"#
            );
            let r: Record<'_> = serde_json::from_str(&line).unwrap();
            assert!(matches!(r.b, Some(RecordedRead::Failed(_))), "{line}");
            assert_eq!(r.w, 7);
        }
        let line = r#"{"t":1,"ip":"::1","m":"GET","p":"/","v":"proxied","jwt":"expired"}"#;
        let r: Record<'_> = serde_json::from_str(line).unwrap();
        assert_eq!(r.jwt, Some(RecordedIdentity::Unverified("expired".into())));
    }
}
