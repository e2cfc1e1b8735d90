//! A request the job table turned down, as the host reads it in `Error`:
//! its kind and its text, fixed or naming the field or step at fault.

use proto::ErrorKind;
use rustix::io::Errno;

use super::check::{Refusal, refuse};
use crate::error::describe;
use crate::pieces;

/// A request the job table turned down.
pub struct Refused {
    pub kind: ErrorKind,
    pub why: Why,
}

/// The text of a refusal.
pub enum Why {
    Text(&'static str),
    /// Formatted, naming the field at fault.
    Field(Refusal),
}

impl Why {
    pub fn as_str(&self) -> &str {
        match self {
            Why::Text(text) => text,
            Why::Field(text) => text.as_str(),
        }
    }
}

impl Refused {
    pub const fn new(kind: ErrorKind, text: &'static str) -> Self {
        Self { kind, why: Why::Text(text) }
    }

    pub fn invalid(field: Refusal) -> Self {
        Self { kind: ErrorKind::InvalidJob, why: Why::Field(field) }
    }

    /// A job that could not be started: `what` failed with `e`.
    // One copy, not one per step that can fail.
    #[inline(never)]
    pub fn failed(what: &str, e: Errno) -> Self {
        let text = refuse(pieces!["cannot start the job: ", what, ": ", describe(e)]);
        Self { kind: ErrorKind::Spawn, why: Why::Field(text) }
    }
}
