//! A job's whole life, from its `Run` header to its `Exited` event, in the
//! fixed table of slots [`Jobs`]: open (header checked, slot taken), load
//! (code chunks into a memfd), start (fork, pipes and timer watched), watch
//! (output forwarded, timer, leader reaped) and end (group killed, pipes
//! drained, `Exited` sent, slot freed). The loop calls in with what happened;
//! the parts live in `check` (what a job must pass), `env` (its environment
//! block), `machine` (when it is over) and `spawn` (the forked child).

// A refusal may carry text formatted into a fixed buffer (no allocator);
// returning it by value is the price, paid only on the error path.
#![allow(clippy::result_large_err)]

pub mod cgroup;
pub mod check;
pub mod env;
pub mod machine;
mod spawn;
mod stdin;
pub mod zygote;

use core::mem;

use proto::{ErrorKind, Event, Exit, Exited, Lang, MAX_CHUNK, Run, Stream};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{FileType, MemfdFlags, Mode, OFlags};
use rustix::io::Errno;
use rustix::process::Pid;
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};

use self::cgroup::{Cgroup, Cgroups};
use self::check::{CodeCheck, Refusal, refuse};
use self::env::EnvBlock;
use self::machine::{Machine, STREAMS, Sink, Step, Streams};
use self::spawn::{Fds, Program};
use self::stdin::{Feed, Window};
use self::zygote::{Reply, Zygote};
use crate::config::JobConfig;
use crate::error::{Os, describe};
use crate::log;
use crate::log::Text;
use crate::pieces;
use crate::poll::{Poll, Token};
use crate::port::Tx;
use crate::storage::TakeOnce;
use crate::sys::{self, Signal};

/// Jobs loading or running at once. A code-execution VM serves one caller;
/// 16 leaves room for a notebook's parallel cells, and every slot costs only
/// its environment block until used.
pub const MAX_JOBS: usize = 16;

/// Reaps kept while a zygote job's pid is on its way: its leader may exit
/// before the zygote's reply is read, and only then does the init learn
/// which pid it was. The reply follows the fork at once; eight reaps in
/// between would take eight other processes dying in that instant.
const EARLY: usize = 8;

/// Reads of a pipe at a job's end, after its group is killed: a full pipe
/// (64 KiB) is two reads of `MAX_CHUNK`; four leave margin.
const FINAL_READS: usize = 4;

/// A request the job table turned down, as the host will read it.
pub struct Refused {
    pub kind: ErrorKind,
    pub why: Why,
}

/// The text of a refusal.
pub enum Why {
    Text(&'static str),
    /// Formatted, naming the field at fault.
    Field(Refusal),
}

impl Why {
    pub fn as_str(&self) -> &str {
        match self {
            Why::Text(text) => text,
            Why::Field(text) => text.as_str(),
        }
    }
}

impl Refused {
    const fn new(kind: ErrorKind, text: &'static str) -> Self {
        Self { kind, why: Why::Text(text) }
    }

    fn invalid(field: Refusal) -> Self {
        Self { kind: ErrorKind::InvalidJob, why: Why::Field(field) }
    }
}

/// A job whose code is still arriving.
pub struct Loading {
    pub id: u32,
    lang: Lang,
    /// The code so far, in a memfd the interpreter will read.
    code: OwnedFd,
    code_len: u32,
    check: CodeCheck,
    timeout_ms: u32,
    limits: Streams<u32>,
    /// May be forked from the zygote (see [`zygote_may_run`]).
    zygote: bool,
    /// Its stdin is fed by the host (else /dev/null).
    stdin: bool,
    /// Its cgroup's memory limit in bytes; 0: the default.
    memory: u64,
}

/// What the zygote opens through /proc, held by the init until it has.
struct Handoff {
    code: OwnedFd,
    /// The read end of the stdin pipe.
    stdin: Option<OwnedFd>,
    out: OwnedFd,
    err: OwnedFd,
}

impl Handoff {
    /// The descriptors, and the job's cgroup (which its `Running` holds).
    fn fds<'a>(&'a self, cgroup: Option<&'a Cgroup>) -> Fds<'a> {
        let stdin = self.stdin.as_ref().map(AsFd::as_fd);
        let cgroup = cgroup.map(|c| c.dir.as_fd());
        Fds { code: self.code.as_fd(), cgroup, stdin, stdout: self.out.as_fd(), stderr: self.err.as_fd() }
    }
}

/// A job whose interpreter was forked.
pub struct Running {
    pub id: u32,
    /// The leader, which is also the process group id; `None` while the
    /// zygote has not said which process it forked.
    pid: Option<Pid>,
    /// What the zygote opens, until it has.
    handoff: Option<Handoff>,
    /// A signal asked for before the pid was known.
    pending: Option<Signal>,
    /// The read ends; `None` once at end of file.
    pipes: Streams<Option<OwnedFd>>,
    timer: OwnedFd,
    /// The host's bytes on their way to the job's stdin.
    stdin: Option<Feed>,
    /// Its cgroup, in a VM.
    cgroup: Option<Cgroup>,
    machine: Machine,
    sinks: Streams<Sink>,
    started_ns: u64,
    /// When the leader was reaped.
    leader_ns: Option<u64>,
    /// When the job was over, if its end waits for the host to read its
    /// output (the duration reported is the job's, not the host's).
    ended_ns: Option<u64>,
}

impl Running {
    /// Sends `signal` to the job's process group. Right after fork the child
    /// may not have called setsid yet, so no group has the leader's id
    /// (ESRCH): the leader is then the whole job, and gets the signal alone
    /// (held pending by its inherited mask until just before exec). Once the
    /// leader is reaped its pid may be reused, so it is never signalled alone.
    fn signal(&mut self, signal: Signal) -> rustix::io::Result<()> {
        let Some(pid) = self.pid else {
            // Not forked yet: sent once it is.
            self.pending = Some(signal);
            return Ok(());
        };
        match sys::kill_group(pid, signal) {
            Err(Errno::SRCH) if self.machine.leader.is_none() => sys::kill_process(pid, signal),
            result => result,
        }
    }

    /// Its leader is `pid` (which the zygote forked, or an exec after the
    /// zygote died): `Started`, and the signal asked for meanwhile.
    fn forked(&mut self, pid: Pid, tx: &mut Tx) {
        self.pid = Some(pid);
        self.handoff = None;
        tx.send(&Event::Started { job: self.id, pid: pid.as_raw_pid().unsigned_abs() });
        if let Some(signal) = self.pending.take() {
            let _ = self.signal(signal);
        }
    }

    /// Sends what the job wrote on `stream`, up to its output limit; the
    /// rest is dropped and the stream flagged truncated.
    fn forward(&mut self, tx: &mut Tx, stream: Stream, data: &[u8]) {
        let take = self.sinks[stream].admit(data.len());
        if take > 0 {
            tx.send(&Event::Output { job: self.id, stream, data: &data[..take] });
        }
    }
}

pub enum JobState {
    Free,
    Loading(Loading),
    Running(Running),
}

impl JobState {
    fn id(&self) -> Option<u32> {
        match self {
            JobState::Free => None,
            JobState::Loading(l) => Some(l.id),
            JobState::Running(r) => Some(r.id),
        }
    }
}

/// The table's big memory: an environment block of 16 KiB per slot and a
/// pipe buffer, all zeros, so in `.bss` for the life of the init.
struct Memory {
    envs: [EnvBlock; MAX_JOBS],
    output: [u8; MAX_CHUNK],
    windows: [Window; MAX_JOBS],
}

static MEMORY: TakeOnce<Memory> = TakeOnce::new(Memory {
    envs: [const { EnvBlock::new() }; MAX_JOBS],
    output: [0; MAX_CHUNK],
    windows: [[0; stdin::WINDOW]; MAX_JOBS],
});

/// Every job the init knows about, in fixed slots: slot `i` is `states[i]`
/// with the environment block `envs[i]`.
pub struct Jobs {
    states: [JobState; MAX_JOBS],
    envs: &'static mut [EnvBlock; MAX_JOBS],
    /// Output on its way from a pipe to the port.
    output: &'static mut [u8; MAX_CHUNK],
    /// Slot `i`'s stdin bytes on their way from the port to its pipe.
    windows: &'static mut [Window; MAX_JOBS],
    config: JobConfig,
    /// The init is PID 1 (of the VM or of a namespace): when no job runs,
    /// every other process is a finished job's leftover.
    owns_all: bool,
    /// Pipe reads are off until the host catches up.
    paused: bool,
    /// The jobs' cgroups, in a VM.
    cgroups: Option<Cgroups>,
    /// Jobs started since boot.
    pub started: u32,
    pub zygote: Option<Zygote>,
    /// Processes reaped while a zygote job's pid was not known yet: one of
    /// them may be its leader, which exited at once.
    early: [Option<(Pid, Exit)>; EARLY],
    /// Where the next early reap is kept (the oldest is overwritten).
    next_early: usize,
}

/// Whether a job may be forked from the zygote: a Python job that did not
/// ask for a fresh interpreter, and not if it sets a variable that changes how Python starts (`PYTHON*`, which
/// the zygote read at its own start) or how it decodes (`LANG`, `LC_*`).
fn zygote_may_run(run: &Run<'_>) -> bool {
    run.lang == Lang::Python
        && !run.fresh
        && !run.env.iter().any(|var| {
            let name = var.name.as_bytes();
            name.starts_with(b"PYTHON") || name.starts_with(b"LC_") || name == b"LANG"
        })
}

impl Jobs {
    /// The table; `None` if it was made already (its memory is static).
    pub fn new(config: JobConfig, owns_all: bool, cgroups: Option<Cgroups>) -> Option<Jobs> {
        let Memory { envs, output, windows } = MEMORY.take()?;
        let states = [const { JobState::Free }; MAX_JOBS];
        let early = [None; EARLY];
        let (paused, started, zygote, next_early) = (false, 0, None, 0);
        Some(Jobs {
            states,
            envs,
            output,
            windows,
            config,
            owns_all,
            paused,
            cgroups,
            started,
            zygote,
            early,
            next_early,
        })
    }

    /// Python jobs are forked from a zygote now.
    pub fn zygote_ready(&self) -> bool {
        self.zygote.as_ref().is_some_and(|z| z.ready)
    }

    /// Jobs loading or running.
    pub fn active(&self) -> u32 {
        // At most MAX_JOBS.
        u32::try_from(self.states.iter().filter(|s| !matches!(s, JobState::Free)).count()).unwrap_or(0)
    }

    fn find(&self, id: u32) -> Option<usize> {
        self.states.iter().position(|s| s.id() == Some(id))
    }

    fn running(&mut self, i: usize) -> Option<&mut Running> {
        match self.states.get_mut(i)? {
            JobState::Running(job) => Some(job),
            _ => None,
        }
    }

    /// `Run`: checks the header and takes a slot for the code to come.
    pub fn open(&mut self, run: &Run<'_>) -> Result<(), Refused> {
        if self.find(run.job).is_some() {
            return Err(Refused::new(ErrorKind::DuplicateJob, "a job with this id is loading or running"));
        }
        check::check_run(run).map_err(Refused::invalid)?;
        let Some(i) = self.states.iter().position(|s| matches!(s, JobState::Free)) else {
            return Err(Refused::new(ErrorKind::Busy, "all job slots are in use"));
        };
        let invalid = |why| Refused::new(ErrorKind::InvalidJob, why);
        let env = &mut self.envs[i];
        env.fill(run, self.config.home.to_bytes()).map_err(Refused::invalid)?;
        if let Some(cwd) = env.cwd() {
            match rustix::fs::stat(cwd) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                Ok(_) => return Err(invalid("cwd: not a directory")),
                Err(_) => return Err(invalid("cwd: no such directory")),
            }
        }
        let code = rustix::fs::memfd_create(c"job", MemfdFlags::CLOEXEC)
            .map_err(|e| Refused::new(ErrorKind::Spawn, describe(e)))?;
        self.states[i] = JobState::Loading(Loading {
            id: run.job,
            lang: run.lang,
            code,
            code_len: run.code_len,
            check: CodeCheck::default(),
            timeout_ms: run.timeout_ms,
            limits: Streams([run.stdout_limit, run.stderr_limit]),
            zygote: zygote_may_run(run),
            stdin: run.stdin,
            memory: u64::from(run.memory_limit_mb) << 20,
        });
        Ok(())
    }

    /// `Code`: appends a chunk to a loading job's code; once the code is
    /// complete and passed its checks, starts the job: `Some`, with its
    /// leader's pid if known yet (the zygote says it later).
    pub fn load(&mut self, id: u32, data: &[u8], poll: &Poll) -> Result<Option<Option<Pid>>, Refused> {
        let Some(i) = self.find(id) else {
            return Err(Refused::new(ErrorKind::UnknownJob, "no job with this id"));
        };
        let state = &mut self.states[i];
        let JobState::Loading(job) = state else {
            return Err(Refused::new(ErrorKind::InvalidJob, "code: the job already has all its code"));
        };
        let refused = if u64::from(job.check.seen) + data.len() as u64 > u64::from(job.code_len) {
            Some(Refused::new(ErrorKind::InvalidJob, "code: more bytes than code_len"))
        } else if let Err(e) = write_all(job.code.as_fd(), without_bom(job, data)) {
            Some(Refused::new(ErrorKind::Spawn, describe(e)))
        } else {
            job.check.feed(data);
            None
        };
        if let Some(refused) = refused {
            *state = JobState::Free;
            return Err(refused);
        }
        if job.check.seen < job.code_len {
            return Ok(None);
        }
        if let Err(message) = job.check.verdict() {
            *state = JobState::Free;
            return Err(Refused::invalid(message));
        }
        self.start(i, poll).map(Some)
    }

    /// Starts the job loaded in slot `i`, forked from the zygote when it can
    /// be, else exec'd, and watches its pipes and timer. The leader's pid, if
    /// known already (the zygote says it later).
    fn start(&mut self, i: usize, poll: &Poll) -> Result<Option<Pid>, Refused> {
        let JobState::Loading(mut job) = mem::replace(&mut self.states[i], JobState::Free) else {
            return Err(Refused::new(ErrorKind::UnknownJob, "no job with this id"));
        };
        let timer = rustix::time::timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .map_err(|e| failed("timer", e))?;
        // Only the read ends are non-blocking: the job's writes must block
        // when the pipe is full, not fail.
        let (stdout, out_write) = spawn::pipe(true).map_err(|e| failed("pipe", e))?;
        let (stderr, err_write) = spawn::pipe(true).map_err(|e| failed("pipe", e))?;
        let (stdin_read, feed) = match job.stdin {
            true => spawn::pipe(false).map(|(read, write)| (Some(read), Some(Feed::new(write)))),
            false => Ok((None, None)),
        }
        .map_err(|e| failed("pipe", e))?;
        // A shell script with a `#!` line is run by the kernel, as
        // `./script` would be: its memfd is exec'd, which needs a descriptor
        // no one can write through (else ETXTBSY).
        let script = job.lang == Lang::Shell && starts_with_shebang(job.code.as_fd());
        if script {
            job.code = read_only(job.code.as_fd()).map_err(|e| failed("code", e))?;
        }
        let cgroup = match &mut self.cgroups {
            Some(cgroups) => Some(cgroups.make(self.started, job.memory).map_err(|e| failed("cgroup", e))?),
            None => None,
        };
        let started_ns = sys::boottime_ns();
        let env = &self.envs[i];
        let zygote = match &self.zygote {
            Some(z) if job.zygote && z.ready => Some(z),
            _ => None,
        };
        let handoff = Handoff { code: job.code, stdin: stdin_read, out: out_write, err: err_write };
        let (pid, handoff) = match zygote {
            Some(z) if z.request(job.id, handoff.fds(cgroup.as_ref()), env, self.config.uid) => {
                (None, Some(handoff))
            }
            _ => {
                let program = if script { Program::Script } else { Program::Lang(job.lang) };
                let pid = spawn::spawn(&self.config, program, handoff.fds(cgroup.as_ref()), env)
                    .map_err(|(what, e)| failed(what, e))?;
                // The code and the write ends are dropped here: the child
                // holds its own copies.
                (Some(pid), None)
            }
        };
        for (stream, pipe) in STREAMS.into_iter().zip([&stdout, &stderr]) {
            let _ = poll.add(pipe, Token::Pipe(i, stream), !self.paused);
        }
        let _ = poll.add(&timer, Token::Timer(i), true);
        if let Some(pipe) = feed.as_ref().and_then(|f| f.pipe.as_ref()) {
            // Watched for room only while bytes wait for it.
            let _ = poll.add(pipe, Token::Stdin(i), false);
        }
        if job.timeout_ms > 0 {
            arm(&timer, job.timeout_ms);
        }
        self.states[i] = JobState::Running(Running {
            id: job.id,
            pid,
            handoff,
            pending: None,
            pipes: Streams([Some(stdout), Some(stderr)]),
            timer,
            stdin: feed,
            cgroup,
            machine: Machine::new(),
            sinks: Streams([Sink::new(job.limits[Stream::Stdout]), Sink::new(job.limits[Stream::Stderr])]),
            started_ns,
            leader_ns: None,
            ended_ns: None,
        });
        self.started += 1;
        Ok(pid)
    }

    /// Starts the zygote unless one runs, or there is none to run (no
    /// script, or the init is not root and could not make it drop to the
    /// job user). Jobs take the exec path until it says it is ready.
    pub fn start_zygote(&mut self, poll: &Poll) {
        // Called after every job start: the common case returns first.
        if self.zygote.is_some()
            || !rustix::process::getuid().is_root()
            || rustix::fs::access(self.config.zygote, rustix::fs::Access::READ_OK).is_err()
        {
            return;
        }
        match Zygote::start(&self.config) {
            Ok(zygote) => {
                let _ = poll.add(&zygote.replies, Token::Zygote, true);
                self.zygote = Some(zygote);
            }
            Err(e) => log!("cannot start the Python zygote: ", Os(e)),
        }
    }

    /// The zygote's replies: ready, or which process leads a job.
    pub fn on_zygote(&mut self, tx: &mut Tx) {
        loop {
            let Some(zygote) = &mut self.zygote else { return };
            let reply = match zygote.read() {
                Ok(Some(reply)) => reply,
                Ok(None) => return,
                Err(_) => return self.zygote_gone(tx),
            };
            let (job, pid) = match reply {
                Reply::Ready => {
                    zygote.ready = true;
                    continue;
                }
                Reply::Spawned { job, pid } => (job, Some(pid)),
                Reply::Failed { job } => (job, None),
            };
            let Some(i) = self.find(job) else { continue };
            let Some(running) = self.running(i) else { continue };
            if running.pid.is_some() {
                continue;
            }
            let Some(pid) = pid else {
                self.states[i] = JobState::Free;
                tx.send(&Event::Error {
                    job: Some(job),
                    kind: ErrorKind::Spawn,
                    message: "the zygote could not fork",
                });
                continue;
            };
            running.forked(pid, tx);
            let early = self.early.iter_mut().find(|e| matches!(e, Some((p, _)) if *p == pid));
            if let Some((_, exit)) = early.and_then(Option::take) {
                self.on_reaped(pid, exit, tx);
            }
        }
    }

    /// The zygote exited or its pipe broke (then it is killed): the next
    /// Python job starts a new one, and the jobs it had not forked yet are
    /// exec'd now.
    fn zygote_gone(&mut self, tx: &mut Tx) {
        if let Some(zygote) = self.zygote.take()
            && !zygote.exited
        {
            let _ = sys::kill_process(zygote.pid, Signal::KILL);
        }
        self.exec_unforked(tx);
    }

    /// The jobs the zygote had not forked yet are exec'd, with
    /// the code and pipes that were held for it.
    fn exec_unforked(&mut self, tx: &mut Tx) {
        for (state, env) in self.states.iter_mut().zip(self.envs.iter()) {
            let JobState::Running(job) = state else { continue };
            let Some(handoff) = job.handoff.take() else { continue };
            match spawn::spawn(
                &self.config,
                Program::Lang(Lang::Python),
                handoff.fds(job.cgroup.as_ref()),
                env,
            ) {
                Ok(pid) => job.forked(pid, tx),
                Err(_) => {
                    let id = job.id;
                    *state = JobState::Free;
                    tx.send(&Event::Error {
                        job: Some(id),
                        kind: ErrorKind::Spawn,
                        message: "the zygote died",
                    });
                }
            }
        }
    }

    /// `Stdin`: bytes for a running job's stdin, written now as far as its
    /// pipe takes them; the rest waits in its window.
    pub fn stdin(
        &mut self,
        id: u32,
        data: &[u8],
        end: bool,
        poll: &Poll,
        tx: &mut Tx,
    ) -> Result<(), Refused> {
        let Some(i) = self.find(id) else {
            return Err(Refused::new(ErrorKind::UnknownJob, "no job with this id"));
        };
        let invalid = |why| Refused::new(ErrorKind::InvalidJob, why);
        let Some(JobState::Running(job)) = self.states.get_mut(i) else {
            return Err(invalid("stdin: the job's code is not complete"));
        };
        let Some(feed) = &mut job.stdin else {
            return Err(invalid("stdin: the job was not started with stdin"));
        };
        feed.push(&mut self.windows[i], data, end).map_err(invalid)?;
        self.on_stdin(i, poll, tx);
        Ok(())
    }

    /// A job's stdin pipe has room (or bytes just arrived): moves what it
    /// takes out of the window and tells the host how much.
    pub fn on_stdin(&mut self, i: usize, poll: &Poll, tx: &mut Tx) {
        let paused = self.paused;
        let Some(JobState::Running(job)) = self.states.get_mut(i) else { return };
        let Some(feed) = &mut job.stdin else { return };
        let (taken, waiting) = feed.flush(&mut self.windows[i]);
        if let Some(pipe) = &feed.pipe {
            // While the host is not reading, the acknowledgements wait too.
            let _ = poll.set(pipe, Token::Stdin(i), waiting && !paused);
        }
        if taken > 0 {
            tx.send(&Event::StdinTaken { job: job.id, bytes: taken });
        }
    }

    /// `Signal`: to a running job's process group; a job still loading is
    /// cancelled (nothing ran).
    pub fn signal(&mut self, id: u32, signal: u8) -> Result<(), Refused> {
        let Some(i) = self.find(id) else {
            return Err(Refused::new(ErrorKind::UnknownJob, "no job with this id"));
        };
        let not_a_signal = || Refused::new(ErrorKind::InvalidJob, "signal: not a signal number");
        match &mut self.states[i] {
            JobState::Running(job) => {
                let signal = Signal::new(u32::from(signal)).ok_or_else(not_a_signal)?;
                job.signal(signal).map_err(|_| not_a_signal())
            }
            _ => {
                self.states[i] = JobState::Free;
                Err(Refused::new(ErrorKind::InvalidJob, "signal: the job was cancelled before it started"))
            }
        }
    }

    /// A job's pipe is readable (or at end of file).
    pub fn on_pipe(&mut self, i: usize, stream: Stream, tx: &mut Tx) {
        if tx.room() < crate::port::OUTPUT_ROOM {
            // The queue is full; the loop pauses pipe reads.
            return;
        }
        let output = &mut self.output[..];
        let Some(JobState::Running(job)) = self.states.get_mut(i) else { return };
        let Some(pipe) = &job.pipes[stream] else { return };
        match rustix::io::read(pipe, &mut *output) {
            Ok(0) | Err(Errno::IO | Errno::BADF) => {
                job.pipes[stream] = None;
                let step = job.machine.pipe_closed(stream);
                self.apply(i, step, tx);
            }
            Ok(n) => job.forward(tx, stream, &output[..n]),
            Err(_) => {}
        }
    }

    /// A job's timer fired.
    pub fn on_timer(&mut self, i: usize, tx: &mut Tx) {
        let Some(job) = self.running(i) else { return };
        let mut ticks = [0u8; 8];
        // A stale event (the job ended earlier in this round) reads nothing.
        if rustix::io::read(&job.timer, &mut ticks) != Ok(8) {
            return;
        }
        let step = job.machine.timer_fired();
        self.apply(i, step, tx);
    }

    /// A process was reaped: if it was a job's leader (not reaped before),
    /// that job learns its exit. False for every other process.
    pub fn on_reaped(&mut self, pid: Pid, exit: Exit, tx: &mut Tx) -> bool {
        if self.zygote.as_ref().is_some_and(|z| z.pid == pid) {
            log!("the Python zygote exited");
            if let Some(zygote) = &mut self.zygote {
                zygote.exited = true;
            }
            // What it said before it died still counts.
            self.on_zygote(tx);
            self.zygote_gone(tx);
            return true;
        }
        let leader = self.states.iter().position(
            |s| matches!(s, JobState::Running(r) if r.pid == Some(pid) && r.machine.leader.is_none()),
        );
        let Some(i) = leader else {
            if self.states.iter().any(|s| matches!(s, JobState::Running(r) if r.pid.is_none())) {
                self.early[self.next_early % EARLY] = Some((pid, exit));
                self.next_early = self.next_early.wrapping_add(1);
            }
            return false;
        };
        if let Some(job) = self.running(i) {
            job.leader_ns = Some(sys::boottime_ns());
            let step = job.machine.leader_exited(exit);
            self.apply(i, step, tx);
        }
        true
    }

    /// Turns reading of every job's pipes off while the send queue is full,
    /// and back on.
    pub fn pause_output(&mut self, poll: &Poll, pause: bool) {
        if pause == self.paused {
            return;
        }
        self.paused = pause;
        for (i, state) in self.states.iter().enumerate() {
            let JobState::Running(job) = state else { continue };
            for stream in STREAMS {
                if let Some(pipe) = &job.pipes[stream] {
                    let _ = poll.set(pipe, Token::Pipe(i, stream), !pause);
                }
            }
            if let Some(pipe) = job.stdin.as_ref().and_then(|f| f.waiting()) {
                let _ = poll.set(pipe, Token::Stdin(i), !pause);
            }
        }
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// SIGKILL to every running job's group (the init is going away).
    pub fn kill_all(&mut self) {
        for state in &mut self.states {
            if let JobState::Running(job) = state {
                let _ = job.signal(Signal::KILL);
            }
        }
    }

    /// Every job killed and its slot freed, as if none had been opened.
    #[cfg(any(test, fuzzing))]
    pub fn forget_all(&mut self) {
        self.kill_all();
        self.states = [const { JobState::Free }; MAX_JOBS];
        self.paused = false;
        self.early = [None; EARLY];
    }

    /// Carries out what a job's machine decided.
    fn apply(&mut self, i: usize, step: Step, tx: &mut Tx) {
        let paused = self.paused;
        let Some(job) = self.running(i) else { return };
        if let Some(signal) = step.signal {
            let _ = job.signal(signal);
        }
        if let Some(ms) = step.arm_ms {
            arm(&job.timer, ms);
        }
        if step.finish {
            if paused && job.pipes.0.iter().any(Option::is_some) {
                // Its pipes are not being read because the host is not
                // reading: what is in them would be lost. The job ends once
                // they are read (or the next grace passes with room). It
                // was over when its leader was (whether its pipes closed
                // then cannot be seen while they are not read), not a
                // drain grace later.
                let over = job.leader_ns.unwrap_or_else(sys::boottime_ns);
                job.ended_ns.get_or_insert(over);
                arm(&job.timer, machine::DRAIN_GRACE_MS);
                return;
            }
            self.finish(i, tx);
        }
    }

    /// Ends a job: its group killed, what is left in its pipes forwarded,
    /// `Exited` sent, the slot freed (closing its descriptors, which also
    /// takes them out of the epoll set).
    fn finish(&mut self, i: usize, tx: &mut Tx) {
        let Some(state) = self.states.get_mut(i) else { return };
        let JobState::Running(mut job) = mem::replace(state, JobState::Free) else { return };
        let _ = job.signal(Signal::KILL);
        // Everything the job started, wherever it went (setsid).
        let usage = match (&mut self.cgroups, job.cgroup.take()) {
            (Some(cgroups), Some(cgroup)) => cgroups.end(cgroup),
            _ => cgroup::Usage::default(),
        };
        let others_running = self.states.iter().any(|s| matches!(s, JobState::Running(_)));
        if self.owns_all && !others_running {
            // A process that left the job's group (setsid, a daemon) would
            // outlive it. With no other job running, every process but the
            // init belongs to a finished job: end them all, so nothing leaks
            // into the next job. They are reaped as orphans. Only the job
            // user's: the zygote is not a leftover.
            sys::kill_all_of(self.config.uid);
        }
        for stream in STREAMS {
            let Some(pipe) = job.pipes[stream].take() else { continue };
            for _ in 0..FINAL_READS {
                let Ok(n @ 1..) = rustix::io::read(&pipe, &mut self.output[..]) else { break };
                // A chunk and its frame, above the room answers need.
                if tx.room() < crate::port::REQUEST_ROOM + n + 64 {
                    // The host is not reading and the job is over: what
                    // its escaped writers left is dropped, and said so.
                    job.sinks[stream].truncated = true;
                    break;
                }
                job.forward(tx, stream, &self.output[..n]);
            }
        }
        let exited = Exited {
            job: job.id,
            // Only a drain-grace end comes here without a reaped leader.
            exit: job.machine.leader.unwrap_or(Exit::Signal(Signal::KILL.number())),
            timed_out: job.machine.timed_out,
            stdout_truncated: job.sinks[Stream::Stdout].truncated,
            stderr_truncated: job.sinks[Stream::Stderr].truncated,
            duration_us: job.ended_ns.unwrap_or_else(sys::boottime_ns).saturating_sub(job.started_ns) / 1000,
            peak_memory: usage.peak_memory,
            cpu_us: usage.cpu_us,
        };
        tx.send(&Event::Exited(exited));
    }
}

/// A job that could not be started: `what` failed with `e`.
// One copy, not one per step that can fail.
#[inline(never)]
fn failed(what: &str, e: Errno) -> Refused {
    let text = refuse(pieces!["cannot start the job: ", what, ": ", describe(e)]);
    Refused { kind: ErrorKind::Spawn, why: Why::Field(text) }
}

/// Arms a one-shot timer `ms` from now.
fn arm(timer: &OwnedFd, ms: u32) {
    let value = Itimerspec {
        it_interval: Timespec { tv_sec: 0, tv_nsec: 0 },
        it_value: Timespec { tv_sec: i64::from(ms / 1000), tv_nsec: i64::from(ms % 1000) * 1_000_000 },
    };
    if let Err(e) = rustix::time::timerfd_settime(timer, TimerfdTimerFlags::empty(), &value) {
        log!("timerfd_settime failed: ", Os(e));
    }
}

/// A UTF-8 byte order mark, which editors on some systems put first.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// What of `data` goes into a loading job's memfd: all of it, but for a
/// shell job's leading byte order mark, which the shell would take as part
/// of the first command's name (and which hides a `#!` line from the
/// kernel). Python skips it itself. It is looked for in the first chunk.
fn without_bom<'d>(job: &Loading, data: &'d [u8]) -> &'d [u8] {
    match data.strip_prefix(BOM) {
        Some(rest) if job.lang == Lang::Shell && job.check.seen == 0 => rest,
        _ => data,
    }
}

/// Whether the code in `code` starts with `#!`.
fn starts_with_shebang(code: BorrowedFd<'_>) -> bool {
    let mut head = [0u8; 2];
    matches!(rustix::io::pread(code, &mut head, 0), Ok(2)) && head == *b"#!"
}

/// A read-only descriptor of the same memfd, through /proc; the writable
/// one is dropped by the caller.
fn read_only(code: BorrowedFd<'_>) -> rustix::io::Result<OwnedFd> {
    let path = Text::<32>::of(pieces!["/proc/self/fd/", code.as_raw_fd().unsigned_abs(), "\0"]);
    let path = path.as_c_str().ok_or(Errno::INVAL)?;
    rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> rustix::io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
