//! What can fail in talking to the service under test: one variant per
//! failing step, each carrying its cause.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Http { what: &'static str, source: hyper::Error },
    #[error("{what}: no answer within {} s", .after.as_secs())]
    Timeout { what: &'static str, after: Duration },
    #[error("the service {0}")]
    Service(String),
    #[error("{what} said {got}")]
    Output { what: String, got: String },
}

pub type Result<T> = std::result::Result<T, ServiceError>;

/// An I/O error's mapper, naming what was being done.
pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServiceError {
    let what = what.into();
    move |source| ServiceError::Io { what, source }
}
