//! A job's stdin, fed by the host: `Request::Stdin` chunks go into the
//! job's window buffer, and from there into its pipe as fast as the job
//! reads. The host never has more than [`STDIN_WINDOW`] bytes in flight
//! (it is told with `StdinTaken` what left the buffer), so the buffer never
//! overflows and a job that never reads its stdin holds up no one: the
//! loop never waits on the pipe.

use proto::STDIN_WINDOW;
use rustix::fd::OwnedFd;
use rustix::io::Errno;

/// One job's window: the bytes the host sent that the pipe has not taken.
pub const WINDOW: usize = STDIN_WINDOW as usize;

pub type Window = [u8; WINDOW];

/// The init's side of a job's stdin.
pub struct Feed {
    /// The pipe's write end (non-blocking); `None` once closed: after the
    /// host's end, or when the job closed its read end (later bytes are
    /// dropped, and acknowledged, as a terminal drops what no one reads).
    pub pipe: Option<OwnedFd>,
    /// Bytes waiting at the start of the job's window.
    len: usize,
    /// The host said no more bytes follow.
    end: bool,
}

impl Feed {
    pub fn new(pipe: OwnedFd) -> Self {
        Self { pipe: Some(pipe), len: 0, end: false }
    }

    /// The pipe, if bytes wait for it to have room.
    pub fn waiting(&self) -> Option<&OwnedFd> {
        self.pipe.as_ref().filter(|_| self.len > 0)
    }

    /// Takes a chunk from the host into the window.
    pub fn push(&mut self, window: &mut Window, data: &[u8], end: bool) -> Result<(), &'static str> {
        if self.end {
            return Err("stdin: data after its end");
        }
        let Some(free) = window.get_mut(self.len..self.len + data.len()) else {
            return Err("stdin: more than STDIN_WINDOW (65536) bytes not yet acknowledged");
        };
        free.copy_from_slice(data);
        self.len += data.len();
        self.end = end;
        Ok(())
    }

    /// Writes what the pipe takes now. Returns the bytes that left the
    /// window (written or dropped), and whether some still wait for the
    /// pipe to have room.
    pub fn flush(&mut self, window: &mut Window) -> (u32, bool) {
        let mut taken = 0;
        while self.len > 0 {
            let Some(pipe) = &self.pipe else {
                taken += self.len;
                self.len = 0;
                break;
            };
            match rustix::io::write(pipe, &window[..self.len]) {
                Ok(n) => {
                    window.copy_within(n..self.len, 0);
                    self.len -= n;
                    taken += n;
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => {}
                // EPIPE: the job closed its stdin.
                Err(_) => self.pipe = None,
            }
        }
        if self.len == 0 && self.end {
            // End of file for the job.
            self.pipe = None;
        }
        // At most WINDOW: the conversion is exact.
        (u32::try_from(taken).unwrap_or(STDIN_WINDOW), self.len > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_go_through_in_order_and_are_acknowledged() {
        let (read, write) = rustix::pipe::pipe().unwrap();
        rustix::fs::fcntl_setfl(&write, rustix::fs::OFlags::NONBLOCK).unwrap();
        let mut window = [0u8; WINDOW];
        let mut feed = Feed::new(write);
        feed.push(&mut window, b"hello ", false).unwrap();
        feed.push(&mut window, b"world", true).unwrap();
        assert_eq!(feed.flush(&mut window), (11, false));
        assert!(feed.pipe.is_none(), "closed after the end");
        let mut got = [0u8; 32];
        let n = rustix::io::read(&read, &mut got).unwrap();
        assert_eq!(&got[..n], b"hello world");
        assert_eq!(rustix::io::read(&read, &mut got), Ok(0), "end of file");
        assert_eq!(feed.push(&mut window, b"x", false), Err("stdin: data after its end"));
    }

    #[test]
    fn a_full_pipe_keeps_the_rest_and_a_closed_one_drops_it() {
        let (read, write) = rustix::pipe::pipe().unwrap();
        rustix::fs::fcntl_setfl(&write, rustix::fs::OFlags::NONBLOCK).unwrap();
        // One page: less than the window.
        let capacity = rustix::pipe::fcntl_setpipe_size(&write, 4096).unwrap();
        let mut window = [0u8; WINDOW];
        let mut feed = Feed::new(write);
        let chunk = [7u8; WINDOW / 2];
        feed.push(&mut window, &chunk, false).unwrap();
        feed.push(&mut window, &chunk, false).unwrap();
        assert!(feed.push(&mut window, b"x", false).unwrap_err().contains("STDIN_WINDOW"));
        let (taken, waiting) = feed.flush(&mut window);
        assert_eq!((taken as usize, waiting), (capacity, true));
        assert!(feed.waiting().is_some());
        drop(read);
        let (taken, waiting) = feed.flush(&mut window);
        assert_eq!((taken as usize, waiting), (WINDOW - capacity, false));
        assert!(feed.pipe.is_none());
    }
}
