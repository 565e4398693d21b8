#![no_main]
//! The `jwt` target. Its properties live in the regression test, so that
//! kept inputs are checked on stable exactly as the fuzzer checks them.

#[allow(dead_code)]
#[path = "../../crates/rampart-policy/tests/fuzz_regressions.rs"]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| properties::jwt(data));
