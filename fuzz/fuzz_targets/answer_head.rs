#![no_main]
//! The `answer_head` target: the bytes of an origin's answer as Rampart's own
//! reading sees them (`rampart_proxy::answer::look`). Its properties live in
//! the regression test, so that kept inputs are checked on stable exactly as
//! the fuzzer checks them.

#[allow(dead_code)]
#[path = "../../crates/rampart-proxy/tests/fuzz_regressions.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| properties::answer_head(data));
