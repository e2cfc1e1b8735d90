//! Forking a job's interpreter (everything the child does between `fork`
//! and `execve`), the pipes a job writes to, and starting the Python zygote.
//!
//! The code is not passed in argv (one argument is limited to 128 KiB): it
//! sits in a memfd that the child holds as descriptor 3, and the interpreter
//! is given `/proc/self/fd/3` as its script; a shell job with a `#!` line is
//! `/proc/self/fd/3` exec'd, its interpreter chosen by the kernel.
//!
//! # Safety
//!
//! `fork`'s contract (one thread; the child never returns into the init's
//! code) is kept by [`spawn`] and [`zygote`], whose child sides end in
//! `execve` or `exit`. The child's descriptor 3, borrowed once by number,
//! stays open until it does.
#![allow(unsafe_code)]

use core::ffi::CStr;

use proto::Lang;
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::{Errno, FdFlags};
use rustix::process::{Pid, Resource, Rlimit};

use super::env::{DEFAULT_ENV, EnvBlock};
use super::users;
use crate::config::JobConfig;
use crate::error::describe;
use crate::log::{self, Path};
use crate::sys::{self, CStrArray, Fork, SigSet};

/// Processes a job may have at once: room for real parallel work, a wall
/// against a fork bomb taking the VM down. In a VM it is the `pids.max` of
/// the job's cgroup; outside one, the RLIMIT_NPROC of the job user (all
/// jobs share it). The zygote is given it as its argument, to set the
/// same limit in the leaders it forks.
pub const JOB_PROCESSES: u32 = 1024;

/// [`JOB_PROCESSES`] as text: the zygote's argument, the cgroup's `pids.max`.
pub const JOB_PROCESSES_TEXT: &CStr = match CStr::from_bytes_until_nul(&PROCESSES_DIGITS) {
    Ok(text) => text,
    Err(_) => panic!("decimal leaves a NUL after the digits"),
};
const PROCESSES_DIGITS: [u8; 21] = log::decimal(JOB_PROCESSES as u64);

/// The descriptor the child finds its code on.
const CODE_FD: i32 = 3;

/// The script path the interpreter opens: the child's own descriptor 3.
const SCRIPT: &CStr = c"/proc/self/fd/3";

/// Longest argv: the zygote's three strings and the terminator. A job's has
/// at most two strings; one size is one copy of `push` in the binary.
const MAX_ARGV: usize = 4;

/// Longest envp: every job variable, the defaults and the terminator.
const MAX_ENVP: usize = proto::MAX_ENV + DEFAULT_ENV.len() + 2;

/// What a job's process executes.
#[derive(Clone, Copy)]
pub enum Program {
    /// The language's interpreter, on the code.
    Lang(Lang),
    /// The code itself, a script whose `#!` line names its interpreter.
    Script,
}

/// The descriptors a job's process is given.
#[derive(Clone, Copy)]
pub struct Fds<'a> {
    /// The code (descriptor 3).
    pub code: BorrowedFd<'a>,
    /// The directory of the job's cgroup, which the process starts in.
    pub cgroup: Option<BorrowedFd<'a>>,
    /// The read end of its stdin pipe; `/dev/null` when `None`.
    pub stdin: Option<BorrowedFd<'a>>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
}

/// Forks `program` on the code and standard streams in `fds`, as user
/// `uid`; the leader's pid.
pub fn spawn(
    config: &JobConfig,
    program: Program,
    fds: Fds<'_>,
    env: &EnvBlock,
    uid: u32,
) -> Result<Pid, (&'static str, Errno)> {
    let interpreter = match program {
        Program::Lang(Lang::Python) => config.python,
        Program::Lang(Lang::Shell) => config.shell,
        Program::Lang(Lang::Unknown(_)) => return Err(("language", Errno::INVAL)),
        Program::Script => SCRIPT,
    };
    let mut argv = CStrArray::<MAX_ARGV>::new();
    let mut envp = CStrArray::<MAX_ENVP>::new();
    argv.push(interpreter).map_err(|e| ("arguments", e))?;
    if let Program::Lang(_) = program {
        argv.push(SCRIPT).map_err(|e| ("arguments", e))?;
    }
    for var in env.vars() {
        envp.push(var).map_err(|e| ("environment", e))?;
    }
    let cwd = env.cwd().unwrap_or(config.home);

    // SAFETY: the init has one thread. The child ends in `exec`, which
    // returns only to `exit`: it never returns to the init's code.
    match unsafe { sys::fork(fds.cgroup) }.map_err(|e| ("fork", e))? {
        Fork::Parent(pid) => Ok(pid),
        Fork::Child(child) => {
            let setup = Setup { config, interpreter, cwd, fds, uid };
            setup.exec(&child, &argv, &envp)
        }
    }
}

/// Starts the Python zygote (`python3 SCRIPT JOB_PROCESSES`) as root in a
/// session of its own, reading requests on descriptor 3 and writing
/// replies on 4; its stdout and stderr are the init's (the console), for
/// its last words.
pub fn zygote(
    config: &JobConfig,
    requests: BorrowedFd<'_>,
    replies: BorrowedFd<'_>,
) -> rustix::io::Result<Pid> {
    let mut argv = CStrArray::<MAX_ARGV>::new();
    argv.push(config.python)?;
    argv.push(config.zygote)?;
    argv.push(JOB_PROCESSES_TEXT)?;
    let mut envp = CStrArray::<{ DEFAULT_ENV.len() + 2 }>::new();
    for var in DEFAULT_ENV.into_iter().chain([c"HOME=/"]) {
        envp.push(var)?;
    }
    // SAFETY: the init has one thread. The child ends in `exec`, which
    // returns only to `exit`: it never returns to the init's code.
    let child = match unsafe { sys::fork(None) }? {
        Fork::Parent(pid) => return Ok(pid),
        Fork::Child(child) => child,
    };
    child.reset_signal_dispositions();
    let _ = rustix::process::setsid();
    // Above 4 first, so that placing one cannot close the other.
    let moved = rustix::io::fcntl_dupfd_cloexec(requests, 5).and_then(|r| {
        let w = rustix::io::fcntl_dupfd_cloexec(replies, 5)?;
        child.dup2(r.as_fd(), 3)?;
        child.dup2(w.as_fd(), 4)
    });
    let null = rustix::fs::open(c"/dev/null", OFlags::RDONLY, Mode::empty());
    if moved.is_err() || null.and_then(|fd| child.dup2(fd.as_fd(), 0)).is_err() {
        sys::exit(126);
    }
    child.close_from(5);
    let _ = sys::set_signal_mask(SigSet::EMPTY);
    let err = child.execve(config.python, &argv, &envp);
    crate::log!("cannot start the Python zygote: ", describe(err));
    sys::exit(127)
}

/// A pipe whose init's end does not block: the read end of an output
/// pipe, the write end of a stdin pipe (`init_reads`). The job's end blocks.
/// Returns (read, write).
pub fn pipe(init_reads: bool) -> rustix::io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    rustix::fs::fcntl_setfl(if init_reads { &read } else { &write }, OFlags::NONBLOCK)?;
    Ok((read, write))
}

/// What the child needs between fork and exec.
struct Setup<'a> {
    config: &'a JobConfig,
    interpreter: &'a CStr,
    cwd: &'a CStr,
    fds: Fds<'a>,
    uid: u32,
}

impl Setup<'_> {
    /// Runs in the forked child only (hence `child`); never returns.
    fn exec<const A: usize, const E: usize>(
        &self,
        child: &sys::Child,
        argv: &CStrArray<'_, A>,
        envp: &CStrArray<'_, E>,
    ) -> ! {
        // Dispositions first, mask last: a signal unblocked early must not
        // meet a handler-less "ignore" inherited from the init's parent.
        child.reset_signal_dispositions();
        let _ = rustix::process::setsid();
        // stdout and stderr first, so every failure below lands in the
        // job's stderr, where the host sees it.
        let Fds { code, cgroup, stdin, stdout, stderr } = self.fds;
        if child.dup2(stdout, 1).is_err() || child.dup2(stderr, 2).is_err() {
            sys::exit(126);
        }
        let code = if code.as_raw_fd() == CODE_FD {
            // dup2 onto itself would keep close-on-exec set.
            rustix::io::fcntl_setfd(code, FdFlags::empty())
        } else {
            child.dup2(code, CODE_FD)
        };
        check(code, "cannot pass the code on descriptor 3");
        let stdin = match stdin {
            Some(pipe) => child.dup2(pipe, 0),
            None => rustix::fs::open(c"/dev/null", OFlags::RDONLY, Mode::empty())
                .and_then(|null| child.dup2(null.as_fd(), 0)),
        };
        check(stdin, "cannot pass stdin");
        child.close_from(CODE_FD + 1);

        // The init is exempt from the OOM killer (-1000), and children
        // inherit that: a job must be the first thing OOM takes, not a
        // process the kernel cannot kill while it panics for lack of memory.
        if let Ok(file) = rustix::fs::open(c"/proc/self/oom_score_adj", OFlags::WRONLY, Mode::empty()) {
            check(rustix::io::write(&file, b"0"), "cannot reset oom_score_adj");
        }
        // With a cgroup, its pids.max is the job's limit and the per-user
        // one goes (the kernel gives PID 1, and so every job, threads-max / 2).
        // Without one (outside a VM), the per-user limit all jobs share.
        let nproc = match cgroup {
            Some(_) => Rlimit { current: None, maximum: None },
            None => {
                let limit = Some(u64::from(JOB_PROCESSES));
                Rlimit { current: limit, maximum: limit }
            }
        };
        check(rustix::process::setrlimit(Resource::Nproc, nproc), "cannot set RLIMIT_NPROC");
        let _ = rustix::process::setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) });
        if self.config.private {
            check(users::enter(child, self.uid), "cannot give the job its user's home and /tmp");
        }
        if rustix::process::getuid().is_root() {
            let uid = rustix::process::Uid::from_raw(self.uid);
            let gid = rustix::process::Gid::from_raw(self.uid);
            let dropped = rustix::thread::set_thread_groups(&[])
                .and_then(|()| rustix::thread::set_thread_gid(gid))
                .and_then(|()| rustix::thread::set_thread_uid(uid));
            check(dropped, "cannot become the job user");
        }
        check(rustix::thread::set_no_new_privs(true), "cannot set no_new_privs");
        if let Err(e) = rustix::process::chdir(self.cwd) {
            crate::log!("cannot change to directory ", Path(self.cwd), ": ", describe(e));
            sys::exit(126);
        }
        check(sys::set_signal_mask(SigSet::EMPTY), "cannot unblock signals");
        let err = child.execve(self.interpreter, argv, envp);
        if self.interpreter == SCRIPT {
            // As a shell says it: the script's first line names what is missing.
            let mut head = [0u8; 128];
            // SAFETY: descriptor 3 holds the code from here to exit.
            let code = unsafe { BorrowedFd::borrow_raw(CODE_FD) };
            let n = rustix::io::pread(code, &mut head, 0).unwrap_or(0);
            let line = head[..n].split(|&b| b == b'\n').next().unwrap_or_default().trim_ascii_end();
            let line = core::str::from_utf8(line).unwrap_or("#!");
            crate::log!(line, ": bad interpreter: ", describe(err));
        } else {
            crate::log!("cannot execute ", Path(self.interpreter), ": ", describe(err));
        }
        // The shell's convention: 127 for a program that is not there, 126
        // for one that is there but cannot run.
        sys::exit(if err == Errno::NOENT { 127 } else { 126 })
    }
}

/// In the child: a failed setup step ends it with 126 and a message.
fn check<T>(result: rustix::io::Result<T>, what: &str) {
    if let Err(e) = result {
        crate::log!(what, ": ", describe(e));
        sys::exit(126);
    }
}
