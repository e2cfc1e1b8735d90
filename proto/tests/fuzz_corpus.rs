//! Replays the fuzzers' corpus and every crash they found (`fuzz/corpus`,
//! `fuzz/artifacts`) through the fuzz targets' own checks, on stable: what
//! once broke stays fixed without nightly.

use std::path::Path;

mod checks {
    include!("../../fuzz/checks.rs");
}

/// Every file under `fuzz/{corpus,artifacts}/<target>/`; how many.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut count = 0;
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let result = std::panic::catch_unwind(|| check(&data));
            assert!(result.is_ok(), "{} fails again", path.display());
            count += 1;
        }
    }
    count
}

#[test]
fn frame_reader_corpus() {
    assert!(replay("frames", checks::frames) >= 3, "the seed corpus is there");
}

#[test]
fn request_decoding_corpus() {
    assert!(replay("requests", checks::requests) >= 10, "the seed corpus is there");
}

/// The two bytes that once panicked PID 1: an empty message.
#[test]
fn an_empty_frame_is_a_frame_that_decodes_to_nothing() {
    checks::frames(&[1, 0x01, 0x00]);
    checks::requests(&[]);
}
