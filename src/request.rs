//! Requests from the host: opening a job, loading its code, starting it,
//! signalling it. Every refusal is an `Error` event naming the job and the
//! field; nothing runs for a refused job.

use core::mem;

use proto::{ErrorKind, Event, Request, Run, Stats};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{FileType, MemfdFlags};
use rustix::io::Errno;
use rustix::time::{TimerfdClockId, TimerfdFlags};

use crate::config::Config;
use crate::job::{self, JobState, JobTable, Loading, Machine, Running, Sink};
use crate::port::Tx;
use crate::serve::{TIMER, arm, job_token, now_ns, watch};
use crate::spawn::{self, describe};

/// The parts of the server a request may touch.
pub struct Ctx<'a> {
    pub config: &'a Config,
    pub epoll: &'a OwnedFd,
    pub tx: &'a mut Tx,
    pub jobs: &'a mut JobTable,
    /// Pipe reads are paused (a new job's pipes start paused too).
    pub paused: bool,
    pub jobs_started: &'a mut u32,
    pub orphans_reaped: u32,
}

pub fn handle(ctx: Ctx<'_>, request: Request<'_>) {
    match request {
        Request::Run(run) => open_job(ctx, &run),
        Request::Code { job, data } => {
            if let Some(i) = load_code(ctx.jobs, ctx.tx, job, data) {
                start_job(ctx, i);
            }
        }
        Request::Signal { job, signal } => signal_job(ctx, job, signal),
        Request::Ping { seq } => {
            let stats = Stats {
                jobs_active: ctx.jobs.active(),
                jobs_started: *ctx.jobs_started,
                orphans_reaped: ctx.orphans_reaped,
            };
            ctx.tx.send(&Event::Pong { seq, stats });
        }
        // Handled by the loop, which owns the way out.
        Request::Shutdown => {}
    }
}

fn open_job(ctx: Ctx<'_>, run: &Run<'_>) {
    let id = Some(run.job);
    if ctx.jobs.find(run.job).is_some() {
        return error(ctx.tx, id, ErrorKind::DuplicateJob, "a job with this id is loading or running");
    }
    if let Err(why) = job::check_run(run) {
        return error(ctx.tx, id, ErrorKind::InvalidJob, &why);
    }
    let Some(i) = ctx.jobs.free_slot() else {
        return error(ctx.tx, id, ErrorKind::Busy, "all job slots are in use");
    };
    let slot = &mut ctx.jobs.slots[i];
    if let Err(why) = slot.env.fill(run, ctx.config.home.to_bytes()) {
        return error(ctx.tx, id, ErrorKind::InvalidJob, &why);
    }
    if let Some(cwd) = slot.env.cwd() {
        match rustix::fs::stat(cwd) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
            Ok(_) => return error(ctx.tx, id, ErrorKind::InvalidJob, "cwd: not a directory"),
            Err(_) => return error(ctx.tx, id, ErrorKind::InvalidJob, "cwd: no such directory"),
        }
    }
    let code = match rustix::fs::memfd_create(c"job", MemfdFlags::CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => return error(ctx.tx, id, ErrorKind::Spawn, describe(e)),
    };
    slot.state = JobState::Loading(Loading {
        id: run.job,
        lang: run.lang,
        code,
        code_len: run.code_len,
        check: job::CodeCheck::default(),
        timeout_ms: run.timeout_ms,
        limits: [run.stdout_limit, run.stderr_limit],
    });
}

/// Appends a chunk to a loading job's code; the job's slot once the code is
/// complete and passed its checks.
fn load_code(jobs: &mut JobTable, tx: &mut Tx, id: u32, data: &[u8]) -> Option<usize> {
    let Some(i) = jobs.find(id) else {
        error(tx, Some(id), ErrorKind::UnknownJob, "no job with this id");
        return None;
    };
    let slot = &mut jobs.slots[i];
    let JobState::Loading(job) = &mut slot.state else {
        error(tx, Some(id), ErrorKind::InvalidJob, "code: the job already has all its code");
        return None;
    };
    let refusal = if u64::from(job.check.seen) + data.len() as u64 > u64::from(job.code_len) {
        Some((ErrorKind::InvalidJob, "code: more bytes than code_len"))
    } else if let Err(e) = write_all(job.code.as_fd(), data) {
        Some((ErrorKind::Spawn, describe(e)))
    } else {
        job.check.feed(data);
        None
    };
    if let Some((kind, why)) = refusal {
        slot.state = JobState::Free;
        error(tx, Some(id), kind, why);
        return None;
    }
    if job.check.seen < job.code_len {
        return None;
    }
    if let Err(why) = job.check.verdict() {
        slot.state = JobState::Free;
        error(tx, Some(id), ErrorKind::InvalidJob, &why);
        return None;
    }
    Some(i)
}

/// Forks the job loaded in slot `i`.
fn start_job(ctx: Ctx<'_>, i: usize) {
    let slot = &mut ctx.jobs.slots[i];
    let JobState::Loading(job) = mem::replace(&mut slot.state, JobState::Free) else { return };
    let id = job.id;
    let timer = match rustix::time::timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    ) {
        Ok(timer) => timer,
        Err(e) => return error(ctx.tx, Some(id), ErrorKind::Spawn, describe(e)),
    };
    let started_ns = now_ns();
    let spawned = match spawn::spawn(ctx.config, job.lang, job.code.as_fd(), &slot.env) {
        Ok(spawned) => spawned,
        Err((what, e)) => {
            let mut text = job::Refusal::new();
            let _ = core::fmt::Write::write_fmt(
                &mut text,
                format_args!("cannot start the job: {what}: {}", describe(e)),
            );
            return error(ctx.tx, Some(id), ErrorKind::Spawn, &text);
        }
    };
    // The code memfd is dropped here: the child holds its own copy.
    let [stdout, stderr] = spawned.pipes;
    for (stream, pipe) in [&stdout, &stderr].into_iter().enumerate() {
        let _ = watch(ctx.epoll, pipe, job_token(i, stream), !ctx.paused);
    }
    let _ = watch(ctx.epoll, &timer, job_token(i, TIMER), true);
    if job.timeout_ms > 0 {
        arm(&timer, job.timeout_ms);
    }
    slot.state = JobState::Running(Running {
        id,
        pid: spawned.pid,
        pipes: [Some(stdout), Some(stderr)],
        timer,
        machine: Machine::new(),
        sinks: [Sink::new(job.limits[0]), Sink::new(job.limits[1])],
        started_ns,
    });
    *ctx.jobs_started += 1;
    ctx.tx.send(&Event::Started { job: id, pid: spawned.pid.as_raw_pid() as u32 });
}

fn signal_job(ctx: Ctx<'_>, id: u32, signal: u8) {
    let Some(i) = ctx.jobs.find(id) else {
        return error(ctx.tx, Some(id), ErrorKind::UnknownJob, "no job with this id");
    };
    match &ctx.jobs.slots[i].state {
        JobState::Running(job) => {
            if job.signal(signal).is_err() {
                error(ctx.tx, Some(id), ErrorKind::InvalidJob, "signal: not a signal number");
            }
        }
        _ => {
            // Cancelled before it started: nothing ran.
            ctx.jobs.slots[i].state = JobState::Free;
            error(ctx.tx, Some(id), ErrorKind::InvalidJob, "signal: the job was cancelled before it started");
        }
    }
}

pub fn error(tx: &mut Tx, job: Option<u32>, kind: ErrorKind, message: &str) {
    tx.send(&Event::Error { job, kind, message });
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
