//! A cgroup v2 per job, in a VM: the job's processes start in it (clone3
//! `CLONE_INTO_CGROUP`, for the zygote's children too), so its memory
//! (`memory.max`, OOM kills the whole job: `memory.oom.group`), process
//! count (`pids.max`) and share of the CPU (the cpu controller: a fork bomb
//! gets one job's share) are its own, its end kills everything it started
//! (`cgroup.kill`, `setsid` daemons included, whatever other jobs run), and
//! its peak memory and CPU time are read at the end. Each job gets a new
//! cgroup (`memory.peak` cannot be reset on this kernel); an ended job's is
//! removed once its processes are gone.

use core::ffi::CStr;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::spawn::JOB_PROCESSES_TEXT;
use crate::log;
use crate::log::Text;
use crate::pieces;

/// Where cgroup2 is mounted.
const ROOT: &CStr = c"/sys/fs/cgroup";

/// Ended jobs' cgroups that still had processes (being killed) when their
/// job ended: removed on a later try.
const STALE: usize = 32;

type Name = Text<16>;

/// The jobs' cgroups: the root's descriptor and what is left to remove.
pub struct Cgroups {
    root: OwnedFd,
    /// Default `memory.max` of a job, in bytes.
    pub default_memory: u64,
    stale: [Option<Name>; STALE],
}

/// One job's cgroup.
pub struct Cgroup {
    pub dir: OwnedFd,
    name: Name,
}

/// What a job used, read at its end.
#[derive(Default, Clone, Copy)]
pub struct Usage {
    pub peak_memory: u64,
    pub cpu_us: u64,
}

impl Cgroups {
    /// Mounts cgroup2 and hands the cpu, memory and pids controllers to
    /// the jobs' cgroups; `None` (with a log line) if the kernel cannot.
    pub fn setup() -> Option<Cgroups> {
        let hardened = rustix::mount::MountFlags::NOSUID
            | rustix::mount::MountFlags::NODEV
            | rustix::mount::MountFlags::NOEXEC;
        let mounted = rustix::mount::mount(c"cgroup2", ROOT, c"cgroup2", hardened, None);
        let root = mounted.and_then(|()| {
            rustix::fs::open(ROOT, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        });
        let root = match root.and_then(|root| {
            write_at(root.as_fd(), c"cgroup.subtree_control", b"+cpu +memory +pids").map(|()| root)
        }) {
            Ok(root) => root,
            Err(e) => {
                log!("no cgroups for jobs: ", Os(e));
                return None;
            }
        };
        // A job may take three quarters of the memory: the common case is
        // one job, and the rest keeps the init, the zygote and a neighbour
        // alive while the job's own limit stops it.
        let total = rustix::system::sysinfo();
        let total = u64::from(total.mem_unit).saturating_mul(total.totalram);
        Some(Cgroups { root, default_memory: total / 4 * 3, stale: [const { None }; STALE] })
    }

    /// A new cgroup `j<seq>` limited to `memory` bytes (the default when 0)
    /// and [`JOB_PROCESSES`](super::spawn::JOB_PROCESSES) processes.
    pub fn make(&mut self, seq: u32, memory: u64) -> rustix::io::Result<Cgroup> {
        self.sweep();
        let name = Name::of(pieces!["j", seq, "\0"]);
        let path = name.as_c_str().ok_or(Errno::INVAL)?;
        rustix::fs::mkdirat(&self.root, path, Mode::from_raw_mode(0o755))?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let limited = rustix::fs::openat(&self.root, path, flags, Mode::empty()).and_then(|dir| {
            let memory = if memory == 0 { self.default_memory } else { memory };
            let text = Text::<24>::of(pieces![memory]);
            write_at(dir.as_fd(), c"memory.max", text.as_bytes())?;
            write_at(dir.as_fd(), c"memory.oom.group", b"1")?;
            write_at(dir.as_fd(), c"pids.max", JOB_PROCESSES_TEXT.to_bytes())?;
            Ok(dir)
        });
        match limited {
            Ok(dir) => Ok(Cgroup { dir, name }),
            Err(e) => {
                let _ = rustix::fs::unlinkat(&self.root, path, AtFlags::REMOVEDIR);
                Err(e)
            }
        }
    }

    /// Kills everything in a job's cgroup, reads what it used, and removes
    /// it (now, or once its processes are gone).
    pub fn end(&mut self, cgroup: Cgroup) -> Usage {
        let _ = write_at(cgroup.dir.as_fd(), c"cgroup.kill", b"1");
        let usage = Usage {
            peak_memory: read_number(cgroup.dir.as_fd(), c"memory.peak", b"").unwrap_or(0),
            cpu_us: read_number(cgroup.dir.as_fd(), c"cpu.stat", b"usage_usec ").unwrap_or(0),
        };
        drop(cgroup.dir);
        if !self.remove(&cgroup.name) {
            match self.stale.iter_mut().find(|s| s.is_none()) {
                Some(slot) => *slot = Some(cgroup.name),
                None => log!("too many cgroups of ended jobs left"),
            }
        }
        usage
    }

    /// Removes the ended jobs' cgroups whose processes are gone.
    pub fn sweep(&mut self) {
        for slot in 0..STALE {
            if let Some(name) = self.stale[slot].take()
                && !self.remove(&name)
            {
                self.stale[slot] = Some(name);
            }
        }
    }

    fn remove(&self, name: &Name) -> bool {
        let Some(path) = name.as_c_str() else { return true };
        !matches!(rustix::fs::unlinkat(&self.root, path, AtFlags::REMOVEDIR), Err(Errno::BUSY))
    }
}

fn write_at(dir: BorrowedFd<'_>, file: &CStr, text: &[u8]) -> rustix::io::Result<()> {
    let fd = rustix::fs::openat(dir, file, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
    rustix::io::write(&fd, text).map(drop)
}

/// The number after `key` at the start of a line of a cgroup file.
fn read_number(dir: BorrowedFd<'_>, file: &CStr, key: &[u8]) -> Option<u64> {
    let fd = rustix::fs::openat(dir, file, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let mut text = [0u8; 512];
    let n = rustix::io::read(&fd, &mut text).ok()?;
    let line = text[..n].split(|&b| b == b'\n').find_map(|line| line.strip_prefix(key))?;
    let digits = line.iter().take_while(|b| b.is_ascii_digit());
    Some(digits.fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))))
}
