//! The init's side of the wire written out: [`decode_request`] and
//! [`encode_event`] produce and accept exactly the bytes postcard does for
//! these types (the golden vectors and the `requests` fuzz target check
//! each against postcard), without serde.
//!
//! Why by hand: serde's generated visitors and postcard's serializer were
//! 4 KB of the init's 40 KiB budget; these are a fraction of that. The
//! host, which has no budget, uses postcard itself ([`crate::decode`],
//! [`crate::encode`]).
//!
//! postcard's encoding, for the types used here: `u8` is one byte; `u16`,
//! `u32`, `u64` and lengths are LEB128 varints (at most 3, 5, 10 bytes,
//! with the bits past the type's width zero); `bool` is a byte 0 or 1;
//! `Option` a byte 0 or 1 then the value; `&str` and `&[u8]` their length
//! then their bytes; an enum its variant's index as a varint then its
//! fields; a struct its fields in order.

use crate::{Env, Event, Exit, Lang, MAX_ENV, Request, Run, Stats};

/// A message that is not a `Request` in postcard's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Reads one value after another from a message.
struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> Result<u8, Malformed> {
        let (&first, rest) = self.bytes.split_first().ok_or(Malformed)?;
        self.bytes = rest;
        Ok(first)
    }

    /// A varint of at most `bits` bits.
    fn varint(&mut self, bits: u32) -> Result<u64, Malformed> {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                // The last byte may not carry bits past the type's width.
                return if shift + 7 > bits && u64::from(byte) >> (bits - shift) != 0 {
                    Err(Malformed)
                } else {
                    Ok(value)
                };
            }
            shift += 7;
            if shift >= bits {
                return Err(Malformed);
            }
        }
    }

    // At most 32 bits: the conversion is exact.
    #[allow(clippy::cast_possible_truncation)]
    fn u32(&mut self) -> Result<u32, Malformed> {
        self.varint(32).map(|v| v as u32)
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        self.varint(64)
    }

    fn bool(&mut self) -> Result<bool, Malformed> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Malformed),
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let len = usize::try_from(self.u64()?).map_err(|_| Malformed)?;
        if len > self.bytes.len() {
            return Err(Malformed);
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    fn str(&mut self) -> Result<&'a str, Malformed> {
        core::str::from_utf8(self.bytes()?).map_err(|_| Malformed)
    }

    fn run(&mut self) -> Result<Run<'a>, Malformed> {
        let job = self.u32()?;
        let lang = match self.u32()? {
            0 => Lang::Python,
            1 => Lang::Shell,
            n => Lang::Unknown(n),
        };
        let code_len = self.u32()?;
        let mut env = heapless::Vec::new();
        let count = self.u64()?;
        if count > MAX_ENV as u64 {
            return Err(Malformed);
        }
        for _ in 0..count {
            let var = Env { name: self.str()?, value: self.str()? };
            env.push(var).map_err(|_| Malformed)?;
        }
        let cwd = match self.byte()? {
            0 => None,
            1 => Some(self.str()?),
            _ => return Err(Malformed),
        };
        Ok(Run {
            job,
            lang,
            code_len,
            env,
            cwd,
            timeout_ms: self.u32()?,
            stdout_limit: self.u32()?,
            stderr_limit: self.u32()?,
            fresh: self.bool()?,
            stdin: self.bool()?,
            memory_limit_mb: self.u32()?,
            user: match self.byte()? {
                0 => None,
                1 => Some(self.u32()?),
                _ => return Err(Malformed),
            },
        })
    }
}

/// Decodes the postcard bytes of one request (a frame's contents), as
/// `postcard::from_bytes` does: bytes after the request are ignored.
pub fn decode_request(bytes: &[u8]) -> Result<Request<'_>, Malformed> {
    let mut input = Input { bytes };
    Ok(match input.u32()? {
        0 => Request::Run(input.run()?),
        1 => Request::Code { job: input.u32()?, data: input.bytes()? },
        2 => Request::Signal { job: input.u32()?, signal: input.byte()? },
        3 => Request::Ping { seq: input.u32()? },
        4 => Request::Shutdown,
        5 => Request::Refresh { seq: input.u32()?, realtime_ns: input.u64()?, entropy: input.bytes()? },
        6 => Request::Stdin { job: input.u32()?, data: input.bytes()?, end: input.bool()? },
        _ => return Err(Malformed),
    })
}

/// Writes a message COBS-encoded into a buffer, as it goes: every run of
/// up to 254 non-zero bytes is preceded by its length + 1 (a zero byte
/// ends a run and is not written).
struct Output<'b> {
    buf: &'b mut [u8],
    /// Where the current run's length byte goes.
    code_at: usize,
    len: usize,
    /// The buffer is full: the frame does not fit.
    full: bool,
}

impl Output<'_> {
    fn put(&mut self, byte: u8) {
        if self.len >= self.buf.len() {
            self.full = true;
            return;
        }
        self.buf[self.len] = byte;
        self.len += 1;
    }

    /// Ends the current run: its length byte is the bytes since it, + 1.
    // At most 255: a run is closed at 254 bytes.
    #[allow(clippy::cast_possible_truncation)]
    fn close_run(&mut self) {
        if let Some(code) = self.buf.get_mut(self.code_at) {
            *code = (self.len - self.code_at) as u8;
        }
    }

    fn byte(&mut self, byte: u8) {
        if byte == 0 {
            self.close_run();
            self.code_at = self.len;
            self.put(0);
            return;
        }
        self.put(byte);
        if self.len - self.code_at == 255 {
            self.close_run();
            self.code_at = self.len;
            self.put(0);
        }
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.byte(b);
        }
    }

    // Each byte takes the low 7 bits: the truncation is the encoding.
    #[allow(clippy::cast_possible_truncation)]
    #[inline(never)]
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.byte(value as u8 | 0x80);
            value >>= 7;
        }
        self.byte(value as u8);
    }

    fn u32(&mut self, value: u32) {
        self.varint(u64::from(value));
    }

    fn bool(&mut self, value: bool) {
        self.byte(u8::from(value));
    }

    fn data(&mut self, data: &[u8]) {
        self.varint(data.len() as u64);
        self.bytes(data);
    }
}

/// Writes `event` into `buf` as one frame: postcard's bytes, COBS-encoded,
/// then the 0x00 delimiter, as `postcard::to_slice_cobs` does. The frame's
/// length, or `None` if it does not fit in `buf`.
pub fn encode_event(event: &Event<'_>, buf: &mut [u8]) -> Option<usize> {
    let mut out = Output { buf, code_at: 0, len: 0, full: false };
    out.put(0);
    match *event {
        Event::Ready { version, start_ns, ready_ns } => {
            out.u32(0);
            out.u32(u32::from(version));
            out.varint(start_ns);
            out.varint(ready_ns);
        }
        Event::Started { job, pid } => {
            out.u32(1);
            out.u32(job);
            out.u32(pid);
        }
        Event::Output { job, stream, data } => {
            out.u32(2);
            out.u32(job);
            out.u32(stream as u32);
            out.data(data);
        }
        Event::Exited(ref x) => {
            out.u32(3);
            out.u32(x.job);
            let (tag, n) = match x.exit {
                Exit::Code(n) => (0, n),
                Exit::Signal(n) => (1, n),
            };
            out.u32(tag);
            out.byte(n);
            out.bool(x.timed_out);
            out.bool(x.stdout_truncated);
            out.bool(x.stderr_truncated);
            out.varint(x.duration_us);
            out.varint(x.peak_memory);
            out.varint(x.cpu_us);
        }
        Event::Error { job, kind, message } => {
            out.u32(4);
            match job {
                Some(job) => {
                    out.byte(1);
                    out.u32(job);
                }
                None => out.byte(0),
            }
            out.u32(kind as u32);
            out.data(message.as_bytes());
        }
        Event::Pong { seq, stats: Stats { jobs_active, jobs_started, orphans_reaped, zygote } } => {
            out.u32(5);
            out.u32(seq);
            out.u32(jobs_active);
            out.u32(jobs_started);
            out.u32(orphans_reaped);
            out.bool(zygote);
        }
        Event::StdinTaken { job, bytes } => {
            out.u32(6);
            out.u32(job);
            out.u32(bytes);
        }
    }
    // The message's end closes the last run; the delimiter follows.
    out.close_run();
    out.put(0);
    (!out.full).then_some(out.len)
}
