//! Stateful sessions: one long job in the guest (a Python or bash driver,
//! `session.py` / `session.sh`) that runs successive steps in one
//! interpreter, so globals and imports (Python), or the environment, cwd
//! and functions (shell), persist from step to step.
//!
//! Steps go to the driver over the job's stdin; each step's output ends
//! with a marker on both streams, `\0<nonce>:<status>\0`, the nonce drawn
//! per session. A step's timeout sends SIGINT to the session's processes
//! (Python: `KeyboardInterrupt` in the step, which then reports exit 1), and
//! SIGKILL after a grace if the step has not ended; the session is then
//! over.

use std::io::Read;
use std::time::{Duration, Instant};

use proto::{Lang, Request, Stream};

use crate::agent::{Agent, GuestEvent, Job};
use crate::error::AgentError;

const PYTHON_DRIVER: &str = include_str!("session.py");
const SHELL_DRIVER: &str = include_str!("session.sh");

/// How long an interrupted step has to end before the session is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// What one step printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// 0; the step's `exit`/`sys.exit` code; 1 for an uncaught exception
    /// (Python); the last command's status (shell).
    pub exit: i32,
    /// The step ran past its timeout and was interrupted.
    pub timed_out: bool,
}

/// Why a session step failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the session has ended{}", .0.as_deref().map(|s| format!(": {s}")).unwrap_or_default())]
    Ended(Option<String>),
    #[error("a step's code cannot contain a NUL byte")]
    Nul,
    #[error("cannot draw the session's nonce from /dev/urandom")]
    Random(#[source] std::io::Error),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

type Result<T, E = SessionError> = std::result::Result<T, E>;

/// A session: borrow of the agent for its life.
pub struct Session<'a> {
    agent: &'a mut Agent,
    job: u32,
    marker: Vec<u8>,
    /// Stdin bytes the init may still take before acknowledging.
    window: usize,
    /// Output not yet given to a step: `[stdout, stderr]`.
    streams: [Vec<u8>; 2],
    ended: bool,
}

impl Agent {
    /// Starts a session of `lang` (its driver forked like any job).
    pub fn session(&mut self, lang: Lang) -> Result<Session<'_>> {
        let mut nonce = [0u8; 12];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut nonce))
            .map_err(SessionError::Random)?;
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let mut job = match lang {
            Lang::Shell => Job::shell(SHELL_DRIVER),
            _ => Job::python(PYTHON_DRIVER),
        };
        job.env.push(("PID1_SESSION".into(), nonce.clone()));
        job.timeout = None;
        job.stdout_limit = u32::MAX;
        job.stderr_limit = u32::MAX;
        let id = self.submit_streaming(&job)?;
        let marker = format!("\0{nonce}:").into_bytes();
        Ok(Session {
            agent: self,
            job: id,
            marker,
            window: proto::STDIN_WINDOW as usize,
            streams: [Vec::new(), Vec::new()],
            ended: false,
        })
    }
}

impl Session<'_> {
    /// Runs a cell: a whole piece of code. In Python the value of a last
    /// bare expression is printed, as in a notebook.
    pub fn exec(&mut self, code: &str) -> Result<Step> {
        self.step("exec", code, None).map(|step| step.expect("exec is never incomplete"))
    }

    /// [`Session::exec`], interrupted after `timeout`.
    pub fn exec_with_timeout(&mut self, code: &str, timeout: Duration) -> Result<Step> {
        self.step("exec", code, Some(timeout)).map(|step| step.expect("exec is never incomplete"))
    }

    /// One line, as an interactive console takes it: `None` while the
    /// statement is not complete, else the step it made.
    pub fn push(&mut self, line: &str) -> Result<Option<Step>> {
        self.step("push", line, None)
    }

    /// Ends the session: its driver sees end of file and exits, and the
    /// init kills what the session left running.
    pub fn close(mut self) -> Result<()> {
        self.end()
    }

    fn end(&mut self) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        self.agent.send(&Request::Stdin { job: self.job, data: &[], end: true })?;
        loop {
            match self.agent.next_event_for(|e| crate::agent::event_job(e) == Some(self.job))? {
                GuestEvent::Exited(_) | GuestEvent::Error { .. } => return Ok(()),
                _ => {}
            }
        }
    }

    fn step(&mut self, kind: &str, code: &str, timeout: Option<Duration>) -> Result<Option<Step>> {
        if self.ended {
            return Err(SessionError::Ended(None));
        }
        if code.contains('\0') {
            return Err(SessionError::Nul);
        }
        let mut message = format!("{kind} {}\n", code.len()).into_bytes();
        message.extend_from_slice(code.as_bytes());
        let mut sent = 0;
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut interrupted: Option<Instant> = None;
        let mut ends: [Option<(usize, Vec<u8>)>; 2] = [None, None];
        loop {
            while sent < message.len() && self.window > 0 {
                let n = (message.len() - sent).min(self.window).min(proto::MAX_CHUNK);
                self.agent.send(&Request::Stdin {
                    job: self.job,
                    data: &message[sent..sent + n],
                    end: false,
                })?;
                sent += n;
                self.window -= n;
            }
            if let [Some((out_at, status)), Some((err_at, _))] = &ends {
                let stdout = self.take(0, *out_at);
                let stderr = self.take(1, *err_at);
                let status = String::from_utf8_lossy(status).into_owned();
                if status == "more" {
                    return Ok(None);
                }
                let exit = status.parse().unwrap_or(1);
                return Ok(Some(Step { stdout, stderr, exit, timed_out: interrupted.is_some() }));
            }
            // Wait for the next event, but not past the deadline or grace.
            let now = Instant::now();
            let wake = match (deadline, interrupted) {
                (_, Some(at)) => Some(at + INTERRUPT_GRACE),
                (Some(d), None) => Some(d),
                (None, None) => None,
            };
            if let Some(wake) = wake
                && now >= wake
            {
                if interrupted.is_none() {
                    self.agent.signal(self.job, 2)?;
                    interrupted = Some(now);
                } else {
                    self.agent.signal(self.job, 9)?;
                    self.end()?;
                    return Err(SessionError::Ended(Some(
                        "its step did not stop after SIGINT and was killed".into(),
                    )));
                }
                continue;
            }
            let wait = wake.map_or(Duration::from_millis(500), |w| w - now).min(Duration::from_millis(500));
            let Some(event) = self.agent.event_within(self.job, wait)? else { continue };
            match event {
                GuestEvent::StdinTaken { bytes, .. } => self.window += bytes as usize,
                GuestEvent::Output { stream, data, .. } => {
                    let i = usize::from(stream == Stream::Stderr);
                    self.streams[i].extend_from_slice(&data);
                    if ends[i].is_none() {
                        ends[i] = self.find_marker(i);
                    }
                }
                GuestEvent::Exited(exited) => {
                    self.ended = true;
                    let why = format!("its driver exited ({})", exited.exit.code());
                    return Err(SessionError::Ended(Some(why)));
                }
                GuestEvent::Error { kind, message, .. } => {
                    return Err(AgentError::Refused { kind, message }.into());
                }
                _ => {}
            }
        }
    }

    /// Where stream `i`'s marker starts, and the status it carries.
    fn find_marker(&self, i: usize) -> Option<(usize, Vec<u8>)> {
        let buf = &self.streams[i];
        let at = buf.windows(self.marker.len()).position(|w| w == self.marker)?;
        let rest = &buf[at + self.marker.len()..];
        let end = rest.iter().position(|&b| b == 0)?;
        Some((at, rest[..end].to_vec()))
    }

    /// Stream `i`'s bytes before its marker at `at`; the marker is dropped.
    fn take(&mut self, i: usize, at: usize) -> Vec<u8> {
        let buf = &mut self.streams[i];
        let marker_end = at
            + self.marker.len()
            + buf[at + self.marker.len()..].iter().position(|&b| b == 0).map_or(0, |n| n + 1);
        let rest = buf.split_off(marker_end);
        let mut before = std::mem::replace(buf, rest);
        before.truncate(at);
        before
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = self.end();
    }
}
