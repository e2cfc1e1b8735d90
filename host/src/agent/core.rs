//! The agent protocol without I/O, as sans-IO protocol libraries are
//! written: requests become frames, bytes become events, and what a job has
//! sent so far becomes its [`Outcome`]. Nothing here reads a socket or a
//! clock, so every piece is tested with plain bytes, and both transports
//! ([`super::Agent`], [`super::Shared`]) drive the same code.

use std::collections::VecDeque;
use std::time::Duration;

use proto::{Env, Event, Frame, FrameReader, Request, Run, Stream};

use super::types::{GuestEvent, Job, Outcome};
use crate::error::AgentError;

type Result<T, E = AgentError> = std::result::Result<T, E>;

/// The encoding side: ids, users and frames.
pub struct Encoder {
    next_job: u32,
    next_seq: u32,
    /// The user file operations act on (see [`Runner::files_user`](super::Runner::files_user)).
    files_user: Option<u32>,
    /// The next job without a user of its own takes `files_user`.
    files_first: bool,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder { next_job: 1, next_seq: 1, files_user: None, files_first: false }
    }
}

impl Encoder {
    /// A job id not used by this encoder before.
    pub fn job_id(&mut self) -> u32 {
        let id = self.next_job;
        self.next_job = self.next_job.wrapping_add(1).max(1);
        id
    }

    /// A ping or refresh sequence number not used before.
    pub fn seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }

    /// The user job `id` runs as: its own key, or the file operations'
    /// user if they came first, or its id (a key no other job has).
    pub fn user(&mut self, id: u32, job: &Job) -> u32 {
        if let Some(user) = job.user {
            return user;
        }
        let user = match (self.files_first, self.files_user) {
            (true, Some(user)) => user,
            _ => id,
        };
        self.files_first = false;
        self.files_user = Some(user);
        user
    }

    /// The user file operations act on (see
    /// [`Runner::files_user`](super::Runner::files_user)).
    pub fn files_user(&mut self) -> u32 {
        match self.files_user {
            Some(user) => user,
            None => self.new_user(),
        }
    }

    /// A user no job of this encoder had: file operations act on it from
    /// now on, and the next job without a user of its own takes it.
    pub fn new_user(&mut self) -> u32 {
        let user = self.job_id();
        self.files_user = Some(user);
        self.files_first = true;
        user
    }

    /// The ids after a caller chose `id` itself: never hand it out again.
    pub fn reserve(&mut self, id: u32) {
        if id >= self.next_job {
            self.next_job = id.wrapping_add(1).max(1);
        }
    }
}

/// One request as a frame.
pub fn frame(request: &Request<'_>) -> Result<Vec<u8>> {
    postcard::to_stdvec_cobs(request).map_err(AgentError::Encode)
}

/// A job's header and its code in chunks, as frames, the job running as
/// `user`; `stdin`: the caller feeds the job's stdin with `Request::Stdin`.
pub fn job_frames(id: u32, job: &Job, stdin: bool, user: u32) -> Result<Vec<u8>> {
    let mut env = heapless::Vec::new();
    for (name, value) in &job.env {
        env.push(Env { name, value })
            .map_err(|_| AgentError::InvalidJob(format!("env: more than {} variables", proto::MAX_ENV)))?;
    }
    let code_len = u32::try_from(job.code.len()).ok().filter(|&n| n <= proto::MAX_CODE).ok_or_else(|| {
        AgentError::InvalidJob(format!("code: {} bytes, more than {}", job.code.len(), proto::MAX_CODE))
    })?;
    let timeout_ms = job.timeout.map_or(0, |t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX).max(1));
    let run = Run {
        job: id,
        lang: job.lang,
        code_len,
        env,
        cwd: job.cwd.as_deref(),
        timeout_ms,
        stdout_limit: job.stdout_limit,
        stderr_limit: job.stderr_limit,
        fresh: job.fresh,
        stdin,
        memory_limit_mb: job.memory_limit_mb.unwrap_or(0),
        user: Some(user),
    };
    let mut frames = frame(&Request::Run(run))?;
    for chunk in job.code.chunks(proto::MAX_CHUNK) {
        frames.extend(frame(&Request::Code { job: id, data: chunk })?);
    }
    Ok(frames)
}

/// The decoding side: bytes from the guest, cut into events.
pub struct Decoder {
    reader: Box<FrameReader<{ proto::MAX_FRAME }>>,
    /// Bytes taken but not yet cut into frames.
    unread: VecDeque<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { reader: Box::new(FrameReader::new()), unread: VecDeque::new() }
    }
}

impl Decoder {
    /// Takes bytes as they were read.
    pub fn push(&mut self, bytes: &[u8]) {
        self.unread.extend(bytes);
    }

    /// The next whole event, if the bytes so far hold one. A frame that is
    /// oversize, corrupt or not an event is an error, and the stream goes on
    /// after it.
    pub fn next_event(&mut self) -> Option<Result<GuestEvent>> {
        while !self.unread.is_empty() {
            let (front, _) = self.unread.as_slices();
            let (used, frame) = self.reader.push(front);
            let event = match frame {
                Some(Frame::Message(bytes)) => {
                    Some(proto::decode::<Event<'_>>(bytes).map(GuestEvent::from).map_err(AgentError::Decode))
                }
                Some(Frame::Oversize) => Some(Err(AgentError::OversizeFrame)),
                Some(Frame::Corrupt) => Some(Err(AgentError::CorruptFrame)),
                None => None,
            };
            self.unread.drain(..used);
            if event.is_some() {
                return event;
            }
        }
        None
    }
}

/// What one job sent so far, made into its [`Outcome`] at its end.
#[derive(Default)]
pub struct Collector {
    pid: u32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Collector {
    /// Takes one of the job's events (output goes to `on_output` as well);
    /// its outcome once it exited, an error if the init refused it.
    pub fn take(
        &mut self,
        event: GuestEvent,
        on_output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<Option<Outcome>> {
        match event {
            GuestEvent::Started { pid, .. } => self.pid = pid,
            GuestEvent::Output { stream, data, .. } => {
                on_output(stream, &data);
                match stream {
                    Stream::Stdout => self.stdout.extend_from_slice(&data),
                    Stream::Stderr => self.stderr.extend_from_slice(&data),
                }
            }
            GuestEvent::Exited(e) => {
                return Ok(Some(Outcome {
                    pid: self.pid,
                    exit: e.exit,
                    timed_out: e.timed_out,
                    stdout: std::mem::take(&mut self.stdout),
                    stderr: std::mem::take(&mut self.stderr),
                    stdout_truncated: e.stdout_truncated,
                    stderr_truncated: e.stderr_truncated,
                    duration: Duration::from_micros(e.duration_us),
                    peak_memory: e.peak_memory,
                    cpu_time: Duration::from_micros(e.cpu_us),
                }));
            }
            GuestEvent::Error { kind, message, .. } => return Err(AgentError::Refused { kind, message }),
            GuestEvent::Ready { .. } | GuestEvent::Pong { .. } | GuestEvent::StdinTaken { .. } => {}
        }
        Ok(None)
    }
}

/// A job's stdin on its way: never more than `STDIN_WINDOW` bytes sent
/// and not yet taken by the init.
pub struct StdinFeed {
    window: usize,
    pending: Vec<u8>,
    input_ended: bool,
    sent_end: bool,
}

impl Default for StdinFeed {
    fn default() -> Self {
        StdinFeed {
            window: proto::STDIN_WINDOW as usize,
            pending: Vec::new(),
            input_ended: false,
            sent_end: false,
        }
    }
}

impl StdinFeed {
    /// It has room for more input and holds none.
    pub fn wants_input(&self) -> bool {
        !self.sent_end && self.window > 0 && self.pending.is_empty() && !self.input_ended
    }

    /// The next piece of input.
    pub fn give(&mut self, chunk: Vec<u8>) {
        self.pending.extend(chunk);
    }

    /// The input has ended (or failed): end of file follows what is held.
    pub fn end_input(&mut self) {
        self.input_ended = true;
    }

    /// The next `Stdin` request's data and `end`, if the window allows one.
    pub fn next_piece(&mut self) -> Option<(Vec<u8>, bool)> {
        if self.sent_end || self.window == 0 || (self.pending.is_empty() && !self.input_ended) {
            return None;
        }
        let n = self.pending.len().min(self.window).min(proto::MAX_CHUNK);
        let end = self.input_ended && n == self.pending.len();
        let data: Vec<u8> = self.pending.drain(..n).collect();
        self.window -= n;
        self.sent_end = end;
        Some((data, end))
    }

    /// The init took `bytes` of what was sent.
    pub fn taken(&mut self, bytes: u32) {
        self.window += bytes as usize;
    }

    /// End of file was sent.
    pub fn ended(&self) -> bool {
        self.sent_end
    }

    /// The feed waits for its input, with room to send it.
    pub fn waiting_on_input(&self) -> bool {
        !self.sent_end && self.window > 0
    }
}

#[cfg(test)]
mod tests {
    use proto::{ErrorKind, Exit, Exited, Lang};

    use super::*;

    fn exited(job: u32, code: u8) -> GuestEvent {
        GuestEvent::Exited(Exited {
            job,
            exit: Exit::Code(code),
            timed_out: false,
            stdout_truncated: false,
            stderr_truncated: false,
            duration_us: 1500,
            peak_memory: 4096,
            cpu_us: 700,
        })
    }

    fn output(job: u32, stream: Stream, data: &[u8]) -> GuestEvent {
        GuestEvent::Output { job, stream, data: data.to_vec() }
    }

    /// An event as the init sends it: postcard in a COBS frame.
    fn wire(event: &Event<'_>) -> Vec<u8> {
        postcard::to_stdvec_cobs(event).unwrap()
    }

    #[test]
    fn a_job_becomes_one_header_and_its_code_in_chunks() {
        let code = vec![b'x'; proto::MAX_CHUNK + 10];
        let mut job = Job::python(code.clone());
        job.env.push(("A".into(), "1".into()));
        let frames = job_frames(7, &job, false, 7).unwrap();
        let parts: Vec<&[u8]> = frames.split_inclusive(|&b| b == 0).collect();
        assert_eq!(parts.len(), 3, "a header and two chunks");
        let mut header = parts[0].to_vec();
        let Request::Run(run) = postcard::from_bytes_cobs::<Request<'_>>(&mut header).unwrap() else {
            panic!("not a Run")
        };
        assert_eq!(
            (run.job, run.lang, run.code_len, run.timeout_ms),
            (7, Lang::Python, u32::try_from(code.len()).unwrap(), 30_000)
        );
        assert_eq!((run.env[0].name, run.env[0].value, run.stdin), ("A", "1", false));
        let mut sent = Vec::new();
        for part in &parts[1..] {
            let mut part = part.to_vec();
            let Request::Code { job, data } = postcard::from_bytes_cobs::<Request<'_>>(&mut part).unwrap()
            else {
                panic!("not Code")
            };
            assert_eq!(job, 7);
            sent.extend_from_slice(data);
        }
        assert_eq!(sent, code);
    }

    #[test]
    fn no_timeout_is_zero_and_a_tiny_one_is_not() {
        let mut job = Job::shell("true");
        job.timeout = None;
        let mut frames = job_frames(1, &job, true, 1).unwrap();
        let end = frames.iter().position(|&b| b == 0).unwrap() + 1;
        let Request::Run(run) = postcard::from_bytes_cobs::<Request<'_>>(&mut frames[..end]).unwrap() else {
            panic!()
        };
        assert_eq!((run.timeout_ms, run.stdin), (0, true));
        job.timeout = Some(Duration::from_micros(10));
        let mut frames = job_frames(1, &job, false, 1).unwrap();
        let end = frames.iter().position(|&b| b == 0).unwrap() + 1;
        let Request::Run(run) = postcard::from_bytes_cobs::<Request<'_>>(&mut frames[..end]).unwrap() else {
            panic!()
        };
        assert_eq!(run.timeout_ms, 1, "a deadline below a millisecond still is one");
    }

    #[test]
    fn too_many_variables_or_too_much_code_are_refused_before_sending() {
        let mut job = Job::shell("true");
        job.env = (0..=proto::MAX_ENV).map(|i| (format!("V{i}"), String::new())).collect();
        assert!(
            matches!(job_frames(1, &job, false, 1), Err(AgentError::InvalidJob(why)) if why.starts_with("env"))
        );
        let job = Job::shell(vec![b' '; proto::MAX_CODE as usize + 1]);
        assert!(
            matches!(job_frames(1, &job, false, 1), Err(AgentError::InvalidJob(why)) if why.starts_with("code"))
        );
    }

    #[test]
    fn ids_are_fresh_and_skip_what_a_caller_chose() {
        let mut encoder = Encoder::default();
        assert_eq!((encoder.job_id(), encoder.job_id()), (1, 2));
        encoder.reserve(10);
        assert_eq!(encoder.job_id(), 11);
        encoder.reserve(3);
        assert_eq!(encoder.job_id(), 12);
        assert_eq!((encoder.seq(), encoder.seq()), (1, 2));
    }

    #[test]
    fn events_come_whole_from_bytes_in_one_byte_pieces() {
        let mut bytes = wire(&Event::Started { job: 3, pid: 40 });
        bytes.extend(wire(&Event::Output { job: 3, stream: Stream::Stderr, data: b"oops" }));
        let mut decoder = Decoder::default();
        let mut events = Vec::new();
        for byte in &bytes {
            decoder.push(std::slice::from_ref(byte));
            while let Some(event) = decoder.next_event() {
                events.push(event.unwrap());
            }
        }
        assert_eq!(events, [GuestEvent::Started { job: 3, pid: 40 }, output(3, Stream::Stderr, b"oops")]);
    }

    #[test]
    fn a_bad_frame_is_an_error_and_the_stream_goes_on() {
        let mut decoder = Decoder::default();
        // A frame whose tag is no event, then a corrupt COBS frame, then a good one.
        decoder.push(&[0x02, 0x63, 0x00]);
        decoder.push(&[0x05, 0x01, 0x00]);
        decoder.push(&wire(&Event::Pong { seq: 9, stats: Default::default() }));
        assert!(matches!(decoder.next_event(), Some(Err(AgentError::Decode(_)))));
        assert!(matches!(decoder.next_event(), Some(Err(AgentError::CorruptFrame))));
        assert!(matches!(decoder.next_event(), Some(Ok(GuestEvent::Pong { seq: 9, .. }))));
        assert!(decoder.next_event().is_none());
    }

    #[test]
    fn an_oversize_frame_is_reported_once() {
        let mut decoder = Decoder::default();
        decoder.push(&vec![1u8; proto::MAX_FRAME + 10]);
        decoder.push(&[0]);
        assert!(matches!(decoder.next_event(), Some(Err(AgentError::OversizeFrame))));
        assert!(decoder.next_event().is_none());
    }

    #[test]
    fn a_collector_gathers_streams_and_ends_with_the_exit() {
        let mut collector = Collector::default();
        let mut seen = Vec::new();
        let mut on_output = |stream: Stream, data: &[u8]| seen.push((stream, data.to_vec()));
        let steps = [
            GuestEvent::Started { job: 1, pid: 77 },
            output(1, Stream::Stdout, b"a"),
            output(1, Stream::Stderr, b"b"),
            output(1, Stream::Stdout, b"c"),
        ];
        for event in steps {
            assert!(collector.take(event, &mut on_output).unwrap().is_none());
        }
        let outcome = collector.take(exited(1, 3), &mut on_output).unwrap().unwrap();
        assert_eq!(
            (outcome.pid, outcome.code(), &outcome.stdout[..], &outcome.stderr[..]),
            (77, 3, &b"ac"[..], &b"b"[..])
        );
        assert_eq!(
            (outcome.duration, outcome.cpu_time, outcome.peak_memory),
            (Duration::from_micros(1500), Duration::from_micros(700), 4096)
        );
        assert_eq!(seen.len(), 3, "every chunk went to the callback, in order");
        assert_eq!(seen[1], (Stream::Stderr, b"b".to_vec()));
    }

    #[test]
    fn a_refusal_is_the_init_s_words() {
        let mut collector = Collector::default();
        let refusal =
            GuestEvent::Error { job: Some(1), kind: ErrorKind::InvalidJob, message: "env: bad name".into() };
        match collector.take(refusal, &mut |_, _| {}) {
            Err(AgentError::Refused { kind: ErrorKind::InvalidJob, message }) => {
                assert_eq!(message, "env: bad name")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stdin_never_runs_more_than_a_window_ahead() {
        let mut feed = StdinFeed::default();
        let window = proto::STDIN_WINDOW as usize;
        assert!(feed.wants_input());
        feed.give(vec![7; window + 100]);
        let mut sent = 0;
        while let Some((data, end)) = feed.next_piece() {
            assert!(!end && data.len() <= proto::MAX_CHUNK);
            sent += data.len();
        }
        assert_eq!(sent, window, "stops at the window");
        assert!(!feed.waiting_on_input());
        feed.taken(50);
        let (data, end) = feed.next_piece().unwrap();
        assert_eq!((data.len(), end), (50, false));
        feed.end_input();
        feed.taken(100);
        let (data, end) = feed.next_piece().unwrap();
        assert_eq!((data.len(), end), (50, true), "the rest, then end of file");
        assert!(feed.ended() && feed.next_piece().is_none());
    }

    #[test]
    fn empty_stdin_is_one_end_of_file() {
        let mut feed = StdinFeed::default();
        assert!(feed.next_piece().is_none(), "nothing to say before the input ends");
        feed.end_input();
        assert_eq!(feed.next_piece(), Some((Vec::new(), true)));
        assert_eq!(feed.next_piece(), None);
    }
}
