//! Golden vectors: every message's exact bytes, as documented in PROTOCOL.md.
//! A failure here means the wire changed: bump `VERSION` and update the spec.

use proto::*;

/// Checks that `msg` encodes to `frame` (delimiter included) and that the
/// frame decodes back to `msg`.
fn golden<T>(msg: &T, frame: &[u8], decode: impl Fn(&[u8]) -> T)
where
    T: serde::Serialize + PartialEq + core::fmt::Debug,
{
    let mut buf = [0u8; 256];
    assert_eq!(encode(msg, &mut buf).unwrap(), frame, "encoding of {msg:?}");
    let mut reader = FrameReader::<256>::new();
    let (used, got) = reader.push(frame);
    assert_eq!(used, frame.len());
    let Some(Frame::Message(bytes)) = got else { panic!("no frame for {msg:?}: {got:?}") };
    assert_eq!(&decode(bytes), msg);
}

/// Decodes into a message that owns its borrowed fields (leaked; tests only).
fn request(bytes: &[u8]) -> Request<'static> {
    postcard::from_bytes(Box::leak(bytes.to_vec().into_boxed_slice())).unwrap()
}

fn event(bytes: &[u8]) -> Event<'static> {
    postcard::from_bytes(Box::leak(bytes.to_vec().into_boxed_slice())).unwrap()
}

#[test]
fn run() {
    let mut env = heapless::Vec::new();
    env.push(Env { name: "A", value: "1" }).unwrap();
    let msg = Request::Run(Run {
        job: 1,
        lang: Lang::Python,
        code_len: 12,
        env,
        cwd: None,
        timeout_ms: 5000,
        stdout_limit: 1 << 20,
        stderr_limit: 1 << 20,
        fresh: false,
        stdin: false,
        memory_limit_mb: 0,
    });
    let frame = [
        0x01, 0x02, 0x01, 0x07, 0x0c, 0x01, 0x01, 0x41, 0x01, 0x31, 0x09, 0x88, 0x27, 0x80, 0x80, 0x40, 0x80,
        0x80, 0x40, 0x01, 0x01, 0x01, 0x00,
    ];
    golden(&msg, &frame, request);
}

#[test]
fn code() {
    let msg = Request::Code { job: 1, data: b"print('hi')\n" };
    let frame = [
        0x10, 0x01, 0x01, 0x0c, 0x70, 0x72, 0x69, 0x6e, 0x74, 0x28, 0x27, 0x68, 0x69, 0x27, 0x29, 0x0a, 0x00,
    ];
    golden(&msg, &frame, request);
}

#[test]
fn signal_ping_shutdown() {
    golden(&Request::Signal { job: 1, signal: 9 }, &[0x04, 0x02, 0x01, 0x09, 0x00], request);
    golden(&Request::Ping { seq: 7 }, &[0x03, 0x03, 0x07, 0x00], request);
    golden(&Request::Shutdown, &[0x02, 0x04, 0x00], request);
}

#[test]
fn refresh() {
    let msg = Request::Refresh { seq: 1, realtime_ns: 1_700_000_000_000_000_000, entropy: &[1, 2, 3, 4] };
    let frame = [
        0x11, 0x05, 0x01, 0x80, 0x80, 0xa8, 0xb1, 0xe3, 0x9f, 0xe7, 0xcb, 0x17, 0x04, 0x01, 0x02, 0x03, 0x04,
        0x00,
    ];
    golden(&msg, &frame, request);
}

#[test]
fn stdin_and_its_acknowledgement() {
    let msg = Request::Stdin { job: 1, data: b"hi\n", end: true };
    golden(&msg, &[0x08, 0x06, 0x01, 0x03, 0x68, 0x69, 0x0a, 0x01, 0x00], request);
    let msg = Event::StdinTaken { job: 1, bytes: 65536 };
    golden(&msg, &[0x06, 0x06, 0x01, 0x80, 0x80, 0x04, 0x00], event);
}

#[test]
fn unknown_language_survives_decoding() {
    // Tag 0 (Run), job 1, language 9: the init must be able to name the field.
    let bytes = [0x00, 0x01, 0x09, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00];
    let Request::Run(run) = request(&bytes) else { panic!("not a Run") };
    assert_eq!(run.lang, Lang::Unknown(9));
}

#[test]
fn ready() {
    let msg = Event::Ready { version: 1, start_ns: 850_000_000, ready_ns: 852_000_000 };
    let frame = [0x01, 0x0c, 0x01, 0x80, 0xf1, 0xa7, 0x95, 0x03, 0x80, 0xfa, 0xa1, 0x96, 0x03, 0x00];
    golden(&msg, &frame, event);
}

#[test]
fn started_and_output() {
    golden(&Event::Started { job: 1, pid: 42 }, &[0x04, 0x01, 0x01, 0x2a, 0x00], event);
    let msg = Event::Output { job: 1, stream: Stream::Stdout, data: b"hi\n" };
    golden(&msg, &[0x03, 0x02, 0x01, 0x05, 0x03, 0x68, 0x69, 0x0a, 0x00], event);
}

#[test]
fn exited() {
    let msg = Event::Exited(Exited {
        job: 1,
        exit: Exit::Code(0),
        timed_out: false,
        stdout_truncated: false,
        stderr_truncated: false,
        duration_us: 300_000,
        peak_memory: 10 << 20,
        cpu_us: 250_000,
    });
    let frame = [
        0x03, 0x03, 0x01, 0x01, 0x01, 0x01, 0x01, 0x0b, 0xe0, 0xa7, 0x12, 0x80, 0x80, 0x80, 0x05, 0x90, 0xa1,
        0x0f, 0x00,
    ];
    golden(&msg, &frame, event);

    let msg = Event::Exited(Exited {
        job: 2,
        exit: Exit::Signal(9),
        timed_out: true,
        stdout_truncated: false,
        stderr_truncated: true,
        duration_us: 5,
        peak_memory: 0,
        cpu_us: 0,
    });
    let frame = [0x06, 0x03, 0x02, 0x01, 0x09, 0x01, 0x03, 0x01, 0x05, 0x01, 0x01, 0x00];
    golden(&msg, &frame, event);
    assert_eq!(Exit::Signal(9).code(), 137);
    assert_eq!(Exit::Code(3).code(), 3);
}

#[test]
fn error_and_pong() {
    let msg = Event::Error { job: Some(3), kind: ErrorKind::InvalidJob, message: "code: empty" };
    let frame = [
        0x11, 0x04, 0x01, 0x03, 0x03, 0x0b, 0x63, 0x6f, 0x64, 0x65, 0x3a, 0x20, 0x65, 0x6d, 0x70, 0x74, 0x79,
        0x00,
    ];
    golden(&msg, &frame, event);
    let stats = Stats { jobs_active: 0, jobs_started: 2, orphans_reaped: 50, zygote: true };
    golden(&Event::Pong { seq: 7, stats }, &[0x03, 0x05, 0x07, 0x04, 0x02, 0x32, 0x01, 0x00], event);
}

#[test]
fn largest_chunks_fit_a_frame() {
    let data = [0u8; MAX_CHUNK];
    let mut buf = vec![0u8; MAX_FRAME];
    let msg = Event::Output { job: u32::MAX, stream: Stream::Stderr, data: &data };
    assert!(encode(&msg, &mut buf).is_ok());
    let msg = Request::Code { job: u32::MAX, data: &data };
    assert!(encode(&msg, &mut buf).is_ok());
}
