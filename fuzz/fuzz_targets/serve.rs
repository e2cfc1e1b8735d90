//! The init's request handling, in-process: arbitrary bytes from the host
//! through the real loop (`pid1::serve::harness`), jobs and all.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pid1::serve::harness::run(data);
});
