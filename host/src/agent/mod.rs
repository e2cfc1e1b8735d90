//! The host end of the wire. [`core`] is the protocol without I/O: requests
//! to frames, bytes to events, which job an event is for, a job's stdin
//! window and its outcome ([`backlog`] keeps what arrives for a job before
//! its waiter asks). Two transports drive it: [`Agent`], blocking and owned
//! by one caller, and [`Shared`], one owner thread per VM that routes each
//! job's events to that job's own channel, for a server's many tasks. The
//! types they share are in [`types`].

pub mod backlog;
pub mod blocking;
pub mod core;
pub mod shared;
pub mod types;

pub use self::blocking::Agent;
pub use self::shared::{JobHandle, Shared};
pub use self::types::{AsUser, GuestEvent, Job, Outcome, Runner, Signal};
