//! A cgroup v2 per VM, where the host delegates one to this process (a
//! systemd unit with `Delegate=yes`): `memory.max` a little above the
//! guest's RAM and `pids.max`, so one QEMU cannot take the host's memory or
//! fill its process table. Without delegation (a cgroup2 mount with no
//! controllers, as on the development machines) there is nothing to do it
//! with, and the measure is off.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// QEMU's memory beyond the guest's RAM: its code, the device model and
/// I/O buffers (about 60 MiB at a cold boot here), and under TCG the
/// translation buffer, which fills as code runs (22 MiB after a warm-up).
/// 384 MiB keeps a busy TCG VM clear of the limit, which is there to stop
/// a runaway, not to size a VM.
pub const QEMU_OVERHEAD_MB: u64 = 384;

/// Tasks a QEMU may have: the main loop, RCU, one thread per vCPU and the
/// block layer's worker pool (up to 64), with room; a QEMU cannot fork
/// (its seccomp filter), so more is a runaway.
pub const QEMU_TASKS: u32 = 128;

/// The prefix of a VM cgroup's name; the owner's pid follows, then a count.
const VM_PREFIX: &str = "vm-";

/// The leaf this process moves into, so the cgroup it was given may hand
/// controllers to its children (cgroup v2: no processes in a cgroup that
/// does).
const HOST_LEAF: &str = "vmhost";

/// Why there is no cgroup for VMs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("no cgroup2 hierarchy holds this process")]
    NoCgroup2,
    #[error("the cgroup {} is not delegated: its controllers lack {missing}", dir.display())]
    NotDelegated { dir: PathBuf, missing: &'static str },
    #[error("cannot set up the delegated cgroup {}: {why}", dir.display())]
    Setup { dir: PathBuf, why: String },
}

/// The cgroup VMs are created in, found and set up once per process.
pub fn parent() -> Result<&'static Path, Unavailable> {
    static PARENT: OnceLock<Result<PathBuf, Unavailable>> = OnceLock::new();
    let found = PARENT.get_or_init(|| {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let dir = own_cgroup(&mountinfo, &own).ok_or(Unavailable::NoCgroup2)?;
        prepare(&dir, std::process::id())?;
        sweep(&dir);
        Ok(dir)
    });
    found.as_deref().map_err(Clone::clone)
}

/// This process's cgroup2 directory: its `0::PATH` line under the
/// hierarchy's mount point (the `cgroup2` line of mountinfo).
pub fn own_cgroup(mountinfo: &str, proc_cgroup: &str) -> Option<PathBuf> {
    let path = proc_cgroup.lines().find_map(|line| line.strip_prefix("0::"))?;
    let mount = mountinfo.lines().find_map(|line| {
        // `ID PARENT MAJ:MIN ROOT MOUNT OPTIONS... - FSTYPE SOURCE SUPER`
        let (fields, fs) = line.split_once(" - ")?;
        (fs.split(' ').next() == Some("cgroup2")).then(|| fields.split(' ').nth(4))?
    })?;
    Some(Path::new(mount).join(path.trim_start_matches('/')))
}

/// Makes `dir` able to hold VM cgroups with the memory and pids
/// controllers: enabled for its children already, or enabled now after
/// moving this process (`pid`) into a leaf of its own.
pub fn prepare(dir: &Path, pid: u32) -> Result<(), Unavailable> {
    let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap_or_default();
    let has = |list: &str, controller: &str| list.split_whitespace().any(|c| c == controller);
    if ["memory", "pids"].iter().all(|c| has(&read("cgroup.subtree_control"), c)) {
        return Ok(());
    }
    let controllers = read("cgroup.controllers");
    if let Some(missing) = ["memory", "pids"].into_iter().find(|c| !has(&controllers, c)) {
        return Err(Unavailable::NotDelegated { dir: dir.to_owned(), missing });
    }
    let setup = |why: io::Error| Unavailable::Setup { dir: dir.to_owned(), why: why.to_string() };
    let leaf = dir.join(HOST_LEAF);
    match fs::create_dir(&leaf) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(setup(e)),
        _ => {}
    }
    fs::write(leaf.join("cgroup.procs"), pid.to_string()).map_err(setup)?;
    fs::write(dir.join("cgroup.subtree_control"), "+memory +pids").map_err(setup)
}

/// One VM's cgroup; removed when dropped, which must come after its QEMU
/// has been reaped (a cgroup with tasks cannot be removed).
#[derive(Debug)]
pub struct VmCgroup {
    dir: PathBuf,
    procs: File,
}

impl VmCgroup {
    /// A cgroup in `parent` for a VM of `memory_mb` guest RAM, named
    /// after this process (`owner`) and its `n`th VM.
    pub fn create(parent: &Path, owner: u32, n: u64, memory_mb: u32) -> io::Result<VmCgroup> {
        let dir = parent.join(format!("{VM_PREFIX}{owner}-{n}"));
        fs::create_dir(&dir)?;
        let made = VmCgroup {
            procs: OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join("cgroup.procs"))?,
            dir,
        };
        let max = (u64::from(memory_mb) + QEMU_OVERHEAD_MB) << 20;
        fs::write(made.dir.join("memory.max"), max.to_string())?;
        fs::write(made.dir.join("pids.max"), QEMU_TASKS.to_string())?;
        Ok(made)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `cgroup.procs`, open for writing: a process that writes `0` to it
    /// moves itself in (QEMU does, between fork and exec, so it never runs
    /// outside).
    pub fn procs(&self) -> io::Result<File> {
        self.procs.try_clone()
    }
}

impl Drop for VmCgroup {
    fn drop(&mut self) {
        // The reaped QEMU's cgroup can take a moment to empty.
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// Removes the VM cgroups of owners that are gone (killed before they
/// could remove them); a cgroup still holding tasks is left alone.
pub fn sweep(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name.strip_prefix(VM_PREFIX).and_then(|rest| rest.split('-').next()) else {
            continue;
        };
        if !Path::new("/proc").join(owner).exists() {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn the_own_cgroup_is_the_v2_path_under_the_cgroup2_mount() {
        let own = "4:memory:/x\n0::/system.slice/pid1.service\n";
        assert_eq!(
            own_cgroup(MOUNTINFO, own),
            Some(PathBuf::from("/sys/fs/cgroup/unified/system.slice/pid1.service"))
        );
        assert_eq!(own_cgroup(MOUNTINFO, "4:memory:/x\n"), None, "v1 only");
        assert_eq!(own_cgroup("35 31 0:32 / /m rw - cgroup cgroup rw\n", "0::/\n"), None, "no cgroup2 mount");
    }

    #[test]
    fn a_cgroup_without_the_controllers_is_not_delegated() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), "cpu io\n").unwrap();
        let e = prepare(dir.path(), 1).unwrap_err();
        assert!(matches!(e, Unavailable::NotDelegated { missing: "memory", .. }), "{e}");
        assert!(!dir.path().join(HOST_LEAF).exists(), "nothing moved");
    }

    #[test]
    fn a_delegated_cgroup_moves_this_process_to_a_leaf_and_enables_the_controllers() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        fs::write(dir.path().join("cgroup.subtree_control"), "").unwrap();
        prepare(dir.path(), 4242).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("vmhost/cgroup.procs")).unwrap(), "4242");
        assert_eq!(fs::read_to_string(dir.path().join("cgroup.subtree_control")).unwrap(), "+memory +pids");
        fs::write(dir.path().join("cgroup.subtree_control"), "memory pids\n").unwrap();
        fs::remove_dir_all(dir.path().join(HOST_LEAF)).unwrap();
        prepare(dir.path(), 1).unwrap();
        assert!(!dir.path().join(HOST_LEAF).exists(), "already enabled: nothing moved");
    }

    #[test]
    fn a_vm_cgroup_gets_its_limits_and_a_dead_owners_cgroup_is_swept() {
        let parent = tempfile::tempdir().unwrap();
        let vm = VmCgroup::create(parent.path(), 1, 7, 256).unwrap();
        assert_eq!(vm.dir(), parent.path().join("vm-1-7"));
        let limit = |name: &str| fs::read_to_string(vm.dir().join(name)).unwrap();
        assert_eq!(limit("memory.max"), ((256 + QEMU_OVERHEAD_MB) << 20).to_string());
        assert_eq!(limit("pids.max"), QEMU_TASKS.to_string());
        // cgroupfs removes a cgroup's files with it; plain files do not go.
        for name in ["memory.max", "pids.max", "cgroup.procs"] {
            fs::remove_file(vm.dir().join(name)).unwrap();
        }
        drop(vm);
        assert!(!parent.path().join("vm-1-7").exists(), "removed when dropped");
        for name in ["vm-999999999-1", "vm-1-2", "other"] {
            fs::create_dir(parent.path().join(name)).unwrap();
        }
        sweep(parent.path());
        assert!(!parent.path().join("vm-999999999-1").exists(), "its owner is gone");
        assert!(parent.path().join("vm-1-2").exists(), "pid 1 lives");
        assert!(parent.path().join("other").exists(), "not a VM's");
    }
}
