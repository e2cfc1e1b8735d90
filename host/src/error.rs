//! One error type for the host side, one variant per step that can fail.

use std::path::PathBuf;

use proto::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "QEMU is not installed ({0} not found); install it with `apt-get install qemu-system-x86` or `just setup`"
    )]
    NoQemu(String),
    #[error("no guest kernel at {0}; build it with `just kernel`")]
    NoKernel(PathBuf),
    #[error("no guest root filesystem at {0}; build it with `just rootfs`")]
    NoRootfs(PathBuf),
    #[error("failed to prepare the VM's directory: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("failed to start QEMU: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("QEMU exited before the guest was ready ({status}); console:\n{console}")]
    QemuExited { status: String, console: String },
    #[error("the guest kernel panicked during boot; console:\n{console}")]
    Panic { console: String },
    #[error("the guest was not ready within {secs} s; console:\n{console}")]
    NotReady { secs: u64, console: String },
    #[error("the guest speaks protocol version {guest}, this host speaks {host}")]
    Version { guest: u16, host: u16 },
    #[error("agent connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the guest closed the agent connection")]
    Closed,
    #[error("no answer from the guest within {0} s")]
    Timeout(u64),
    #[error("malformed frame from the guest: {0}")]
    Protocol(String),
    #[error("job refused ({kind:?}): {message}")]
    Refused { kind: ErrorKind, message: String },
    #[error("invalid job: {0}")]
    InvalidJob(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
