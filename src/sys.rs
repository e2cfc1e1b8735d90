//! The syscalls rustix has no stable wrapper for: fork and what a forked
//! child does before exec (`dup2`, `close_range`, `execve`, signal
//! dispositions), `exit_group`, the signal mask and signalfd, `kill` with any
//! signal number, the loopback interface and the boot clock. Plus the types
//! they take: [`Signal`], [`SigSet`], and [`Child`], the proof of being in a
//! forked child.
//!
//! # Safety
//!
//! The init is one thread for its whole life, so `fork` cannot duplicate a
//! lock held by another thread, and no other code runs between a syscall and
//! the use of its result. Every call of [`syscall`] states what makes its
//! arguments valid.
#![allow(unsafe_code)]

use core::arch::asm;
use core::ffi::CStr;

use linux_raw_sys::general as sys;
use rustix::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use rustix::io::{Errno, Result};
use rustix::process::Pid;

/// Raw `syscall` with up to four arguments; negative results are errnos.
///
/// # Safety
///
/// The arguments must be what syscall `nr` expects: pointers valid for what
/// the kernel reads or writes through them, descriptors the caller may use
/// that way.
// Inlined: each call site then loads its registers directly, which takes
// fewer bytes than building the argument array for a call.
#[inline(always)]
unsafe fn syscall(nr: u32, args: [usize; 4]) -> Result<usize> {
    let value: isize;
    // SAFETY: the caller vouches for the arguments; `syscall` clobbers only
    // rcx and r11, declared here, and touches no stack.
    unsafe {
        asm!("syscall", inlateout("rax") nr as isize => value,
             in("rdi") args[0], in("rsi") args[1], in("rdx") args[2], in("r10") args[3],
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    if (-4095..0).contains(&value) {
        Err(Errno::from_raw_os_error(i32::try_from(-value).unwrap_or(0)))
    } else {
        Ok(value.unsigned_abs())
    }
}

/// A signal number, 1 to 64 (the kernel's `_NSIG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal(u8);

impl Signal {
    pub const INT: Signal = Signal::known(sys::SIGINT);
    pub const KILL: Signal = Signal::known(sys::SIGKILL);
    pub const TERM: Signal = Signal::known(sys::SIGTERM);
    pub const CHLD: Signal = Signal::known(sys::SIGCHLD);
    pub const PIPE: Signal = Signal::known(sys::SIGPIPE);
    pub const HUP: Signal = Signal::known(sys::SIGHUP);
    pub const QUIT: Signal = Signal::known(sys::SIGQUIT);
    pub const PWR: Signal = Signal::known(sys::SIGPWR);
    const STOP: Signal = Signal::known(sys::SIGSTOP);

    /// The signal numbered `n`, if there is one.
    // Within 1..=64 the cast is exact.
    #[allow(clippy::cast_possible_truncation)]
    pub const fn new(n: u32) -> Option<Signal> {
        if n >= 1 && n <= 64 { Some(Signal(n as u8)) } else { None }
    }

    /// A number from the kernel's headers; checked when compiling.
    const fn known(n: u32) -> Signal {
        match Signal::new(n) {
            Some(signal) => signal,
            None => panic!("not a signal number"),
        }
    }

    pub const fn number(self) -> u8 {
        self.0
    }
}

/// A set of signals in the kernel's layout (64 bits on x86_64).
#[derive(Clone, Copy, Default)]
pub struct SigSet(u64);

impl SigSet {
    pub const EMPTY: SigSet = SigSet(0);

    pub const fn with(self, signal: Signal) -> Self {
        Self(self.0 | 1 << (signal.0 - 1))
    }
}

/// `rt_sigprocmask(SIG_SETMASK, set)` — the signals this thread holds back.
pub fn set_signal_mask(set: SigSet) -> Result<()> {
    let args = [sys::SIG_SETMASK as usize, (&raw const set.0).expose_provenance(), 0, 8];
    // SAFETY: the set is a valid 8-byte sigset read by the kernel; the old
    // mask is not wanted (null).
    unsafe { syscall(sys::__NR_rt_sigprocmask, args) }?;
    Ok(())
}

/// `signalfd4(-1, set, SFD_NONBLOCK | SFD_CLOEXEC)` — a descriptor that reads
/// the blocked signals in `set` as `signalfd_siginfo` records.
pub fn signalfd(set: SigSet) -> Result<OwnedFd> {
    let flags = (sys::O_NONBLOCK | sys::O_CLOEXEC) as usize;
    // SAFETY: the set is a valid 8-byte sigset read by the kernel; -1 asks
    // for a new descriptor.
    let fd = unsafe {
        syscall(sys::__NR_signalfd4, [usize::MAX, (&raw const set.0).expose_provenance(), 8, flags])
    }?;
    // SAFETY: signalfd4 just created `fd`; nothing else owns it.
    Ok(unsafe { owned(fd) })
}

/// `kill(-pgid, signal)` — a whole process group.
pub fn kill_group(pgid: Pid, signal: Signal) -> Result<()> {
    kill(-pgid.as_raw_pid(), signal)
}

/// `kill(pid, signal)` — one process.
pub fn kill_process(pid: Pid, signal: Signal) -> Result<()> {
    kill(pid.as_raw_pid(), signal)
}

/// `kill(-1, SIGKILL)` — every process but the caller.
pub fn kill_all() {
    let _ = kill(-1, Signal::KILL);
}

/// `kill(-1, SIGKILL)` as user `uid`: every process of that user, and no
/// other. The real and effective uids become `uid` for the one call, the
/// saved uid stays root, so that the next call takes root back (and, as
/// the saved uid is root, keeps the capabilities); outside root, the
/// plain `kill(-1)`.
pub fn kill_all_of(uid: u32) {
    let as_user = rustix::process::Uid::from_raw(uid);
    if rustix::thread::set_thread_res_uid(as_user, as_user, rustix::process::Uid::ROOT).is_err() {
        kill_all();
        return;
    }
    kill_all();
    let root = rustix::process::Uid::ROOT;
    let _ = rustix::thread::set_thread_res_uid(root, root, root);
}

/// rustix's `kill` takes only the named signals; a host may send any.
fn kill(target: i32, signal: Signal) -> Result<()> {
    // Sign-extended, as the kernel reads the pid argument as an int.
    let target = target as isize as usize;
    // SAFETY: plain numbers, which the kernel checks.
    unsafe { syscall(sys::__NR_kill, [target, usize::from(signal.0), 0, 0]) }?;
    Ok(())
}

/// `exit_group(code)` — ends the process: the init outside a VM, or a job
/// child that could not exec.
pub fn exit(code: u8) -> ! {
    loop {
        // SAFETY: exit_group takes a plain int and does not return.
        let _ = unsafe { syscall(sys::__NR_exit_group, [usize::from(code), 0, 0, 0]) };
    }
}

/// Which side of a [`fork`] this is.
pub enum Fork {
    Parent(Pid),
    Child(Child),
}

/// Proof of running in a child just forked by [`fork`]: the calls that are
/// valid only there (they reuse descriptor numbers the parent's `OwnedFd`s
/// still name) take it.
pub struct Child(());

/// `fork()`, or, given a cgroup directory, `clone3` with
/// `CLONE_INTO_CGROUP`: the child starts in that cgroup, so nothing it
/// does (not even a fork in its first instruction) happens outside it.
///
/// # Safety
///
/// The process has one thread. On the `Fork::Child` side the caller ends in
/// [`Child::execve`] or [`exit`]: it never returns into code that uses or
/// drops a descriptor inherited from the parent, since [`Child::dup2`] and
/// [`Child::close_from`] may have closed or replaced it.
pub unsafe fn fork(cgroup: Option<BorrowedFd<'_>>) -> Result<Fork> {
    let pid = match cgroup {
        // SAFETY: fork takes no arguments. The caller guarantees one
        // thread, so the child inherits no lock held by another.
        None => unsafe { syscall(sys::__NR_fork, [0; 4]) }?,
        Some(dir) => {
            const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
            // struct clone_args: flags, pidfd, child_tid, parent_tid,
            // exit_signal, stack, stack_size, tls, set_tid, set_tid_size,
            // cgroup. No stack: the child runs on a copy of this one, as
            // after fork.
            let mut args = [0u64; 11];
            args[0] = CLONE_INTO_CGROUP;
            args[4] = u64::from(sys::SIGCHLD);
            args[10] = u64::from(dir.as_raw_fd().unsigned_abs());
            let size = core::mem::size_of_val(&args);
            // SAFETY: `args` is a valid clone_args of `size` bytes, read by
            // the kernel; as for fork, the caller guarantees one thread.
            unsafe { syscall(sys::__NR_clone3, [(&raw const args).expose_provenance(), size, 0, 0]) }?
        }
    };
    Ok(match i32::try_from(pid).ok().and_then(Pid::from_raw) {
        Some(pid) => Fork::Parent(pid),
        None => Fork::Child(Child(())),
    })
}

/// The kernel's `struct sigaction` for x86_64 (not libc's).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

impl Child {
    /// Sets every catchable signal's disposition back to the default, so
    /// that a job does not inherit an ignored signal from whoever started
    /// the init.
    pub fn reset_signal_dispositions(&self) {
        let action = KernelSigaction { handler: 0 /* SIG_DFL */, flags: 0, restorer: 0, mask: 0 };
        for signal in (1..=64).filter_map(Signal::new) {
            if signal == Signal::KILL || signal == Signal::STOP {
                continue;
            }
            let args = [usize::from(signal.0), (&raw const action).expose_provenance(), 0, 8];
            // SAFETY: the action is a valid kernel sigaction for SIG_DFL,
            // which needs no restorer; the old action is not wanted (null).
            let _ = unsafe { syscall(sys::__NR_rt_sigaction, args) };
        }
    }

    /// `unshare(CLONE_NEWNS)` — a mount namespace of the child's own, so
    /// that what it mounts (a job's own home and /tmp) is seen by it and
    /// its descendants only. In the child only: the init's mounts are
    /// everyone's.
    pub fn unshare_mounts(&self) -> Result<()> {
        // SAFETY: a plain flag; a new mount namespace shares nothing that
        // this process's memory or descriptors depend on.
        unsafe { syscall(sys::__NR_unshare, [sys::CLONE_NEWNS as usize, 0, 0, 0]) }?;
        Ok(())
    }

    /// `dup2(from, to)` — makes `to` a copy of `from`, without close-on-exec.
    /// Whatever `to` was is closed: valid in the child only (see [`fork`]).
    pub fn dup2(&self, from: BorrowedFd<'_>, to: RawFd) -> Result<()> {
        let args = [from.as_raw_fd() as usize, to as usize, 0, 0];
        // SAFETY: plain descriptor numbers. Closing `to` under an `OwnedFd`
        // is what `fork`'s contract allows in the child.
        unsafe { syscall(sys::__NR_dup2, args) }?;
        Ok(())
    }

    /// `close_range(first, ~0, 0)` — closes every descriptor from `first` up:
    /// valid in the child only (see [`fork`]).
    pub fn close_from(&self, first: RawFd) {
        // SAFETY: plain numbers; closing descriptors that parent `OwnedFd`s
        // name is what `fork`'s contract allows in the child.
        let _ = unsafe { syscall(sys::__NR_close_range, [first as usize, u32::MAX as usize, 0, 0]) };
    }

    /// `execve(path, argv, envp)` — returns only on failure.
    pub fn execve<const A: usize, const E: usize>(
        &self,
        path: &CStr,
        argv: &CStrArray<'_, A>,
        envp: &CStrArray<'_, E>,
    ) -> Errno {
        let args = [
            path.as_ptr().expose_provenance(),
            argv.as_ptr().expose_provenance(),
            envp.as_ptr().expose_provenance(),
            0,
        ];
        // SAFETY: `path` is a C string; `CStrArray` holds pointers to C
        // strings it borrows, followed by a null pointer.
        match unsafe { syscall(sys::__NR_execve, args) } {
            Err(e) => e,
            Ok(_) => Errno::INVAL,
        }
    }
}

/// A null-terminated array of pointers to C strings, as `execve` takes
/// `argv` and `envp`; room for `N - 1` strings.
pub struct CStrArray<'a, const N: usize> {
    ptrs: heapless::Vec<*const core::ffi::c_char, N>,
    strings: core::marker::PhantomData<&'a CStr>,
}

impl<'a, const N: usize> CStrArray<'a, N> {
    pub fn new() -> Self {
        let mut ptrs = heapless::Vec::new();
        // N is at least 1 for any array that holds a string; an N of 0 stays
        // empty and `as_ptr` never hands it out without its null.
        let _ = ptrs.push(core::ptr::null());
        Self { ptrs, strings: core::marker::PhantomData }
    }

    /// Appends a string; `E2BIG` when full, as `execve` would say.
    pub fn push(&mut self, s: &'a CStr) -> Result<()> {
        if self.ptrs.is_full() {
            return Err(Errno::TOOBIG);
        }
        let end = self.ptrs.len() - 1;
        self.ptrs[end] = s.as_ptr();
        self.ptrs.push(core::ptr::null()).map_err(|_| Errno::TOOBIG)
    }

    fn as_ptr(&self) -> *const *const core::ffi::c_char {
        self.ptrs.as_ptr()
    }
}

impl<const N: usize> Default for CStrArray<'_, N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Takes ownership of a descriptor number the kernel just returned.
///
/// # Safety
///
/// `fd` is an open descriptor that nothing else owns.
unsafe fn owned(fd: usize) -> OwnedFd {
    // Descriptor numbers are ints: the conversion is exact.
    #[allow(clippy::cast_possible_truncation)]
    // SAFETY: the caller hands over an open descriptor nothing else owns.
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
    // SAFETY: plain numbers.
    let sock = unsafe { syscall(sys::__NR_socket, [AF_INET, SOCK_DGRAM_CLOEXEC, 0, 0]) }?;
    // SAFETY: socket just created `sock`; nothing else owns it.
    let sock = unsafe { owned(sock) };
    let mut req = IfReq { name: [0; 16], flags: 0, _rest: [0; 22] };
    req.name[..2].copy_from_slice(b"lo");
    let fd = sock.as_raw_fd() as usize;
    // SAFETY: `req` is a valid ifreq, which the kernel fills in (flags).
    unsafe { syscall(sys::__NR_ioctl, [fd, SIOCGIFFLAGS, (&raw mut req).expose_provenance(), 0]) }?;
    req.flags |= IFF_UP;
    // SAFETY: the same ifreq, read by the kernel.
    unsafe { syscall(sys::__NR_ioctl, [fd, SIOCSIFFLAGS, (&raw const req).expose_provenance(), 0]) }?;
    Ok(())
}

/// `ioctl(RNDADDENTROPY)` on a random device: mixes `bytes` into the
/// kernel's input pool and credits them as full entropy (needs
/// CAP_SYS_ADMIN).
pub fn add_entropy(random: BorrowedFd<'_>, bytes: &[u8]) -> Result<()> {
    /// `_IOW('R', 0x03, int[2])`.
    const RNDADDENTROPY: usize = 0x4008_5203;
    /// `struct rand_pool_info`: bits credited, byte count, the bytes.
    #[repr(C)]
    struct PoolInfo {
        entropy_count: i32,
        buf_size: i32,
        buf: [u8; proto::MAX_ENTROPY],
    }
    let len = bytes.len().min(proto::MAX_ENTROPY);
    let mut info = PoolInfo { entropy_count: 0, buf_size: 0, buf: [0; proto::MAX_ENTROPY] };
    info.buf[..len].copy_from_slice(&bytes[..len]);
    // At most MAX_ENTROPY (256) bytes: the conversions are exact.
    info.buf_size = i32::try_from(len).unwrap_or(0);
    info.entropy_count = info.buf_size * 8;
    let args = [random.as_raw_fd() as usize, RNDADDENTROPY, (&raw const info).expose_provenance(), 0];
    // SAFETY: `info` is a valid rand_pool_info whose `buf_size` bytes
    // follow its header, read by the kernel.
    unsafe { syscall(sys::__NR_ioctl, args) }?;
    Ok(())
}

/// `ioctl(RNDRESEEDCRNG)` — the CRNG rekeys from the input pool now, rather
/// than at its next scheduled reseed.
pub fn reseed_crng(random: BorrowedFd<'_>) -> Result<()> {
    /// `_IO('R', 0x07)`.
    const RNDRESEEDCRNG: usize = 0x5207;
    // SAFETY: plain numbers; the ioctl takes no argument.
    unsafe { syscall(sys::__NR_ioctl, [random.as_raw_fd() as usize, RNDRESEEDCRNG, 0, 0]) }?;
    Ok(())
}

/// The kernel's `struct termios` (not libc's, which has speed fields).
#[repr(C)]
struct Termios {
    iflag: u32,
    oflag: u32,
    cflag: u32,
    lflag: u32,
    line: u8,
    cc: [u8; 19],
}

/// `cfmakeraw` through `TCGETS`/`TCSETS`: no echo, no line editing, no
/// CR/LF rewriting, 8-bit bytes. rustix's termios would bring its speed
/// tables along, which a virtio console has no use for.
pub fn make_raw(tty: BorrowedFd<'_>) -> Result<()> {
    const TCGETS: usize = 0x5401;
    const TCSETS: usize = 0x5402;
    let input = sys::IGNBRK
        | sys::BRKINT
        | sys::PARMRK
        | sys::ISTRIP
        | sys::INLCR
        | sys::IGNCR
        | sys::ICRNL
        | sys::IXON;
    let mut t = Termios { iflag: 0, oflag: 0, cflag: 0, lflag: 0, line: 0, cc: [0; 19] };
    let fd = tty.as_raw_fd() as usize;
    // SAFETY: `t` is a valid kernel termios, which the kernel fills in.
    unsafe { syscall(sys::__NR_ioctl, [fd, TCGETS, (&raw mut t).expose_provenance(), 0]) }?;
    t.iflag &= !input;
    t.oflag &= !sys::OPOST;
    t.lflag &= !(sys::ECHO | sys::ECHONL | sys::ICANON | sys::ISIG | sys::IEXTEN);
    t.cflag = (t.cflag & !(sys::CSIZE | sys::PARENB)) | sys::CS8;
    t.cc[sys::VMIN as usize] = 1;
    t.cc[sys::VTIME as usize] = 0;
    // SAFETY: the same termios, read by the kernel.
    unsafe { syscall(sys::__NR_ioctl, [fd, TCSETS, (&raw const t).expose_provenance(), 0]) }?;
    Ok(())
}

/// `clock_gettime(CLOCK_BOOTTIME)` in nanoseconds. A plain syscall: the init
/// reads the clock a few times per job, and rustix's vDSO lookup would add
/// about 2 KiB of ELF parsing to the binary.
pub fn boottime_ns() -> u64 {
    let mut ts = [0i64; 2];
    let args = [sys::CLOCK_BOOTTIME as usize, (&raw mut ts).expose_provenance(), 0, 0];
    // SAFETY: `ts` is a valid `struct timespec` (two 64-bit fields on
    // x86_64), which the kernel fills in.
    let _ = unsafe { syscall(sys::__NR_clock_gettime, args) };
    let secs = u64::try_from(ts[0]).unwrap_or(0);
    let nanos = u64::try_from(ts[1]).unwrap_or(0);
    secs * 1_000_000_000 + nanos
}
