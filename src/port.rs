//! The agent port: opening it, cutting what the host sends into frames
//! ([`Rx`]), and the queue of events written as fast as the port takes them
//! ([`Tx`]).

use core::ffi::CStr;

use proto::{Event, Frame, FrameReader, MAX_CHUNK, MAX_FRAME};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::error::Os;
use crate::log;
use crate::storage::TakeOnce;

/// Bytes of events waiting for the host. Pipe reads stop while less than
/// [`OUTPUT_ROOM`] is left, so job output waits in its pipes (and the jobs
/// block on write) instead of in the init's memory.
pub const TX_CAP: usize = 4 * MAX_FRAME;

/// Room kept for the events that are not output: `Started`, `Exited`,
/// `Error`, `Pong`. They are at most a few hundred bytes each, and without
/// new requests (which stop below [`REQUEST_ROOM`]) only the 16 jobs make
/// them: 16 KiB holds far more than that.
pub const RESERVE: usize = 16 * 1024;

/// Pipe reads go on while this much room is left: one output frame and
/// the reserve.
pub const OUTPUT_ROOM: usize = MAX_FRAME + RESERVE;

/// Requests are taken while this much room is left, so that their answers
/// always fit: a host that sends without reading waits for itself.
pub const REQUEST_ROOM: usize = RESERVE / 2;

/// How long a shutdown waits for the host to take the last events.
const DRAIN_MS: i32 = 2000;

/// The port's buffers: 256 KiB of send queue, a frame being received, one
/// read. All zeros, so in `.bss` for the life of the init.
struct Buffers {
    frame: FrameReader<MAX_FRAME>,
    input: [u8; MAX_CHUNK],
    queue: [u8; TX_CAP],
}

static BUFFERS: TakeOnce<Buffers> =
    TakeOnce::new(Buffers { frame: FrameReader::new(), input: [0; MAX_CHUNK], queue: [0; TX_CAP] });

/// Opens the port: the device at `path`, or stdin and stdout when `None`
/// (outside a VM). Two descriptors, one per direction, so that epoll can
/// watch each on its own; both non-blocking.
pub fn open(path: Option<&CStr>) -> Result<(Rx, Tx), (&'static str, Errno)> {
    let (rx, tx) = match path {
        Some(path) => open_device(path).map_err(|e| ("agent port", e))?,
        None => {
            let rx = rustix::io::fcntl_dupfd_cloexec(crate::sys::stdio(0), 3).map_err(|e| ("stdin", e))?;
            let tx = rustix::io::fcntl_dupfd_cloexec(crate::sys::stdio(1), 3).map_err(|e| ("stdout", e))?;
            for fd in [&rx, &tx] {
                rustix::fs::fcntl_setfl(fd, OFlags::NONBLOCK).map_err(|e| ("port", e))?;
            }
            (rx, tx)
        }
    };
    on_fds(rx, tx)
}

/// The port on descriptors already open and non-blocking: `rx` the host
/// writes to, `tx` it reads. Once only: the buffers are static.
pub fn on_fds(rx: OwnedFd, tx: OwnedFd) -> Result<(Rx, Tx), (&'static str, Errno)> {
    let Buffers { frame, input, queue } = BUFFERS.take().ok_or(("port buffers", Errno::BUSY))?;
    Ok((
        Rx { fd: rx, reader: frame, buf: input, start: 0, end: 0 },
        Tx { fd: tx, buf: queue, head: 0, tail: 0, watched: false, broken: false },
    ))
}

/// Opens the port device, a descriptor for each side (a virtio serial port
/// takes one opener: the second is a dup), and puts a terminal in raw mode:
/// no echo, no line editing, no CR/LF rewriting.
fn open_device(path: &CStr) -> rustix::io::Result<(OwnedFd, OwnedFd)> {
    let flags = OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let rx = rustix::fs::open(path, flags, Mode::empty())?;
    let tx = rustix::io::fcntl_dupfd_cloexec(&rx, 0)?;
    // Not a terminal (ENOTTY): nothing to make raw.
    match crate::sys::make_raw(rx.as_fd()) {
        Ok(()) | Err(Errno::NOTTY) => {}
        Err(e) => return Err(e),
    }
    Ok((rx, tx))
}

/// Why the port gave no more input.
pub enum RxEnd {
    /// Nothing to read now.
    Empty,
    /// The host closed its end.
    Closed,
    Failed(Errno),
}

/// The receive side: bytes read from the port, cut into frames.
pub struct Rx {
    pub fd: OwnedFd,
    reader: &'static mut FrameReader<MAX_FRAME>,
    buf: &'static mut [u8; MAX_CHUNK],
    /// `buf[start..end]` is read but not yet cut into frames.
    start: usize,
    end: usize,
}

impl Rx {
    /// Reads what the port has, once the last read is all cut into frames.
    pub fn fill(&mut self) -> Result<(), RxEnd> {
        if self.start < self.end {
            return Ok(());
        }
        match rustix::io::read(&self.fd, &mut self.buf[..]) {
            Ok(0) => Err(RxEnd::Closed),
            Ok(n) => {
                (self.start, self.end) = (0, n);
                Ok(())
            }
            Err(Errno::AGAIN | Errno::INTR) => Err(RxEnd::Empty),
            Err(e) => Err(RxEnd::Failed(e)),
        }
    }

    /// Drops what was read and the frame begun: a new host's stream.
    #[cfg(any(test, fuzzing))]
    pub fn forget(&mut self) {
        *self.reader = FrameReader::new();
        (self.start, self.end) = (0, 0);
    }

    /// The next whole frame in what was read, if one ends there.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        // `push` takes everything when no frame ends in it.
        let (used, frame) = self.reader.push(&self.buf[self.start..self.end]);
        self.start += used;
        frame
    }
}

/// The send queue: a linear buffer of whole frames, compacted when the tail
/// runs out of room.
pub struct Tx {
    pub fd: OwnedFd,
    buf: &'static mut [u8; TX_CAP],
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

    /// Drops every event queued: a new host's stream.
    #[cfg(any(test, fuzzing))]
    pub fn forget(&mut self) {
        (self.head, self.tail, self.broken) = (0, 0, false);
    }

    /// Queues one event and writes what the port takes now.
    pub fn send(&mut self, event: &Event<'_>) {
        while !self.broken {
            let pending = self.pending();
            match proto::wire::encode_event(event, &mut self.buf[self.tail..]) {
                Some(len) => {
                    self.tail += len;
                    break;
                }
                None if self.head > 0 => {
                    self.buf.copy_within(self.head..self.tail, 0);
                    self.tail -= self.head;
                    self.head = 0;
                }
                None if pending == 0 => {
                    log!("event larger than the send buffer, dropped");
                    return;
                }
                // Full although the loop keeps the reserve: never wait for
                // the host here (the loop must go on), say so and drop.
                None => {
                    log!("send queue full, event dropped");
                    return;
                }
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
                    log!("agent port write failed: ", Os(e), "; dropping events");
                    self.broken = true;
                }
            }
        }
        self.head = 0;
        self.tail = 0;
    }

    /// Writes what is queued, waiting for the port at most [`DRAIN_MS`] in
    /// all: the last events before a shutdown.
    pub fn drain(&mut self) {
        let deadline = crate::sys::boottime_ns() + DRAIN_MS.unsigned_abs() as u64 * 1_000_000;
        while self.pending() > 0 && !self.broken {
            let left = deadline.saturating_sub(crate::sys::boottime_ns()) / 1_000_000;
            let Ok(left @ 1..) = i32::try_from(left) else { return };
            let mut fds = [rustix::event::PollFd::new(&self.fd, rustix::event::PollFlags::OUT)];
            let timeout = rustix::time::Timespec {
                tv_sec: i64::from(left / 1000),
                tv_nsec: i64::from(left % 1000) * 1_000_000,
            };
            if rustix::event::poll(&mut fds, Some(&timeout)) == Ok(0) {
                return;
            }
            self.flush();
        }
    }
}
