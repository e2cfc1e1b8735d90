//! The job table ([`Jobs`]): fixed slots, each free, loading or running,
//! and the dispatch of what the loop hands in (a request, a readable pipe,
//! a fired timer, a reaped process, a zygote reply) to the job it concerns.
//! A job is opened (header checked, slot taken), loaded, started (exec'd,
//! or asked of the zygote; pipes and timer watched), watched (output
//! forwarded, timer, leader reaped) and ended (group killed, pipes drained,
//! `Exited` sent, slot freed). Beside it: `check` (what a job must pass),
//! `load` (its code arriving), `env` (its environment block), `spawn` (the
//! forked child), `running` and `machine` (a started job, and when it is
//! over), `warm` and `zygote` (the Python zygote's life, and its records),
//! `early` (reaps before a zygote job's pid), `slot` (one slot's state),
//! `refused` (what the host is told when a request is turned down),
//! `users` (which user a job runs as, and its home and /tmp).

// A refusal may carry text formatted into a fixed buffer (no allocator);
// returning it by value is the price, paid only on the error path.
#![allow(clippy::result_large_err)]

pub mod cgroup;
pub mod check;
mod early;
pub mod env;
mod load;
pub mod machine;
mod refused;
mod running;
mod slot;
mod spawn;
mod stdin;
pub mod users;
mod warm;
pub mod zygote;

use core::mem;

use proto::{ErrorKind, Event, Exit, Lang, MAX_CHUNK, Run, Stream};
use rustix::fs::FileType;
use rustix::io::Errno;
use rustix::process::Pid;
use rustix::time::{TimerfdClockId, TimerfdFlags};

use self::cgroup::Cgroups;
use self::early::EarlyReaps;
use self::env::EnvBlock;
use self::load::Loading;
use self::machine::{Machine, STREAMS, Sink, Step, Streams};
pub use self::refused::{Refused, Why};
use self::running::{Handoff, Running, arm};
pub use self::slot::JobState;
use self::spawn::Program;
use self::stdin::{Feed, Window};
use self::users::Users;
use self::warm::{Heard, WarmPython};
use crate::config::JobConfig;
use crate::poll::{Poll, Token};
use crate::port::Tx;
use crate::storage::TakeOnce;
use crate::sys::{self, Signal};

/// Jobs loading or running at once. A code-execution VM serves one caller;
/// 16 leaves room for a notebook's parallel cells, and every slot costs only
/// its environment block until used.
pub const MAX_JOBS: usize = 16;

// `users::USERS` is twice the job slots: the two move together.
const _: () = assert!(users::USERS == 2 * MAX_JOBS);

/// What a `Code` chunk did.
pub enum Loaded {
    /// The code is not complete yet.
    Incomplete,
    /// The job was exec'd: `pid` leads it.
    Started(Pid),
    /// The zygote was asked to fork the job; which process leads it comes
    /// in its reply.
    AskedZygote,
}

/// The table's big memory: an environment block of 16 KiB per slot, a
/// pipe buffer and the users, all zeros, so in `.bss` for the life of the
/// init.
struct Memory {
    envs: [EnvBlock; MAX_JOBS],
    output: [u8; MAX_CHUNK],
    windows: [Window; MAX_JOBS],
    users: Users,
}

static MEMORY: TakeOnce<Memory> = TakeOnce::new(Memory {
    envs: [const { EnvBlock::new() }; MAX_JOBS],
    output: [0; MAX_CHUNK],
    windows: [[0; stdin::WINDOW]; MAX_JOBS],
    users: Users::new(),
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
    zygote: WarmPython,
    /// Processes reaped while a zygote job's pid was not known yet: one of
    /// them may be its leader, which exited at once.
    early: EarlyReaps,
    users: &'static mut Users,
}

impl Jobs {
    /// The table; `None` if it was made already (its memory is static).
    pub fn new(config: JobConfig, owns_all: bool, cgroups: Option<Cgroups>) -> Option<Jobs> {
        let Memory { envs, output, windows, users } = MEMORY.take()?;
        let states = [const { JobState::Free }; MAX_JOBS];
        let (zygote, early) = (WarmPython::new(), EarlyReaps::new());
        let (paused, started) = (false, 0);
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
            users,
        })
    }

    /// Python jobs are forked from a zygote now.
    pub fn zygote_ready(&self) -> bool {
        self.zygote.ready()
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
        let uid = match self.config.private {
            true => {
                let base = self.config.uid;
                let held = self
                    .states
                    .iter()
                    .filter_map(JobState::uid)
                    .fold(0u64, |held, uid| held | 1u64.checked_shl(uid.wrapping_sub(base)).unwrap_or(0));
                let (uid, fresh) = self.users.choose(run.user, base, held);
                if fresh {
                    users::renew(uid);
                }
                uid
            }
            false => self.config.uid,
        };
        if let Some(cwd) = env.cwd() {
            // As the job will see it: in its user's home or /tmp, if not
            // in the init's view.
            let dir = |path: &core::ffi::CStr| {
                rustix::fs::stat(path).map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
            };
            let cwd_str = core::str::from_utf8(cwd.to_bytes_with_nul()).unwrap_or_default();
            let own = users::path(uid, cwd_str);
            match dir(cwd).or_else(|_| dir(own.as_c_str().unwrap_or_default())) {
                Ok(true) => {}
                Ok(false) => return Err(invalid("cwd: not a directory")),
                Err(_) => return Err(invalid("cwd: no such directory")),
            }
        }
        self.states[i] = JobState::Loading(Loading::new(run, uid)?);
        Ok(())
    }

    /// A restored VM serves a new host: the keys of the old one name no
    /// user any more.
    pub fn forget_users(&mut self) {
        self.users.forget();
    }

    /// `Code`: appends a chunk to a loading job's code; once the code is
    /// complete and passed its checks, starts the job.
    // Out of line: inlined into the request loop, the start was laid out
    // twice (1.8 KB more init).
    #[inline(never)]
    pub fn load(&mut self, id: u32, data: &[u8], poll: &Poll) -> Result<Loaded, Refused> {
        let Some(i) = self.find(id) else {
            return Err(Refused::new(ErrorKind::UnknownJob, "no job with this id"));
        };
        let state = &mut self.states[i];
        let JobState::Loading(job) = state else {
            return Err(Refused::new(ErrorKind::InvalidJob, "code: the job already has all its code"));
        };
        if let Err(refused) = job.feed(data) {
            *state = JobState::Free;
            return Err(refused);
        }
        if !job.complete() {
            return Ok(Loaded::Incomplete);
        }
        self.start(i, poll)
    }

    /// Starts the job loaded in slot `i`, forked from the zygote when it can
    /// be, else exec'd, and watches its pipes and timer.
    fn start(&mut self, i: usize, poll: &Poll) -> Result<Loaded, Refused> {
        let JobState::Loading(mut job) = mem::replace(&mut self.states[i], JobState::Free) else {
            return Err(Refused::new(ErrorKind::UnknownJob, "no job with this id"));
        };
        let failed = Refused::failed;
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
        let program = job.program()?;
        let cgroup = match &mut self.cgroups {
            Some(cgroups) => Some(cgroups.make(self.started, job.memory).map_err(|e| failed("cgroup", e))?),
            None => None,
        };
        let started_ns = sys::boottime_ns();
        let env = &self.envs[i];
        let handoff = Handoff { code: job.code, stdin: stdin_read, out: out_write, err: err_write };
        let fds = handoff.fds(cgroup.as_ref());
        let (pid, handoff, loaded) = if job.zygote && self.zygote.request(job.id, fds, env, job.uid) {
            (None, Some(handoff), Loaded::AskedZygote)
        } else {
            let pid = spawn::spawn(&self.config, program, fds, env, job.uid)
                .map_err(|(what, e)| failed(what, e))?;
            // The code and the write ends are dropped here: the child
            // holds its own copies.
            (Some(pid), None, Loaded::Started(pid))
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
            uid: job.uid,
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
        Ok(loaded)
    }

    /// Starts the zygote unless one runs (see [`WarmPython::start`]).
    pub fn start_zygote(&mut self, poll: &Poll) {
        self.zygote.start(&self.config, poll);
    }

    /// The zygote's replies: which process leads a job, or that it could
    /// not fork one, or that the zygote is gone.
    pub fn on_zygote(&mut self, tx: &mut Tx) {
        while let Some(heard) = self.zygote.next() {
            let (job, pid) = match heard {
                Heard::Forked { job, pid } => (job, Some(pid)),
                Heard::Failed { job } => (job, None),
                Heard::Gone => return self.exec_unforked(tx),
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
            if let Some(exit) = self.early.take(pid) {
                self.on_reaped(pid, exit, tx);
            }
        }
    }

    /// The jobs the zygote had not forked yet (it is gone) are exec'd, with
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
                job.uid,
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
        if self.zygote.reaped(pid) {
            // What it said before it died still counts.
            self.on_zygote(tx);
            self.zygote.end();
            self.exec_unforked(tx);
            return true;
        }
        let leader = self.states.iter().position(
            |s| matches!(s, JobState::Running(r) if r.pid == Some(pid) && r.machine.leader.is_none()),
        );
        let Some(i) = leader else {
            if self.states.iter().any(|s| matches!(s, JobState::Running(r) if r.pid.is_none())) {
                self.early.keep(pid, exit);
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
        self.early.clear();
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
        let uid = job.uid;
        let others_running = self.states.iter().any(|s| matches!(s, JobState::Running(r) if r.uid == uid));
        if self.owns_all && !others_running {
            // A process that left the job's group (setsid, a daemon) would
            // outlive it. With no other job of its user running, every
            // process of that user but the init's belongs to a finished
            // job: end them all, so nothing leaks into the user's next job.
            // They are reaped as orphans. Only the job user's: the zygote
            // and other users' jobs are not leftovers.
            sys::kill_all_of(uid);
        }
        job.end(usage, &mut self.output[..], tx);
    }
}
