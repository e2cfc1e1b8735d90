//! What the transports and their callers share: a job as a caller
//! describes it, the init's events owned, a finished job's outcome, the
//! signals a host may send, and [`Runner`], which either transport is.

use std::time::Duration;

use proto::{ErrorKind, Event, Exit, Exited, Lang, Stats, Stream};

use crate::error::AgentError;

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
    /// use [`Agent::run_with_input`](crate::Agent::run_with_input).
    pub stdin: Option<Vec<u8>>,
    /// Memory all the job's processes may use together, in MiB; `None`:
    /// the guest's default (three quarters of its memory). Past it, the
    /// job is OOM-killed, its neighbours are not.
    pub memory_limit_mb: Option<u32>,
    /// The guest user to run as, by key: jobs with the same key share one
    /// user (its uid, home and `/tmp`), so they may see each other's
    /// files and processes; `None`: a user of its own (its key is its
    /// id), unless file operations came first on the connection, whose
    /// user it then takes (see [`Runner::files_user`]).
    pub user: Option<u32>,
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
            user: None,
        }
    }

    pub fn python(code: impl Into<Vec<u8>>) -> Self {
        Self::new(Lang::Python, code)
    }

    pub fn shell(code: impl Into<Vec<u8>>) -> Self {
        Self::new(Lang::Shell, code)
    }
}

/// A signal the host may send to a job's process group, named as the init
/// takes them (Linux numbers on x86_64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Hangup = 1,
    /// What Ctrl-C sends: Python raises `KeyboardInterrupt`.
    Interrupt = 2,
    Quit = 3,
    Kill = 9,
    User1 = 10,
    User2 = 12,
    Terminate = 15,
    Continue = 18,
    Stop = 19,
}

impl Signal {
    pub fn number(self) -> u8 {
        self as u8
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

impl GuestEvent {
    /// The job this event is about, if any.
    pub fn job(&self) -> Option<u32> {
        match self {
            GuestEvent::Started { job, .. }
            | GuestEvent::Output { job, .. }
            | GuestEvent::StdinTaken { job, .. } => Some(*job),
            GuestEvent::Exited(e) => Some(e.job),
            GuestEvent::Error { job, .. } => *job,
            GuestEvent::Ready { .. } | GuestEvent::Pong { .. } => None,
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

/// Whatever runs a job to its end: either transport. The guest helpers
/// (files, sessions) are written against this.
pub trait Runner {
    fn run_job(&mut self, job: &Job, on_output: &mut dyn FnMut(Stream, &[u8]))
    -> Result<Outcome, AgentError>;

    /// The user that file operations without one of their own act on: the
    /// user of the connection's latest job that did not name one, or,
    /// before any, a new user that the next such job takes (so files put
    /// in before a job are its own, and files read after it are its).
    fn files_user(&mut self) -> u32;
}

/// A runner whose jobs and file operations all run as one guest user:
/// those of a session, or of a run and the files put in and taken out
/// around it. A job that names a user of its own keeps it.
pub struct AsUser<R> {
    pub runner: R,
    pub user: u32,
}

impl<R: Runner> Runner for AsUser<R> {
    fn run_job(
        &mut self,
        job: &Job,
        on_output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<Outcome, AgentError> {
        if job.user.is_some() {
            return self.runner.run_job(job, on_output);
        }
        let job = Job { user: Some(self.user), ..job.clone() };
        self.runner.run_job(&job, on_output)
    }

    fn files_user(&mut self) -> u32 {
        self.user
    }
}
