//! Why a command ended without the job's own exit status, and the exit
//! code and `--json` kind each failure maps to.

use std::error::Error as _;
use std::path::PathBuf;

use vmhost::{AgentError, FileError};

/// Exit code when the job timed out (as timeout(1) does).
pub const EXIT_TIMEOUT: u8 = 124;
/// Exit code when the job was refused before it ran, or the command line is wrong.
pub const EXIT_REFUSED: u8 = 2;
/// Exit code when the code cannot be read (sysexits' EX_NOINPUT): vmexec's
/// own input, not the job, is at fault.
pub const EXIT_NO_INPUT: u8 = 66;
/// Exit code when the VM itself failed (no QEMU, no kernel, boot failure).
pub const EXIT_FAILURE: u8 = 1;

/// Reading the job's code, before any VM exists.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read the code from stdin")]
    Stdin(#[source] std::io::Error),
    #[error("cannot read the code file {}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the stdin file {}", path.display())]
    StdinFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--stdin -: vmexec's stdin already holds the code")]
    StdinTwice,
    #[error("cannot read the upload {}", path.display())]
    Upload {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a run ended without the job's own exit status.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Vm(#[from] vmhost::Error),
    #[error("cannot {what} {path}")]
    File {
        what: &'static str,
        path: String,
        #[source]
        source: FileError,
    },
    #[error("the session failed")]
    Session(#[from] vmhost::SessionError),
    #[error("cannot write the download {}", path.display())]
    Download {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Self {
        Failure::Vm(e.into())
    }
}

impl From<vmhost::StartError> for Failure {
    fn from(e: vmhost::StartError) -> Self {
        Failure::Vm(e.into())
    }
}

impl Failure {
    /// The exit code, and the `kind` `--json` reports.
    pub fn classify(&self) -> (u8, String) {
        match self {
            Failure::Input(_) => (EXIT_NO_INPUT, "Input".to_owned()),
            Failure::Vm(vmhost::Error::Agent(AgentError::Refused { kind, .. })) => {
                (EXIT_REFUSED, format!("{kind:?}"))
            }
            Failure::Vm(vmhost::Error::Agent(AgentError::InvalidJob(_))) => {
                (EXIT_REFUSED, "InvalidJob".to_owned())
            }
            Failure::Vm(_) => (EXIT_FAILURE, "Vm".to_owned()),
            Failure::File { .. } | Failure::Download { .. } => (EXIT_FAILURE, "File".to_owned()),
            Failure::Session(_) => (EXIT_FAILURE, "Session".to_owned()),
        }
    }

    /// The error and its causes, `what failed: why: ...`.
    pub fn message(&self) -> String {
        let mut text = self.to_string();
        let mut cause = self.source();
        while let Some(e) = cause {
            // `transparent` variants repeat their inner error once.
            let line = e.to_string();
            if !text.ends_with(&line) {
                text = format!("{text}: {line}");
            }
            cause = e.source();
        }
        text
    }
}
