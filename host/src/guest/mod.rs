//! Helpers that work in a guest through ordinary jobs: files in and out
//! ([`files`]) and stateful sessions ([`session`]), each with the small
//! driver script it runs in the guest.

pub mod files;
pub mod session;
