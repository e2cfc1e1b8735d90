//! The harness both benchmark binaries drive a `vmexec serve` with: an
//! HTTP client over its Unix socket, a handle that starts it, waits for
//! its pool and stops it with SIGTERM, and the /proc readers that tell
//! what it and its QEMUs use and leave behind.
//!
//! `bench-serve` and `soak` each compile these modules into their own
//! crate (`#[path]`), so what one of them leaves unused is not dead code.

pub mod client;
pub mod error;
pub mod figures;
pub mod procfs;
pub mod service;
