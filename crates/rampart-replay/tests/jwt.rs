//! A `key = "jwt"` rule replayed: the record keeps the verified subject as a
//! keyed hash, so each subject gets its own bucket, and requests whose token
//! did not verify (or were recorded without an identity) share the address's.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_replay::{Options, Replay};
use std::path::Path;

const CANDIDATE: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"
[pools.chat]
servers = ["127.0.0.1:9000"]
[[routes]]
name = "chat"
path_prefix = "/v1/"
pool = "chat"
[jwt]
hs256_secret_env = "NOT_READ_BY_A_REPLAY"
[[limits]]
name = "per-user"
key = "jwt"
rate = "1/h"
burst = 2
"#;

fn record(t: u64, jwt: Option<&str>) -> String {
    let jwt = jwt.map(|j| format!(",\"jwt\":{j}")).unwrap_or_default();
    format!(
        r#"{{"t":{t},"ip":"203.0.113.7","m":"POST","p":"/v1/chat","v":"proxied","route":"chat"{jwt}}}"#
    )
}

#[test]
fn recorded_subjects_get_their_own_buckets_and_the_rest_the_address() {
    let config = rampart_config::parse(CANDIDATE, Path::new("candidate.toml")).unwrap();
    let mut replay = Replay::new(config, None, &Options::default()).unwrap();
    let mut t = 1_764_496_800_000;
    let mut next = |jwt: Option<&str>| {
        t += 10;
        record(t, jwt)
    };
    let lines: Vec<String> = [
        Some(r##"{"sub":"#00000000000000aa"}"##),
        Some(r##"{"sub":"#00000000000000bb"}"##),
        Some(r##"{"sub":"#00000000000000aa"}"##),
        Some(r##"{"sub":"#00000000000000bb"}"##),
        Some(r##"{"sub":"#00000000000000aa"}"##), // aa's third: refused
        Some(r##"{"sub":"#00000000000000bb"}"##), // bb's third: refused
        Some(r#""bad_signature""#),               // by address: 1
        Some(r#""expired""#),                     // by address: 2
        None,                                     // no identity: address, refused
        Some(r##"{"tenant":"#0000000000000001"}"##), // lacks sub: address, refused
    ]
    .into_iter()
    .map(&mut next)
    .collect();
    for line in &lines {
        replay.line(line);
    }
    let report = replay.finish();
    assert_eq!(report.records, 10, "{}", report.text());
    assert_eq!(
        report.candidate.verdicts.get("rate_limited"),
        Some(&4),
        "{}",
        report.text()
    );
    assert_eq!(report.candidate.verdicts.get("proxied"), Some(&6));
}
