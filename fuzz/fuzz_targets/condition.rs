//! Fuzzes `when:` conditions: the lexical limits check and CEL's parser
//! (see `harness.rs`).
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::condition(data, harness::FUZZ_STACK));
