//! pid1: a tiny init for code-execution microVMs.
//!
//! The kernel starts it as PID 1. It mounts what a sandbox needs, then serves
//! the host over one port: jobs in, their output and exits out, in the
//! postcard frames of the `proto` crate. One thread, one epoll loop, no
//! allocator, no libc. The binary (`src/main.rs`) is only its entry point.
#![cfg_attr(not(test), no_std)]

pub mod boot;
pub mod config;
pub mod error;
pub mod job;
pub mod log;
pub mod poll;
pub mod port;
pub mod refresh;
pub mod rt;
pub mod serve;
pub mod storage;
pub mod sys;

use core::sync::atomic::AtomicBool;

/// Set once the PID-1 boot duties ran: a panic must then power the VM off,
/// since PID 1 may never exit.
static BOOTED: AtomicBool = AtomicBool::new(false);

/// Called by `_start` with the command-line arguments.
pub fn main(args: rt::Args) -> ! {
    serve::run(args)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    log!("panic: {}", info.message());
    if BOOTED.load(core::sync::atomic::Ordering::Relaxed) { boot::power_off() } else { sys::exit(101) }
}
