//! What decides how a VM is started, and where its inputs are found: the
//! guest image (kernel and root filesystem) and the cache of templates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::accel::Accel;
use crate::jail::JailConfig;

/// How long a TCG boot may take before it is declared failed. A boot takes
/// about 1-3 s here; a loaded CI machine gets a wide margin.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything that decides how a VM is started.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub qemu: PathBuf,
    /// The uncompressed `vmlinux` (QEMU enters it through its PVH note:
    /// no firmware, no decompression) or a `bzImage`.
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
    pub memory_mb: u32,
    pub cpus: u32,
    pub accel: Accel,
    pub boot_timeout: Duration,
    /// Show the kernel console on stderr, with the kernel's messages on.
    pub debug: bool,
    /// Boot the kernel, never restore a snapshot template.
    pub cold: bool,
    /// Where templates, the accelerator verdict and the TSC rate are kept.
    pub cache_dir: PathBuf,
    /// A package layer (`crate::packages::prepare`) attached read-only as
    /// the second disk, which the init mounts where the guest's Python
    /// finds it. It is in the template's key: a layer has its own template.
    pub packages: Option<PathBuf>,
    /// What confines QEMU on the host (see [`crate::jail`]).
    pub jail: JailConfig,
}

impl Default for VmConfig {
    /// The guest image from `PID1_KERNEL` / `PID1_ROOTFS`, else from
    /// [`image_dir`]; the cache in [`default_cache_dir`].
    fn default() -> Self {
        let image = image_dir();
        let from_env = |name: &str, default: PathBuf| std::env::var_os(name).map_or(default, PathBuf::from);
        VmConfig {
            qemu: PathBuf::from("qemu-system-x86_64"),
            kernel: from_env("PID1_KERNEL", image.join("vmlinux")),
            rootfs: from_env("PID1_ROOTFS", image.join("rootfs.erofs")),
            memory_mb: 256,
            cpus: 1,
            accel: Accel::Auto,
            boot_timeout: BOOT_TIMEOUT,
            debug: false,
            cold: false,
            cache_dir: default_cache_dir(),
            packages: None,
            jail: JailConfig::default(),
        }
    }
}

/// Where the guest image is: `$PID1_IMAGE_DIR`; else `share/pid1` beside
/// the running program's `bin/` (an installed tool, `just install`); else
/// this checkout's `build/`, where `just kernel` and `just rootfs` put it.
pub fn image_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PID1_IMAGE_DIR") {
        return PathBuf::from(dir);
    }
    let installed = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("share/pid1")))
        .filter(|dir| dir.join("vmlinux").is_file());
    installed.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../build"))
}

/// `$XDG_CACHE_HOME/pid1`, else `~/.cache/pid1`, else a directory in /tmp.
pub fn default_cache_dir() -> PathBuf {
    // The XDG rule: a relative (or empty) value is to be ignored.
    let absolute = |var: &str| std::env::var_os(var).map(PathBuf::from).filter(|path| path.is_absolute());
    absolute("XDG_CACHE_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("pid1")
}
