//! The init's side of the Python zygote (`rootfs/zygote.py`): starting it,
//! asking it for a job, reading its replies. Two pipes, fixed records, and
//! every write one atomic `write` (at most `PIPE_BUF`) on a non-blocking
//! pipe: a zygote that stops reading makes the request fail, never the loop
//! wait.

use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;
use rustix::process::Pid;

use super::env::EnvBlock;
use super::spawn::{self, Fds};
use crate::config::JobConfig;

/// Most bytes one request may take: `PIPE_BUF`, so that it is written
/// whole or not at all. A job whose environment does not fit takes the
/// exec path.
const PIPE_BUF: usize = 4096;

/// Request header: length, job, code fd, stdout fd, stderr fd, has_cwd,
/// the job user, stdin fd (0: none), cgroup directory fd (0: none).
const HEADER: usize = 9 * 4;

/// A reply: kind, job, pid.
const REPLY: usize = 3 * 4;

/// What the zygote said.
pub enum Reply {
    /// It is initialised and takes requests.
    Ready,
    /// It forked the leader of `job`, now the init's child.
    Spawned { job: u32, pid: Pid },
    /// It could not fork for `job`.
    Failed { job: u32 },
}

/// A running zygote.
pub struct Zygote {
    pub pid: Pid,
    requests: OwnedFd,
    /// Watched by the loop.
    pub replies: OwnedFd,
    pub ready: bool,
    /// Reaped already: its pid is no longer its own to signal.
    pub exited: bool,
}

impl Zygote {
    pub fn start(config: &JobConfig) -> rustix::io::Result<Zygote> {
        let (requests_read, requests) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let (replies, replies_write) = spawn::pipe(true)?;
        rustix::fs::fcntl_setfl(&requests, rustix::fs::OFlags::NONBLOCK)?;
        let pid = spawn::zygote(config, requests_read.as_fd(), replies_write.as_fd())?;
        Ok(Zygote { pid, requests, replies, ready: false, exited: false })
    }

    /// Asks for a leader running `code` with `pipes` (stdout, stderr), the
    /// environment and cwd of `env`, as user `uid`; the init keeps the
    /// descriptors open until the reply. False if the request cannot be
    /// sent whole now.
    pub fn request(&self, job: u32, fds: Fds<'_>, env: &EnvBlock, uid: u32) -> bool {
        let block = env.as_bytes();
        let mut message = [0u8; PIPE_BUF];
        let Some(body) = message.get_mut(HEADER..HEADER + block.len()) else { return false };
        body.copy_from_slice(block);
        let fd = |fd: BorrowedFd<'_>| fd.as_raw_fd().unsigned_abs();
        // 0: /dev/null (the init's own descriptor 0 is never a job's).
        let stdin = fds.stdin.map_or(0, fd);
        // At most PIPE_BUF: the length fits a u32.
        let length = u32::try_from(block.len()).unwrap_or(0);
        let has_cwd = u32::from(env.cwd().is_some());
        let cgroup = fds.cgroup.map_or(0, fd);
        let header = [length, job, fd(fds.code), fd(fds.stdout), fd(fds.stderr), has_cwd, uid, stdin, cgroup];
        for (slot, value) in message.chunks_exact_mut(4).zip(header) {
            slot.copy_from_slice(&value.to_ne_bytes());
        }
        let size = HEADER + block.len();
        rustix::io::write(&self.requests, &message[..size]) == Ok(size)
    }

    /// The next reply, if a whole one is there.
    pub fn read(&self) -> Result<Option<Reply>, Errno> {
        let mut record = [0u8; REPLY];
        match rustix::io::read(&self.replies, &mut record) {
            Ok(REPLY) => {}
            Ok(0) => return Err(Errno::PIPE),
            Ok(_) => return Err(Errno::IO),
            Err(Errno::AGAIN | Errno::INTR) => return Ok(None),
            Err(e) => return Err(e),
        }
        let word = |i: usize| u32::from_ne_bytes([record[i], record[i + 1], record[i + 2], record[i + 3]]);
        let (job, pid) = (word(4), i32::try_from(word(8)).ok().and_then(Pid::from_raw));
        Ok(Some(match (word(0), pid) {
            (0, _) => Reply::Ready,
            (1, Some(pid)) => Reply::Spawned { job, pid },
            _ => Reply::Failed { job },
        }))
    }
}
