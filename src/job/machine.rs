//! A running job's life as data: the pure [`Machine`] takes what happened
//! (leader reaped, pipe closed, timer fired) and answers with a [`Step`] for
//! the job module to carry out; [`Sink`] counts each stream's output against
//! its limit. No syscalls here, so all of it is unit-tested.

use core::ops::{Index, IndexMut};

use proto::{Exit, Stream};

use crate::sys::Signal;

/// How long a job whose leader has exited may keep its pipes open (a
/// background process that inherited them) before it is declared over and
/// its process group killed. Long enough for a child's last words, short
/// enough that `sleep 1000 &` does not hold the caller.
pub const DRAIN_GRACE_MS: u32 = 500;

/// Between SIGTERM and SIGKILL when a job times out: time to flush and exit.
pub const TERM_GRACE_MS: u32 = 500;

/// One `T` per output stream, indexed by [`Stream`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streams<T>(pub [T; 2]);

/// Both streams, in the order their output is flushed at a job's end.
pub const STREAMS: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

impl<T> Index<Stream> for Streams<T> {
    type Output = T;

    fn index(&self, stream: Stream) -> &T {
        match stream {
            Stream::Stdout => &self.0[0],
            Stream::Stderr => &self.0[1],
        }
    }
}

impl<T> IndexMut<Stream> for Streams<T> {
    fn index_mut(&mut self, stream: Stream) -> &mut T {
        match stream {
            Stream::Stdout => &mut self.0[0],
            Stream::Stderr => &mut self.0[1],
        }
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
    pub signal: Option<Signal>,
    /// (Re)arm the job's timer for this many milliseconds.
    pub arm_ms: Option<u32>,
    /// The job is over: kill its group, report it, free the slot.
    pub finish: bool,
}

/// The life of a running job, without its descriptors.
#[derive(Clone, Copy, Debug)]
pub struct Machine {
    pub phase: Phase,
    pub leader: Option<Exit>,
    /// Each pipe is still open.
    pub open: Streams<bool>,
    pub timed_out: bool,
}

impl Machine {
    pub const fn new() -> Self {
        Self { phase: Phase::Running, leader: None, open: Streams([true, true]), timed_out: false }
    }

    fn done(&self) -> bool {
        self.leader.is_some() && self.open.0 == [false, false]
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
    pub fn pipe_closed(&mut self, stream: Stream) -> Step {
        self.open[stream] = false;
        Step { finish: self.done(), ..Step::default() }
    }

    /// The job's timer fired.
    pub fn timer_fired(&mut self) -> Step {
        match self.phase {
            Phase::Running => {
                self.timed_out = true;
                self.phase = Phase::Terminating;
                Step { signal: Some(Signal::TERM), arm_ms: Some(TERM_GRACE_MS), finish: false }
            }
            Phase::Terminating => Step { signal: Some(Signal::KILL), ..Step::default() },
            Phase::Draining => Step { finish: true, ..Step::default() },
        }
    }
}

impl Default for Machine {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(m.pipe_closed(Stream::Stdout), Step::default());
        assert_eq!(m.pipe_closed(Stream::Stderr), Step::default());
        assert!(m.leader_exited(Exit::Code(0)).finish);

        let mut m = Machine::new();
        assert!(!m.leader_exited(Exit::Code(3)).finish);
        assert!(!m.pipe_closed(Stream::Stderr).finish);
        assert!(m.pipe_closed(Stream::Stdout).finish);
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
        assert_eq!(step, Step { signal: Some(Signal::TERM), arm_ms: Some(TERM_GRACE_MS), finish: false });
        assert!(m.timed_out);
        assert_eq!(m.timer_fired().signal, Some(Signal::KILL));
        let step = m.leader_exited(Exit::Signal(9));
        assert_eq!(step.arm_ms, Some(DRAIN_GRACE_MS));
        m.pipe_closed(Stream::Stdout);
        assert!(m.pipe_closed(Stream::Stderr).finish);
        assert!(m.timed_out);
    }
}
