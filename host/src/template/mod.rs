//! Snapshot templates: a VM that booted, served a warm-up job (so its page
//! cache holds the interpreter, its modules and their `.pyc`) and was paused,
//! kept as its RAM (a file) and its device state. Every later VM of the same
//! configuration maps that RAM copy-on-write and loads the device state in
//! tens of milliseconds instead of booting.
//!
//! A template lives in `<cache>/templates/<name>/` as `ram`, `state` and
//! `meta`, its name the SHA-256 of its [`key`]. [`store`] finds and checks
//! them; `build` makes one. It is made in a `.build-*`
//! directory and renamed into place, so no one ever reads half of one; a
//! lock file lets one process make it while the others boot cold rather
//! than wait or make it twice.

mod build;
pub mod key;
pub mod store;

pub use self::store::{Status, Template, clear, list};
