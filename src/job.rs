//! The job table: a fixed array of slots, the checks a job must pass before
//! anything runs, and the state machine that decides when a job is over.
//!
//! The machine is pure: it takes what happened (leader reaped, pipe closed,
//! timer fired) and answers with a [`Step`] for the event loop to carry out.

// A refusal is formatted into a fixed buffer (no allocator); returning it by
// value is the price, paid only on the error path.
#![allow(clippy::result_large_err)]

use core::fmt::Write;

use proto::{Exit, Lang, MAX_CODE, Run};
use rustix::fd::OwnedFd;
use rustix::process::Pid;

/// Jobs loading or running at once. A code-execution VM serves one caller;
/// 16 leaves room for a notebook's parallel cells, and every slot costs only
/// its environment block until used.
pub const MAX_JOBS: usize = 16;

/// Bytes of `NAME=value\0` strings (defaults included) plus the working
/// directory a job may carry. 16 KiB is far beyond a normal environment and
/// keeps the whole table small.
pub const ENV_BYTES: usize = 16 * 1024;

/// How long a job whose leader has exited may keep its pipes open (a
/// background process that inherited them) before it is declared over and
/// its process group killed. Long enough for a child's last words, short
/// enough that `sleep 1000 &` does not hold the caller.
pub const DRAIN_GRACE_MS: u32 = 500;

/// Between SIGTERM and SIGKILL when a job times out: time to flush and exit.
pub const TERM_GRACE_MS: u32 = 500;

/// A refusal naming the field at fault, e.g. `env[2].name: contains '='`.
pub type Refusal = heapless::String<128>;

fn refuse(args: core::fmt::Arguments<'_>) -> Refusal {
    let mut text = Refusal::new();
    let _ = text.write_fmt(args);
    text
}

/// Checks a job's header; nothing is created when it fails.
pub fn check_run(run: &Run<'_>) -> Result<(), Refusal> {
    if let Lang::Unknown(n) = run.lang {
        return Err(refuse(format_args!("lang: unknown language {n} (0 = python, 1 = shell)")));
    }
    if run.code_len == 0 {
        return Err(refuse(format_args!("code: empty")));
    }
    if run.code_len > MAX_CODE {
        return Err(refuse(format_args!("code: {} bytes, more than {MAX_CODE}", run.code_len)));
    }
    for (i, var) in run.env.iter().enumerate() {
        let name = var.name.as_bytes();
        if name.is_empty() {
            return Err(refuse(format_args!("env[{i}].name: empty")));
        }
        if name.contains(&b'=') {
            return Err(refuse(format_args!("env[{i}].name: contains '='")));
        }
        if name.contains(&0) {
            return Err(refuse(format_args!("env[{i}].name: contains a NUL byte")));
        }
        if var.value.as_bytes().contains(&0) {
            return Err(refuse(format_args!("env[{i}].value: contains a NUL byte")));
        }
    }
    if let Some(cwd) = run.cwd {
        if cwd.is_empty() {
            return Err(refuse(format_args!("cwd: empty")));
        }
        if cwd.as_bytes().contains(&0) {
            return Err(refuse(format_args!("cwd: contains a NUL byte")));
        }
    }
    Ok(())
}

/// What the code seen so far looks like: enough to refuse empty or
/// NUL-bearing code once the last chunk is in, without keeping the code.
#[derive(Default, Clone, Copy, Debug)]
pub struct CodeCheck {
    pub seen: u32,
    has_text: bool,
    nul_at: Option<u32>,
}

impl CodeCheck {
    pub fn feed(&mut self, chunk: &[u8]) {
        // Chunks are at most MAX_CHUNK and code at most MAX_CODE: the
        // saturating conversions never saturate.
        if self.nul_at.is_none()
            && let Some(i) = chunk.iter().position(|&b| b == 0)
        {
            self.nul_at = Some(self.seen.saturating_add(u32::try_from(i).unwrap_or(u32::MAX)));
        }
        self.has_text |= chunk.iter().any(|b| !b.is_ascii_whitespace());
        self.seen = self.seen.saturating_add(u32::try_from(chunk.len()).unwrap_or(u32::MAX));
    }

    pub fn verdict(&self) -> Result<(), Refusal> {
        if let Some(at) = self.nul_at {
            return Err(refuse(format_args!("code: contains a NUL byte at offset {at}")));
        }
        if !self.has_text {
            return Err(refuse(format_args!("code: only whitespace")));
        }
        Ok(())
    }
}

/// A job's environment strings and working directory, laid out as the
/// `NAME=value\0` strings `execve` takes.
pub struct EnvBlock {
    bytes: [u8; ENV_BYTES],
    len: usize,
    /// Start of each variable in `bytes`.
    starts: heapless::Vec<u16, { proto::MAX_ENV + DEFAULT_ENV.len() + 1 }>,
    /// Start of the working directory string in `bytes`.
    cwd: Option<u16>,
}

/// Variables every job gets unless it sets them itself. HOME is added from
/// the configured home.
pub const DEFAULT_ENV: [(&str, &str); 6] = [
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("LANG", "C.UTF-8"),
    ("USER", "user"),
    ("TMPDIR", "/tmp"),
    // Output streams as it is produced instead of at exit.
    ("PYTHONUNBUFFERED", "1"),
    // The root is read-only; do not even try to write bytecode.
    ("PYTHONDONTWRITEBYTECODE", "1"),
];

impl EnvBlock {
    pub const fn new() -> Self {
        Self { bytes: [0; ENV_BYTES], len: 0, starts: heapless::Vec::new(), cwd: None }
    }

    /// Fills the block from a job header: its variables, then the defaults
    /// (and HOME) it did not set, then its working directory.
    pub fn fill(&mut self, run: &Run<'_>, home: &[u8]) -> Result<(), Refusal> {
        self.len = 0;
        self.starts.clear();
        self.cwd = None;
        let full = || refuse(format_args!("env: more than {ENV_BYTES} bytes"));
        for var in &run.env {
            if self.find(var.name.as_bytes()).is_none() {
                self.push(&[var.name.as_bytes(), b"=", var.value.as_bytes()]).ok_or_else(full)?;
            }
        }
        for (name, value) in DEFAULT_ENV {
            if self.find(name.as_bytes()).is_none() {
                self.push(&[name.as_bytes(), b"=", value.as_bytes()]).ok_or_else(full)?;
            }
        }
        if self.find(b"HOME").is_none() {
            self.push(&[b"HOME=", home]).ok_or_else(full)?;
        }
        if let Some(cwd) = run.cwd {
            let start = u16::try_from(self.len).map_err(|_| full())?;
            self.append(&[cwd.as_bytes()]).ok_or_else(full)?;
            self.cwd = Some(start);
        }
        Ok(())
    }

    fn find(&self, name: &[u8]) -> Option<usize> {
        self.starts.iter().map(|&s| usize::from(s)).find(|&s| {
            let var = &self.bytes[s..];
            var.starts_with(name) && var.get(name.len()) == Some(&b'=')
        })
    }

    fn push(&mut self, parts: &[&[u8]]) -> Option<()> {
        // ENV_BYTES fits u16, and `append` keeps `len` within it.
        let start = u16::try_from(self.len).ok()?;
        self.append(parts)?;
        self.starts.push(start).ok()
    }

    /// Appends the parts and a NUL.
    fn append(&mut self, parts: &[&[u8]]) -> Option<()> {
        let size: usize = parts.iter().map(|p| p.len()).sum::<usize>() + 1;
        if self.len + size > ENV_BYTES {
            return None;
        }
        for part in parts {
            self.bytes[self.len..self.len + part.len()].copy_from_slice(part);
            self.len += part.len();
        }
        self.bytes[self.len] = 0;
        self.len += 1;
        Some(())
    }

    /// `NAME=value` of each variable, NUL-terminated.
    pub fn vars(&self) -> impl Iterator<Item = &core::ffi::CStr> {
        self.starts.iter().map(|&s| self.c_str_at(usize::from(s)))
    }

    pub fn cwd(&self) -> Option<&core::ffi::CStr> {
        self.cwd.map(|start| self.c_str_at(usize::from(start)))
    }

    fn c_str_at(&self, start: usize) -> &core::ffi::CStr {
        // Every start points at a string `append` terminated with a NUL, and
        // checks rejected NULs inside names, values and cwd.
        core::ffi::CStr::from_bytes_until_nul(&self.bytes[start..]).unwrap_or(c"")
    }
}

/// Output accounting for one stream of a job.
#[derive(Clone, Copy, Debug)]
pub struct Sink {
    pub limit: u32,
    pub sent: u32,
    pub truncated: bool,
}

impl Sink {
    pub const fn new(limit: u32) -> Self {
        Self { limit, sent: 0, truncated: false }
    }

    /// Of `n` bytes just read, how many to forward; the rest are dropped and
    /// the stream flagged as truncated.
    pub fn admit(&mut self, n: usize) -> usize {
        let room = usize::try_from(self.limit - self.sent).unwrap_or(usize::MAX);
        let take = n.min(room);
        // take <= room, which came from a u32.
        self.sent += u32::try_from(take).unwrap_or(0);
        if take < n {
            self.truncated = true;
        }
        take
    }
}

/// Where a running job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The leader runs; the timer holds the deadline (if any).
    Running,
    /// The deadline passed and the group got SIGTERM; the timer holds the
    /// grace before SIGKILL.
    Terminating,
    /// The leader was reaped but a pipe is still open; the timer holds the
    /// drain grace.
    Draining,
}

/// What the event loop must do after the machine saw something happen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Send this signal to the job's process group.
    pub signal: Option<u8>,
    /// (Re)arm the job's timer for this many milliseconds.
    pub arm_ms: Option<u32>,
    /// The job is over: kill its group, report it, free the slot.
    pub finish: bool,
}

// Signal numbers are below 65.
#[allow(clippy::cast_possible_truncation)]
pub const SIGTERM: u8 = linux_raw_sys::general::SIGTERM as u8;
#[allow(clippy::cast_possible_truncation)]
pub const SIGKILL: u8 = linux_raw_sys::general::SIGKILL as u8;

/// The life of a running job, without its descriptors.
#[derive(Clone, Copy, Debug)]
pub struct Machine {
    pub phase: Phase,
    pub leader: Option<Exit>,
    /// stdout, stderr still open.
    pub open: [bool; 2],
    pub timed_out: bool,
}

impl Machine {
    pub const fn new() -> Self {
        Self { phase: Phase::Running, leader: None, open: [true, true], timed_out: false }
    }

    fn done(&self) -> bool {
        self.leader.is_some() && self.open == [false, false]
    }

    /// The leader was reaped.
    pub fn leader_exited(&mut self, exit: Exit) -> Step {
        self.leader = Some(exit);
        if self.done() {
            return Step { finish: true, ..Step::default() };
        }
        self.phase = Phase::Draining;
        Step { arm_ms: Some(DRAIN_GRACE_MS), ..Step::default() }
    }

    /// A pipe reached end of file (every writer closed it).
    pub fn pipe_closed(&mut self, stream: usize) -> Step {
        self.open[stream] = false;
        Step { finish: self.done(), ..Step::default() }
    }

    /// The job's timer fired.
    pub fn timer_fired(&mut self) -> Step {
        match self.phase {
            Phase::Running => {
                self.timed_out = true;
                self.phase = Phase::Terminating;
                Step { signal: Some(SIGTERM), arm_ms: Some(TERM_GRACE_MS), finish: false }
            }
            Phase::Terminating => Step { signal: Some(SIGKILL), ..Step::default() },
            Phase::Draining => Step { finish: true, ..Step::default() },
        }
    }
}

/// A job whose code is still arriving.
pub struct Loading {
    pub id: u32,
    pub lang: Lang,
    /// The code so far, in a memfd the interpreter will read.
    pub code: OwnedFd,
    pub code_len: u32,
    pub check: CodeCheck,
    pub timeout_ms: u32,
    pub limits: [u32; 2],
}

/// A job whose interpreter was forked.
pub struct Running {
    pub id: u32,
    /// The leader, which is also the process group id.
    pub pid: Pid,
    /// stdout and stderr read ends; `None` once at end of file.
    pub pipes: [Option<OwnedFd>; 2],
    pub timer: OwnedFd,
    pub machine: Machine,
    pub sinks: [Sink; 2],
    pub started_ns: u64,
}

impl Running {
    /// Sends `signal` to the job's process group. Right after fork the child
    /// may not have called setsid yet, so no group has the leader's id
    /// (ESRCH): the leader is then the whole job, and gets the signal alone
    /// (held pending by its inherited mask until just before exec). Once the
    /// leader is reaped its pid may be reused, so it is never signalled alone.
    pub fn signal(&self, signal: u8) -> rustix::io::Result<()> {
        match crate::sys::kill_group(self.pid, signal) {
            Err(rustix::io::Errno::SRCH) if self.machine.leader.is_none() => {
                crate::sys::kill_process(self.pid, signal)
            }
            result => result,
        }
    }
}

pub enum JobState {
    Free,
    Loading(Loading),
    Running(Running),
}

impl JobState {
    pub fn id(&self) -> Option<u32> {
        match self {
            JobState::Free => None,
            JobState::Loading(l) => Some(l.id),
            JobState::Running(r) => Some(r.id),
        }
    }
}

pub struct Slot {
    pub state: JobState,
    pub env: EnvBlock,
}

/// Every job the init knows about, in fixed slots.
pub struct JobTable {
    pub slots: [Slot; MAX_JOBS],
}

impl JobTable {
    pub fn new() -> Self {
        Self { slots: core::array::from_fn(|_| Slot { state: JobState::Free, env: EnvBlock::new() }) }
    }

    pub fn find(&self, id: u32) -> Option<usize> {
        self.slots.iter().position(|s| s.state.id() == Some(id))
    }

    pub fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| matches!(s.state, JobState::Free))
    }

    /// The running job whose leader is `pid`, if its leader is not reaped yet.
    pub fn by_leader(&self, pid: Pid) -> Option<usize> {
        self.slots.iter().position(
            |s| matches!(&s.state, JobState::Running(r) if r.pid == pid && r.machine.leader.is_none()),
        )
    }

    pub fn active(&self) -> u32 {
        // At most MAX_JOBS.
        u32::try_from(self.slots.iter().filter(|s| !matches!(s.state, JobState::Free)).count()).unwrap_or(0)
    }
}

impl Default for Machine {
    fn default() -> Self {
        Self::new()
    }
}

impl Default for JobTable {
    fn default() -> Self {
        Self::new()
    }
}

impl Default for EnvBlock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Env;

    fn run<'a>(env: &[Env<'a>], cwd: Option<&'a str>) -> Run<'a> {
        Run {
            job: 1,
            lang: Lang::Python,
            code_len: 10,
            env: env.iter().cloned().collect(),
            cwd,
            timeout_ms: 0,
            stdout_limit: 10,
            stderr_limit: 10,
        }
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: [(Run, &str); 8] = [
            (Run { lang: Lang::Unknown(7), ..run(&[], None) }, "lang:"),
            (Run { code_len: 0, ..run(&[], None) }, "code: empty"),
            (Run { code_len: MAX_CODE + 1, ..run(&[], None) }, "code:"),
            (run(&[Env { name: "", value: "x" }], None), "env[0].name: empty"),
            (
                run(&[Env { name: "A", value: "1" }, Env { name: "B=C", value: "x" }], None),
                "env[1].name: contains '='",
            ),
            (run(&[Env { name: "A\0", value: "x" }], None), "env[0].name: contains a NUL"),
            (run(&[Env { name: "A", value: "x\0y" }], None), "env[0].value: contains a NUL"),
            (run(&[], Some("")), "cwd: empty"),
        ];
        for (r, want) in cases {
            let got = check_run(&r).unwrap_err();
            assert!(got.starts_with(want), "{got} does not start with {want}");
        }
        assert!(check_run(&run(&[Env { name: "A", value: "" }], Some("/tmp"))).is_ok());
        assert!(check_run(&Run { code_len: MAX_CODE, ..run(&[], None) }).is_ok());
    }

    #[test]
    fn code_check_across_chunks() {
        let mut c = CodeCheck::default();
        c.feed(b"  \n\t");
        assert!(c.verdict().unwrap_err().contains("whitespace"));
        c.feed(b"x");
        assert!(c.verdict().is_ok());
        c.feed(b"ab\0");
        assert!(c.verdict().unwrap_err().ends_with("offset 7"));
        assert_eq!(c.seen, 8);
    }

    #[test]
    fn env_block_overrides_defaults_and_keeps_cwd() {
        let mut block = EnvBlock::new();
        let r = run(&[Env { name: "PATH", value: "/opt" }, Env { name: "X", value: "a=b" }], Some("/work"));
        block.fill(&r, b"/home/user").unwrap();
        let vars: Vec<_> = block.vars().map(|v| v.to_str().unwrap().to_owned()).collect();
        assert_eq!(vars[0], "PATH=/opt");
        assert_eq!(vars[1], "X=a=b");
        assert_eq!(vars.iter().filter(|v| v.starts_with("PATH=")).count(), 1);
        assert!(vars.contains(&"HOME=/home/user".to_owned()));
        assert!(vars.contains(&"PYTHONUNBUFFERED=1".to_owned()));
        assert_eq!(block.cwd(), Some(c"/work"));

        let big = "v".repeat(ENV_BYTES);
        let r = run(&[Env { name: "BIG", value: &big }], None);
        assert!(block.fill(&r, b"/h").unwrap_err().starts_with("env: more than"));
    }

    #[test]
    fn sink_truncates_at_the_limit() {
        let mut s = Sink::new(10);
        assert_eq!(s.admit(4), 4);
        assert!(!s.truncated);
        assert_eq!(s.admit(8), 6);
        assert!(s.truncated);
        assert_eq!(s.admit(5), 0);
        assert_eq!(s.sent, 10);
    }

    #[test]
    fn job_ends_when_leader_reaped_and_pipes_drained() {
        let mut m = Machine::new();
        assert_eq!(m.pipe_closed(0), Step::default());
        assert_eq!(m.pipe_closed(1), Step::default());
        assert!(m.leader_exited(Exit::Code(0)).finish);

        let mut m = Machine::new();
        assert!(!m.leader_exited(Exit::Code(3)).finish);
        assert!(!m.pipe_closed(1).finish);
        assert!(m.pipe_closed(0).finish);
    }

    #[test]
    fn background_holder_ends_after_drain_grace() {
        let mut m = Machine::new();
        let step = m.leader_exited(Exit::Code(0));
        assert_eq!(step.arm_ms, Some(DRAIN_GRACE_MS));
        assert_eq!(m.phase, Phase::Draining);
        assert!(m.timer_fired().finish);
        assert!(!m.timed_out);
    }

    #[test]
    fn timeout_terms_then_kills() {
        let mut m = Machine::new();
        let step = m.timer_fired();
        assert_eq!(step, Step { signal: Some(SIGTERM), arm_ms: Some(TERM_GRACE_MS), finish: false });
        assert!(m.timed_out);
        assert_eq!(m.timer_fired().signal, Some(SIGKILL));
        let step = m.leader_exited(Exit::Signal(9));
        assert_eq!(step.arm_ms, Some(DRAIN_GRACE_MS));
        m.pipe_closed(0);
        assert!(m.pipe_closed(1).finish);
        assert!(m.timed_out);
    }
}
