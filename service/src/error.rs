//! Why a call through the door failed, one variant per way, each mapped to
//! one HTTP status by the API; and how the host library's errors map to it.

use vmhost::api::FieldError;
use vmhost::packages::{Fault, PackageError};
use vmhost::{AgentError, FileError};

use crate::metrics::Outcome;
use crate::pool::PoolError;

/// Why a call through the door failed; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum DoorError {
    #[error(transparent)]
    BadRequest(#[from] FieldError),
    #[error("the guest refused the job: {0}")]
    Refused(String),
    #[error("no session {0}")]
    NoSession(String),
    #[error("the session has ended: {0}")]
    SessionEnded(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    /// The packages asked for cannot be had from the index as named.
    #[error("{0}")]
    Packages(String),
    /// The index cannot be reached and the set is not in the cache.
    #[error("{0}")]
    PackagesUnavailable(String),
    #[error(transparent)]
    Busy(PoolError),
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("the VM was lost mid-run: {0}")]
    VmLost(String),
    #[error("the client went away; the job was killed")]
    Cancelled,
    #[error("{0}")]
    Failed(String),
}

impl DoorError {
    /// The `kind` the API reports.
    pub fn kind(&self) -> &'static str {
        match self {
            DoorError::BadRequest(_) => "bad_request",
            DoorError::Refused(_) => "refused",
            DoorError::NoSession(_) => "no_session",
            DoorError::SessionEnded(_) => "session_ended",
            DoorError::File { .. } => "file",
            DoorError::Packages(_) => "packages",
            DoorError::PackagesUnavailable(_) => "packages_unavailable",
            DoorError::Busy(_) => "busy",
            DoorError::ShuttingDown => "shutting_down",
            DoorError::VmLost(_) => "vm_lost",
            DoorError::Cancelled => "cancelled",
            DoorError::Failed(_) => "failed",
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            DoorError::BadRequest(_) | DoorError::Refused(_) | DoorError::File { .. } => Outcome::Refused,
            DoorError::Packages(_) => Outcome::Refused,
            DoorError::PackagesUnavailable(_) => Outcome::Failed,
            DoorError::NoSession(_) | DoorError::SessionEnded(_) => Outcome::Refused,
            DoorError::Busy(_) | DoorError::ShuttingDown => Outcome::Rejected,
            DoorError::VmLost(_) => Outcome::VmLost,
            DoorError::Cancelled => Outcome::Cancelled,
            DoorError::Failed(_) => Outcome::Failed,
        }
    }
}

impl From<PoolError> for DoorError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::ShuttingDown => DoorError::ShuttingDown,
            PoolError::Start(why) => DoorError::Failed(why),
            busy => DoorError::Busy(busy),
        }
    }
}

impl From<PackageError> for DoorError {
    fn from(e: PackageError) -> Self {
        let message = vmhost::error::chain(&e);
        match (e.fault(), e) {
            (Fault::Written, _) => {
                DoorError::BadRequest(FieldError { field: "packages".into(), reason: message })
            }
            // An offline service's cache is all it has: a set not in it
            // is as unavailable there as an unknown package.
            (Fault::Index, _) | (Fault::Unavailable, PackageError::Offline { .. }) => {
                DoorError::Packages(message)
            }
            (Fault::Unavailable, _) => DoorError::PackagesUnavailable(message),
            // The host's own tools or disk: nothing the caller can change.
            (Fault::Host, _) => DoorError::Failed(message),
        }
    }
}

/// A guest-side failure of a job, by whose fault it was.
pub fn agent_error(e: &AgentError) -> DoorError {
    match e {
        AgentError::Refused { message, .. } => DoorError::Refused(message.clone()),
        AgentError::InvalidJob(why) => DoorError::Refused(why.clone()),
        other => DoorError::VmLost(vmhost::error::chain(other)),
    }
}

pub fn file_error(path: &str, e: &FileError) -> DoorError {
    match e {
        FileError::Agent(agent) => agent_error(agent),
        other => DoorError::File { path: path.to_owned(), message: other.to_string() },
    }
}
