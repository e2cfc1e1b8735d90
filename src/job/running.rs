//! A job whose interpreter was forked ([`Running`]): its leader (known at
//! once when exec'd, from the zygote's reply when forked there), the pipes
//! and timer the loop watches, its machine and output accounting, and how
//! it is signalled, and its end once its group is killed (what is left in
//! its pipes, then `Exited`). What the zygote opens through /proc is held
//! here ([`Handoff`]) until it has.

use proto::{Event, Exit, Exited, Stream};
use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno;
use rustix::process::Pid;
use rustix::time::{Itimerspec, TimerfdTimerFlags, Timespec};

use super::cgroup::{Cgroup, Usage};
use super::machine::{Machine, STREAMS, Sink, Streams};
use super::spawn::Fds;
use super::stdin::Feed;
use crate::log;
use crate::port::Tx;
use crate::sys::{self, Signal};

/// Reads of a pipe at a job's end, after its group is killed: a full pipe
/// (64 KiB) is two reads of `MAX_CHUNK`; four leave margin.
const FINAL_READS: usize = 4;

/// What the zygote opens through /proc, held by the init until it has.
pub struct Handoff {
    pub code: OwnedFd,
    /// The read end of the stdin pipe.
    pub stdin: Option<OwnedFd>,
    pub out: OwnedFd,
    pub err: OwnedFd,
}

impl Handoff {
    /// The descriptors, and the job's cgroup (which its `Running` holds).
    pub fn fds<'a>(&'a self, cgroup: Option<&'a Cgroup>) -> Fds<'a> {
        let stdin = self.stdin.as_ref().map(AsFd::as_fd);
        let cgroup = cgroup.map(|c| c.dir.as_fd());
        Fds { code: self.code.as_fd(), cgroup, stdin, stdout: self.out.as_fd(), stderr: self.err.as_fd() }
    }
}

/// A job whose interpreter was forked.
pub struct Running {
    pub id: u32,
    /// The user it runs as.
    pub uid: u32,
    /// The leader, which is also the process group id; `None` while the
    /// zygote has not said which process it forked.
    pub pid: Option<Pid>,
    /// What the zygote opens, until it has.
    pub handoff: Option<Handoff>,
    /// A signal asked for before the pid was known.
    pub pending: Option<Signal>,
    /// The read ends; `None` once at end of file.
    pub pipes: Streams<Option<OwnedFd>>,
    pub timer: OwnedFd,
    /// The host's bytes on their way to the job's stdin.
    pub stdin: Option<Feed>,
    /// Its cgroup, in a VM.
    pub cgroup: Option<Cgroup>,
    pub machine: Machine,
    pub sinks: Streams<Sink>,
    pub started_ns: u64,
    /// When the leader was reaped.
    pub leader_ns: Option<u64>,
    /// When the job was over, if its end waits for the host to read its
    /// output (the duration reported is the job's, not the host's).
    pub ended_ns: Option<u64>,
}

impl Running {
    /// Sends `signal` to the job's process group. Right after fork the child
    /// may not have called setsid yet, so no group has the leader's id
    /// (ESRCH): the leader is then the whole job, and gets the signal alone
    /// (held pending by its inherited mask until just before exec). Once the
    /// leader is reaped its pid may be reused, so it is never signalled alone.
    pub fn signal(&mut self, signal: Signal) -> rustix::io::Result<()> {
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
    pub fn forked(&mut self, pid: Pid, tx: &mut Tx) {
        self.pid = Some(pid);
        self.handoff = None;
        tx.send(&Event::Started { job: self.id, pid: pid.as_raw_pid().unsigned_abs() });
        if let Some(signal) = self.pending.take() {
            let _ = self.signal(signal);
        }
    }

    /// Sends what the job wrote on `stream`, up to its output limit; the
    /// rest is dropped and the stream flagged truncated.
    pub fn forward(&mut self, tx: &mut Tx, stream: Stream, data: &[u8]) {
        let take = self.sinks[stream].admit(data.len());
        if take > 0 {
            tx.send(&Event::Output { job: self.id, stream, data: &data[..take] });
        }
    }

    /// The end of a job whose group was killed: what is left in its pipes
    /// forwarded (`buffer` holds each read), as far as the host has room,
    /// then `Exited` with what its cgroup says it used. Its descriptors
    /// close here, which also takes them out of the epoll set.
    pub fn end(mut self, usage: Usage, buffer: &mut [u8], tx: &mut Tx) {
        for stream in STREAMS {
            let Some(pipe) = self.pipes[stream].take() else { continue };
            for _ in 0..FINAL_READS {
                let Ok(n @ 1..) = rustix::io::read(&pipe, &mut *buffer) else { break };
                // A chunk and its frame, above the room answers need.
                if tx.room() < crate::port::REQUEST_ROOM + n + 64 {
                    // The host is not reading and the job is over: what
                    // its escaped writers left is dropped, and said so.
                    self.sinks[stream].truncated = true;
                    break;
                }
                self.forward(tx, stream, &buffer[..n]);
            }
        }
        let ended_ns = self.ended_ns.unwrap_or_else(sys::boottime_ns);
        let exited = Exited {
            job: self.id,
            // Only a drain-grace end comes here without a reaped leader.
            exit: self.machine.leader.unwrap_or(Exit::Signal(Signal::KILL.number())),
            timed_out: self.machine.timed_out,
            stdout_truncated: self.sinks[Stream::Stdout].truncated,
            stderr_truncated: self.sinks[Stream::Stderr].truncated,
            duration_us: ended_ns.saturating_sub(self.started_ns) / 1000,
            peak_memory: usage.peak_memory,
            cpu_us: usage.cpu_us,
        };
        tx.send(&Event::Exited(exited));
    }
}

/// Arms a one-shot timer `ms` from now (a job's deadline or grace).
pub fn arm(timer: &OwnedFd, ms: u32) {
    let value = Itimerspec {
        it_interval: Timespec { tv_sec: 0, tv_nsec: 0 },
        it_value: Timespec { tv_sec: i64::from(ms / 1000), tv_nsec: i64::from(ms % 1000) * 1_000_000 },
    };
    if let Err(e) = rustix::time::timerfd_settime(timer, TimerfdTimerFlags::empty(), &value) {
        log!("timerfd_settime failed: ", Os(e));
    }
}
