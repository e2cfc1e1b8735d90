use std::path::Path;

use super::*;

fn parsed(text: &str) -> Server {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn refused(text: &str) -> String {
    match text.parse::<Server>() {
        Ok(server) => panic!("{text} accepted as {server:?}"),
        Err(e) => e,
    }
}

fn http(host: &str, port: u16) -> Server {
    Server::Http { host: host.to_owned(), port }
}

// Where the service is.

#[test]
fn a_unix_socket_is_its_path() {
    assert_eq!(parsed("unix:/tmp/pid1.sock"), Server::Unix("/tmp/pid1.sock".into()));
    assert_eq!(parsed("unix:rel/pid1.sock"), Server::Unix("rel/pid1.sock".into()));
    assert!(refused("unix:").contains("socket path"));
}

#[test]
fn http_is_host_and_port() {
    assert_eq!(parsed("http://127.0.0.1:8470"), http("127.0.0.1", 8470));
    assert_eq!(parsed("http://127.0.0.1:8470/"), http("127.0.0.1", 8470));
    assert_eq!(parsed("http://sandbox.internal"), http("sandbox.internal", 80));
    assert_eq!(parsed("http://[::1]:8470"), http("::1", 8470));
    assert_eq!(parsed("http://[::1]"), http("::1", 80));
    // As `vmexec serve --listen` takes it.
    assert_eq!(parsed("tcp:127.0.0.1:8470"), http("127.0.0.1", 8470));
}

#[test]
fn a_server_prints_as_it_is_given() {
    for text in ["unix:/tmp/pid1.sock", "http://127.0.0.1:8470", "http://[::1]:8470"] {
        assert_eq!(parsed(text).to_string(), text);
    }
    assert_eq!(parsed("tcp:localhost:1").to_string(), "http://localhost:1");
    assert_eq!(parsed("http://[::1]:8470").authority(), "[::1]:8470");
    assert_eq!(parsed("unix:/x").authority(), "localhost");
}

#[test]
fn bad_addresses_are_refused_with_the_form_to_give() {
    for text in [
        "http://",
        "http://:8470",
        "http://host:",
        "http://host:0",
        "http://host:65536",
        "http://host:port",
        "http://host:8470/v1",
        "http://host:8470?x",
        "http://user@host:8470",
        "http://::1:8470",
        "http://[::1",
        "http://[::1]x",
        "http://a b:1",
        "tcp:host",
    ] {
        assert!(refused(text).contains("http://HOST:PORT"), "{text}: {}", refused(text));
    }
    for text in ["", "/tmp/pid1.sock", "localhost:8470", "ftp://host", "HTTP://host:1"] {
        assert!(refused(text).contains("unix:PATH or http://HOST:PORT"), "{text}: {}", refused(text));
    }
    assert!(refused("https://host:443").contains("plain HTTP"));
}

// The token.

#[test]
fn the_token_comes_from_the_file_else_the_environment() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("token");
    std::fs::write(&file, "  s3cret\n").expect("write the token");
    assert_eq!(token(Some(&file), Some("other".into())).ok(), Some(Some("s3cret".to_owned())));
    assert_eq!(token(None, Some(" t \n".into())).ok(), Some(Some("t".to_owned())));
    assert_eq!(token(None, Some(String::new())).ok(), Some(None));
    assert_eq!(token(None, None).ok(), Some(None));
}

#[test]
fn a_missing_or_empty_token_file_is_bad_input() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").expect("write the token");
    for file in [empty.as_path(), Path::new("/nonexistent/token")] {
        let err = token(Some(file), None).expect_err("refused");
        assert_eq!(err.classify(), (EXIT_NO_INPUT, "Input".to_owned()));
        assert!(err.message().contains(&file.display().to_string()), "{}", err.message());
    }
}

// The exit codes of a local run.

#[test]
fn a_refused_job_exits_2_and_a_failed_service_1() {
    for (kind, status, code) in [
        ("bad_request", Some(400), 2),
        ("refused", Some(400), 2),
        // Inside a stream there is no status: the kind decides.
        ("bad_request", None, 2),
        ("refused", None, 2),
        ("unauthorized", Some(401), 1),
        ("busy", Some(503), 1),
        ("shutting_down", Some(503), 1),
        ("vm_lost", Some(502), 1),
        ("vm_lost", None, 1),
        ("failed", Some(500), 1),
        ("file", Some(422), 1),
        ("packages", Some(422), 2),
        ("packages_unavailable", Some(502), 1),
        ("no_session", Some(404), 1),
        ("session_ended", Some(410), 1),
        ("not_found", Some(404), 1),
        // Kinds the service does not name: by the status.
        ("http", Some(413), 2),
        ("http", Some(400), 2),
        ("http", Some(502), 1),
        ("http", Some(404), 1),
        ("something_new", None, 1),
    ] {
        assert_eq!(exit_code(kind, status), code, "{kind} {status:?}");
    }
}

fn refusal(kind: &str, status: Option<u16>, retry_after: Option<u64>) -> RemoteError {
    RemoteError::Refused(Refusal { status, kind: kind.to_owned(), message: "why".to_owned(), retry_after })
}

#[test]
fn a_refusal_reports_the_service_kind() {
    assert_eq!(refusal("refused", Some(400), None).classify(), (EXIT_REFUSED, "refused".to_owned()));
    assert_eq!(refusal("vm_lost", None, None).classify(), (EXIT_FAILURE, "vm_lost".to_owned()));
}

#[test]
fn a_refusal_says_what_to_do() {
    let message = |e: RemoteError| e.message();
    assert!(message(refusal("unauthorized", Some(401), None)).contains("give --token-file"));
    assert!(
        message(refusal("busy", Some(503), Some(3))).starts_with("the service is busy (retry after 3 s)")
    );
    assert!(message(refusal("busy", None, None)).starts_with("the service is busy (retry later)"));
    assert_eq!(message(refusal("vm_lost", Some(502), None)), "why");
}

#[test]
fn failures_here_have_their_own_kinds() {
    let unix = Server::Unix("/tmp/none.sock".into());
    let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
    let err = RemoteError::NoService { server: unix.clone(), source: gone };
    assert_eq!(err.classify(), (EXIT_FAILURE, "Connect".to_owned()));
    assert!(err.message().starts_with("no service at unix:/tmp/none.sock: start one with `vmexec serve`"));
    let err = RemoteError::NoAnswer { server: unix.clone(), wait: Duration::from_secs(120) };
    assert_eq!(err.classify(), (EXIT_FAILURE, "NoAnswer".to_owned()));
    assert_eq!(err.message(), "unix:/tmp/none.sock did not answer within 120 s");
    let err = RemoteError::NotText { what: "the stdin file in.bin".into() };
    assert_eq!(err.classify(), (EXIT_NO_INPUT, "Input".to_owned()));
    let err = RemoteError::Protocol { server: unix, why: "x".into() };
    assert_eq!(err.classify(), (EXIT_FAILURE, "Protocol".to_owned()));
}

// Against a socket that is not a service.

#[test]
fn no_socket_is_no_service() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = Server::Unix(dir.path().join("none.sock"));
    let client = Client::new(server, None).expect("a client");
    let err =
        client.call_empty(Method::GET, "/v1/health", Some(Duration::from_secs(1))).expect_err("no service");
    assert!(matches!(err, RemoteError::NoService { .. }), "{err:?}");
}

#[test]
fn a_peer_that_never_answers_runs_into_the_deadline() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("silent.sock");
    // Accepts (the kernel's backlog does) and never answers.
    let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let client = Client::new(Server::Unix(path), None).expect("a client");
    let began = std::time::Instant::now();
    let err =
        client.call_empty(Method::GET, "/v1/health", Some(Duration::from_millis(200))).expect_err("silence");
    assert!(matches!(err, RemoteError::NoAnswer { .. }), "{err:?}");
    assert!(began.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_peer_that_answers_garbage_is_not_understood() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("garbage.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let peer = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut stream, _) = listener.accept().expect("accept");
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request);
        let body = "not json";
        let _ = write!(stream, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    });
    let client = Client::new(Server::Unix(path), None).expect("a client");
    let err = client
        .call::<RunResult>(
            Method::POST,
            "/v1/runs",
            Some(&RunRequest::default()),
            Some(Duration::from_secs(5)),
        )
        .expect_err("garbage");
    assert!(matches!(err, RemoteError::Protocol { .. }), "{err:?}");
    peer.join().expect("the peer");
}

/// A peer on a fresh socket that reads one request and writes `answer`
/// in pieces of `piece` bytes; the request it read comes back.
fn peer(answer: Vec<u8>, piece: usize) -> (Client, std::thread::JoinHandle<String>, tempfile::TempDir) {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("peer.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        // The head, then the body its content-length says.
        while !String::from_utf8_lossy(&request).contains("\r\n\r\n") {
            let n = stream.read(&mut buffer).expect("read");
            request.extend_from_slice(&buffer[..n]);
        }
        let text = String::from_utf8_lossy(&request).into_owned();
        let length = text
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length: ").map(|n| n.parse().unwrap_or(0))
            })
            .unwrap_or(0usize);
        let head = text.find("\r\n\r\n").map_or(0, |i| i + 4);
        while request.len() < head + length {
            let n = stream.read(&mut buffer).expect("read");
            request.extend_from_slice(&buffer[..n]);
        }
        for chunk in answer.chunks(piece) {
            let _ = stream.write_all(chunk).and_then(|()| stream.flush());
            std::thread::sleep(Duration::from_millis(1));
        }
        String::from_utf8_lossy(&request).into_owned()
    });
    let client = Client::new(Server::Unix(path), Some("t0ken".into())).expect("a client");
    (client, thread, dir)
}

/// A chunked NDJSON answer, as the service streams one.
fn streamed(lines: &[&str]) -> Vec<u8> {
    let mut answer =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for line in lines {
        let line = format!("{line}\n");
        answer.extend_from_slice(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes());
    }
    answer.extend_from_slice(b"0\r\n\r\n");
    answer
}

const RESULT_LINE: &str = r#"{"type":"result","result":{"stdout":"hi\n","stderr":"","exit_code":0,"timed_out":false,"stdout_truncated":false,"stderr_truncated":false,"peak_memory_bytes":0,"cpu_ms":0.0,"start":"pooled","boot_ms":0.0,"exec_ms":0.0,"total_ms":0.0,"kernel_ms":0.0,"init_ms":0.0,"accel":"tcg"}}"#;

#[test]
fn a_streamed_run_gives_its_output_in_order_then_its_result() {
    let answer = streamed(&[
        r#"{"type":"stdout","data":"aGkK"}"#,
        r#"{"type":"stderr","data":"AP8="}"#,
        r#"{"type":"progress"}"#,
        RESULT_LINE,
    ]);
    // Split every few bytes: lines and chunks cross.
    for piece in [1, 7, 4096] {
        let (client, thread, _dir) = peer(answer.clone(), piece);
        let request = RunRequest { code: "print('hi')".into(), ..RunRequest::default() };
        let mut seen = Vec::new();
        let result = client
            .run_streamed(&request, Some(Duration::from_secs(10)), |stream, data| {
                seen.push((stream, data.to_vec()))
            })
            .expect("a result");
        assert_eq!(seen, [(Stream::Stdout, b"hi\n".to_vec()), (Stream::Stderr, vec![0, 0xff])], "{piece}");
        assert_eq!((result.exit_code, result.stdout.as_str()), (0, "hi\n"));
        let sent = thread.join().expect("the peer");
        assert!(sent.starts_with("POST /v1/runs HTTP/1.1\r\n"), "{sent}");
        let sent = sent.to_ascii_lowercase();
        assert!(
            sent.contains("accept: application/x-ndjson") && sent.contains("authorization: bearer t0ken")
        );
        assert!(sent.contains(r#""code":"print('hi')""#), "{sent}");
    }
}

#[test]
fn a_streamed_error_is_the_service_refusal() {
    let answer = streamed(&[
        r#"{"type":"stdout","data":"aGkK"}"#,
        r#"{"type":"error","error":{"kind":"vm_lost","message":"the VM was lost mid-run: eof"}}"#,
    ]);
    let (client, thread, _dir) = peer(answer, 5);
    let err = client.run_streamed(&RunRequest::default(), None, |_, _| {}).expect_err("an error");
    assert_eq!(err.classify(), (EXIT_FAILURE, "vm_lost".to_owned()));
    assert_eq!(err.message(), "the VM was lost mid-run: eof");
    thread.join().expect("the peer");
}

#[test]
fn a_stream_cut_before_its_result_is_not_understood() {
    let mut answer = streamed(&[r#"{"type":"stdout","data":"aGkK"}"#]);
    answer.truncate(answer.len() - 5);
    let (client, thread, _dir) = peer(answer, 4096);
    let err = client.run_streamed(&RunRequest::default(), Some(Duration::from_secs(10)), |_, _| {});
    assert!(matches!(err, Err(RemoteError::Http { .. } | RemoteError::Protocol { .. })), "{err:?}");
    thread.join().expect("the peer");
}

#[test]
fn a_refusal_before_the_stream_keeps_its_status_and_retry_after() {
    let body = r#"{"error":{"kind":"busy","message":"every VM is busy"}}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 2\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let (client, thread, _dir) = peer(answer.into_bytes(), 4096);
    let err = client.run_streamed(&RunRequest::default(), None, |_, _| {}).expect_err("busy");
    let RemoteError::Refused(refusal) = &err else { panic!("{err:?}") };
    assert_eq!((refusal.status, refusal.retry_after, refusal.kind.as_str()), (Some(503), Some(2), "busy"));
    assert_eq!(err.message(), "the service is busy (retry after 2 s): every VM is busy");
    thread.join().expect("the peer");
}
