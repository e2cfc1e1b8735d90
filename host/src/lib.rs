//! The host side of pid1: boots a microVM under QEMU with the pid1 init,
//! and runs Python or shell jobs in it over the `proto` wire.
//!
//! ```no_run
//! let mut vm = vmhost::Vm::boot(&vmhost::VmConfig::default())?;
//! let out = vm.agent().run(&vmhost::Job::python("print(1 + 1)"), |_, _| {})?;
//! assert_eq!(out.stdout, b"2\n");
//! # Ok::<(), vmhost::Error>(())
//! ```
//!
//! Layers, each knowing only those below it: [`config`], [`accel`] and the
//! [`qemu`] layer (command line, process, monitor, console); [`vm`] (one
//! VM's life); [`template`] (snapshot templates); [`boot`] (restore or
//! cold); [`agent`] (the wire: a core without I/O and two transports);
//! [`guest`] (files and sessions, through jobs); [`packages`] (package
//! layers, made on the host); [`api`] (a run's request
//! and result, as every front end speaks them).

pub mod accel;
pub mod agent;
pub mod api;
pub mod boot;
pub mod cleanup;
pub mod config;
pub mod error;
pub mod guest;
pub mod jail;
pub mod packages;
pub mod qemu;
pub mod template;
mod tsc;
pub mod vm;

pub use accel::Accel;
pub use agent::{Agent, GuestEvent, Job, JobHandle, Outcome, Runner, Shared, Signal};
pub use config::VmConfig;
pub use error::{AgentError, Error, Fallback, Result, StartError, TemplateError};
pub use guest::files::{FileEntry, FileError, FileKind};
pub use guest::session::{Session, SessionError, Step};
pub use proto::{ErrorKind, Exit, Lang, Stats, Stream};
pub use vm::{BootTimes, Start, Vm};
