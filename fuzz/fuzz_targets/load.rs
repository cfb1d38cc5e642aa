//! Fuzzes the pipeline loader: YAML or JSON text through parsing and
//! compiling (see `harness.rs`).
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::load(data, harness::FUZZ_STACK));
