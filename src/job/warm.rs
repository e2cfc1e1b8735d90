//! The Python zygote's life ([`WarmPython`]): started after `Ready`, and
//! again by the next job once it died; ready when it says so; asked for a
//! job's leader in one atomic `write` (at most `PIPE_BUF`) on a
//! non-blocking pipe, so a zygote that stops reading makes the request
//! fail, never the loop wait; its replies read as what became of which
//! job; ended when its pipe breaks. The records are `zygote`'s; which jobs
//! it may fork is [`may_fork`].

use proto::{Lang, Run};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;
use rustix::process::Pid;

use super::env::EnvBlock;
use super::spawn::{self, Fds};
use super::zygote::{PIPE_BUF, REPLY, Reply, Request};
use crate::config::JobConfig;
use crate::log;
use crate::poll::{Poll, Token};
use crate::sys::{self, Signal};

/// Whether a job may be forked from the zygote: a Python job that did not
/// ask for a fresh interpreter, and not if it sets a variable that changes
/// how Python starts (`PYTHON*`, which the zygote read at its own start) or
/// how it decodes (`LANG`, `LC_*`).
pub fn may_fork(run: &Run<'_>) -> bool {
    run.lang == Lang::Python
        && !run.fresh
        && !run.env.iter().any(|var| {
            let name = var.name.as_bytes();
            name.starts_with(b"PYTHON") || name.starts_with(b"LC_") || name == b"LANG"
        })
}

/// The zygote, while one runs.
pub struct WarmPython {
    running: Option<Zygote>,
}

/// A running zygote.
struct Zygote {
    pid: Pid,
    requests: OwnedFd,
    /// Watched by the loop.
    replies: OwnedFd,
    ready: bool,
    /// Reaped already: its pid is no longer its own to signal.
    exited: bool,
}

/// What became of a job the zygote was asked for, or of the zygote.
pub enum Heard {
    /// It forked `pid` as the leader of `job`.
    Forked { job: u32, pid: Pid },
    /// It could not fork for `job`.
    Failed { job: u32 },
    /// It is gone (its pipe broke, or it exited): the jobs it had not
    /// forked yet will not be.
    Gone,
}

impl WarmPython {
    pub const fn new() -> Self {
        Self { running: None }
    }

    /// Python jobs are forked from it now.
    pub fn ready(&self) -> bool {
        self.running.as_ref().is_some_and(|z| z.ready)
    }

    /// Starts the zygote unless one runs, or there is none to run (no
    /// script, or the init is not root and could not make it drop to the
    /// job user). Jobs take the exec path until it says it is ready.
    pub fn start(&mut self, config: &JobConfig, poll: &Poll) {
        // Called after every job start: the common case returns first.
        if self.running.is_some()
            || !rustix::process::getuid().is_root()
            || rustix::fs::access(config.zygote, rustix::fs::Access::READ_OK).is_err()
        {
            return;
        }
        match Zygote::start(config) {
            Ok(zygote) => {
                let _ = poll.add(&zygote.replies, Token::Zygote, true);
                self.running = Some(zygote);
            }
            Err(e) => log!("cannot start the Python zygote: ", Os(e)),
        }
    }

    /// Asks the ready zygote for a leader of `job` running the code with
    /// the streams of `fds`, the environment and cwd of `env`, as user
    /// `uid`; the caller keeps the descriptors open until the reply. False
    /// if it is not ready or the request cannot be sent whole now.
    pub fn request(&self, job: u32, fds: Fds<'_>, env: &EnvBlock, uid: u32) -> bool {
        let Some(zygote) = self.running.as_ref().filter(|z| z.ready) else { return false };
        let fd = |fd: BorrowedFd<'_>| fd.as_raw_fd().unsigned_abs();
        let request = Request {
            job,
            code: fd(fds.code),
            stdout: fd(fds.stdout),
            stderr: fd(fds.stderr),
            has_cwd: env.cwd().is_some(),
            uid,
            stdin: fds.stdin.map_or(0, fd),
            cgroup: fds.cgroup.map_or(0, fd),
            env: env.as_bytes(),
        };
        let mut record = [0u8; PIPE_BUF];
        let Some(size) = request.encode(&mut record) else { return false };
        rustix::io::write(&zygote.requests, &record[..size]) == Ok(size)
    }

    /// The next thing the zygote said about a job, if a whole reply is
    /// there; `Ready` is taken in on the way. After `Gone` it is ended.
    pub fn next(&mut self) -> Option<Heard> {
        loop {
            let zygote = self.running.as_mut()?;
            match zygote.read() {
                Ok(None) => return None,
                Ok(Some(Reply::Ready)) => zygote.ready = true,
                Ok(Some(Reply::Spawned { job, pid })) => return Some(Heard::Forked { job, pid }),
                Ok(Some(Reply::Failed { job })) => return Some(Heard::Failed { job }),
                Err(_) => {
                    self.end();
                    return Some(Heard::Gone);
                }
            }
        }
    }

    /// Whether the reaped `pid` was the zygote: then its pid is no longer
    /// its own, and what it said before it died is still to be read.
    pub fn reaped(&mut self, pid: Pid) -> bool {
        let Some(zygote) = self.running.as_mut().filter(|z| z.pid == pid) else { return false };
        log!("the Python zygote exited");
        zygote.exited = true;
        true
    }

    /// Ends the zygote (killed, unless it was reaped): the next Python job
    /// starts a new one.
    pub fn end(&mut self) {
        if let Some(zygote) = self.running.take()
            && !zygote.exited
        {
            let _ = sys::kill_process(zygote.pid, Signal::KILL);
        }
    }
}

impl Zygote {
    fn start(config: &JobConfig) -> rustix::io::Result<Zygote> {
        let (requests_read, requests) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let (replies, replies_write) = spawn::pipe(true)?;
        rustix::fs::fcntl_setfl(&requests, rustix::fs::OFlags::NONBLOCK)?;
        let pid = spawn::zygote(config, requests_read.as_fd(), replies_write.as_fd())?;
        Ok(Zygote { pid, requests, replies, ready: false, exited: false })
    }

    /// The next reply, if a whole one is there.
    fn read(&self) -> Result<Option<Reply>, Errno> {
        let mut record = [0u8; REPLY];
        match rustix::io::read(&self.replies, &mut record) {
            Ok(REPLY) => Ok(Some(Reply::decode(&record))),
            Ok(0) => Err(Errno::PIPE),
            Ok(_) => Err(Errno::IO),
            Err(Errno::AGAIN | Errno::INTR) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
