//! Everything `unsafe` in the init: the entry point, the memory functions the
//! compiler expects from a libc, and the few syscalls rustix has no stable
//! wrapper for (fork, execve, exit, signal masks and dispositions, signalfd,
//! dup2, close_range, kill with a raw signal number).
//!
//! # Safety
//!
//! The init is one thread for its whole life, so `fork` cannot duplicate a
//! lock held by another thread, and no other code runs between a syscall and
//! the use of its result. Each block below states what it relies on.
#![allow(unsafe_code)]

use core::arch::asm;
#[cfg(not(test))]
use core::arch::naked_asm;
use core::ffi::CStr;

use linux_raw_sys::general as sys;
use rustix::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use rustix::io::{Errno, Result};
use rustix::process::Pid;

/// The kernel jumps here with the stack pointer at `argc`.
///
/// # Safety
///
/// Only the kernel calls this, once, with the initial process stack.
#[cfg(not(test))]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _start() -> ! {
    naked_asm!(
        "xor ebp, ebp",  // no caller frame: the outermost frame pointer is 0
        "mov rdi, rsp",  // first argument: the address of argc
        "and rsp, -16",  // the ABI wants a 16-byte aligned stack at a call
        "call {entry}",  // never returns
        "ud2",
        entry = sym entry,
    )
}

/// Turns the initial stack into the argument list and runs the init.
#[cfg(not(test))]
extern "C" fn entry(stack: *const usize) -> ! {
    debug_assert!(!stack.is_null());
    // SAFETY: the kernel puts argc at the initial stack pointer, followed by
    // argc pointers to NUL-terminated strings that live as long as the process.
    let args = unsafe {
        let argc = *stack;
        let argv = stack.add(1).cast::<*const core::ffi::c_char>();
        Args { argv, argc, next: 1 }
    };
    crate::main(args)
}

/// The command-line arguments, program name skipped.
pub struct Args {
    argv: *const *const core::ffi::c_char,
    argc: usize,
    next: usize,
}

impl Args {
    /// The environment strings (`NAME=value`) that follow the arguments on
    /// the initial stack. The kernel puts its command line's `name=value`
    /// parameters there, which is how a VM passes settings to its init.
    pub fn environ(&self) -> Environ {
        // SAFETY: envp starts right after argv's terminating null pointer,
        // at argv + argc + 1 (see `entry`).
        Environ { next: unsafe { self.argv.add(self.argc + 1) } }
    }
}

impl Iterator for Args {
    type Item = &'static CStr;

    fn next(&mut self) -> Option<&'static CStr> {
        if self.next >= self.argc {
            return None;
        }
        // SAFETY: `next < argc`, and argv[0..argc] are valid C strings that
        // live for the whole process (see `entry`).
        let arg = unsafe { CStr::from_ptr(*self.argv.add(self.next)) };
        self.next += 1;
        Some(arg)
    }
}

/// Iterator over the initial environment.
pub struct Environ {
    next: *const *const core::ffi::c_char,
}

impl Iterator for Environ {
    type Item = &'static CStr;

    fn next(&mut self) -> Option<&'static CStr> {
        // SAFETY: envp is an array of C string pointers ended by a null
        // pointer; `next` never moves past that null.
        unsafe {
            let ptr = *self.next;
            if ptr.is_null() {
                return None;
            }
            self.next = self.next.add(1);
            Some(CStr::from_ptr(ptr))
        }
    }
}

// The compiler lowers copies, fills and comparisons to these symbols, which a
// libc would provide. String instructions are short and fast on every x86_64
// with ERMS; the comparisons use volatile loads so that the optimiser cannot
// turn the loops back into calls to the functions being defined.

/// # Safety
///
/// `dst` and `src` valid for `n` bytes and not overlapping.
#[cfg(not(test))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller gives valid, disjoint ranges; the direction flag is
    // clear as the ABI requires, so movsb copies forwards.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
///
/// `dst` and `src` valid for `n` bytes; they may overlap.
#[cfg(not(test))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // SAFETY: dst is before src or past its end: a forward copy never
        // reads a byte it already overwrote.
        unsafe { memcpy(dst, src, n) };
    } else {
        // SAFETY: dst overlaps the tail of src: copy backwards from the last
        // byte with the direction flag set, then clear it as the ABI requires.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _,
                 inout("rsi") src.add(n - 1) => _, options(nostack));
        }
    }
    dst
}

/// # Safety
///
/// `dst` valid for `n` bytes. As in C, the fill is `c` converted to a byte.
#[cfg(not(test))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller gives a valid range; the direction flag is clear.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c.to_le_bytes()[0],
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
///
/// `a` and `b` valid for `n` bytes.
#[cfg(not(test))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: `i < n` and both ranges are valid for `n` bytes.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
///
/// `a` and `b` valid for `n` bytes.
#[cfg(not(test))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// # Safety
///
/// `s` points to a NUL-terminated string.
#[cfg(not(test))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: the string is terminated, so every byte up to the NUL is valid.
    while unsafe { s.add(n).read_volatile() } != 0 {
        n += 1;
    }
    n
}

/// Raw `syscall` with up to four arguments; negative results are errnos.
fn ret(value: isize) -> Result<usize> {
    if (-4095..0).contains(&value) {
        Err(Errno::from_raw_os_error(i32::try_from(-value).unwrap_or(0)))
    } else {
        Ok(value as usize)
    }
}

macro_rules! syscall {
    ($nr:expr $(, $a:expr)* $(,)?) => {{
        let args: [usize; 4] = {
            let mut v = [0usize; 4];
            let given: &[usize] = &[$($a as usize),*];
            let mut i = 0;
            while i < given.len() { v[i] = given[i]; i += 1; }
            v
        };
        let value: isize;
        // SAFETY: each caller passes arguments that match the syscall's
        // contract (see the wrapper's comment); `syscall` clobbers rcx, r11.
        unsafe {
            asm!("syscall", inlateout("rax") $nr as isize => value,
                 in("rdi") args[0], in("rsi") args[1], in("rdx") args[2], in("r10") args[3],
                 lateout("rcx") _, lateout("r11") _, options(nostack));
        }
        ret(value)
    }};
}

/// `fork()` — a copy of this process; `None` in the child.
pub fn fork() -> Result<Option<Pid>> {
    // fork takes no arguments. The child is a copy of a one-thread process,
    // so it inherits no lock held by another thread.
    let pid = syscall!(sys::__NR_fork)?;
    Ok(i32::try_from(pid).ok().and_then(Pid::from_raw))
}

/// `execve(path, argv, envp)` — returns only on failure.
///
/// `argv` and `envp` must end with a null pointer and point to C strings.
pub fn execve(path: &CStr, argv: &[*const u8], envp: &[*const u8]) -> Errno {
    if argv.last() != Some(&core::ptr::null()) || envp.last() != Some(&core::ptr::null()) {
        return Errno::INVAL;
    }
    // The arrays are null-terminated (checked above); their strings are owned
    // by the caller's job slot and outlive the call.
    match syscall!(sys::__NR_execve, path.as_ptr(), argv.as_ptr(), envp.as_ptr()) {
        Err(e) => e,
        Ok(_) => Errno::INVAL,
    }
}

/// `exit_group(code)` — ends the process (the job child after a failed exec,
/// or the init outside a VM).
pub fn exit(code: u8) -> ! {
    // exit_group takes a plain int and does not return.
    loop {
        let _ = syscall!(sys::__NR_exit_group, code);
    }
}

/// A set of signals in the kernel's layout (64 bits on x86_64).
#[derive(Clone, Copy, Default)]
pub struct SigSet(u64);

impl SigSet {
    pub const fn new() -> Self {
        Self(0)
    }

    pub const fn with(self, signal: u32) -> Self {
        Self(self.0 | 1 << (signal - 1))
    }
}

/// `rt_sigprocmask(SIG_SETMASK, set)` — the signals this thread holds back.
pub fn set_signal_mask(set: SigSet) -> Result<()> {
    // The set is a valid 8-byte sigset; the old mask is not wanted (null).
    syscall!(sys::__NR_rt_sigprocmask, sys::SIG_SETMASK, &raw const set.0, 0usize, 8usize)?;
    Ok(())
}

/// `signalfd4(-1, set, SFD_NONBLOCK | SFD_CLOEXEC)` — a descriptor that reads
/// the blocked signals in `set` as `signalfd_siginfo` records.
pub fn signalfd(set: SigSet) -> Result<OwnedFd> {
    let flags = sys::O_NONBLOCK | sys::O_CLOEXEC;
    // The set is a valid 8-byte sigset; -1 asks for a new descriptor.
    let fd = syscall!(sys::__NR_signalfd4, -1isize, &raw const set.0, 8usize, flags)?;
    Ok(owned(fd))
}

/// The kernel's `struct sigaction` for x86_64 (not libc's).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// Sets every catchable signal's disposition back to the default, so that a
/// job does not inherit an ignored signal from whoever started the init.
pub fn reset_signal_dispositions() {
    let action = KernelSigaction { handler: 0 /* SIG_DFL */, flags: 0, restorer: 0, mask: 0 };
    for signal in 1..=64u32 {
        if signal == sys::SIGKILL || signal == sys::SIGSTOP {
            continue;
        }
        // The action is a valid kernel sigaction for SIG_DFL, which needs no
        // restorer; the old action is not wanted (null).
        let _ = syscall!(sys::__NR_rt_sigaction, signal, &raw const action, 0usize, 8usize);
    }
}

/// `dup2(from, to)` — makes `to` a copy of `from` (without close-on-exec).
pub fn dup2(from: BorrowedFd<'_>, to: RawFd) -> Result<()> {
    use rustix::fd::AsRawFd;
    // Both are plain descriptor numbers; the kernel checks them.
    syscall!(sys::__NR_dup2, from.as_raw_fd(), to)?;
    Ok(())
}

/// `close_range(first, ~0, 0)` — closes every descriptor from `first` up.
pub fn close_from(first: RawFd) {
    // Plain numbers; only used in the job child right before exec, where no
    // descriptor above `first` is owned by live Rust code that will use it.
    let _ = syscall!(sys::__NR_close_range, first, u32::MAX, 0usize);
}

/// `kill(-pgid, signal)` with any signal number a host may ask for.
pub fn kill_group(pgid: Pid, signal: u8) -> Result<()> {
    // Plain numbers; the kernel validates the signal.
    syscall!(sys::__NR_kill, -pgid.as_raw_pid() as isize, signal)?;
    Ok(())
}

/// `kill(pid, signal)` — one process.
pub fn kill_process(pid: Pid, signal: u8) -> Result<()> {
    // Plain numbers; the kernel validates the signal.
    syscall!(sys::__NR_kill, pid.as_raw_pid() as isize, signal)?;
    Ok(())
}

/// `kill(-1, SIGKILL)` — every process but the caller (PID 1 at shutdown).
pub fn kill_all() {
    // Plain numbers.
    let _ = syscall!(sys::__NR_kill, -1isize, sys::SIGKILL);
}

/// Takes ownership of a descriptor number the kernel just returned.
fn owned(fd: usize) -> OwnedFd {
    // SAFETY: `fd` was just returned by a syscall that creates a descriptor;
    // nothing else owns it.
    // Descriptor numbers are ints: the conversion is exact.
    #[allow(clippy::cast_possible_truncation)]
    unsafe {
        OwnedFd::from_raw_fd(fd as RawFd)
    }
}

/// Descriptors 0, 1 and 2, which the process is started with.
pub fn stdio(fd: RawFd) -> BorrowedFd<'static> {
    debug_assert!((0..=2).contains(&fd));
    // SAFETY: the init keeps 0, 1 and 2 open for its whole life (`boot`
    // reopens them on the console when the kernel could not).
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// `ifreq` for SIOCGIFFLAGS / SIOCSIFFLAGS: a name and the flags word.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _rest: [u8; 22],
}

/// Sets the loopback interface up (it starts down), so that jobs can use
/// 127.0.0.1. rustix has no interface ioctls.
pub fn bring_up_loopback() -> Result<()> {
    const AF_INET: usize = 2;
    const SOCK_DGRAM_CLOEXEC: usize = 2 | 0o2000000;
    const SIOCGIFFLAGS: usize = 0x8913;
    const SIOCSIFFLAGS: usize = 0x8914;
    const IFF_UP: i16 = 1;
    let sock = owned(syscall!(sys::__NR_socket, AF_INET, SOCK_DGRAM_CLOEXEC, 0usize)?);
    use rustix::fd::AsRawFd;
    let mut req = IfReq { name: [0; 16], flags: 0, _rest: [0; 22] };
    req.name[..2].copy_from_slice(b"lo");
    // `req` is a valid ifreq the kernel fills in (flags) for this socket.
    syscall!(sys::__NR_ioctl, sock.as_raw_fd(), SIOCGIFFLAGS, &raw mut req)?;
    req.flags |= IFF_UP;
    // The same ifreq, read by the kernel.
    syscall!(sys::__NR_ioctl, sock.as_raw_fd(), SIOCSIFFLAGS, &raw const req)?;
    Ok(())
}

/// `clock_gettime(CLOCK_BOOTTIME)` in nanoseconds. A plain syscall: the init
/// reads the clock a few times per job, and rustix's vDSO lookup would add
/// about 2 KiB of ELF parsing to the binary.
pub fn boottime_ns() -> u64 {
    let mut ts = [0i64; 2];
    // `ts` is a valid `struct timespec` (two 64-bit fields on x86_64).
    let _ = syscall!(sys::__NR_clock_gettime, sys::CLOCK_BOOTTIME, &raw mut ts);
    let secs = u64::try_from(ts[0]).unwrap_or(0);
    let nanos = u64::try_from(ts[1]).unwrap_or(0);
    secs * 1_000_000_000 + nanos
}
