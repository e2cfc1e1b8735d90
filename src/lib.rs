//! pid1: a tiny init for code-execution microVMs.
//!
//! The kernel starts it as PID 1. It mounts what a sandbox needs, then serves
//! the host over one port: jobs in, their output and exits out, in the
//! postcard frames of the `proto` crate. One thread, one epoll loop, no
//! allocator, no libc. The binary (`src/main.rs`) is only its entry point.
// With std for unit tests and for the fuzz targets (`--cfg fuzzing`),
// which run the init's code in a host process.
#![cfg_attr(not(any(test, fuzzing)), no_std)]

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

#[cfg(not(any(test, fuzzing)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // Not what or where: every panic site builds its message with pointers
    // to formatting code (`core::fmt`, 6.5 KB the init otherwise does
    // without), and reading anything of the panic keeps them all. The
    // unit tests and the fuzz harness run this code with std, where a
    // panic says all.
    log!("panic");
    if BOOTED.load(core::sync::atomic::Ordering::Relaxed) { boot::power_off() } else { sys::exit(101) }
}
