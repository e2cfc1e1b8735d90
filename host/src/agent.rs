//! The host end of the wire: sends requests to an init and reads its events,
//! over any stream (a VM's agent socket, or a test's socketpair).

use std::collections::VecDeque;
use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::unix::net::UnixStream;
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
        self.wait_job(id, &mut on_output)
    }

    /// Collects a submitted job's events until it exits or is refused.
    /// Events of other jobs stay queued for their own `wait_job`.
    pub fn wait_job(&mut self, id: u32, on_output: &mut dyn FnMut(Stream, &[u8])) -> Result<Outcome> {
        let (mut stdout, mut stderr, mut pid) = (Vec::new(), Vec::new(), 0);
        loop {
            let event = self.next_event_for(|e| event_job(e) == Some(id))?;
            match event {
                GuestEvent::Started { pid: p, .. } => pid = p,
                GuestEvent::Output { stream, data, .. } => {
                    on_output(stream, &data);
                    match stream {
                        Stream::Stdout => stdout.extend_from_slice(&data),
                        Stream::Stderr => stderr.extend_from_slice(&data),
                    }
                }
                GuestEvent::Exited(e) => {
                    return Ok(Outcome {
                        pid,
                        exit: e.exit,
                        timed_out: e.timed_out,
                        stdout,
                        stderr,
                        stdout_truncated: e.stdout_truncated,
                        stderr_truncated: e.stderr_truncated,
                        duration: Duration::from_micros(e.duration_us),
                    });
                }
                GuestEvent::Error { kind, message, .. } => return Err(AgentError::Refused { kind, message }),
                _ => {}
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
            self.backlog.push_back(event);
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

fn event_job(event: &GuestEvent) -> Option<u32> {
    match event {
        GuestEvent::Started { job, .. } | GuestEvent::Output { job, .. } => Some(*job),
        GuestEvent::Exited(e) => Some(e.job),
        GuestEvent::Error { job, .. } => *job,
        _ => None,
    }
}
