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

/// Decodes into a message that owns its borrowed fields (leaked; tests
/// only), with postcard and with the init's own decoder, which must agree.
fn request(bytes: &[u8]) -> Request<'static> {
    let bytes = Box::leak(bytes.to_vec().into_boxed_slice());
    let request: Request<'static> = postcard::from_bytes(bytes).unwrap();
    assert_eq!(wire::decode_request(bytes), Ok(request.clone()), "the init's decoding");
    request
}

/// Decodes with postcard; the init's own encoding of the event must be
/// the same frame.
fn event(bytes: &[u8]) -> Event<'static> {
    let event: Event<'static> = postcard::from_bytes(Box::leak(bytes.to_vec().into_boxed_slice())).unwrap();
    let mut ours = [0u8; 256];
    let len = wire::encode_event(&event, &mut ours).expect("fits");
    assert_eq!(
        &ours[..len],
        postcard::to_slice_cobs(&event, &mut [0u8; 256]).unwrap(),
        "the init's encoding"
    );
    event
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
        user: None,
    });
    let frame = [
        0x01, 0x02, 0x01, 0x07, 0x0c, 0x01, 0x01, 0x41, 0x01, 0x31, 0x09, 0x88, 0x27, 0x80, 0x80, 0x40, 0x80,
        0x80, 0x40, 0x01, 0x01, 0x01, 0x01, 0x00,
    ];
    golden(&msg, &frame, request);
}

#[test]
fn run_in_a_named_user() {
    let msg = Request::Run(Run {
        job: 2,
        lang: Lang::Shell,
        code_len: 3,
        env: heapless::Vec::new(),
        cwd: None,
        timeout_ms: 0,
        stdout_limit: 0,
        stderr_limit: 0,
        fresh: false,
        stdin: false,
        memory_limit_mb: 0,
        user: Some(300),
    });
    let frame = [
        0x01, 0x04, 0x02, 0x01, 0x03, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x04, 0x01, 0xac, 0x02, 0x00,
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
    let bytes = [0x00, 0x01, 0x09, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00];
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

/// The init's encoder against postcard's on the cases COBS and the
/// varints have edges at: runs of 253 to 255 non-zero bytes, at the
/// message's end and not, zeros anywhere, every variant, the largest
/// values; and a buffer one byte short of the frame.
#[test]
fn the_init_encodes_as_postcard_does() {
    let mut events = vec![
        Event::Ready { version: u16::MAX, start_ns: u64::MAX, ready_ns: 0 },
        Event::Started { job: u32::MAX, pid: 127 },
        Event::StdinTaken { job: 128, bytes: 16_384 },
        Event::Error { job: Some(0), kind: ErrorKind::Refresh, message: "" },
        Event::Error { job: None, kind: ErrorKind::Malformed, message: "refresh: not in a VM" },
        Event::Pong {
            seq: 1 << 28,
            stats: Stats { jobs_active: 16, jobs_started: 1, orphans_reaped: 0, zygote: true },
        },
        Event::Exited(Exited {
            job: 3,
            exit: Exit::Signal(9),
            timed_out: true,
            stdout_truncated: false,
            stderr_truncated: true,
            duration_us: 1 << 35,
            peak_memory: u64::MAX - 1,
            cpu_us: 0,
        }),
    ];
    let datas: Vec<Vec<u8>> = [0usize, 1, 200, 249, 250, 251, 252, 253, 254, 255, 508, 509, 1000, 32_768]
        .into_iter()
        .flat_map(|n| {
            let ones = vec![1u8; n];
            let mut zeros = vec![0x7fu8; n];
            zeros.iter_mut().step_by(97).for_each(|b| *b = 0);
            [ones, zeros]
        })
        .collect();
    // Pseudo-random bytes of every length up to 1100, zeros from none to
    // one in two, and a run of exactly 254 non-zero bytes before a zero.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut randoms: Vec<Vec<u8>> = (0..1100usize)
        .map(|len| {
            (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let byte = seed.to_le_bytes()[3];
                    if (seed >> 40).is_multiple_of(len as u64 % 7 + 2) { 0 } else { byte | 1 }
                })
                .collect()
        })
        .collect();
    randoms.push([vec![1u8; 254], vec![0], vec![1u8; 10]].concat());
    for data in datas.iter().chain(&randoms) {
        events.push(Event::Output { job: 1, stream: Stream::Stderr, data });
    }
    for event in &events {
        let mut want = vec![0u8; 40_000];
        let want = postcard::to_slice_cobs(event, &mut want).unwrap().to_vec();
        let mut ours = vec![0u8; 40_000];
        let len = wire::encode_event(event, &mut ours).unwrap();
        assert_eq!(ours[..len], want[..], "{event:?}");
        assert_eq!(wire::encode_event(event, &mut ours[..want.len() - 1]), None, "a buffer too short");
    }
}

/// The init's decoder refuses what postcard refuses: bad varints, bools and
/// options, lengths past the end, invalid UTF-8, more than MAX_ENV
/// variables, unknown tags.
#[test]
fn the_init_refuses_as_postcard_does() {
    let cases: [&[u8]; 12] = [
        &[],
        &[7],
        &[0x80, 0x80, 0x80, 0x80, 0x10],
        &[3, 0x80, 0x80, 0x80, 0x80, 0x0f],
        &[3, 0x80, 0x80, 0x80, 0x80, 0x10],
        &[6, 1, 0, 2],
        &[1, 1, 5, b'a'],
        &[0, 1, 0, 1, 1, 1, 0xff, 1, b'x', 0],
        &[0, 1, 0, 1, 65],
        &[0, 1, 0, 1, 0, 2],
        &[5, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0],
        &[5, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0],
    ];
    for bytes in cases {
        let theirs = postcard::from_bytes::<Request<'_>>(bytes).ok();
        assert_eq!(wire::decode_request(bytes).ok(), theirs, "{bytes:02x?}");
    }
    // Both kinds happen above: the comparison is not vacuous.
    assert!(wire::decode_request(&[3, 0x80, 0x80, 0x80, 0x80, 0x0f]).is_ok());
    assert!(wire::decode_request(&[3, 0x80, 0x80, 0x80, 0x80, 0x10]).is_err());
}
