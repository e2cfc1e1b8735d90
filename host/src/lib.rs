//! The host side of pid1: boots a microVM under QEMU with the pid1 init,
//! and runs Python or shell jobs in it over the `proto` wire.
//!
//! ```no_run
//! let mut vm = vmhost::Vm::boot(&vmhost::VmConfig::default())?;
//! let out = vm.agent().run(&vmhost::Job::python("print(1 + 1)"), |_, _| {})?;
//! assert_eq!(out.stdout, b"2\n");
//! # Ok::<(), vmhost::Error>(())
//! ```

pub mod accel;
pub mod agent;
pub mod cleanup;
pub mod error;
pub mod files;
pub mod qmp;
pub mod session;
pub mod template;
mod tsc;
pub mod vm;

pub use accel::Accel;
pub use agent::{Agent, GuestEvent, Job, Outcome};
pub use error::{AgentError, Error, Result, StartError};
pub use files::{FileEntry, FileError};
pub use proto::{ErrorKind, Exit, Lang, Stats, Stream};
pub use session::{Session, SessionError, Step};
pub use vm::{BootTimes, Start, Vm, VmConfig};
