//! The host end of the wire: sends requests to an init and reads its events,
//! over any stream (a VM's agent socket, or a test's socketpair).

use std::collections::VecDeque;
use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::Duration;

use proto::{Env, ErrorKind, Event, Exit, Exited, Frame, FrameReader, Lang, Request, Run, Stats, Stream};

use crate::error::AgentError;

type Result<T> = std::result::Result<T, AgentError>;

/// One job, as a caller describes it.
#[derive(Debug, Clone)]
pub struct Job {
    pub lang: Lang,
    pub code: Vec<u8>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    /// `None`: no deadline.
    pub timeout: Option<Duration>,
    pub stdout_limit: u32,
    pub stderr_limit: u32,
    /// Python: exec a fresh `python3` rather than fork the warm zygote.
    pub fresh: bool,
    /// The job's stdin; `None`: `/dev/null`. To stream it from a reader,
    /// use [`Agent::run_with_input`].
    pub stdin: Option<Vec<u8>>,
    /// Memory all the job's processes may use together, in MiB; `None`:
    /// the guest's default (three quarters of its memory). Past it, the
    /// job is OOM-killed, its neighbours are not.
    pub memory_limit_mb: Option<u32>,
}

impl Job {
    pub fn new(lang: Lang, code: impl Into<Vec<u8>>) -> Self {
        Job {
            lang,
            code: code.into(),
            env: Vec::new(),
            cwd: None,
            timeout: Some(Duration::from_secs(30)),
            stdout_limit: proto::DEFAULT_OUTPUT_LIMIT,
            stderr_limit: proto::DEFAULT_OUTPUT_LIMIT,
            fresh: false,
            stdin: None,
            memory_limit_mb: None,
        }
    }

    pub fn python(code: impl Into<Vec<u8>>) -> Self {
        Self::new(Lang::Python, code)
    }

    pub fn shell(code: impl Into<Vec<u8>>) -> Self {
        Self::new(Lang::Shell, code)
    }
}

/// An event from the init, owning its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEvent {
    Ready { version: u16, start_ns: u64, ready_ns: u64 },
    Started { job: u32, pid: u32 },
    Output { job: u32, stream: Stream, data: Vec<u8> },
    Exited(Exited),
    Error { job: Option<u32>, kind: ErrorKind, message: String },
    Pong { seq: u32, stats: Stats },
    StdinTaken { job: u32, bytes: u32 },
}

impl From<Event<'_>> for GuestEvent {
    fn from(event: Event<'_>) -> Self {
        match event {
            Event::Ready { version, start_ns, ready_ns } => GuestEvent::Ready { version, start_ns, ready_ns },
            Event::Started { job, pid } => GuestEvent::Started { job, pid },
            Event::Output { job, stream, data } => GuestEvent::Output { job, stream, data: data.to_vec() },
            Event::Exited(exited) => GuestEvent::Exited(exited),
            Event::Error { job, kind, message } => {
                GuestEvent::Error { job, kind, message: message.to_owned() }
            }
            Event::Pong { seq, stats } => GuestEvent::Pong { seq, stats },
            Event::StdinTaken { job, bytes } => GuestEvent::StdinTaken { job, bytes },
        }
    }
}

/// What a finished job left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub pid: u32,
    pub exit: Exit,
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// From fork to the end of the job, measured in the guest.
    pub duration: Duration,
    /// Most memory the job's processes used at once, in bytes; 0 where the
    /// guest has no cgroups (the init outside a VM).
    pub peak_memory: u64,
    /// CPU time of all the job's processes (zero without cgroups).
    pub cpu_time: Duration,
}

impl Outcome {
    /// The shell's convention: the exit code, or 128 + signal.
    pub fn code(&self) -> i32 {
        self.exit.code()
    }
}

/// A connection to one init.
pub struct Agent {
    stream: UnixStream,
    reader: Box<FrameReader<{ proto::MAX_FRAME }>>,
    buf: Vec<u8>,
    /// Bytes read but not yet cut into frames.
    unread: VecDeque<u8>,
    /// Events read while waiting for something else.
    backlog: VecDeque<GuestEvent>,
    next_job: u32,
    next_seq: u32,
    timeout: Option<Duration>,
    /// A job that ended before all its stdin was sent.
    stale_stdin: Option<u32>,
}

impl Agent {
    pub fn new(stream: UnixStream) -> Self {
        Agent {
            stream,
            reader: Box::new(FrameReader::new()),
            buf: vec![0; proto::MAX_FRAME],
            unread: VecDeque::new(),
            backlog: VecDeque::new(),
            next_job: 1,
            next_seq: 1,
            timeout: None,
            stale_stdin: None,
        }
    }

    /// How long any one read may wait; `None` waits forever.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.stream.set_read_timeout(timeout).map_err(AgentError::SetTimeout)?;
        self.timeout = timeout;
        Ok(())
    }

    /// Waits for `Ready` and checks the protocol version.
    pub fn wait_ready(&mut self) -> Result<(u64, u64)> {
        loop {
            if let GuestEvent::Ready { version, start_ns, ready_ns } = self.next_event()? {
                if version != proto::VERSION {
                    return Err(AgentError::Version { guest: version, host: proto::VERSION });
                }
                return Ok((start_ns, ready_ns));
            }
        }
    }

    /// Sends raw bytes (tests of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).map_err(AgentError::Send)?;
        Ok(())
    }

    pub fn send(&mut self, request: &Request<'_>) -> Result<()> {
        let frame = postcard::to_stdvec_cobs(request).map_err(AgentError::Encode)?;
        self.send_raw(&frame)
    }

    /// Sends a job (its header, then its code in chunks) without waiting;
    /// returns its id.
    pub fn submit(&mut self, job: &Job) -> Result<u32> {
        let id = self.next_job;
        self.next_job += 1;
        self.submit_as(id, job)?;
        Ok(id)
    }

    /// [`Agent::submit`] with a caller-chosen id.
    pub fn submit_as(&mut self, id: u32, job: &Job) -> Result<()> {
        self.submit_with(id, job, job.stdin.is_some())
    }

    /// Submits a job whose stdin the caller streams with `Request::Stdin`.
    pub(crate) fn submit_streaming(&mut self, job: &Job) -> Result<u32> {
        let id = self.next_job;
        self.next_job += 1;
        self.submit_with(id, job, true)?;
        Ok(id)
    }

    fn submit_with(&mut self, id: u32, job: &Job, stdin: bool) -> Result<()> {
        let mut env = heapless::Vec::new();
        for (name, value) in &job.env {
            env.push(Env { name, value }).map_err(|_| {
                AgentError::InvalidJob(format!("env: more than {} variables", proto::MAX_ENV))
            })?;
        }
        let code_len =
            u32::try_from(job.code.len()).ok().filter(|&n| n <= proto::MAX_CODE).ok_or_else(|| {
                AgentError::InvalidJob(format!(
                    "code: {} bytes, more than {}",
                    job.code.len(),
                    proto::MAX_CODE
                ))
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
        };
        let mut frames = postcard::to_stdvec_cobs(&Request::Run(run)).map_err(AgentError::Encode)?;
        for chunk in job.code.chunks(proto::MAX_CHUNK) {
            let code = Request::Code { job: id, data: chunk };
            frames.extend(postcard::to_stdvec_cobs(&code).map_err(AgentError::Encode)?);
        }
        self.send_raw(&frames)
    }

    /// Runs a job to its end, passing output to `on_output` as it arrives.
    pub fn run(&mut self, job: &Job, mut on_output: impl FnMut(Stream, &[u8])) -> Result<Outcome> {
        let id = self.submit(job)?;
        match &job.stdin {
            Some(bytes) => self.feed_job(id, &mut Input::Bytes(bytes, 0), &mut on_output),
            None => self.wait_job(id, &mut on_output),
        }
    }

    /// [`Agent::run`] with the job's stdin streamed from `input` (read on a
    /// thread of its own, so that a source that blocks, like a terminal,
    /// never holds up the job's output) until its end of file.
    pub fn run_with_input(
        &mut self,
        job: &Job,
        input: impl Read + Send + 'static,
        mut on_output: impl FnMut(Stream, &[u8]),
    ) -> Result<Outcome> {
        let id = self.submit_streaming(job)?;
        let (chunks, rx) = mpsc::sync_channel(2);
        std::thread::spawn(move || {
            let mut input = input;
            loop {
                let mut chunk = vec![0; proto::MAX_CHUNK];
                let read = match input.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => Ok(chunk[..n].to_vec()),
                    Err(e) if e.kind() == IoKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let failed = read.is_err();
                // The job ended: no one takes the rest.
                if chunks.send(read).is_err() || failed {
                    break;
                }
            }
        });
        self.feed_job(id, &mut Input::Reader(rx), &mut on_output)
    }

    /// Waits for a job as [`Agent::wait_job`] does, sending its stdin as
    /// the init takes it: never more than `STDIN_WINDOW` bytes ahead.
    fn feed_job(
        &mut self,
        id: u32,
        input: &mut Input<'_>,
        on_output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<Outcome> {
        let mut window = proto::STDIN_WINDOW as usize;
        let mut pending: Vec<u8> = Vec::new();
        let mut read_all = false;
        let mut sent_end = false;
        let mut input_error = None;
        let mut collected = Collected::default();
        loop {
            while !sent_end && window > 0 {
                if pending.is_empty() && !read_all {
                    match input.next() {
                        Next::Chunk(chunk) => pending = chunk,
                        Next::Pending => break,
                        Next::End => read_all = true,
                        Next::Failed(e) => {
                            input_error = Some(e);
                            read_all = true;
                        }
                    }
                }
                let n = pending.len().min(window).min(proto::MAX_CHUNK);
                let end = read_all && n == pending.len();
                self.send(&Request::Stdin { job: id, data: &pending[..n], end })?;
                pending.drain(..n);
                window -= n;
                sent_end = end;
            }
            // Waiting on the input: look back at it now and then.
            let waiting_on_input = !sent_end && window > 0;
            let event = if waiting_on_input {
                match self.event_within(id, Duration::from_millis(10))? {
                    Some(event) => event,
                    None => continue,
                }
            } else {
                self.next_event_for(|e| event_job(e) == Some(id))?
            };
            if let GuestEvent::StdinTaken { bytes, .. } = event {
                window += bytes as usize;
            } else if let Some(outcome) = collected.take(event, on_output)? {
                if !sent_end {
                    // The init refuses what still comes for a job it has
                    // finished; those answers are not for anyone.
                    self.stale_stdin = Some(id);
                }
                return match input_error {
                    Some(e) => Err(AgentError::Input(e)),
                    None => Ok(outcome),
                };
            }
        }
    }

    /// The next event of job `id`, if one comes within `wait`.
    pub(crate) fn event_within(&mut self, id: u32, wait: Duration) -> Result<Option<GuestEvent>> {
        if let Some(i) = self.backlog.iter().position(|e| event_job(e) == Some(id)) {
            return Ok(self.backlog.remove(i));
        }
        self.stream.set_read_timeout(Some(wait)).map_err(AgentError::SetTimeout)?;
        let event = self.read_event();
        self.stream.set_read_timeout(self.timeout).map_err(AgentError::SetTimeout)?;
        match event {
            Ok(event) if event_job(&event) == Some(id) => Ok(Some(event)),
            Ok(event) => {
                self.backlog.push_back(event);
                Ok(None)
            }
            Err(AgentError::Timeout(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Collects a submitted job's events until it exits or is refused.
    /// Events of other jobs stay queued for their own `wait_job`.
    pub fn wait_job(&mut self, id: u32, on_output: &mut dyn FnMut(Stream, &[u8])) -> Result<Outcome> {
        let mut collected = Collected::default();
        loop {
            let event = self.next_event_for(|e| event_job(e) == Some(id))?;
            if let Some(outcome) = collected.take(event, on_output)? {
                return Ok(outcome);
            }
        }
    }

    /// Sends a signal to a running job's process group.
    pub fn signal(&mut self, job: u32, signal: u8) -> Result<()> {
        self.send(&Request::Signal { job, signal })
    }

    /// Round trip: the init's counters.
    pub fn ping(&mut self) -> Result<Stats> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.send(&Request::Ping { seq })?;
        match self.next_event_for(|e| matches!(e, GuestEvent::Pong { seq: s, .. } if *s == seq))? {
            GuestEvent::Pong { stats, .. } => Ok(stats),
            _ => unreachable!("filtered on Pong"),
        }
    }

    /// Gives a restored guest the wall clock and fresh entropy, and waits
    /// until it has taken both.
    pub fn refresh(&mut self, realtime_ns: u64, entropy: &[u8]) -> Result<()> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.send(&Request::Refresh { seq, realtime_ns, entropy })?;
        let answer = self.next_event_for(|e| {
            matches!(e, GuestEvent::Pong { seq: s, .. } if *s == seq)
                || matches!(e, GuestEvent::Error { job: None, kind: ErrorKind::Refresh, .. })
        })?;
        match answer {
            GuestEvent::Error { kind, message, .. } => Err(AgentError::Refused { kind, message }),
            _ => Ok(()),
        }
    }

    /// Hangs up: the init reads the end of its port, ends its jobs and
    /// powers the guest off.
    pub fn close(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    pub fn shutdown(&mut self) -> Result<()> {
        self.send(&Request::Shutdown)
    }

    /// The next event matching `wanted`, keeping the others in order.
    pub fn next_event_for(&mut self, wanted: impl Fn(&GuestEvent) -> bool) -> Result<GuestEvent> {
        if let Some(i) = self.backlog.iter().position(&wanted) {
            return Ok(self.backlog.remove(i).expect("index from position"));
        }
        loop {
            let event = self.read_event()?;
            if wanted(&event) {
                return Ok(event);
            }
            let stale = matches!(&event, GuestEvent::Error { job: Some(j), kind: ErrorKind::UnknownJob, .. }
                if Some(*j) == self.stale_stdin);
            if !stale {
                self.backlog.push_back(event);
            }
        }
    }

    /// The next event in arrival order.
    pub fn next_event(&mut self) -> Result<GuestEvent> {
        match self.backlog.pop_front() {
            Some(event) => Ok(event),
            None => self.read_event(),
        }
    }

    fn read_event(&mut self) -> Result<GuestEvent> {
        loop {
            while !self.unread.is_empty() {
                let (front, _) = self.unread.as_slices();
                let (used, frame) = self.reader.push(front);
                let event = match frame {
                    Some(Frame::Message(bytes)) => Some(
                        proto::decode::<Event<'_>>(bytes).map(GuestEvent::from).map_err(AgentError::Decode),
                    ),
                    Some(Frame::Oversize) => Some(Err(AgentError::OversizeFrame)),
                    Some(Frame::Corrupt) => Some(Err(AgentError::CorruptFrame)),
                    None => None,
                };
                self.unread.drain(..used);
                if let Some(event) = event {
                    return event;
                }
            }
            let n = match self.stream.read(&mut self.buf) {
                Ok(0) => return Err(AgentError::Closed),
                Ok(n) => n,
                Err(e) if matches!(e.kind(), IoKind::WouldBlock | IoKind::TimedOut) => {
                    return Err(AgentError::Timeout(self.timeout.unwrap_or_default()));
                }
                Err(e) if e.kind() == IoKind::Interrupted => continue,
                Err(e) => return Err(AgentError::Read(e)),
            };
            self.unread.extend(&self.buf[..n]);
        }
    }
}

pub(crate) fn event_job(event: &GuestEvent) -> Option<u32> {
    match event {
        GuestEvent::Started { job, .. }
        | GuestEvent::Output { job, .. }
        | GuestEvent::StdinTaken { job, .. } => Some(*job),
        GuestEvent::Exited(e) => Some(e.job),
        GuestEvent::Error { job, .. } => *job,
        _ => None,
    }
}

/// What a job sent so far, made into its [`Outcome`] at its end.
#[derive(Default)]
struct Collected {
    pid: u32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Collected {
    /// Takes one of the job's events; its outcome once it exited.
    fn take(
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
            _ => {}
        }
        Ok(None)
    }
}

/// Where a job's stdin comes from.
enum Input<'a> {
    /// These bytes from this offset.
    Bytes(&'a [u8], usize),
    /// Chunks a reader thread sends.
    Reader(Receiver<std::io::Result<Vec<u8>>>),
}

enum Next {
    Chunk(Vec<u8>),
    /// Nothing now; more may come.
    Pending,
    End,
    Failed(std::io::Error),
}

impl Input<'_> {
    fn next(&mut self) -> Next {
        match self {
            Input::Bytes(bytes, at) => {
                let chunk = &bytes[*at..bytes.len().min(*at + proto::MAX_CHUNK)];
                *at += chunk.len();
                if chunk.is_empty() { Next::End } else { Next::Chunk(chunk.to_vec()) }
            }
            Input::Reader(rx) => match rx.try_recv() {
                Ok(Ok(chunk)) => Next::Chunk(chunk),
                Ok(Err(e)) => Next::Failed(e),
                Err(TryRecvError::Empty) => Next::Pending,
                Err(TryRecvError::Disconnected) => Next::End,
            },
        }
    }
}
