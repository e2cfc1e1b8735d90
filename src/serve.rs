//! The event loop: one thread, one epoll set over the agent port, the
//! signalfd, and each job's pipes and timer. It sets the init up, then
//! dispatches: frames from the host become requests to the job table,
//! ready descriptors become job events, SIGCHLD drains `wait4`. Nothing
//! blocks, and with no job and no request the init sleeps in `epoll_wait`
//! with no timeout.

use core::mem::MaybeUninit;

use proto::{ErrorKind, Event, Exit, Frame, MAX_FRAME, Request, Stats};
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use rustix::process::{WaitOptions, WaitStatus};
use rustix::time::Timespec;

use crate::config::{Config, USAGE};
use crate::error::{Os, describe};
use crate::job::{Jobs, Loaded, MAX_JOBS, Refused};
use crate::log::Text;
use crate::pieces;
use crate::poll::{Poll, Token};
use crate::port::{self, OUTPUT_ROOM, REQUEST_ROOM, RESERVE, Rx, RxEnd, Tx};
use crate::rt::Args;
use crate::sys::{self, SigSet, Signal};
use crate::{boot, log, refresh};

#[cfg(any(test, fuzzing))]
pub mod harness;

/// Signals the init holds back and reads from its signalfd instead.
const HANDLED: SigSet =
    SigSet::EMPTY.with(Signal::CHLD).with(Signal::TERM).with(Signal::INT).with(Signal::PWR);

/// Events taken per `epoll_wait`: each job's two pipes and timer, and the
/// port's two sides and the signalfd, so one round sees everything ready.
const EVENTS: usize = MAX_JOBS * 3 + 3;

/// Blocked but never read: a write to a vanished host fails with EPIPE
/// instead of killing the init; HUP and QUIT mean nothing to it.
const BLOCKED: SigSet = HANDLED.with(Signal::PIPE).with(Signal::HUP).with(Signal::QUIT);

/// The loop ends: the init shuts down (asked to, the host hung up, or a
/// termination signal).
struct Stop;

/// The buffer `epoll_wait` fills.
type Events = [MaybeUninit<rustix::event::epoll::Event>; EVENTS];

/// Everything the loop owns. The big buffers are static (see `storage`):
/// this is a few hundred bytes, whatever moves it.
struct Server {
    boot: bool,
    pid1: bool,
    poll: Poll,
    rx: Rx,
    tx: Tx,
    signals: OwnedFd,
    jobs: Jobs,
    /// Processes reaped that were not a job's leader.
    orphans_reaped: u32,
    /// Requests are read and answered (the send queue has room for their
    /// answers).
    taking: bool,
}

/// Sets the init up and serves until shutdown.
pub fn run(args: Args) -> ! {
    let start_ns = sys::boottime_ns();
    let pid1 = rustix::process::getpid().is_init();
    let environ = args.environ();
    let config = match Config::parse(args, environ) {
        Ok(config) => config,
        Err(why) => {
            log!(why, "; ", USAGE);
            // PID 1 may not exit: power off cleanly instead.
            if pid1 { boot::power_off() } else { sys::exit(2) }
        }
    };
    crate::BOOTED.store(config.boot, core::sync::atomic::Ordering::Relaxed);
    if config.boot {
        boot::boot();
        boot::protect_from_oom();
    }
    if !pid1 {
        // Outside a VM or namespace the init is nobody's init: adopt the
        // orphans of its jobs so they are reaped here all the same.
        if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
            log!("cannot become a child subreaper: ", Os(e));
        }
    }
    if let Err(e) = sys::set_signal_mask(BLOCKED) {
        log!("cannot block signals: ", Os(e));
    }
    let mut server = match Server::new(&config, pid1) {
        Ok(server) => server,
        Err((what, e)) => {
            log!("cannot start: ", what, ": ", Os(e));
            if pid1 { boot::power_off() } else { sys::exit(1) }
        }
    };
    server.tx.send(&Event::Ready { version: proto::VERSION, start_ns, ready_ns: sys::boottime_ns() });
    // After Ready: the zygote's start must not delay it.
    server.jobs.start_zygote(&server.poll);
    server.serve()
}

impl Server {
    fn new(config: &Config, pid1: bool) -> Result<Self, (&'static str, Errno)> {
        let (rx, tx) = port::open(config.port)?;
        Self::on_port(config, pid1, rx, tx)
    }

    /// The server of a port already open.
    fn on_port(config: &Config, pid1: bool, rx: Rx, tx: Tx) -> Result<Self, (&'static str, Errno)> {
        let signals = sys::signalfd(HANDLED).map_err(|e| ("signalfd", e))?;
        // Cgroups only in a VM: outside one they would be the host's.
        let cgroups = if config.boot { crate::job::cgroup::Cgroups::setup() } else { None };
        let jobs = Jobs::new(config.jobs, pid1, cgroups).ok_or(("job table", Errno::BUSY))?;
        let poll = Poll::new().map_err(|e| ("epoll", e))?;
        poll.add(&rx.fd, Token::PortRx, true).map_err(|e| ("agent port", e))?;
        poll.add(&signals, Token::Signals, true).map_err(|e| ("signalfd", e))?;
        // A port that epoll cannot watch for writing (a regular file) is
        // still written on every round.
        let _ = poll.add(&tx.fd, Token::PortTx, false);
        Ok(Server { boot: config.boot, pid1, poll, rx, tx, signals, jobs, orphans_reaped: 0, taking: true })
    }

    fn serve(&mut self) -> ! {
        let mut events = [MaybeUninit::uninit(); EVENTS];
        loop {
            if let Err(Stop) = self.round(&mut events, None) {
                self.shutdown()
            }
        }
    }

    /// One round of the loop: waits for something to be ready (at most
    /// `timeout`), handles all of it, then sends what it can.
    fn round(&mut self, events: &mut Events, timeout: Option<&Timespec>) -> Result<(), Stop> {
        let ready = match self.poll.wait(events, MAX_JOBS, timeout) {
            Ok(ready) => ready,
            Err(Errno::INTR) => return Ok(()),
            Err(e) => {
                log!("epoll_wait failed: ", Os(e));
                return Err(Stop);
            }
        };
        for token in ready {
            match token {
                Token::PortRx => self.read_port()?,
                Token::PortTx => self.tx.flush(),
                Token::Signals => self.read_signals()?,
                Token::Pipe(slot, stream) => self.jobs.on_pipe(slot, stream, &mut self.tx),
                Token::Timer(slot) => self.jobs.on_timer(slot, &mut self.tx),
                Token::Zygote => self.jobs.on_zygote(&mut self.tx),
                Token::Stdin(slot) => self.jobs.on_stdin(slot, &self.poll, &mut self.tx),
            }
        }
        self.tx.flush();
        self.update_watches()
    }

    /// Turns EPOLLOUT on while events wait, and pipe reads off while the
    /// queue is nearly full (back on at two frames of room, not one, so
    /// they do not flap).
    fn update_watches(&mut self) -> Result<(), Stop> {
        let want_out = self.tx.pending() > 0;
        if want_out != self.tx.watched {
            self.tx.watched = want_out;
            let _ = self.poll.set(&self.tx.fd, Token::PortTx, want_out);
        }
        let room = self.tx.room();
        let pause = if self.jobs.paused() { room < OUTPUT_ROOM + MAX_FRAME } else { room < OUTPUT_ROOM };
        self.jobs.pause_output(&self.poll, pause);
        // Requests: off below their room, back at the whole reserve; the
        // frames already read wait in the receive buffer.
        let take = if self.taking { room >= REQUEST_ROOM } else { room >= RESERVE };
        if take != self.taking {
            self.taking = take;
            let _ = self.poll.set(&self.rx.fd, Token::PortRx, take);
            if take {
                return self.answer_requests();
            }
        }
        Ok(())
    }

    /// Reads what the host sent and answers each whole frame in it.
    fn read_port(&mut self) -> Result<(), Stop> {
        if !self.taking {
            return Ok(());
        }
        match self.rx.fill() {
            Ok(()) => self.answer_requests(),
            Err(RxEnd::Empty) => Ok(()),
            Err(RxEnd::Closed) => {
                log!("agent port closed");
                Err(Stop)
            }
            Err(RxEnd::Failed(e)) => {
                log!("agent port read failed: ", Os(e));
                Err(Stop)
            }
        }
    }

    /// Answers the frames read, while their answers have room.
    fn answer_requests(&mut self) -> Result<(), Stop> {
        while self.tx.room() >= REQUEST_ROOM
            && let Some(frame) = self.rx.next_frame()
        {
            let request = match frame {
                Frame::Message(bytes) => match proto::wire::decode_request(bytes) {
                    Ok(request) => request,
                    Err(_) if bytes.first().is_some_and(|&tag| tag >= proto::REQUEST_VARIANTS) => {
                        error(&mut self.tx, None, ErrorKind::UnknownMessage, "unknown message tag");
                        continue;
                    }
                    Err(_) => {
                        error(&mut self.tx, None, ErrorKind::Malformed, "frame does not decode as a request");
                        continue;
                    }
                },
                Frame::Oversize => {
                    let why = "frame longer than MAX_FRAME (65536 bytes), dropped";
                    error(&mut self.tx, None, ErrorKind::Oversize, why);
                    continue;
                }
                Frame::Corrupt => {
                    error(&mut self.tx, None, ErrorKind::Malformed, "frame is not valid COBS");
                    continue;
                }
            };
            let (job, answer) = match request {
                Request::Run(run) => (run.job, self.jobs.open(&run)),
                Request::Code { job, data } => match self.jobs.load(job, data, &self.poll) {
                    Ok(Loaded::Incomplete) => continue,
                    Ok(started) => {
                        // Asked of the zygote: `Started` once it says which
                        // process leads the job.
                        if let Loaded::Started(pid) = started {
                            self.tx.send(&Event::Started { job, pid: pid.as_raw_pid().unsigned_abs() });
                        }
                        // A zygote that died comes back for the next job.
                        self.jobs.start_zygote(&self.poll);
                        continue;
                    }
                    Err(refused) => (job, Err(refused)),
                },
                Request::Signal { job, signal } => (job, self.jobs.signal(job, signal)),
                Request::Stdin { job, data, end } => {
                    (job, self.jobs.stdin(job, data, end, &self.poll, &mut self.tx))
                }
                Request::Ping { seq } => {
                    self.tx.send(&Event::Pong { seq, stats: stats(&self.jobs, self.orphans_reaped) });
                    continue;
                }
                Request::Refresh { seq, realtime_ns, entropy } => {
                    self.jobs.forget_users();
                    // Outside a VM the clock and the random pool are the
                    // host's own: not the init's to set.
                    let applied = if self.boot {
                        refresh::apply(realtime_ns, entropy)
                    } else {
                        Err(("not in a VM", Errno::PERM))
                    };
                    match applied {
                        Ok(()) => {
                            self.tx.send(&Event::Pong { seq, stats: stats(&self.jobs, self.orphans_reaped) })
                        }
                        Err((what, e)) => {
                            let text = Text::<96>::of(pieces!["refresh: ", what, ": ", describe(e)]);
                            error(&mut self.tx, None, ErrorKind::Refresh, text.as_str());
                        }
                    }
                    continue;
                }
                Request::Shutdown => return Err(Stop),
            };
            if let Err(Refused { kind, why }) = answer {
                error(&mut self.tx, Some(job), kind, why.as_str());
            }
        }
        Ok(())
    }

    fn read_signals(&mut self) -> Result<(), Stop> {
        // signalfd_siginfo records are 128 bytes; ssi_signo is the first u32.
        let mut records = [0u8; 128 * 4];
        let mut stop = false;
        loop {
            match rustix::io::read(&self.signals, &mut records) {
                Ok(n) if n > 0 => {
                    for record in records[..n].chunks_exact(128) {
                        let signo = u32::from_ne_bytes([record[0], record[1], record[2], record[3]]);
                        stop |= Signal::new(signo) != Some(Signal::CHLD);
                    }
                }
                Err(Errno::INTR) => {}
                _ => break,
            }
        }
        self.reap_children();
        if stop {
            log!("termination signal");
            return Err(Stop);
        }
        Ok(())
    }

    /// `wait4(-1, WNOHANG)` until nothing is left to reap. Each pid is matched
    /// against the job table here, inside the loop: a job's leader ends its
    /// job, every other pid is an orphan.
    fn reap_children(&mut self) {
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    if !self.jobs.on_reaped(pid, exit_of(status), &mut self.tx) {
                        self.orphans_reaped += 1;
                    }
                }
                Ok(None) | Err(Errno::CHILD) => return,
                Err(Errno::INTR) => {}
                Err(e) => {
                    log!("wait4 failed: ", Os(e));
                    return;
                }
            }
        }
    }

    /// Kills every process and ends the init: power-off in a VM, exit
    /// outside one.
    fn shutdown(&mut self) -> ! {
        log!("shutting down");
        self.tx.drain();
        if self.boot {
            boot::power_off();
        }
        self.jobs.kill_all();
        if self.pid1 {
            // PID 1 of a namespace: everything in it is ours to end.
            boot::end_all_processes();
        }
        sys::exit(0)
    }
}

/// The counters a `Pong` carries.
fn stats(jobs: &Jobs, orphans_reaped: u32) -> Stats {
    Stats {
        jobs_active: jobs.active(),
        jobs_started: jobs.started,
        orphans_reaped,
        zygote: jobs.zygote_ready(),
    }
}

fn error(tx: &mut Tx, job: Option<u32>, kind: ErrorKind, message: &str) {
    tx.send(&Event::Error { job, kind, message });
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
