//! The loop's epoll set: what each registered descriptor is ([`Token`]), and
//! turning interest in it on and off.

use core::mem::MaybeUninit;

use proto::Stream;
use rustix::event::epoll;
use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno;

/// What a ready descriptor is, carried in its epoll data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// The agent port has bytes from the host.
    PortRx,
    /// The agent port takes bytes again.
    PortTx,
    /// The signalfd has signals.
    Signals,
    /// A job's stdout or stderr pipe has output (or hit end of file); the
    /// job is the one in that slot of the job table.
    Pipe(usize, Stream),
    /// A job's timer expired.
    Timer(usize),
    /// The Python zygote replied.
    Zygote,
    /// A job's stdin pipe has room.
    Stdin(usize),
}

impl Token {
    /// The job kinds carry their slot in the bits above the kind.
    fn encode(self) -> u64 {
        let (kind, slot) = match self {
            Token::PortRx => (0, 0),
            Token::PortTx => (1, 0),
            Token::Signals => (2, 0),
            Token::Pipe(slot, Stream::Stdout) => (3, slot),
            Token::Pipe(slot, Stream::Stderr) => (4, slot),
            Token::Timer(slot) => (5, slot),
            Token::Zygote => (6, 0),
            Token::Stdin(slot) => (7, slot),
        };
        kind | (slot as u64) << 8
    }

    /// The token in `data`, if it names one of `slots` job slots.
    fn decode(data: u64, slots: usize) -> Option<Token> {
        let slot = usize::try_from(data >> 8).ok().filter(|&slot| slot < slots)?;
        Some(match data & 0xff {
            0 => Token::PortRx,
            1 => Token::PortTx,
            2 => Token::Signals,
            3 => Token::Pipe(slot, Stream::Stdout),
            4 => Token::Pipe(slot, Stream::Stderr),
            5 => Token::Timer(slot),
            6 => Token::Zygote,
            7 => Token::Stdin(slot),
            _ => return None,
        })
    }

    /// What epoll watches the descriptor for while interest is on.
    fn interest(self) -> epoll::EventFlags {
        match self {
            Token::PortTx | Token::Stdin(_) => epoll::EventFlags::OUT,
            _ => epoll::EventFlags::IN,
        }
    }
}

/// The epoll set.
pub struct Poll(OwnedFd);

impl Poll {
    pub fn new() -> rustix::io::Result<Poll> {
        epoll::create(epoll::CreateFlags::CLOEXEC).map(Poll)
    }

    /// Adds `fd` as `token`, watched when `on`. Closing `fd` takes it out.
    pub fn add(&self, fd: impl AsFd, token: Token, on: bool) -> rustix::io::Result<()> {
        self.set(fd, token, on)
    }

    /// Turns interest in `fd` on or off. Off takes it out of the set: epoll
    /// reports a hang-up or an error whatever the interest (a pipe whose
    /// writers are gone, a stdin pipe whose reader is), so a descriptor
    /// kept in with no interest would wake every round, and the loop would
    /// spin while the host is not reading.
    pub fn set(&self, fd: impl AsFd, token: Token, on: bool) -> rustix::io::Result<()> {
        let data = epoll::EventData::new_u64(token.encode());
        if !on {
            return match epoll::delete(&self.0, fd) {
                Err(Errno::NOENT) => Ok(()),
                done => done,
            };
        }
        match epoll::add(&self.0, &fd, data, token.interest()) {
            Err(Errno::EXIST) => epoll::modify(&self.0, fd, data, token.interest()),
            done => done,
        }
    }

    /// `epoll_wait`, for at most `timeout` (`None`: until something is
    /// ready): the tokens of what is ready. Job tokens name one of `slots`
    /// slots (which also spares their users a bounds check).
    pub fn wait<'e, const N: usize>(
        &self,
        events: &'e mut [MaybeUninit<epoll::Event>; N],
        slots: usize,
        timeout: Option<&rustix::time::Timespec>,
    ) -> rustix::io::Result<impl Iterator<Item = Token> + 'e> {
        let (ready, _) = epoll::wait(&self.0, events, timeout)?;
        Ok(ready.iter().filter_map(move |event| Token::decode(event.data.u64(), slots)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let last = 15;
        for token in [
            Token::PortRx,
            Token::PortTx,
            Token::Signals,
            Token::Pipe(0, Stream::Stdout),
            Token::Pipe(last, Stream::Stderr),
            Token::Timer(last),
            Token::Zygote,
            Token::Stdin(last),
        ] {
            assert_eq!(Token::decode(token.encode(), 16), Some(token));
        }
        assert_eq!(Token::decode(8, 16), None);
        assert_eq!(Token::decode(Token::Timer(16).encode(), 16), None);
    }
}
