//! The PID-1 duties in a VM: the filesystems a sandbox needs, dangerous
//! device nodes removed, descriptors 0-2 on the console, the agent port in
//! raw mode, and the way out (kill everything, sync, power off).
//!
//! None of this runs unless the VM asked for it (`--boot`): a test PID
//! namespace shares devtmpfs with its host, and unlinking /dev/mem there
//! would delete the host's node.

use core::ffi::CStr;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::MountFlags;

use crate::error::Os;
use crate::log::Path;
use crate::{log, sys};

/// Device nodes that give a job the host's physical memory or I/O ports.
const DANGEROUS_NODES: [&CStr; 3] = [c"/dev/mem", c"/dev/kmem", c"/dev/port"];

/// Mounts, device cleanup and console descriptors.
pub fn boot() {
    let hardened = MountFlags::NOSUID | MountFlags::NODEV;
    mount(c"proc", c"/proc", c"proc", hardened | MountFlags::NOEXEC, Some(c"hidepid=2"));
    mount(c"sysfs", c"/sys", c"sysfs", hardened | MountFlags::NOEXEC, None);
    // The kernel mounts devtmpfs itself before init (CONFIG_DEVTMPFS_MOUNT);
    // mount it here only when it did not.
    if rustix::fs::stat(c"/dev/null").is_err() {
        mount(c"devtmpfs", c"/dev", c"devtmpfs", MountFlags::NOSUID, None);
    }
    console_stdio();
    // Where each job's user has its own (`job::users`), as /tmp has.
    let _ = rustix::fs::mkdir(c"/dev/shm", Mode::from_raw_mode(0o755));
    mount(c"tmpfs", c"/run", c"tmpfs", hardened | MountFlags::NOEXEC, Some(c"mode=0755"));
    // A package layer, when the host attached one as the second disk.
    if rustix::fs::stat(c"/dev/vdb").is_ok() {
        mount(c"/dev/vdb", c"/opt/pid1/packages", c"erofs", hardened | MountFlags::RDONLY, None);
    }

    for node in DANGEROUS_NODES {
        match rustix::fs::unlink(node) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => log!("cannot remove ", Path(node), ": ", Os(e)),
        }
    }
    if let Err(e) = sys::bring_up_loopback() {
        log!("cannot bring up lo: ", Os(e));
    }
    // Jobs of one user (`Run.user`) may not ptrace-attach to each other
    // either: 1, only to one's own descendants.
    let scope = rustix::fs::open(c"/proc/sys/kernel/yama/ptrace_scope", OFlags::WRONLY, Mode::empty());
    if let Err(e) = scope.and_then(|fd| rustix::io::write(&fd, b"1")) {
        log!("cannot restrict ptrace: ", Os(e));
    }
}

/// `mount`, or a log line saying why not.
pub fn mount(source: &CStr, target: &CStr, fstype: &CStr, flags: MountFlags, data: Option<&CStr>) {
    if let Err(e) = rustix::mount::mount(source, target, fstype, flags, data) {
        log!("cannot mount ", Path(fstype), " on ", Path(target), ": ", Os(e));
    }
}

/// Makes sure descriptors 0, 1 and 2 are open: the kernel leaves them closed
/// when it could not open /dev/console, and the init logs on 2 and a job's
/// setup dup2s over them.
fn console_stdio() {
    for fd in 0..3 {
        if rustix::io::fcntl_getfd(sys::stdio(fd)).is_err() {
            // open takes the lowest free number: the hole being filled.
            let console = rustix::fs::open(c"/dev/console", OFlags::RDWR | OFlags::NOCTTY, Mode::empty())
                .or_else(|_| rustix::fs::open(c"/dev/null", OFlags::RDWR, Mode::empty()));
            if let Ok(fd) = console {
                core::mem::forget(fd);
            }
        }
    }
}

/// PID 1 is not killed by signals it does not handle, and OOM must pick a
/// job, never the init: -1000 exempts it.
pub fn protect_from_oom() {
    let Ok(file) = rustix::fs::open(c"/proc/self/oom_score_adj", OFlags::WRONLY, Mode::empty()) else {
        return;
    };
    if let Err(e) = rustix::io::write(&file, b"-1000") {
        log!("cannot set oom_score_adj: ", Os(e));
    }
}

/// SIGKILL to every process but the caller, then reap them all (blocking:
/// only PID 1, whose every process is its child by now, calls this).
pub fn end_all_processes() {
    sys::kill_all();
    while let Ok(Some(_)) | Err(Errno::INTR) = rustix::process::wait(rustix::process::WaitOptions::empty()) {}
}

/// The end of the VM: every process killed and reaped, filesystems synced,
/// then a reset. A microVM has no ACPI and no power button: the host runs
/// QEMU with `-no-reboot`, so a reset (a triple fault with `reboot=t`) is
/// what makes QEMU exit. Never returns; if the reset fails the init idles
/// forever rather than exit (which would panic the kernel).
pub fn power_off() -> ! {
    end_all_processes();
    rustix::fs::sync();
    if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::Restart) {
        log!("reset failed: ", Os(e));
    }
    loop {
        rustix::event::pause();
    }
}
