//! Why a set of packages cannot be had.

use std::path::PathBuf;
use std::time::Duration;

/// Why a set of packages cannot be had. Every variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("`{spec}` is not a requirement: {why}")]
    BadRequirement { spec: String, why: String },
    #[error("{count} requirements in one set; at most {max}")]
    TooMany { count: usize, max: usize },
    #[error("conflicting pins: {name}=={first} and {name}=={second}")]
    ConflictingPins { name: String, first: String, second: String },
    #[error("the requirements conflict: {detail}")]
    Conflict { detail: String },
    #[error("no package `{name}` in the package index")]
    UnknownPackage { name: String },
    #[error("no version of `{requirement}` in the package index for the guest (it has: {})", .available.join(", "))]
    NoSuchVersion { requirement: String, available: Vec<String> },
    #[error(
        "`{name}` has no binary wheel for the guest (CPython 3.11, manylinux x86_64, glibc 2.36){}; \
         building it from source would need a compiler and run its code on the host, which is not done",
        if .versions.is_empty() { String::new() } else { format!(": the index has only sources or other platforms' wheels of {}", .versions.join(", ")) }
    )]
    NoWheel { name: String, versions: Vec<String> },
    #[error(
        "the package index cannot be reached, and the cache does not hold what this set needs ({detail})"
    )]
    Unreachable { detail: String },
    #[error("offline, and the cache does not hold: {}", .missing.join(", "))]
    Offline { missing: Vec<String> },
    #[error("pip failed to {step}: {detail}")]
    Pip { step: &'static str, detail: String },
    #[error("{} has no pip; set PID1_PYTHON to a Python 3.11 that has one (e.g. a virtual environment's)", .python.display())]
    NoPip { python: PathBuf },
    #[error(
        "{} is Python {version}, whose bytecode the guest's Python 3.11 cannot read; set PID1_PYTHON to a Python 3.11",
        .python.display()
    )]
    HostPython { python: PathBuf, version: String },
    #[error("cannot run {tool}")]
    Tool {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {step}: {detail}")]
    Layer { step: &'static str, detail: String },
    #[error("cannot write {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another process has been making this set for over {} s", .0.as_secs())]
    Busy(Duration),
}

/// Whose doing a [`PackageError`] is: what a front end answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The requirements as written: not requirements, too many, or pins
    /// of one package that disagree. Known before any index is asked.
    Written,
    /// What the index holds cannot satisfy them: an unknown package or
    /// version, a conflict, no wheel for the guest.
    Index,
    /// Neither index nor cache can answer now: unreachable, or offline
    /// with the set not cached.
    Unavailable,
    /// The host's own tools or disk.
    Host,
}

impl PackageError {
    pub fn fault(&self) -> Fault {
        match self {
            PackageError::BadRequirement { .. }
            | PackageError::TooMany { .. }
            | PackageError::ConflictingPins { .. } => Fault::Written,
            PackageError::Conflict { .. }
            | PackageError::UnknownPackage { .. }
            | PackageError::NoSuchVersion { .. }
            | PackageError::NoWheel { .. } => Fault::Index,
            PackageError::Unreachable { .. } | PackageError::Offline { .. } => Fault::Unavailable,
            PackageError::Pip { .. }
            | PackageError::NoPip { .. }
            | PackageError::HostPython { .. }
            | PackageError::Tool { .. }
            | PackageError::Layer { .. }
            | PackageError::Io { .. }
            | PackageError::Busy(_) => Fault::Host,
        }
    }
}
