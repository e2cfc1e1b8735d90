//! Reaps that came before a zygote job's pid ([`EarlyReaps`]): a leader the
//! zygote forked is the init's child from birth and may exit before the
//! zygote's reply says which pid it has. Such reaps are kept, and the one
//! whose pid the reply names is that job's leader's exit.

use proto::Exit;
use rustix::process::Pid;

/// Reaps kept. The reply follows the fork at once; eight reaps in between
/// would take eight other processes dying in that instant.
const EARLY: usize = 8;

/// The last [`EARLY`] processes reaped while some job's pid was unknown.
pub struct EarlyReaps {
    kept: [Option<(Pid, Exit)>; EARLY],
    /// Where the next one goes (over the oldest, once all are taken).
    next: usize,
}

impl EarlyReaps {
    pub const fn new() -> Self {
        Self { kept: [None; EARLY], next: 0 }
    }

    /// Keeps `pid`'s exit, in case a reply names it.
    pub fn keep(&mut self, pid: Pid, exit: Exit) {
        self.kept[self.next % EARLY] = Some((pid, exit));
        self.next = self.next.wrapping_add(1);
    }

    /// `pid`'s exit if it was kept, now no longer.
    pub fn take(&mut self, pid: Pid) -> Option<Exit> {
        let kept = self.kept.iter_mut().find(|k| matches!(k, Some((p, _)) if *p == pid))?;
        kept.take().map(|(_, exit)| exit)
    }

    /// Forgets every reap kept.
    #[cfg(any(test, fuzzing))]
    pub fn clear(&mut self) {
        *self = Self::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(raw: i32) -> Pid {
        Pid::from_raw(raw).unwrap()
    }

    #[test]
    fn a_kept_reap_is_taken_once() {
        let mut early = EarlyReaps::new();
        early.keep(pid(10), Exit::Code(3));
        early.keep(pid(11), Exit::Signal(9));
        assert_eq!(early.take(pid(12)), None);
        assert_eq!(early.take(pid(11)), Some(Exit::Signal(9)));
        assert_eq!(early.take(pid(11)), None);
        assert_eq!(early.take(pid(10)), Some(Exit::Code(3)));
    }

    #[test]
    fn the_oldest_reap_goes_first() {
        let mut early = EarlyReaps::new();
        let last = i32::try_from(EARLY).unwrap() + 1;
        for raw in 1..=last {
            early.keep(pid(raw), Exit::Code(0));
        }
        assert_eq!(early.take(pid(1)), None);
        assert_eq!(early.take(pid(2)), Some(Exit::Code(0)));
        assert_eq!(early.take(pid(last)), Some(Exit::Code(0)));
        early.clear();
        assert_eq!(early.take(pid(3)), None);
    }
}
