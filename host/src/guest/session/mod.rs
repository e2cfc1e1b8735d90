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
//! over. A session owns its job's handle on the VM's [`Shared`]
//! connection, so it can live on any thread beside other jobs.

use std::io::Read;
use std::time::{Duration, Instant};

use proto::{Lang, Stream};

use crate::agent::{AsUser, GuestEvent, Job, JobHandle, Shared, Signal};
use crate::error::AgentError;
use crate::guest::files::{self, FileEntry, FileError};

const PYTHON_DRIVER: &str = include_str!("session.py");
const SHELL_DRIVER: &str = include_str!("session.sh");

/// How long an interrupted step has to end before the session is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// How long a closed session's driver has to exit before it is killed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

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

/// A session, owning its driver job.
pub struct Session {
    job: JobHandle,
    marker: Vec<u8>,
    /// Stdin bytes the init may still take before acknowledging.
    window: usize,
    /// Output not yet given to a step: `[stdout, stderr]`.
    streams: [Vec<u8>; 2],
    ended: bool,
    steps: u32,
}

/// The marker that ends each step's output on both streams.
fn marker(nonce: &str) -> Vec<u8> {
    format!("\0{nonce}:").into_bytes()
}

/// A step as the driver reads it: `<kind> <length>\n`, then the code.
fn step_message(kind: &str, code: &str) -> Vec<u8> {
    let mut message = format!("{kind} {}\n", code.len()).into_bytes();
    message.extend_from_slice(code.as_bytes());
    message
}

impl Session {
    /// Starts a session of `lang` (its driver forked like any job) on
    /// `shared`'s VM; `memory_limit_mb` bounds all its processes together
    /// (`None`: the guest's default).
    pub fn start(shared: &Shared, lang: Lang, memory_limit_mb: Option<u32>) -> Result<Session> {
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
        job.memory_limit_mb = memory_limit_mb;
        let job = shared.submit_streaming(&job)?;
        Ok(Session {
            job,
            marker: marker(&nonce),
            window: proto::STDIN_WINDOW as usize,
            streams: [Vec::new(), Vec::new()],
            ended: false,
            steps: 0,
        })
    }

    /// The key of the session's guest user, which it keeps for its whole
    /// life: jobs that name it ([`Job::user`]) see the session's files.
    pub fn user(&self) -> u32 {
        self.job.user()
    }

    /// A runner whose jobs and file operations run as the session's user.
    pub fn runner(&self) -> AsUser<Shared> {
        AsUser { runner: self.job.shared().clone(), user: self.user() }
    }

    /// Writes `data` to `path` in the session's home (see [`files::write`]).
    pub fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<(), FileError> {
        files::write(&mut self.runner(), path, data, mode)
    }

    /// The bytes of `path` in the session's home.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, FileError> {
        files::read(&mut self.runner(), path)
    }

    /// Removes the file (or empty directory) `path` of the session's home.
    pub fn delete_file(&self, path: &str) -> Result<(), FileError> {
        files::delete(&mut self.runner(), path)
    }

    /// The entries of the directory `path` of the session's home.
    pub fn list_files(&self, path: &str) -> Result<Vec<FileEntry>, FileError> {
        files::list(&mut self.runner(), path)
    }

    /// Whether the session has ended (closed, killed, or its driver gone).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Steps run so far.
    pub fn steps(&self) -> u32 {
        self.steps
    }

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
        self.job.stdin(&[], true)?;
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.job.next(Some(left))? {
                Some(GuestEvent::Exited(_) | GuestEvent::Error { .. }) => return Ok(()),
                Some(_) => {}
                None => {
                    // A driver that ignores its end of file is killed.
                    self.job.signal(Signal::Kill)?;
                    return Ok(());
                }
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
        let message = step_message(kind, code);
        self.steps += 1;
        let mut sent = 0;
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut interrupted: Option<Instant> = None;
        let mut ends: [Option<(usize, Vec<u8>)>; 2] = [None, None];
        loop {
            while sent < message.len() && self.window > 0 {
                let n = (message.len() - sent).min(self.window).min(proto::MAX_CHUNK);
                self.job.stdin(&message[sent..sent + n], false)?;
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
                    self.job.signal(Signal::Interrupt)?;
                    interrupted = Some(now);
                } else {
                    self.job.signal(Signal::Kill)?;
                    self.end()?;
                    return Err(SessionError::Ended(Some(
                        "its step did not stop after SIGINT and was killed".into(),
                    )));
                }
                continue;
            }
            let wait = wake.map_or(Duration::from_millis(500), |w| w - now).min(Duration::from_millis(500));
            let Some(event) = self.job.next(Some(wait))? else { continue };
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

    fn find_marker(&self, i: usize) -> Option<(usize, Vec<u8>)> {
        find_marker(&self.streams[i], &self.marker)
    }

    fn take(&mut self, i: usize, at: usize) -> Vec<u8> {
        take_before(&mut self.streams[i], &self.marker, at)
    }
}

/// Where `marker` starts in `buf`, and the status it carries up to its NUL.
fn find_marker(buf: &[u8], marker: &[u8]) -> Option<(usize, Vec<u8>)> {
    let at = buf.windows(marker.len()).position(|w| w == marker)?;
    let rest = &buf[at + marker.len()..];
    let end = rest.iter().position(|&b| b == 0)?;
    Some((at, rest[..end].to_vec()))
}

/// The bytes of `buf` before its marker at `at`; the marker goes, what
/// follows it stays for the next step.
fn take_before(buf: &mut Vec<u8>, marker: &[u8], at: usize) -> Vec<u8> {
    let marker_end =
        at + marker.len() + buf[at + marker.len()..].iter().position(|&b| b == 0).map_or(0, |n| n + 1);
    let rest = buf.split_off(marker_end);
    let mut before = std::mem::replace(buf, rest);
    before.truncate(at);
    before
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_its_kind_length_and_code() {
        assert_eq!(step_message("exec", "print(1)\n"), b"exec 9\nprint(1)\n");
        assert_eq!(step_message("push", ""), b"push 0\n");
    }

    #[test]
    fn a_marker_is_found_with_its_status_only_when_whole() {
        let marker = marker("ab12");
        assert_eq!(marker, b"\0ab12:");
        let mut buf = b"out\n\0ab12:0\0next".to_vec();
        assert_eq!(find_marker(&buf, &marker), Some((4, b"0".to_vec())));
        assert_eq!(find_marker(b"out\0ab12:1", &marker), None, "its status is not whole yet");
        assert_eq!(find_marker(b"\0ab13:0\0", &marker), None, "another session's nonce");
        assert_eq!(take_before(&mut buf, &marker, 4), b"out\n");
        assert_eq!(buf, b"next", "what follows stays for the next step");
    }

    #[test]
    fn an_incomplete_statement_says_more() {
        let marker = marker("ff");
        let (at, status) = find_marker(b"\0ff:more\0", &marker).unwrap();
        assert_eq!((at, &status[..]), (0, &b"more"[..]));
    }
}
