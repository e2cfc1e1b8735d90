//! The tests' HTTP/1.1 client, as small as the service's answers allow:
//! one request per connection (`Connection: close`), a body by its length,
//! chunked or to EOF, and a streaming body read one NDJSON line at a time.

use std::io::{BufRead, BufReader, Read, Write};

use serde_json::Value;

use crate::text;

/// A Unix or TCP connection.
pub trait Wire: Read + Write {}
impl<T: Read + Write> Wire for T {}

/// A whole response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        text(&self.body)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
}

/// A request sent whose answer is not yet read.
pub struct Call {
    wire: BufReader<Box<dyn Wire>>,
    what: String,
}

impl Call {
    /// Writes a request on `wire`; its answer is read later.
    pub fn send(
        mut wire: Box<dyn Wire>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Call> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: pid1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        wire.write_all(head.as_bytes())?;
        wire.write_all(body)?;
        wire.flush()?;
        Ok(Call { wire: BufReader::new(wire), what: format!("{method} {path}") })
    }

    pub fn try_answer(self) -> std::io::Result<Response> {
        Reader::head(self.wire)?.whole()
    }

    /// The whole answer.
    pub fn answer(self) -> Response {
        let what = self.what.clone();
        self.try_answer().unwrap_or_else(|e| panic!("{what}: {}", failed(&e)))
    }

    /// The answer's head, its body to be read line by line.
    pub fn stream(self) -> Streaming {
        let reader = Reader::head(self.wire).unwrap_or_else(|e| panic!("{}: {}", self.what, failed(&e)));
        Streaming { reader, pending: Vec::new() }
    }
}

/// A response whose head is read and whose body is not yet.
struct Reader {
    wire: BufReader<Box<dyn Wire>>,
    status: u16,
    headers: Vec<(String, String)>,
    /// Whether the body is chunked; else it runs to its length or to EOF.
    chunked: bool,
    length: Option<usize>,
}

/// A read that failed, in words; a read past the socket's timeout is the
/// service not answering in time.
fn failed(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!("no answer in time ({e})"),
        _ => e.to_string(),
    }
}

fn broken(why: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.into())
}

impl Reader {
    fn head(mut wire: BufReader<Box<dyn Wire>>) -> std::io::Result<Reader> {
        let mut line = String::new();
        wire.read_line(&mut line)?;
        let status = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| broken(format!("not an HTTP/1.1 status line: {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            if wire.read_line(&mut line)? == 0 {
                return Err(broken("the head ended early"));
            }
            let header = line.trim_end_matches(['\r', '\n']);
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').ok_or_else(|| broken(format!("header {header:?}")))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let chunked = find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let length = find("content-length").and_then(|v| v.parse().ok());
        Ok(Reader { wire, status, headers, chunked, length })
    }

    /// The next piece of the body; `None` at its end.
    fn piece(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        if !self.chunked {
            let mut body = Vec::new();
            match self.length.take() {
                Some(0) => return Ok(None),
                Some(n) => {
                    body.resize(n, 0);
                    self.wire.read_exact(&mut body)?;
                    self.length = Some(0);
                }
                None => {
                    self.wire.read_to_end(&mut body)?;
                    self.length = Some(0);
                }
            }
            return Ok(Some(body));
        }
        let mut line = String::new();
        self.wire.read_line(&mut line)?;
        let size = line.trim_end().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size, 16).map_err(|_| broken(format!("chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, then the empty line that ends the body.
            loop {
                line.clear();
                if self.wire.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                    break;
                }
            }
            self.chunked = false;
            self.length = Some(0);
            return Ok(None);
        }
        let mut chunk = vec![0; size + 2];
        self.wire.read_exact(&mut chunk)?;
        if !chunk.ends_with(b"\r\n") {
            return Err(broken("a chunk without its CRLF"));
        }
        chunk.truncate(size);
        Ok(Some(chunk))
    }

    fn whole(mut self) -> std::io::Result<Response> {
        let mut body = Vec::new();
        while let Some(piece) = self.piece()? {
            body.extend_from_slice(&piece);
        }
        Ok(Response { status: self.status, headers: self.headers, body })
    }
}

/// A streaming answer, read one NDJSON line at a time; dropping it closes
/// the connection (the client goes away).
pub struct Streaming {
    reader: Reader,
    /// Body bytes read past the last whole line.
    pending: Vec<u8>,
}

impl Streaming {
    pub fn status(&self) -> u16 {
        self.reader.status
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.reader.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The next line; `None` at the end of the answer.
    pub fn next_line(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Some(
                    serde_json::from_slice(&line).unwrap_or_else(|e| panic!("{e}: {}", text(&line))),
                );
            }
            match self.reader.piece().unwrap_or_else(|e| panic!("the streaming answer: {}", failed(&e))) {
                Some(piece) => self.pending.extend_from_slice(&piece),
                None => {
                    assert!(self.pending.is_empty(), "a partial last line: {}", text(&self.pending));
                    return None;
                }
            }
        }
    }

    /// Every line left.
    pub fn rest(mut self) -> Vec<Value> {
        std::iter::from_fn(|| self.next_line()).collect()
    }
}
