//! The kernel console's log: what a failed boot or a silent guest shows.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Lines of the kernel console shown when a boot fails.
pub const TAIL_LINES: usize = 30;

/// How much of the log's end is read for a tail: far more than
/// [`TAIL_LINES`] lines take.
const TAIL_BYTES: u64 = 64 * 1024;

const NOTHING: &str = "(no console output)";

/// The last `lines` lines of the console log at `path`.
pub fn tail(path: &Path, lines: usize) -> String {
    match File::open(path) {
        Ok(file) => tail_of(&file, lines),
        Err(_) => String::from(NOTHING),
    }
}

/// The last `lines` lines of an open console log.
pub fn tail_of(mut file: &File, lines: usize) -> String {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    last_lines(&String::from_utf8_lossy(&bytes), lines)
}

fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.trim().is_empty() { String::from(NOTHING) } else { tail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_the_last_lines_or_says_there_are_none() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\n", 5), "a");
        assert_eq!(last_lines("  \n\n", 5), NOTHING);
        assert_eq!(tail(Path::new("/nonexistent/console.log"), 3), NOTHING);
    }

    #[test]
    fn a_long_log_is_read_from_its_end() {
        let mut file = tempfile::tempfile().unwrap();
        let line = "x".repeat(99);
        for i in 0..2000 {
            std::io::Write::write_all(&mut file, format!("{i} {line}\n").as_bytes()).unwrap();
        }
        let tail = tail_of(&file, 2);
        assert!(tail.starts_with("1998 ") && tail.contains("\n1999 "), "{tail}");
    }
}
