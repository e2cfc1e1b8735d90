//! The blocking transport: one caller owns the connection and reads it
//! when it waits. Events that arrive for someone else wait in a bounded
//! [`Backlog`]; [`Agent::into_shared`] hands the connection to an owner
//! thread instead, for callers that share a VM.

use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::Duration;

use proto::{ErrorKind, Request, Stats, Stream};

use super::backlog::Backlog;
use super::core::{self, Collector, Decoder, Encoder, StdinFeed};
use super::shared::Shared;
use super::types::{GuestEvent, Job, Outcome, Runner, Signal};
use crate::error::AgentError;

type Result<T> = std::result::Result<T, AgentError>;

/// A connection to one init.
pub struct Agent {
    stream: UnixStream,
    encoder: Encoder,
    decoder: Decoder,
    buf: Vec<u8>,
    backlog: Backlog,
    timeout: Option<Duration>,
}

impl Agent {
    pub fn new(stream: UnixStream) -> Self {
        Agent {
            stream,
            encoder: Encoder::default(),
            decoder: Decoder::default(),
            buf: vec![0; proto::MAX_FRAME],
            backlog: Backlog::default(),
            timeout: None,
        }
    }

    /// Hands the connection to an owner thread that routes each job's
    /// events to its waiter (see [`Shared`]). Events read but not yet
    /// taken are dropped.
    pub fn into_shared(self) -> Shared {
        Shared::start(self.stream, self.encoder)
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
        self.stream.write_all(bytes).map_err(AgentError::Send)
    }

    pub fn send(&mut self, request: &Request<'_>) -> Result<()> {
        let frame = core::frame(request)?;
        self.send_raw(&frame)
    }

    /// Sends a job (its header, then its code in chunks) without waiting;
    /// returns its id.
    pub fn submit(&mut self, job: &Job) -> Result<u32> {
        let id = self.encoder.job_id();
        self.submit_with(id, job, job.stdin.is_some())?;
        Ok(id)
    }

    /// A guest user no job of this connection had: the file operations
    /// that follow act on it, and so does the next job that names no user
    /// (or any job that names this one). The key to put in [`Job::user`].
    pub fn new_user(&mut self) -> u32 {
        self.encoder.new_user()
    }

    /// [`Agent::submit`] with a caller-chosen id.
    pub fn submit_as(&mut self, id: u32, job: &Job) -> Result<()> {
        self.encoder.reserve(id);
        self.submit_with(id, job, job.stdin.is_some())
    }

    fn submit_with(&mut self, id: u32, job: &Job, stdin: bool) -> Result<()> {
        let user = self.encoder.user(id, job);
        let frames = core::job_frames(id, job, stdin, user)?;
        self.backlog.reuse(id);
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
        let id = self.encoder.job_id();
        self.submit_with(id, job, true)?;
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
    /// the init takes it.
    fn feed_job(
        &mut self,
        id: u32,
        input: &mut Input<'_>,
        on_output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<Outcome> {
        let mut feed = StdinFeed::default();
        let mut input_error = None;
        let mut collector = Collector::default();
        loop {
            loop {
                if feed.wants_input() {
                    match input.next() {
                        Next::Chunk(chunk) => feed.give(chunk),
                        Next::Pending => {}
                        Next::End => feed.end_input(),
                        Next::Failed(e) => {
                            input_error = Some(e);
                            feed.end_input();
                        }
                    }
                }
                let Some((data, end)) = feed.next_piece() else { break };
                self.send(&Request::Stdin { job: id, data: &data, end })?;
            }
            // Waiting on the input: look back at it now and then.
            let event = if feed.waiting_on_input() {
                match self.event_within(id, Duration::from_millis(10))? {
                    Some(event) => event,
                    None => continue,
                }
            } else {
                self.job_event(id)?
            };
            if let GuestEvent::StdinTaken { bytes, .. } = event {
                feed.taken(bytes);
            } else if let Some(outcome) = collector.take(event, on_output)? {
                if !feed.ended() {
                    self.backlog.mark_stale(id);
                }
                return match input_error {
                    Some(e) => Err(AgentError::Input(e)),
                    None => Ok(outcome),
                };
            }
        }
    }

    /// The next event of job `id`, if one comes within `wait`.
    pub fn event_within(&mut self, id: u32, wait: Duration) -> Result<Option<GuestEvent>> {
        if let Some(event) = self.backlog.take(|e| e.job() == Some(id)) {
            return Ok(Some(event));
        }
        self.check_dropped(id)?;
        self.stream.set_read_timeout(Some(wait)).map_err(AgentError::SetTimeout)?;
        let event = self.read_event();
        self.stream.set_read_timeout(self.timeout).map_err(AgentError::SetTimeout)?;
        match event {
            Ok(event) if event.job() == Some(id) => Ok(Some(event)),
            Ok(event) => {
                self.keep(event);
                Ok(None)
            }
            Err(AgentError::Timeout(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Collects a submitted job's events until it exits or is refused.
    /// Events of other jobs stay queued for their own `wait_job`.
    pub fn wait_job(&mut self, id: u32, on_output: &mut dyn FnMut(Stream, &[u8])) -> Result<Outcome> {
        let mut collector = Collector::default();
        loop {
            let event = self.job_event(id)?;
            if let Some(outcome) = collector.take(event, on_output)? {
                return Ok(outcome);
            }
        }
    }

    fn job_event(&mut self, id: u32) -> Result<GuestEvent> {
        self.check_dropped(id)?;
        self.next_event_for(|e| e.job() == Some(id))
    }

    fn check_dropped(&self, id: u32) -> Result<()> {
        match self.backlog.was_dropped(id) {
            true => Err(AgentError::Dropped(id)),
            false => Ok(()),
        }
    }

    /// Sends a signal to a running job's process group.
    pub fn signal(&mut self, job: u32, signal: Signal) -> Result<()> {
        self.send(&Request::Signal { job, signal: signal.number() })
    }

    /// Round trip: the init's counters.
    pub fn ping(&mut self) -> Result<Stats> {
        let seq = self.encoder.seq();
        self.send(&Request::Ping { seq })?;
        match self.next_event_for(|e| matches!(e, GuestEvent::Pong { seq: s, .. } if *s == seq))? {
            GuestEvent::Pong { stats, .. } => Ok(stats),
            _ => unreachable!("filtered on Pong"),
        }
    }

    /// Gives a restored guest the wall clock and fresh entropy, and waits
    /// until it has taken both.
    pub fn refresh(&mut self, realtime_ns: u64, entropy: &[u8]) -> Result<()> {
        let seq = self.encoder.seq();
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
        if let Some(event) = self.backlog.take(&wanted) {
            return Ok(event);
        }
        loop {
            let event = self.read_event()?;
            if wanted(&event) {
                return Ok(event);
            }
            self.keep(event);
        }
    }

    /// The next event in arrival order.
    pub fn next_event(&mut self) -> Result<GuestEvent> {
        match self.backlog.pop() {
            Some(event) => Ok(event),
            None => self.read_event(),
        }
    }

    fn keep(&mut self, event: GuestEvent) {
        // A job dropped here is reported to its waiter as `Dropped`.
        let _ = self.backlog.push(event);
    }

    fn read_event(&mut self) -> Result<GuestEvent> {
        loop {
            if let Some(event) = self.decoder.next_event() {
                return event;
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
            self.decoder.push(&self.buf[..n]);
        }
    }
}

impl Runner for Agent {
    fn run_job(&mut self, job: &Job, on_output: &mut dyn FnMut(Stream, &[u8])) -> Result<Outcome> {
        self.run(job, on_output)
    }

    fn files_user(&mut self) -> u32 {
        self.encoder.files_user()
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
