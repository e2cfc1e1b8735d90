//! The host side's errors: one enum per component, one variant per step
//! that can fail, each carrying its cause. [`StartError`] is bringing a VM
//! up, [`AgentError`] is talking to its init, [`TemplateError`] is making
//! or finding a snapshot template; [`Error`] is a VM's start or its agent,
//! for a caller that does both with `?`. [`Fallback`] is not an error: it
//! says why a VM that should have been restored booted cold.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use proto::ErrorKind;

use crate::jail::JailError;
use crate::qemu::qmp::QmpError;

/// Bringing a VM up, from checking its inputs to the init's `Ready`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "QEMU is not installed ({} not found); install it with `apt-get install qemu-system-x86` or `just setup`",
        .0.display()
    )]
    NoQemu(PathBuf),
    #[error("no guest kernel at {}; build it with `just kernel`", .0.display())]
    NoKernel(PathBuf),
    #[error("no guest root filesystem at {}; build it with `just rootfs`", .0.display())]
    NoRootfs(PathBuf),
    #[error("cannot create the VM's temporary directory")]
    TempDir(#[source] std::io::Error),
    #[error("cannot jail QEMU")]
    Jail(#[source] JailError),
    #[error("cannot open the template's device state")]
    State(#[source] std::io::Error),
    #[error("cannot listen on the agent socket {}", path.display())]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create QEMU's log file {}", path.display())]
    QemuLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to start QEMU")]
    Spawn(#[source] std::io::Error),
    #[error("failed to accept QEMU's connection to the agent socket")]
    Accept(#[source] std::io::Error),
    #[error("QEMU exited before the guest was ready ({status}); console:\n{console}")]
    QemuExited { status: ExitStatus, console: String },
    #[error("the guest kernel panicked during boot; console:\n{console}")]
    Panic { console: String },
    #[error("the guest was not ready within {} s; console:\n{console}", .timeout.as_secs())]
    NotReady { timeout: Duration, console: String },
    #[error("waiting for the guest's Ready")]
    Agent(#[from] AgentError),
    #[error("QEMU's monitor failed to {step}")]
    Qmp {
        step: &'static str,
        #[source]
        source: QmpError,
    },
    #[error("cannot read entropy for the guest from /dev/urandom")]
    Entropy(#[source] std::io::Error),
    #[error("the restored guest did not take its clock and entropy")]
    Refresh(#[source] AgentError),
}

/// Talking to an init over the wire.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot set the agent connection's read timeout")]
    SetTimeout(#[source] std::io::Error),
    #[error("failed to send to the guest")]
    Send(#[source] std::io::Error),
    #[error("failed to read from the guest")]
    Read(#[source] std::io::Error),
    #[error("the guest closed the agent connection")]
    Closed,
    #[error("no answer from the guest within {} s", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("cannot encode a request")]
    Encode(#[source] postcard::Error),
    #[error("the guest sent a frame that does not decode as an event")]
    Decode(#[source] postcard::Error),
    #[error("the guest sent a frame longer than {} bytes", proto::MAX_FRAME)]
    OversizeFrame,
    #[error("the guest sent a frame that is not valid COBS")]
    CorruptFrame,
    #[error("the guest speaks protocol version {guest}, this host speaks {host}")]
    Version { guest: u16, host: u16 },
    #[error("job refused ({kind:?}): {message}")]
    Refused { kind: ErrorKind, message: String },
    #[error("invalid job: {0}")]
    InvalidJob(String),
    #[error("cannot read the job's stdin (the job was given end of file there)")]
    Input(#[source] std::io::Error),
    #[error("job {0}'s events were dropped: nobody read them")]
    Dropped(u32),
}

/// Making, finding or checking a snapshot template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {}", path.display())]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU is not on PATH ({})", .0.display())]
    NoQemu(PathBuf),
    #[error("cannot write the template directory {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the template VM did not start")]
    Boot(#[source] Box<StartError>),
    #[error("the warm-up job failed")]
    WarmUp(#[source] AgentError),
    #[error("the warm-up job exited with {0}")]
    WarmUpExit(i32),
    #[error("the Python zygote was not ready in time")]
    NoZygote,
    #[error("the VM's RAM is not a shared file: it cannot be saved as a template")]
    NotSavable,
    #[error("QEMU's monitor failed to {step}")]
    Qmp {
        step: &'static str,
        #[source]
        source: QmpError,
    },
}

/// Why a template is not usable as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// No template was made for these inputs yet.
    Missing,
    /// Its meta file does not parse.
    DamagedMeta,
    /// Its key is another configuration's (a name collision).
    OtherInputs,
    /// Its RAM or state file is not the size its meta says.
    Truncated,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unusable::Missing => "no template",
            Unusable::DamagedMeta => "its meta file is damaged",
            Unusable::OtherInputs => "it was made for other inputs",
            Unusable::Truncated => "its files are truncated or damaged",
        })
    }
}

/// Why a VM booted cold although a restore was wanted.
#[derive(Debug, thiserror::Error)]
pub enum Fallback {
    #[error("no snapshot template: {}", chain(.0))]
    NoTemplate(#[source] TemplateError),
    #[error("the snapshot template was unusable ({0}); removed, made again on the next run")]
    Unusable(Unusable),
    #[error("another process is making the snapshot template")]
    Busy,
    #[error("cannot make the snapshot template: {}", chain(.0))]
    Build(#[source] TemplateError),
    #[error("cannot restore the snapshot template ({}); removed, made again on the next run", chain(.0))]
    Restore(#[source] StartError),
}

/// An error and its causes on one line: each cause's first line (console
/// tails stay in the full error), a cause that repeats its parent skipped.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let line = e.to_string();
        let first = line.lines().next().unwrap_or_default();
        if !text.ends_with(first) {
            text = format!("{text}: {first}");
        }
        cause = e.source();
    }
    text.lines().next().unwrap_or_default().to_owned()
}

/// Either component's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
