//! COBS framing: [`encode`] a message into one frame, and [`FrameReader`],
//! which cuts a byte stream into frames.
//!
//! A frame is the COBS encoding of the postcard bytes followed by 0x00.
//! COBS output holds no 0x00, so the delimiter is unambiguous and a reader
//! that lost sync (garbage, a dropped frame) is back in step at the next 0x00.

use serde::Serialize;

/// Encodes `msg` as one frame (delimiter included) into `buf`.
pub fn encode<'b, T: Serialize>(msg: &T, buf: &'b mut [u8]) -> postcard::Result<&'b mut [u8]> {
    postcard::to_slice_cobs(msg, buf)
}

/// Decodes the postcard bytes of one frame (as [`Frame::Message`] gives
/// them). Borrowed fields (`&str`, `&[u8]`) point into `bytes`.
pub fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> postcard::Result<T> {
    postcard::from_bytes(bytes)
}

/// What [`FrameReader::push`] found at a delimiter.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A decoded frame: the postcard bytes of one message.
    Message(&'a [u8]),
    /// A frame longer than the reader's buffer. Its bytes were dropped.
    Oversize,
    /// Bytes between delimiters that are not valid COBS.
    Corrupt,
}

/// Accumulates a byte stream and yields one frame at a time, holding at most
/// `N` encoded bytes: a longer frame is skipped up to its delimiter.
pub struct FrameReader<const N: usize> {
    buf: [u8; N],
    len: usize,
    /// The current frame overflowed `buf`; drop bytes until the delimiter.
    overflow: bool,
}

impl<const N: usize> Default for FrameReader<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameReader<N> {
    pub const fn new() -> Self {
        Self { buf: [0; N], len: 0, overflow: false }
    }

    /// Takes bytes from `input` up to and including the first delimiter that
    /// ends a frame. Returns how many bytes it took and the frame, if one
    /// ended; call again with the rest of `input`. Empty frames (two
    /// delimiters in a row) are skipped.
    pub fn push<'s>(&'s mut self, input: &[u8]) -> (usize, Option<Frame<'s>>) {
        for (i, &byte) in input.iter().enumerate() {
            if byte != 0 {
                if self.len < N {
                    self.buf[self.len] = byte;
                    self.len += 1;
                } else {
                    self.overflow = true;
                }
                continue;
            }
            let (len, overflow) = (self.len, self.overflow);
            self.len = 0;
            self.overflow = false;
            if overflow {
                return (i + 1, Some(Frame::Oversize));
            }
            if len == 0 {
                continue;
            }
            let frame = match cobs::decode_in_place(&mut self.buf[..len]) {
                Ok(n) => Frame::Message(&self.buf[..n]),
                Err(_) => Frame::Corrupt,
            };
            return (i + 1, Some(frame));
        }
        (input.len(), None)
    }
}
