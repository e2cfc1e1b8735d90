//! The agent port's send side: events queued for the host and written as
//! fast as the port takes them, without ever blocking the loop unless the
//! host stops reading altogether.

use proto::{Event, MAX_FRAME};
use rustix::fd::OwnedFd;
use rustix::io::Errno;

use crate::log;
use crate::log::Os;

/// Bytes of events waiting for the host. Pipe reads stop while less than one
/// frame of room is left, so job output waits in its pipes (and the jobs
/// block on write) instead of in the init's memory.
pub const TX_CAP: usize = 4 * MAX_FRAME;

/// The send queue: a linear buffer of whole frames, compacted when the tail
/// runs out of room.
pub struct Tx {
    pub fd: OwnedFd,
    buf: [u8; TX_CAP],
    head: usize,
    tail: usize,
    /// EPOLLOUT is registered for `fd`.
    pub watched: bool,
    /// The host is gone (EPIPE, EIO): events are dropped.
    pub broken: bool,
}

impl Tx {
    pub fn pending(&self) -> usize {
        self.tail - self.head
    }

    pub fn room(&self) -> usize {
        TX_CAP - self.pending()
    }

    /// Queues one event and writes what the port takes now.
    pub fn send(&mut self, event: &Event<'_>) {
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
    pub fn flush(&mut self) {
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

    pub fn wait_writable(&mut self) {
        let mut fds = [rustix::event::PollFd::new(&self.fd, rustix::event::PollFlags::OUT)];
        let _ = rustix::event::poll(&mut fds, None);
        self.flush();
    }
}

impl Tx {
    pub fn new(fd: OwnedFd) -> Self {
        Tx { fd, buf: [0; TX_CAP], head: 0, tail: 0, watched: false, broken: false }
    }
}
