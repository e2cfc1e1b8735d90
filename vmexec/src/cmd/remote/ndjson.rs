//! The wire of a streamed run (`Accept: application/x-ndjson` on
//! `POST /v1/runs`), as the service writes it (its `http/stream.rs`): one
//! JSON object a line, the job's output as it arrives, base64 so that
//! binary output and a character split between chunks arrive exactly,
//! then the result or the error that ends the run:
//!
//! ```text
//! {"type":"stdout","data":"aGkK"}
//! {"type":"stderr","data":"..."}
//! {"type":"result","result":{...RunResult...}}  or  {"type":"error","error":{"kind":"vm_lost","message":"..."}}
//! ```
//!
//! A line of a type this client does not know is skipped: a newer
//! service may add some without breaking it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use vmhost::Stream;
use vmhost::api::RunResult;

pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// Bytes in, whole lines out: a line may come in many chunks, and a
/// chunk may hold many lines.
#[derive(Debug, Default)]
pub struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next whole line, without its `\n`.
    pub fn next_line(&mut self) -> Option<Vec<u8>> {
        let end = self.pending.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.pending.drain(..=end).collect();
        line.pop();
        Some(line)
    }
}

/// An error as the service answers it: `{"error": {"kind", "message"}}`
/// (a `field` it may add is in the message already).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ErrorBody {
    pub kind: String,
    pub message: String,
}

#[derive(Deserialize)]
struct Envelope {
    error: ErrorBody,
}

impl ErrorBody {
    /// The error a non-2xx answer carries; for a body that is not the
    /// service's (a proxy's page), a kind from the status and the body's
    /// first words.
    pub fn from_answer(status: u16, body: &[u8]) -> ErrorBody {
        if let Ok(envelope) = serde_json::from_slice::<Envelope>(body) {
            return envelope.error;
        }
        let kind = match status {
            401 => "unauthorized",
            503 => "busy",
            _ => "http",
        };
        let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
        ErrorBody { kind: kind.to_owned(), message: format!("HTTP {status}: {}", text.trim()) }
    }
}

/// One line of the stream, decoded.
#[derive(Debug, PartialEq)]
pub enum Event {
    Output(Stream, Vec<u8>),
    Result(Box<RunResult>),
    Error(ErrorBody),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Line {
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    Result {
        result: Box<RunResult>,
    },
    Error {
        error: ErrorBody,
    },
    #[serde(other)]
    Unknown,
}

impl Event {
    /// One line: `None` for a blank one or one of a type not known here.
    pub fn decode(line: &[u8]) -> Result<Option<Event>, String> {
        if line.trim_ascii().is_empty() {
            return Ok(None);
        }
        let line: Line =
            serde_json::from_slice(line).map_err(|e| format!("a stream line that is not an event: {e}"))?;
        let output = |stream, data: String| {
            BASE64
                .decode(data)
                .map(|bytes| Some(Event::Output(stream, bytes)))
                .map_err(|e| format!("output that is not base64: {e}"))
        };
        match line {
            Line::Stdout { data } => output(Stream::Stdout, data),
            Line::Stderr { data } => output(Stream::Stderr, data),
            Line::Result { result } => Ok(Some(Event::Result(result))),
            Line::Error { error } => Ok(Some(Event::Error(error))),
            Line::Unknown => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use vmhost::api::StartKind;

    use super::*;

    /// A result as the service sends one.
    const RESULT: &str = r#"{"type":"result","result":{"stdout":"hi\n","stderr":"","exit_code":3,"timed_out":false,"stdout_truncated":false,"stderr_truncated":false,"peak_memory_bytes":1048576,"cpu_ms":1.5,"start":"pooled","boot_ms":0.4,"exec_ms":12.0,"total_ms":13.1,"kernel_ms":0.0,"init_ms":0.0,"accel":"kvm"}}"#;

    fn all_lines(lines: &mut Lines) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| lines.next_line()).collect()
    }

    #[test]
    fn lines_come_whole_whatever_the_chunks() {
        let stream = b"{\"a\":1}\n{\"b\":2}\n\n{\"c\":3}\n";
        let whole = {
            let mut lines = Lines::default();
            lines.feed(stream);
            all_lines(&mut lines)
        };
        assert_eq!(whole, [&b"{\"a\":1}"[..], b"{\"b\":2}", b"", b"{\"c\":3}"]);
        // One byte at a time: the same lines, each once it is complete.
        let mut lines = Lines::default();
        let mut seen = Vec::new();
        for &byte in stream {
            lines.feed(&[byte]);
            let got = all_lines(&mut lines);
            assert!(got.len() <= 1);
            if byte != b'\n' {
                assert!(got.is_empty(), "a line before its end");
            }
            seen.extend(got);
        }
        assert_eq!(seen, whole);
    }

    #[test]
    fn a_line_without_its_end_is_held() {
        let mut lines = Lines::default();
        lines.feed(b"{\"type\":\"std");
        assert_eq!(lines.next_line(), None);
        lines.feed(b"out\"}\nrest");
        assert_eq!(lines.next_line().as_deref(), Some(&b"{\"type\":\"stdout\"}"[..]));
        assert_eq!(lines.next_line(), None);
    }

    #[test]
    fn output_is_decoded_from_base64_exactly() {
        let line = br#"{"type":"stdout","data":"aGkK"}"#;
        assert_eq!(Event::decode(line), Ok(Some(Event::Output(Stream::Stdout, b"hi\n".to_vec()))));
        // Bytes that are not UTF-8, and half of a two-byte character.
        let line = br#"{"type":"stderr","data":"AP/D"}"#;
        assert_eq!(Event::decode(line), Ok(Some(Event::Output(Stream::Stderr, vec![0, 0xff, 0xc3]))));
        let empty = br#"{"type":"stdout","data":""}"#;
        assert_eq!(Event::decode(empty), Ok(Some(Event::Output(Stream::Stdout, Vec::new()))));
    }

    #[test]
    fn the_result_is_the_api_type() {
        let Ok(Some(Event::Result(result))) = Event::decode(RESULT.as_bytes()) else {
            panic!("not a result");
        };
        assert_eq!((result.stdout.as_str(), result.exit_code, result.timed_out), ("hi\n", 3, false));
        assert_eq!(
            (result.start, result.accel.as_str(), result.peak_memory_bytes),
            (StartKind::Pooled, "kvm", 1 << 20)
        );
        assert!(result.files.is_empty() && result.stdout_base64.is_none());
    }

    #[test]
    fn an_error_line_gives_its_kind_and_message() {
        let line = br#"{"type":"error","error":{"kind":"vm_lost","message":"the VM was lost mid-run: eof"}}"#;
        let error = ErrorBody { kind: "vm_lost".into(), message: "the VM was lost mid-run: eof".into() };
        assert_eq!(Event::decode(line), Ok(Some(Event::Error(error))));
        // The field a bad request names is in its message too.
        let line =
            br#"{"type":"error","error":{"kind":"bad_request","message":"env.1A: bad","field":"env.1A"}}"#;
        assert!(matches!(Event::decode(line), Ok(Some(Event::Error(e))) if e.kind == "bad_request"));
    }

    #[test]
    fn blank_lines_and_unknown_types_are_skipped() {
        for line in [&b""[..], b"  ", b"\r", br#"{"type":"progress","percent":50}"#] {
            assert_eq!(Event::decode(line), Ok(None), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        for line in [
            &b"not json"[..],
            b"{\"data\":\"aGkK\"}",
            b"{\"type\":\"stdout\"}",
            b"{\"type\":\"stdout\",\"data\":\"***\"}",
            b"{\"type\":\"result\",\"result\":{\"stdout\":1}}",
            b"{\"type\":\"error\",\"error\":\"boom\"}",
            b"\xff\xfe",
        ] {
            let err = Event::decode(line).expect_err(&String::from_utf8_lossy(line));
            assert!(!err.is_empty());
        }
    }

    #[test]
    fn an_error_answer_is_read_from_its_body_or_its_status() {
        let body = br#"{"error":{"kind":"busy","message":"all 8 VMs are busy"}}"#;
        assert_eq!(
            ErrorBody::from_answer(503, body),
            ErrorBody { kind: "busy".into(), message: "all 8 VMs are busy".into() }
        );
        let proxy = ErrorBody::from_answer(502, b"<html>Bad Gateway</html>\n");
        assert_eq!(
            (proxy.kind.as_str(), proxy.message.as_str()),
            ("http", "HTTP 502: <html>Bad Gateway</html>")
        );
        assert_eq!(ErrorBody::from_answer(401, b"").kind, "unauthorized");
        assert_eq!(ErrorBody::from_answer(503, b"").kind, "busy");
    }
}
