//! QEMU's jail on the host, as far as QEMU 7.2 allows: four measures, each
//! `Off`, `Auto` (on where this host allows it: the default) or `On`
//! (required: a VM does not start without it).
//!
//! - **seccomp**: QEMU's own sandbox, which kills it on a syscall of the
//!   obsolete, privilege, spawn or resource-control sets (no fork, no
//!   exec, no mount, no reboot...).
//! - **user**: when the host runs as root, QEMU drops to a uid and gid of
//!   its own per VM ([`ids`]), with no capabilities.
//! - **chroot**: QEMU chroots into the VM's private directory, which holds
//!   only its sockets and logs.
//! - **cgroup**: each VM in a cgroup v2 of its own, where one is delegated
//!   ([`cgroup`]).
//!
//! QEMU opens every file and socket on its command line (kernel, image,
//! RAM file, sockets, console) while it is still root, then chroots and
//! drops its ids: so its ids need access to nothing but what it opens
//! later, the socket a template's state is saved through. A restore's
//! state comes in on a descriptor it inherits.

pub mod cgroup;
pub mod ids;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::qemu::jail::{Confinement, Ids};

use self::cgroup::{Unavailable, VmCgroup};
use self::ids::Lease;

/// How much one measure is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Measure {
    /// Never.
    Off,
    /// Where this host allows it.
    #[default]
    Auto,
    /// Always: a VM that cannot have it does not start.
    On,
}

/// Which measures confine each VM's QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    pub seccomp: Measure,
    pub user: Measure,
    pub chroot: Measure,
    pub cgroup: Measure,
    /// Where the per-VM ids are leased: one directory for every process
    /// of this host that starts QEMUs, so no two VMs share an id.
    pub ids_dir: PathBuf,
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig {
            seccomp: Measure::Auto,
            user: Measure::Auto,
            chroot: Measure::Auto,
            cgroup: Measure::Auto,
            ids_dir: PathBuf::from("/run/pid1/ids"),
        }
    }
}

impl JailConfig {
    /// No measure at all: QEMU as it was before the jail.
    pub fn off() -> Self {
        let off = Measure::Off;
        JailConfig { seccomp: off, user: off, chroot: off, cgroup: off, ..JailConfig::default() }
    }
}

/// Why a measure is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The configuration says `Off`.
    Disabled,
    /// Dropping ids and chroot need root, and this process is not.
    NotRoot,
    /// No delegated cgroup v2.
    NoCgroup(Unavailable),
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Disabled => f.write_str("turned off"),
            Why::NotRoot => f.write_str("the host does not run as root"),
            Why::NoCgroup(why) => write!(f, "{why}"),
        }
    }
}

/// Whether one measure is on, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    On,
    Off(Why),
}

impl Setting {
    pub fn is_on(&self) -> bool {
        *self == Setting::On
    }
}

/// What this host gives a VM of a configuration, measure by measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailStatus {
    pub seccomp: Setting,
    pub user: Setting,
    pub chroot: Setting,
    pub cgroup: Setting,
}

/// The measures' names, in the order [`JailStatus::measures`] gives them.
pub const MEASURES: [&str; 4] = ["seccomp", "user", "chroot", "cgroup"];

impl JailStatus {
    /// Each measure by its name, in [`MEASURES`]' order.
    pub fn measures(&self) -> [(&'static str, &Setting); 4] {
        let [seccomp, user, chroot, cgroup] = MEASURES;
        [(seccomp, &self.seccomp), (user, &self.user), (chroot, &self.chroot), (cgroup, &self.cgroup)]
    }
}

/// A measure that was asked for and cannot be had, or a VM's part of the
/// jail that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("the jail's {measure} measure is required but impossible here: {why}")]
    Impossible { measure: &'static str, why: Why },
    #[error("cannot lease an id for QEMU in {}", dir.display())]
    Lease {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the VM's cgroup in {}", parent.display())]
    Cgroup {
        parent: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open {} to QEMU's ids", path.display())]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `config` gives a VM on this host; an error when a measure it
/// requires is impossible.
pub fn status(config: &JailConfig) -> Result<JailStatus, JailError> {
    status_with(config, rustix::process::geteuid().is_root(), || cgroup::parent().map(drop))
}

/// [`status`] with the host's facts given.
fn status_with(
    config: &JailConfig,
    root: bool,
    cgroup: impl FnOnce() -> Result<(), Unavailable>,
) -> Result<JailStatus, JailError> {
    let decide = |measure: &'static str, wanted: Measure, possible: Result<(), Why>| match (wanted, possible)
    {
        (Measure::Off, _) => Ok(Setting::Off(Why::Disabled)),
        (_, Ok(())) => Ok(Setting::On),
        (Measure::Auto, Err(why)) => Ok(Setting::Off(why)),
        (Measure::On, Err(why)) => Err(JailError::Impossible { measure, why }),
    };
    let privileged = if root { Ok(()) } else { Err(Why::NotRoot) };
    let cgroup = match config.cgroup {
        Measure::Off => Ok(()),
        _ => cgroup().map_err(Why::NoCgroup),
    };
    Ok(JailStatus {
        seccomp: decide("seccomp", config.seccomp, Ok(()))?,
        user: decide("user", config.user, privileged.clone())?,
        chroot: decide("chroot", config.chroot, privileged)?,
        cgroup: decide("cgroup", config.cgroup, cgroup)?,
    })
}

/// One VM's jail: the id it leased and its cgroup, held for as long as
/// its QEMU lives (drop it after QEMU has been reaped).
#[derive(Debug)]
pub struct VmJail {
    seccomp: bool,
    lease: Option<Lease>,
    /// The VM's private directory, when QEMU chroots into it.
    root: Option<PathBuf>,
    cgroup: Option<VmCgroup>,
}

impl VmJail {
    /// No confinement (a caller that builds QEMU's command itself).
    pub fn none() -> VmJail {
        VmJail { seccomp: false, lease: None, root: None, cgroup: None }
    }

    /// Sets up a VM's jail as `config` says: `dir` is its private
    /// directory (the sockets and logs), a VM of `memory_mb` guest RAM.
    pub fn prepare(config: &JailConfig, dir: &Path, memory_mb: u32) -> Result<VmJail, JailError> {
        let status = status(config)?;
        let lease = match status.user.is_on() {
            true => Some(
                ids::lease(&config.ids_dir)
                    .map_err(|source| JailError::Lease { dir: config.ids_dir.clone(), source })?,
            ),
            false => None,
        };
        let cgroup = match (status.cgroup.is_on(), cgroup::parent()) {
            (true, Ok(parent)) => {
                static VMS: AtomicU64 = AtomicU64::new(0);
                let n = VMS.fetch_add(1, Ordering::Relaxed);
                let made = VmCgroup::create(parent, std::process::id(), n, memory_mb);
                Some(made.map_err(|source| JailError::Cgroup { parent: parent.to_owned(), source })?)
            }
            _ => None,
        };
        let root = status.chroot.is_on().then(|| dir.to_owned());
        Ok(VmJail { seccomp: status.seccomp.is_on(), lease, root, cgroup })
    }

    /// QEMU's confinement arguments for this VM.
    pub fn confinement(&self) -> Confinement<'_> {
        Confinement {
            seccomp: self.seccomp,
            runas: self.ids().map(|id| Ids { uid: id, gid: id }),
            chroot: self.root.as_deref(),
        }
    }

    /// The uid and gid QEMU drops to, if it does.
    pub fn ids(&self) -> Option<u32> {
        self.lease.as_ref().map(Lease::id)
    }

    /// Where QEMU finds `path` (in the VM's directory) once it runs: in
    /// its chroot, `/` is that directory.
    pub fn path_seen_by_qemu(&self, path: &Path) -> PathBuf {
        match &self.root {
            Some(root) => Path::new("/").join(path.strip_prefix(root).unwrap_or(path)),
            None => path.to_owned(),
        }
    }

    /// Lets QEMU's ids reach `socket` in the VM's directory `dir`, which
    /// they may then traverse but not list; nothing else there is theirs.
    pub fn open_to_qemu(&self, dir: &Path, socket: &Path) -> Result<(), JailError> {
        use std::os::unix::fs::PermissionsExt;
        let Some(id) = self.ids() else { return Ok(()) };
        let fail = |path: &Path| {
            let path = path.to_owned();
            move |source| JailError::Permissions { path, source }
        };
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(fail(dir))?;
        let uid = rustix::process::Uid::from_raw(id);
        let gid = rustix::process::Gid::from_raw(id);
        rustix::fs::chown(socket, Some(uid), Some(gid)).map_err(|e| fail(socket)(e.into()))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(fail(socket))
    }

    /// The VM cgroup's `cgroup.procs`, for QEMU to move itself into
    /// before it execs.
    pub fn cgroup_procs(&self) -> Result<Option<File>, JailError> {
        let Some(cgroup) = &self.cgroup else { return Ok(None) };
        let fail = |source| JailError::Cgroup { parent: cgroup.dir().to_owned(), source };
        cgroup.procs().map(Some).map_err(fail)
    }

    /// The VM's cgroup directory, if it has one.
    pub fn cgroup_dir(&self) -> Option<&Path> {
        self.cgroup.as_ref().map(VmCgroup::dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_cgroup() -> Result<(), Unavailable> {
        Err(Unavailable::NoCgroup2)
    }

    #[test]
    fn auto_takes_what_the_host_allows() {
        let config = JailConfig::default();
        let root = status_with(&config, true, no_cgroup).unwrap();
        assert!(root.seccomp.is_on() && root.user.is_on() && root.chroot.is_on());
        assert_eq!(root.cgroup, Setting::Off(Why::NoCgroup(Unavailable::NoCgroup2)));
        let user = status_with(&config, false, || Ok(())).unwrap();
        assert!(user.seccomp.is_on() && user.cgroup.is_on());
        assert_eq!((user.user, user.chroot), (Setting::Off(Why::NotRoot), Setting::Off(Why::NotRoot)));
    }

    #[test]
    fn a_required_measure_that_is_impossible_is_an_error_naming_it() {
        let config = JailConfig { user: Measure::On, ..JailConfig::default() };
        let e = status_with(&config, false, no_cgroup).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the jail's user measure is required but impossible here: the host does not run as root"
        );
        let config = JailConfig { cgroup: Measure::On, ..JailConfig::default() };
        assert!(matches!(
            status_with(&config, true, no_cgroup),
            Err(JailError::Impossible { measure: "cgroup", .. })
        ));
    }

    #[test]
    fn off_is_off_without_asking_the_host() {
        let status = status_with(&JailConfig::off(), true, || panic!("cgroups looked up")).unwrap();
        for (name, setting) in status.measures() {
            assert_eq!(*setting, Setting::Off(Why::Disabled), "{name}");
        }
    }

    #[test]
    fn a_chrooted_qemu_sees_its_directory_as_the_root() {
        let jail = VmJail { root: Some(PathBuf::from("/tmp/vmexec-a")), ..VmJail::none() };
        assert_eq!(
            jail.path_seen_by_qemu(Path::new("/tmp/vmexec-a/migrate.sock")),
            Path::new("/migrate.sock")
        );
        assert_eq!(VmJail::none().path_seen_by_qemu(Path::new("/tmp/x.sock")), Path::new("/tmp/x.sock"));
    }
}
