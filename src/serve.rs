//! The event loop: one thread, one epoll set over the agent port, the
//! signalfd, and each job's pipes and timer. Nothing blocks, and with no job
//! and no request the init sleeps in `epoll_wait` with no timeout.

use core::mem::{self, MaybeUninit};

use proto::{ErrorKind, Event, Exit, Exited, Frame, FrameReader, MAX_CHUNK, MAX_FRAME, Request, Stream};
use rustix::event::epoll;
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use rustix::process::{WaitOptions, WaitStatus};
use rustix::time::{Itimerspec, TimerfdTimerFlags, Timespec};

use crate::config::{Config, USAGE};
use crate::job::{JobState, JobTable, MAX_JOBS, Running, SIGKILL, Step};
use crate::log::Os;
use crate::port::Tx;
use crate::request::{Ctx, error, handle};
use crate::sys::{self, SigSet};
use crate::{boot, log};

/// epoll tokens: three fixed ones, then [`PER_JOB`] per job slot.
const PORT_RX: u64 = 0;
const PORT_TX: u64 = 1;
const SIGNALS: u64 = 2;
const JOB_BASE: u64 = 16;
/// stdout pipe, stderr pipe, timer.
const PER_JOB: usize = 3;
pub const TIMER: usize = 2;

/// Events taken per `epoll_wait`: one per job descriptor and the fixed ones
/// fit, so one round sees everything that is ready.
const EVENTS: usize = MAX_JOBS * PER_JOB + 3;

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
            tx: Tx::new(tx),
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
                            paused: self.paused,
                            jobs_started: &mut self.jobs_started,
                            orphans_reaped: self.orphans_reaped,
                        },
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
            Ok(n) => forward(&mut self.tx, job, stream, &self.buf[..n]),
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
            let Some(pipe) = job.pipes[stream].take() else { continue };
            for _ in 0..FINAL_READS {
                let Ok(n @ 1..) = rustix::io::read(&pipe, &mut self.buf) else { break };
                forward(&mut self.tx, &mut job, stream, &self.buf[..n]);
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
            boot::end_all_processes();
        }
        sys::exit(0)
    }
}

/// Sends what a job wrote on `stream`, up to its output limit; the rest is
/// dropped and the stream flagged truncated.
fn forward(tx: &mut Tx, job: &mut Running, stream: usize, data: &[u8]) {
    let take = job.sinks[stream].admit(data.len());
    if take > 0 {
        tx.send(&Event::Output { job: job.id, stream: stream_of(stream), data: &data[..take] });
    }
}

pub fn job_token(slot: usize, kind: usize) -> u64 {
    JOB_BASE + (slot * PER_JOB + kind) as u64
}

fn stream_of(index: usize) -> Stream {
    if index == 0 { Stream::Stdout } else { Stream::Stderr }
}

/// What epoll watches `token` for when `on`: writability for the port's
/// transmit side, readability for everything else; nothing when off.
fn interest(token: u64, on: bool) -> epoll::EventFlags {
    match (on, token) {
        (false, _) => epoll::EventFlags::empty(),
        (true, PORT_TX) => epoll::EventFlags::OUT,
        (true, _) => epoll::EventFlags::IN,
    }
}

/// Adds `fd` to the epoll set (see [`interest`]).
pub fn watch(epoll: &OwnedFd, fd: &OwnedFd, token: u64, on: bool) -> rustix::io::Result<()> {
    epoll::add(epoll, fd, epoll::EventData::new_u64(token), interest(token, on))
}

fn rewatch(epoll: &OwnedFd, fd: &OwnedFd, token: u64, on: bool) -> rustix::io::Result<()> {
    epoll::modify(epoll, fd, epoll::EventData::new_u64(token), interest(token, on))
}

/// Arms a one-shot timer `ms` from now.
pub fn arm(timer: &OwnedFd, ms: u32) {
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
