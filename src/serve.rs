//! The event loop: one thread, one epoll set over the agent port, the
//! signalfd, and each job's pipes and timer. Nothing blocks, and with no job
//! and no request the init sleeps in `epoll_wait` with no timeout.

use core::mem::{self, MaybeUninit};

use proto::{
    ErrorKind, Event, Exit, Exited, Frame, FrameReader, MAX_CHUNK, MAX_FRAME, Request, Run, Stats, Stream,
};
use rustix::event::epoll;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{FileType, MemfdFlags};
use rustix::io::Errno;
use rustix::process::{WaitOptions, WaitStatus};
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};

use crate::config::{Config, USAGE};
use crate::job::{self, JobState, JobTable, Loading, MAX_JOBS, Machine, Running, SIGKILL, Sink, Step};
use crate::log::Os;
use crate::spawn::{self, describe};
use crate::sys::{self, SigSet};
use crate::{boot, log};

/// epoll tokens: three fixed ones, then [`PER_JOB`] per job slot.
const PORT_RX: u64 = 0;
const PORT_TX: u64 = 1;
const SIGNALS: u64 = 2;
const JOB_BASE: u64 = 16;
/// stdout pipe, stderr pipe, timer.
const PER_JOB: usize = 3;
const TIMER: usize = 2;

/// Events taken per `epoll_wait`: one per job descriptor and the fixed ones
/// fit, so one round sees everything that is ready.
const EVENTS: usize = MAX_JOBS * PER_JOB + 3;

/// Bytes of events waiting for the host. Pipe reads stop while less than one
/// frame of room is left, so job output waits in its pipes (and the jobs
/// block on write) instead of in the init's memory.
pub const TX_CAP: usize = 4 * MAX_FRAME;

/// Reads of a pipe at a job's end, after its group is killed: a full pipe
/// (64 KiB) is two reads of `MAX_CHUNK`; four leave margin.
const FINAL_READS: usize = 4;

/// Signals the init holds back and reads from its signalfd instead.
const HANDLED: SigSet = SigSet::new()
    .with(linux_raw_sys::general::SIGCHLD)
    .with(linux_raw_sys::general::SIGTERM)
    .with(linux_raw_sys::general::SIGINT)
    .with(linux_raw_sys::general::SIGPWR);

/// Blocked but never read: a write to a vanished host fails with EPIPE
/// instead of killing the init; HUP and QUIT mean nothing to it.
const BLOCKED: SigSet = HANDLED
    .with(linux_raw_sys::general::SIGPIPE)
    .with(linux_raw_sys::general::SIGHUP)
    .with(linux_raw_sys::general::SIGQUIT);

/// CLOCK_BOOTTIME in nanoseconds: the clock the kernel's own boot counts in.
pub fn now_ns() -> u64 {
    sys::boottime_ns()
}

/// Events queued for the host, written as fast as the port takes them.
struct Tx {
    fd: OwnedFd,
    buf: [u8; TX_CAP],
    head: usize,
    tail: usize,
    /// EPOLLOUT is registered for `fd`.
    watched: bool,
    /// The host is gone (EPIPE, EIO): events are dropped.
    broken: bool,
}

impl Tx {
    fn pending(&self) -> usize {
        self.tail - self.head
    }

    fn room(&self) -> usize {
        TX_CAP - self.pending()
    }

    /// Queues one event and writes what the port takes now.
    fn send(&mut self, event: &Event<'_>) {
        while !self.broken {
            let pending = self.pending();
            match proto::encode(event, &mut self.buf[self.tail..]) {
                Ok(frame) => {
                    self.tail += frame.len();
                    break;
                }
                Err(_) if self.head > 0 => {
                    self.buf.copy_within(self.head..self.tail, 0);
                    self.tail -= self.head;
                    self.head = 0;
                }
                Err(_) if pending == 0 => {
                    log!("event larger than the send buffer, dropped");
                    return;
                }
                // Full: only when the host stops reading while sending
                // requests. Waiting here is the backpressure it asked for.
                Err(_) => self.wait_writable(),
            }
        }
        self.flush();
    }

    /// Writes until the queue is empty or the port would block.
    fn flush(&mut self) {
        while self.head < self.tail && !self.broken {
            match rustix::io::write(&self.fd, &self.buf[self.head..self.tail]) {
                Ok(n) => self.head += n,
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR) => {}
                Err(e) => {
                    log!("agent port write failed: {}; dropping events", Os(e));
                    self.broken = true;
                }
            }
        }
        self.head = 0;
        self.tail = 0;
    }

    fn wait_writable(&mut self) {
        let mut fds = [rustix::event::PollFd::new(&self.fd, rustix::event::PollFlags::OUT)];
        let _ = rustix::event::poll(&mut fds, None);
        self.flush();
    }
}

/// Everything the loop owns.
struct Server {
    config: Config,
    pid1: bool,
    epoll: OwnedFd,
    rx: OwnedFd,
    signals: OwnedFd,
    reader: FrameReader<MAX_FRAME>,
    tx: Tx,
    jobs: JobTable,
    /// Pipe reads are off until the host catches up (see [`TX_CAP`]).
    paused: bool,
    jobs_started: u32,
    orphans_reaped: u32,
    buf: [u8; MAX_CHUNK],
}

/// Sets the init up and serves until shutdown.
pub fn run(args: sys::Args) -> ! {
    let start_ns = now_ns();
    let pid1 = rustix::process::getpid().is_init();
    let environ = args.environ();
    let config = match Config::parse(args, environ) {
        Ok(config) => config,
        Err(why) => {
            log!("{why}; {USAGE}");
            // PID 1 may not exit: power off cleanly instead.
            if pid1 { boot::power_off() } else { sys::exit(2) }
        }
    };
    crate::BOOTED.store(config.boot, core::sync::atomic::Ordering::Relaxed);
    if config.boot {
        boot::boot(&config);
        boot::protect_from_oom();
    }
    if !pid1 {
        // Outside a VM or namespace the init is nobody's init: adopt the
        // orphans of its jobs so they are reaped here all the same.
        if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
            log!("cannot become a child subreaper: {}", Os(e));
        }
    }
    if let Err(e) = sys::set_signal_mask(BLOCKED) {
        log!("cannot block signals: {}", Os(e));
    }
    let mut server = match Server::new(config, pid1) {
        Ok(server) => server,
        Err((what, e)) => {
            log!("cannot start: {what}: {}", Os(e));
            if pid1 { boot::power_off() } else { sys::exit(1) }
        }
    };
    server.tx.send(&Event::Ready { version: proto::VERSION, start_ns, ready_ns: now_ns() });
    server.serve()
}

impl Server {
    fn new(config: Config, pid1: bool) -> Result<Self, (&'static str, Errno)> {
        let signals = sys::signalfd(HANDLED).map_err(|e| ("signalfd", e))?;
        let (rx, tx) = match config.port {
            Some(path) => boot::open_port(path).map_err(|e| ("agent port", e))?,
            None => {
                let rx = rustix::io::fcntl_dupfd_cloexec(sys::stdio(0), 3).map_err(|e| ("stdin", e))?;
                let tx = rustix::io::fcntl_dupfd_cloexec(sys::stdio(1), 3).map_err(|e| ("stdout", e))?;
                for fd in [&rx, &tx] {
                    rustix::fs::fcntl_setfl(fd, rustix::fs::OFlags::NONBLOCK).map_err(|e| ("port", e))?;
                }
                (rx, tx)
            }
        };
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| ("epoll", e))?;
        watch(&epoll, &rx, PORT_RX, true).map_err(|e| ("agent port", e))?;
        watch(&epoll, &signals, SIGNALS, true).map_err(|e| ("signalfd", e))?;
        // A port that epoll cannot watch for writing (a regular file) is
        // still written on every round.
        let _ = watch(&epoll, &tx, PORT_TX, false);
        Ok(Server {
            config,
            pid1,
            epoll,
            rx,
            signals,
            reader: FrameReader::new(),
            tx: Tx { fd: tx, buf: [0; TX_CAP], head: 0, tail: 0, watched: false, broken: false },
            jobs: JobTable::new(),
            paused: false,
            jobs_started: 0,
            orphans_reaped: 0,
            buf: [0; MAX_CHUNK],
        })
    }

    fn serve(&mut self) -> ! {
        let mut events = [MaybeUninit::<epoll::Event>::uninit(); EVENTS];
        loop {
            let ready = match epoll::wait(&self.epoll, &mut events, None) {
                Ok((ready, _)) => ready,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    log!("epoll_wait failed: {}", Os(e));
                    self.shutdown()
                }
            };
            for event in ready.iter() {
                match event.data.u64() {
                    PORT_RX => self.read_port(),
                    PORT_TX => self.tx.flush(),
                    SIGNALS => self.read_signals(),
                    token => {
                        let index = usize::try_from(token - JOB_BASE).unwrap_or(usize::MAX);
                        match (index / PER_JOB, index % PER_JOB) {
                            (slot, TIMER) => self.on_timer(slot),
                            (slot, stream) => self.on_pipe(slot, stream),
                        }
                    }
                }
            }
            self.tx.flush();
            self.update_watches();
        }
    }

    /// Turns EPOLLOUT on while events wait, and pipe reads off while the
    /// queue is nearly full (back on at two frames of room, not one, so
    /// they do not flap).
    fn update_watches(&mut self) {
        let want_out = self.tx.pending() > 0;
        if want_out != self.tx.watched {
            self.tx.watched = want_out;
            let _ = rewatch(&self.epoll, &self.tx.fd, PORT_TX, want_out);
        }
        let pause = if self.paused { self.tx.room() < 2 * MAX_FRAME } else { self.tx.room() < MAX_FRAME };
        if pause != self.paused {
            self.paused = pause;
            for (i, slot) in self.jobs.slots.iter().enumerate() {
                if let JobState::Running(job) = &slot.state {
                    for (stream, pipe) in job.pipes.iter().enumerate() {
                        if let Some(pipe) = pipe {
                            let _ = rewatch(&self.epoll, pipe, job_token(i, stream), !pause);
                        }
                    }
                }
            }
        }
    }

    fn read_port(&mut self) {
        let n = match rustix::io::read(&self.rx, &mut self.buf) {
            Ok(0) => {
                log!("agent port closed");
                self.shutdown()
            }
            Ok(n) => n,
            Err(Errno::AGAIN | Errno::INTR) => return,
            Err(e) => {
                log!("agent port read failed: {}", Os(e));
                self.shutdown()
            }
        };
        let mut input = &self.buf[..n];
        let mut stop = false;
        while !input.is_empty() && !stop {
            let (used, frame) = self.reader.push(input);
            input = &input[used..];
            let Some(frame) = frame else { continue };
            match frame {
                Frame::Oversize => error(
                    &mut self.tx,
                    None,
                    ErrorKind::Oversize,
                    "frame longer than MAX_FRAME (65536 bytes), dropped",
                ),
                Frame::Corrupt => error(&mut self.tx, None, ErrorKind::Malformed, "frame is not valid COBS"),
                Frame::Message(bytes) => match proto::decode::<Request<'_>>(bytes) {
                    Ok(Request::Shutdown) => stop = true,
                    Ok(request) => handle(
                        Ctx {
                            config: &self.config,
                            epoll: &self.epoll,
                            tx: &mut self.tx,
                            jobs: &mut self.jobs,
                        },
                        &mut self.jobs_started,
                        self.orphans_reaped,
                        self.paused,
                        request,
                    ),
                    Err(_) if bytes[0] >= proto::REQUEST_VARIANTS => {
                        error(&mut self.tx, None, ErrorKind::UnknownMessage, "unknown message tag")
                    }
                    Err(_) => {
                        error(&mut self.tx, None, ErrorKind::Malformed, "frame does not decode as a request")
                    }
                },
            }
        }
        if stop {
            self.shutdown();
        }
    }

    fn read_signals(&mut self) {
        // signalfd_siginfo records are 128 bytes; ssi_signo is the first u32.
        let mut records = [0u8; 128 * 4];
        let mut stop = false;
        loop {
            match rustix::io::read(&self.signals, &mut records) {
                Ok(n) if n > 0 => {
                    for record in records[..n].chunks_exact(128) {
                        let signo = u32::from_ne_bytes([record[0], record[1], record[2], record[3]]);
                        stop |= signo != linux_raw_sys::general::SIGCHLD;
                    }
                }
                Err(Errno::INTR) => {}
                _ => break,
            }
        }
        self.reap_children();
        if stop {
            log!("termination signal");
            self.shutdown();
        }
    }

    /// `wait4(-1, WNOHANG)` until nothing is left to reap. Each pid is matched
    /// against the job table here, inside the loop: a job's leader ends its
    /// job, every other pid is an orphan.
    fn reap_children(&mut self) {
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => match self.jobs.by_leader(pid) {
                    Some(i) => {
                        let JobState::Running(job) = &mut self.jobs.slots[i].state else { continue };
                        let step = job.machine.leader_exited(exit_of(status));
                        self.apply(i, step);
                    }
                    None => self.orphans_reaped += 1,
                },
                Ok(None) | Err(Errno::CHILD) => return,
                Err(Errno::INTR) => {}
                Err(e) => {
                    log!("wait4 failed: {}", Os(e));
                    return;
                }
            }
        }
    }

    fn on_pipe(&mut self, i: usize, stream: usize) {
        if self.tx.room() < MAX_FRAME {
            // The queue is full; update_watches pauses pipe reads.
            return;
        }
        let Some(JobState::Running(job)) = self.jobs.slots.get_mut(i).map(|s| &mut s.state) else { return };
        let Some(pipe) = &job.pipes[stream] else { return };
        match rustix::io::read(pipe, &mut self.buf) {
            Ok(0) | Err(Errno::IO | Errno::BADF) => {
                job.pipes[stream] = None;
                let step = job.machine.pipe_closed(stream);
                self.apply(i, step);
            }
            Ok(n) => {
                let take = job.sinks[stream].admit(n);
                if take > 0 {
                    let event =
                        Event::Output { job: job.id, stream: stream_of(stream), data: &self.buf[..take] };
                    self.tx.send(&event);
                }
            }
            Err(_) => {}
        }
    }

    fn on_timer(&mut self, i: usize) {
        let Some(JobState::Running(job)) = self.jobs.slots.get_mut(i).map(|s| &mut s.state) else { return };
        let mut ticks = [0u8; 8];
        // A stale event (the job ended earlier in this round) reads nothing.
        if rustix::io::read(&job.timer, &mut ticks) != Ok(8) {
            return;
        }
        let step = job.machine.timer_fired();
        self.apply(i, step);
    }

    /// Carries out what a job's machine decided.
    fn apply(&mut self, i: usize, step: Step) {
        let JobState::Running(job) = &mut self.jobs.slots[i].state else { return };
        if let Some(signal) = step.signal {
            let _ = job.signal(signal);
        }
        if let Some(ms) = step.arm_ms {
            arm(&job.timer, ms);
        }
        if step.finish {
            self.finish(i);
        }
    }

    /// Ends a job: its group killed, what is left in its pipes forwarded,
    /// `Exited` sent, the slot freed (closing its descriptors, which also
    /// takes them out of the epoll set).
    fn finish(&mut self, i: usize) {
        let JobState::Running(mut job) = mem::replace(&mut self.jobs.slots[i].state, JobState::Free) else {
            return;
        };
        let _ = job.signal(SIGKILL);
        let others_running = self.jobs.slots.iter().any(|s| matches!(s.state, JobState::Running(_)));
        if self.pid1 && !others_running {
            // A process that left the job's group (setsid, a daemon) would
            // outlive it. With no other job running, every process but the
            // init belongs to a finished job: end them all, so nothing leaks
            // into the next job. They are reaped as orphans.
            sys::kill_all();
        }
        for stream in 0..2 {
            let Some(pipe) = &job.pipes[stream] else { continue };
            for _ in 0..FINAL_READS {
                let Ok(n @ 1..) = rustix::io::read(pipe, &mut self.buf) else { break };
                let take = job.sinks[stream].admit(n);
                if take > 0 {
                    self.tx.send(&Event::Output {
                        job: job.id,
                        stream: stream_of(stream),
                        data: &self.buf[..take],
                    });
                }
            }
        }
        let exited = Exited {
            job: job.id,
            // Only a drain-grace end comes here without a reaped leader.
            exit: job.machine.leader.unwrap_or(Exit::Signal(SIGKILL)),
            timed_out: job.machine.timed_out,
            stdout_truncated: job.sinks[0].truncated,
            stderr_truncated: job.sinks[1].truncated,
            duration_us: now_ns().saturating_sub(job.started_ns) / 1000,
        };
        self.tx.send(&Event::Exited(exited));
    }

    /// Kills every process and ends the init: power-off in a VM, exit
    /// outside one.
    fn shutdown(&mut self) -> ! {
        log!("shutting down");
        while self.tx.pending() > 0 && !self.tx.broken {
            self.tx.wait_writable();
        }
        if self.config.boot {
            boot::power_off();
        }
        for slot in &self.jobs.slots {
            if let JobState::Running(job) = &slot.state {
                let _ = job.signal(SIGKILL);
            }
        }
        if self.pid1 {
            // PID 1 of a namespace: everything in it is ours to end.
            sys::kill_all();
            while let Ok(Some(_)) | Err(Errno::INTR) = rustix::process::wait(WaitOptions::empty()) {}
        }
        sys::exit(0)
    }
}

/// The parts of the server a request may touch.
struct Ctx<'a> {
    config: &'a Config,
    epoll: &'a OwnedFd,
    tx: &'a mut Tx,
    jobs: &'a mut JobTable,
}

fn handle(ctx: Ctx<'_>, jobs_started: &mut u32, orphans_reaped: u32, paused: bool, request: Request<'_>) {
    match request {
        Request::Run(run) => open_job(ctx, &run),
        Request::Code { job, data } => {
            if load_code(ctx.jobs, ctx.tx, job, data) {
                start_job(ctx, job, paused, jobs_started);
            }
        }
        Request::Signal { job, signal } => signal_job(ctx, job, signal),
        Request::Ping { seq } => {
            let stats = Stats { jobs_active: ctx.jobs.active(), jobs_started: *jobs_started, orphans_reaped };
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

/// Appends a chunk to a loading job's code; true once the code is complete
/// and passed its checks.
fn load_code(jobs: &mut JobTable, tx: &mut Tx, id: u32, data: &[u8]) -> bool {
    let Some(i) = jobs.find(id) else {
        error(tx, Some(id), ErrorKind::UnknownJob, "no job with this id");
        return false;
    };
    let slot = &mut jobs.slots[i];
    let JobState::Loading(job) = &mut slot.state else {
        error(tx, Some(id), ErrorKind::InvalidJob, "code: the job already has all its code");
        return false;
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
        return false;
    }
    if job.check.seen < job.code_len {
        return false;
    }
    if let Err(why) = job.check.verdict() {
        slot.state = JobState::Free;
        error(tx, Some(id), ErrorKind::InvalidJob, &why);
        return false;
    }
    true
}

fn start_job(ctx: Ctx<'_>, id: u32, paused: bool, jobs_started: &mut u32) {
    let Some(i) = ctx.jobs.find(id) else { return };
    let slot = &mut ctx.jobs.slots[i];
    let JobState::Loading(job) = mem::replace(&mut slot.state, JobState::Free) else { return };
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
        let _ = watch(ctx.epoll, pipe, job_token(i, stream), !paused);
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
    *jobs_started += 1;
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

fn error(tx: &mut Tx, job: Option<u32>, kind: ErrorKind, message: &str) {
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

fn job_token(slot: usize, kind: usize) -> u64 {
    JOB_BASE + (slot * PER_JOB + kind) as u64
}

fn stream_of(index: usize) -> Stream {
    if index == 0 { Stream::Stdout } else { Stream::Stderr }
}

fn flags(on: bool) -> epoll::EventFlags {
    if on { epoll::EventFlags::IN } else { epoll::EventFlags::empty() }
}

/// Adds `fd` to the epoll set, for reading when `on` (or for writing, for
/// the transmit side of the port).
fn watch(epoll: &OwnedFd, fd: &OwnedFd, token: u64, on: bool) -> rustix::io::Result<()> {
    let flags = if token == PORT_TX && on { epoll::EventFlags::OUT } else { flags(on) };
    epoll::add(epoll, fd, epoll::EventData::new_u64(token), flags)
}

fn rewatch(epoll: &OwnedFd, fd: &OwnedFd, token: u64, on: bool) -> rustix::io::Result<()> {
    let flags = if token == PORT_TX && on { epoll::EventFlags::OUT } else { flags(on) };
    epoll::modify(epoll, fd, epoll::EventData::new_u64(token), flags)
}

/// Arms a one-shot timer `ms` from now.
fn arm(timer: &OwnedFd, ms: u32) {
    let value = Itimerspec {
        it_interval: Timespec { tv_sec: 0, tv_nsec: 0 },
        it_value: Timespec { tv_sec: i64::from(ms / 1000), tv_nsec: i64::from(ms % 1000) * 1_000_000 },
    };
    if let Err(e) = rustix::time::timerfd_settime(timer, TimerfdTimerFlags::empty(), &value) {
        log!("timerfd_settime failed: {}", Os(e));
    }
}

fn exit_of(status: WaitStatus) -> Exit {
    match (status.exit_status(), status.terminating_signal()) {
        // Exit codes are 0-255 and signals 1-64: the conversions are exact.
        (Some(code), _) => Exit::Code(u8::try_from(code & 0xff).unwrap_or(u8::MAX)),
        (None, Some(signal)) => Exit::Signal(u8::try_from(signal).unwrap_or(u8::MAX)),
        // Stopped or continued: not requested (no WUNTRACED), never seen.
        (None, None) => Exit::Code(u8::MAX),
    }
}
