//! The package cache as the tests see it: where `vmexec` keeps it, what its
//! `sets` and `layers` hold (so that a refusal can be shown to have written
//! nothing, whole or half), an environment in which pip cannot reach the
//! package index, and a disk small enough to fill.

use std::path::{Path, PathBuf};
use std::process::Command;

use vmhost::VmConfig;

use crate::text;

/// Environment that keeps pip from any index for one command: the index
/// on a port nothing listens on (9, discard), and no local wheel directory
/// (this host's pip config names one) to find packages in instead.
pub const UNREACHABLE_INDEX: [(&str, &str); 2] =
    [("PIP_INDEX_URL", "http://127.0.0.1:9/simple"), ("PIP_FIND_LINKS", "")];

/// The cache `vmexec` uses by default, as a user runs it.
pub fn default_cache() -> PathBuf {
    VmConfig::default().cache_dir
}

/// Every file under `<cache>/packages/sets` and `<cache>/packages/layers`,
/// hidden and temporary names included, with its size: `sets/KEY 84`. A
/// set made, a layer half-written or a temporary file left all show.
pub fn cache_files(cache: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for dir in ["sets", "layers"] {
        let Ok(entries) = std::fs::read_dir(cache.join("packages").join(dir)) else { continue };
        for entry in entries.flatten() {
            let size = entry.metadata().map_or(0, |m| m.len());
            files.push(format!("{dir}/{} {size}", entry.file_name().to_string_lossy()));
        }
    }
    files.sort();
    files
}

/// A tmpfs of a few KiB on a temporary directory: a disk that fills. It is
/// unmounted when dropped, a failing test's included, before its
/// directory is removed.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes`; why not, where this host refuses (it
    /// takes root with `CAP_SYS_ADMIN`).
    pub fn mount(bytes: u64) -> Result<SmallDisk, String> {
        let dir = tempfile::Builder::new().prefix("pid1-small-disk-").tempdir().expect("a temp dir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount -t tmpfs: {} {}", out.status, text(&out.stderr).trim()));
        }
        Ok(SmallDisk { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
