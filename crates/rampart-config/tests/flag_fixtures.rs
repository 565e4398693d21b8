//! Every message the lockdown-flag and body validators can give has a fixture in
//! `conf/invalid/` that asserts it (the `rampart check` test then holds each
//! fixture to its exact lines). A new `issue` call site in
//! `validate/lockdown.rs` or `validate/body.rs` fails here until it is listed
//! below with a fixture.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::path::Path;

/// `(site, key, reason)`: `site` is the first string literal of the `issue`
/// call in the source (its key, or its reason when the key is a variable), or
/// `""` for a shared helper's message given under a flag's key; `key` is the
/// key with every index written `[N]`; `reason` is how the message starts.
const MESSAGES: &[(&str, &str, &str)] = &[
    // validate/lockdown.rs
    ("lockdown.audit_log", "lockdown.audit_log", "must not be the state file"),
    ("{key}.routes", "flags[N].block[N].routes", "at least one route is required"),
    ("{key}.routes", "flags[N].require_session.routes", "at least one route is required"),
    ("{key}.routes", "flags[N].restrict[N].routes", "at least one route is required"),
    ("{bkey}.status", "flags[N].block[N].status", "must be an error status from 400 to 599, got "),
    ("{key}.allow_only_routes", "flags[N].allow_only_routes", "an empty list would block everything; use maintenance instead"),
    ("{key}.allow_only_routes[{j}]", "flags[N].allow_only_routes[N]", "unknown route \""),
    ("give a cookie or a header that marks a session", "flags[N].require_session", "give a cookie or a header that marks a session"),
    ("{key}.limit_scale", "flags[N].limit_scale", "must be above 0 and at most 1 (it tightens buckets), got "),
    ("does nothing: give maintenance, block, allow_only_routes, require_session, restrict, body_rules or limit_scale (or reference it from a limit's only_with_flag)", "flags[N]", "does nothing: give maintenance, block"),
    // Shared helpers, under a flag's keys.
    ("", "flags[N].name", "is required"),
    ("", "flags[N].name", "\"Bad Flag\": rule names use lower-case letters, digits, '_' and '-' only"),
    ("", "flags[N].name", "\"twice\" is used by another rule"),
    ("", "flags[N].maintenance.routes[N]", "unknown route \""),
    ("", "flags[N].maintenance.retry_after", "\"soon\""),
    ("", "flags[N].maintenance.retry_after", "must be longer than zero"),
    ("", "lockdown.max_ttl", "must be longer than zero"),
    ("", "flags[N].block[N].routes[N]", "unknown route \""),
    ("", "flags[N].require_session.routes[N]", "unknown route \""),
    ("", "flags[N].restrict[N].routes[N]", "unknown route \""),
    ("", "flags[N].restrict[N].cidrs[N]", "\"10.0.0.1/8\" has host bits set"),
    ("", "flags[N].restrict[N].cidrs[N]", "\"ten\" is not an IP address or CIDR"),
    ("", "flags[N].restrict[N].asns[N]", "0 is not an AS number"),
    ("", "flags[N].restrict[N].asns", "needs geoip.asn_db"),
    ("", "flags[N].restrict[N].countries[N]", "\"CHN\" is not a two-letter country code"),
    ("", "flags[N].restrict[N].countries", "needs geoip.country_db"),
    ("", "limits[N].only_with_flag", "unknown flag \""),
    // validate/body.rs: body keys of limits.
    ("{key}.field", "limits[N].field", "is required with key = \"body\""),
    ("{key}.field", "limits[N].field", "\"/user//name\" has an empty segment"),
    ("{key}.field", "limits[N].field", "\"/user/~phone\" is not a JSON Pointer: '~' must be followed by 0 or 1"),
    ("{key}.normalize", "limits[N].normalize", "\"lowercase\" is not a normalisation"),
    ("{key}.number_prefix", "limits[N].number_prefix", "only with normalize = \"phone\""),
    ("{key}.number_prefix", "limits[N].number_prefix", "must be from 1 to 15 digits of the E.164 number, got "),
    ("{key}.max_body_bytes", "limits[N].max_body_bytes", "must be from 1 to 61440 (the body is replayed from a 64 KiB buffer), got "),
    // validate/body.rs: body rules of flags.
    ("{bkey}.route", "flags[N].body_rules[N].route", "is required"),
    ("{bkey}.route", "flags[N].body_rules[N].route", "unknown route \""),
    ("{bkey}.field", "flags[N].body_rules[N].field", "is required (e.g. \"phone\")"),
    ("{bkey}.field", "flags[N].body_rules[N].field", "\"/user//phone\" has an empty segment"),
    ("{bkey}.field", "flags[N].body_rules[N].field", "\"/user/~2phone\" is not a JSON Pointer: '~' must be followed by 0 or 1"),
    ("{bkey}.allowed_calling_codes[{k}]", "flags[N].body_rules[N].allowed_calling_codes[N]", "\"86x\" is not a country calling code (e.g. \"+86\")"),
    ("{bkey}.allowed_regions[{k}]", "flags[N].body_rules[N].allowed_regions[N]", "\"cn\" is not a region code"),
    ("needs allowed_regions (e.g. [\\\"CN\\\"]) or allowed_calling_codes (e.g. [\\\"+86\\\"])", "flags[N].body_rules[N]", "needs allowed_regions (e.g. [\"CN\"]) or allowed_calling_codes (e.g. [\"+86\"])"),
    ("{bkey}.number_types[{k}]", "flags[N].body_rules[N].number_types[N]", "\"cell\" is not a number type (known: "),
    ("{bkey}.methods[{k}]", "flags[N].body_rules[N].methods[N]", "\"P0ST\" is not an HTTP method"),
    ("{bkey}.max_body_bytes", "flags[N].body_rules[N].max_body_bytes", "must be from 1 to 61440 (the body is replayed from a 64 KiB buffer), got "),
];

/// The first string literal after each `self.issue(` in `source`, as written.
fn issue_sites(source: &str) -> Vec<String> {
    source
        .split("self.issue(")
        .skip(1)
        .map(|call| {
            let start = call.find('"').unwrap() + 1;
            let mut end = start;
            let bytes = call.as_bytes();
            while bytes[end] != b'"' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            call[start..end].to_string()
        })
        .collect()
}

/// `flags[3].block[0].status: reason` becomes `flags[N].block[N].status: reason`
/// (indices in the key only).
fn normalized(line: &str) -> String {
    let (key, reason) = line.split_once(": ").unwrap_or((line, ""));
    let mut out = String::new();
    let mut in_index = false;
    for c in key.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[N");
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            c => out.push(c),
        }
    }
    format!("{out}: {reason}")
}

fn expected_lines() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conf/invalid");
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines() {
                if let Some(message) = line.strip_prefix("# expect: ") {
                    // Drop the `conf/invalid/NAME.toml: ` prefix.
                    let (_, rest) = message.split_once(": ").unwrap();
                    lines.push(normalized(rest));
                }
            }
        }
    }
    lines
}

#[test]
fn every_flag_and_body_message_has_a_fixture() {
    let lines = expected_lines();
    let missing: Vec<String> = MESSAGES
        .iter()
        .map(|(_, key, reason)| format!("{key}: {reason}"))
        .filter(|want| !lines.iter().any(|l| l.starts_with(want.as_str())))
        .collect();
    assert!(
        missing.is_empty(),
        "no conf/invalid fixture expects:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_issue_call_of_the_flag_and_body_validators_is_listed() {
    let mut sites: BTreeSet<String> = BTreeSet::new();
    sites.extend(issue_sites(include_str!("../src/validate/lockdown.rs")));
    sites.extend(issue_sites(include_str!("../src/validate/body.rs")));
    let listed: BTreeSet<String> = MESSAGES
        .iter()
        .filter(|(site, _, _)| !site.is_empty())
        .map(|(site, _, _)| site.to_string())
        .collect();
    let unlisted: Vec<&String> = sites.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "issue calls with no entry in MESSAGES (add one, and a fixture): {unlisted:?}"
    );
    let stale: Vec<&String> = listed.difference(&sites).collect();
    assert!(
        stale.is_empty(),
        "MESSAGES entries with no issue call: {stale:?}"
    );
}
