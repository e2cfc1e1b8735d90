//! The wire between the pid1 init and its host.
//!
//! Each message is a postcard-encoded enum carried in a COBS frame that ends
//! with a 0x00 byte (see `PROTOCOL.md`). The host sends [`Request`]s, the init
//! answers with [`Event`]s; the init's first frame is always [`Event::Ready`]
//! with its [`VERSION`]. Enum tags are declaration order: variants are only
//! ever appended, never reordered or removed.
#![no_std]

#[cfg(feature = "std")]
extern crate std;

mod frame;
mod message;
pub mod wire;

pub use frame::{Frame, FrameReader, decode, encode};
pub use message::*;

/// Protocol version, sent in `Ready`. postcard is not self-describing, so
/// any change to a message's fields (appended ones too) and any new variant
/// is incompatible and bumps it (`PROTOCOL.md`, Stability).
pub const VERSION: u16 = 5;

/// Largest frame on the wire, COBS overhead and delimiter included. Both
/// sides hold one frame in a static buffer; 64 KiB keeps that small while a
/// [`MAX_CHUNK`] payload plus its header always fits.
pub const MAX_FRAME: usize = 64 * 1024;

/// Largest payload of one `Code` or `Output` message. Half a frame: COBS adds
/// one byte in 254, and the header is a few bytes, so a chunk always fits.
pub const MAX_CHUNK: usize = 32 * 1024;

/// Most stdin bytes the host may have sent to one job and not yet seen
/// acknowledged by `StdinTaken`: what the init holds for a job whose pipe
/// is full, so a job that never reads its stdin stalls no one else.
pub const STDIN_WINDOW: u32 = 64 * 1024;

/// Largest job code. 1 MiB covers generated notebooks and test files; the
/// code travels in `Code` chunks and never sits in the init's memory whole.
pub const MAX_CODE: u32 = 1024 * 1024;

/// Most environment variables a job may set. The whole `Run` message must
/// still fit in one frame.
pub const MAX_ENV: usize = 64;

/// Default per-stream output limit when a host has no opinion: 1 MiB.
pub const DEFAULT_OUTPUT_LIMIT: u32 = 1024 * 1024;
