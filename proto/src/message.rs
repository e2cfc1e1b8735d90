//! The messages: [`Request`] from host to init, [`Event`] from init to host.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::MAX_ENV;

/// Host → init.
// `Run` carries its environment inline (no allocator in the init to box it);
// a request lives on the init's stack for one call, so its size is harmless.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request<'a> {
    /// Opens a job. Its code follows in [`Request::Code`] chunks; the job
    /// starts when `code_len` bytes have arrived.
    Run(#[serde(borrow)] Run<'a>),
    /// The next piece of a job's code, at most [`crate::MAX_CHUNK`] bytes.
    Code { job: u32, data: &'a [u8] },
    /// Sends a signal to the job's whole process group.
    Signal { job: u32, signal: u8 },
    /// Asks for a [`Event::Pong`] carrying `seq` and the init's counters.
    Ping { seq: u32 },
    /// Kills every process, syncs and powers the VM off.
    Shutdown,
    /// The first message to a VM restored from a snapshot, which woke up
    /// with its template's clock and random state: set CLOCK_REALTIME to
    /// `realtime_ns` (since the Unix epoch), credit `entropy` to the kernel
    /// and reseed its CRNG, then answer [`Event::Pong`] with `seq` (or an
    /// [`ErrorKind::Refresh`] error).
    Refresh { seq: u32, realtime_ns: u64, entropy: &'a [u8] },
    /// The next bytes of the stdin of a job started with `Run.stdin`, at
    /// most [`crate::MAX_CHUNK`]; `end`: no more follow, the job reads end
    /// of file once it has read these. The host keeps at most
    /// [`crate::STDIN_WINDOW`] bytes sent but not yet acknowledged by
    /// [`Event::StdinTaken`].
    Stdin { job: u32, data: &'a [u8], end: bool },
}

/// Number of [`Request`] variants: a frame whose tag is at or past this is a
/// message from a newer host, reported as [`ErrorKind::UnknownMessage`].
pub const REQUEST_VARIANTS: u8 = 7;

/// Most bytes of entropy one [`Request::Refresh`] carries: what the kernel's
/// CRNG takes in one go (it hashes its input pool into a 32-byte key).
pub const MAX_ENTROPY: usize = 256;

/// The header of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run<'a> {
    /// Chosen by the host, unique among the jobs not yet exited.
    pub job: u32,
    pub lang: Lang,
    /// Total code bytes that follow in `Code` chunks (1 ..= `MAX_CODE`).
    pub code_len: u32,
    /// Added to (and overriding) the job's default environment.
    #[serde(borrow)]
    pub env: heapless::Vec<Env<'a>, MAX_ENV>,
    /// Working directory; the job user's home when `None`.
    pub cwd: Option<&'a str>,
    /// Wall-clock limit from start; 0 means none.
    pub timeout_ms: u32,
    /// Bytes of stdout forwarded before the rest is dropped and flagged.
    pub stdout_limit: u32,
    /// Bytes of stderr forwarded before the rest is dropped and flagged.
    pub stderr_limit: u32,
    /// Python only: exec a fresh interpreter even where a warm one (the
    /// zygote) could be forked.
    pub fresh: bool,
    /// The job's stdin is a pipe the host feeds with [`Request::Stdin`];
    /// else it is `/dev/null`.
    pub stdin: bool,
    /// Memory the job's processes may use together, in MiB (its cgroup's
    /// `memory.max`); 0: the init's default (three quarters of the VM's).
    pub memory_limit_mb: u32,
    /// The job's user, named by a key the host chooses: jobs with the same
    /// key run as one guest user and share its home and `/tmp` (a
    /// session's file operations, a run's uploads and downloads); `None`:
    /// a user of its own. A key's first job gets a user no running job
    /// has, with an empty home.
    pub user: Option<u32>,
}

/// One environment variable of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Env<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

/// The interpreter a job's code is for.
///
/// Encoded as the varint of its number, like a unit enum; a number this side
/// does not know decodes as `Unknown` so that the init can refuse the job by
/// name instead of rejecting the whole frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Python,
    Shell,
    Unknown(u32),
}

impl Lang {
    fn number(self) -> u32 {
        match self {
            Lang::Python => 0,
            Lang::Shell => 1,
            Lang::Unknown(n) => n,
        }
    }
}

impl Serialize for Lang {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.number())
    }
}

impl<'de> Deserialize<'de> for Lang {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match u32::deserialize(d)? {
            0 => Lang::Python,
            1 => Lang::Shell,
            n => Lang::Unknown(n),
        })
    }
}

/// Init → host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event<'a> {
    /// First frame after boot. Times are CLOCK_BOOTTIME in nanoseconds: when
    /// the init's `_start` ran and when it was ready to serve.
    Ready { version: u16, start_ns: u64, ready_ns: u64 },
    /// The job's interpreter was forked.
    Started { job: u32, pid: u32 },
    /// Bytes the job wrote, in order, exactly as written.
    Output { job: u32, stream: Stream, data: &'a [u8] },
    /// The job is over: its leader was reaped and its pipes drained.
    Exited(Exited),
    /// A request was refused or failed; `job` names the job it concerns.
    Error { job: Option<u32>, kind: ErrorKind, message: &'a str },
    /// Answer to `Ping`.
    Pong { seq: u32, stats: Stats },
    /// `bytes` more of the job's stdin left the init for the job's pipe
    /// (or were dropped because the job closed its stdin): the host may
    /// send that many more.
    StdinTaken { job: u32, bytes: u32 },
}

/// Which output pipe bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The end of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exited {
    pub job: u32,
    /// How the job's leader process ended.
    pub exit: Exit,
    /// The deadline passed and the job was killed.
    pub timed_out: bool,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// From fork to the end of the job, in microseconds.
    pub duration_us: u64,
    /// Most memory the job's processes used at once, in bytes (0 where the
    /// init has no cgroups: outside a VM).
    pub peak_memory: u64,
    /// CPU time of all the job's processes, user and system, in
    /// microseconds (0 without cgroups).
    pub cpu_us: u64,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exit {
    Code(u8),
    Signal(u8),
}

impl Exit {
    /// The shell's convention: the code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => i32::from(c),
            Exit::Signal(n) => 128 + i32::from(n),
        }
    }
}

/// What went wrong, for the host to act on without parsing the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// A frame that does not decode as a `Request`.
    Malformed,
    /// A frame larger than `MAX_FRAME`; it was dropped.
    Oversize,
    /// A well-formed frame with a message tag this init does not know.
    UnknownMessage,
    /// A job field is invalid; the message names the field. Nothing ran.
    InvalidJob,
    /// All job slots are taken.
    Busy,
    /// No job has this id.
    UnknownJob,
    /// A job with this id is still loading or running.
    DuplicateJob,
    /// The init could not set the job up (pipes, memfd, fork).
    Spawn,
    /// A [`Request::Refresh`] failed: the clock or the entropy was not taken.
    Refresh,
}

/// The init's counters since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Jobs loading or running now.
    pub jobs_active: u32,
    /// Jobs started since boot.
    pub jobs_started: u32,
    /// Processes reaped that were not a job's leader.
    pub orphans_reaped: u32,
    /// The Python zygote is up: Python jobs are forked from it.
    pub zygote: bool,
}
