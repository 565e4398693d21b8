//! Inputs kept from the `answer_head` cargo-fuzz target in `fuzz/`, replayed
//! on stable. This file is also the target's property code: the target
//! includes it with `#[path]` and calls [`answer_head`], so a fuzz run and this
//! test check exactly the same things.
//!
//! Inputs live in `tests/fuzz-regressions/answer_head/`; a crash found by the
//! fuzzer is kept there too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    dead_code
)]

use rampart_proxy::answer::{look, Look};
use std::path::Path;

const DATE: &[u8] = b"Mon, 30 Nov 2026 00:00:00 GMT";

/// The bytes of an origin's answer as Rampart's own reading sees them: never a
/// panic; a head it renders is whole, at most 64 KiB of body, and renders to
/// a head that Rampart's reading takes again with the same status and length,
/// the origin's fields kept (but for `Date` and `Connection`, set once each).
pub fn answer_head(data: &[u8]) {
    let mut out = Vec::new();
    let Look::Rendered {
        head,
        length,
        status,
        ..
    } = look(data, DATE, &mut out)
    else {
        return;
    };
    assert!(head <= data.len() && length <= 64 * 1024);
    let fields = |bytes: &[u8]| -> (Option<u16>, Vec<(String, Vec<u8>)>) {
        // Room for the two fields rendering may add to a head of 64.
        let mut parsed = [httparse::EMPTY_HEADER; 70];
        let mut resp = httparse::Response::new(&mut parsed);
        let parsed_len = resp.parse(bytes).unwrap();
        assert!(parsed_len.is_complete());
        let kept = resp
            .headers
            .iter()
            .filter(|f| {
                !f.name.eq_ignore_ascii_case("date") && !f.name.eq_ignore_ascii_case("connection")
            })
            .map(|f| (f.name.to_string(), f.value.to_vec()))
            .collect();
        (resp.code, kept)
    };
    let (code, kept) = fields(&out);
    assert_eq!(code, Some(status));
    assert_eq!(kept, fields(&data[..head]).1);
    for name in ["Date", "Connection"] {
        let count = out
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(format!("{name}: ").as_bytes()))
            .count();
        assert_eq!(count, 1, "{name} in {:?}", String::from_utf8_lossy(&out));
    }
    // Read again (when it still fits Rampart's own reading's 64 fields): the
    // same head, taken whole, rendered to the same bytes.
    if kept.len() + 2 <= 64 {
        let mut again = Vec::new();
        match look(&out, DATE, &mut again) {
            Look::Rendered {
                head: h,
                length: l,
                status: s,
                ..
            } => assert_eq!((h, l, s), (out.len(), length, status)),
            other => panic!(
                "the rendered head is read as {other:?}: {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
        assert_eq!(again, out, "rendering is not stable");
    }
}

#[test]
fn kept_fuzz_inputs_still_hold() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions/answer_head");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(!files.is_empty(), "no kept inputs in {}", dir.display());
    for file in files {
        answer_head(&std::fs::read(&file).unwrap());
    }
}
