//! The frame reader: arbitrary bytes in arbitrary pieces.
#![no_main]

include!("../checks.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| frames(data));
