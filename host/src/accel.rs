//! Choosing the accelerator: KVM when it really works, else TCG. On some
//! machines /dev/kvm opens but guests hang, so "works" is decided by a real
//! boot (see `Vm::boot`), and the verdict is remembered in the user's cache.

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM if a probe boot showed it works here, else TCG.
    Auto,
    Kvm,
    Tcg,
}

/// /dev/kvm exists and this user may open it.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

fn verdict_file() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("pid1").join("accel"))
}

/// The verdict of an earlier probe on this machine.
pub fn remembered() -> Option<Accel> {
    match std::fs::read_to_string(verdict_file()?).ok()?.trim() {
        "kvm" => Some(Accel::Kvm),
        "tcg" => Some(Accel::Tcg),
        _ => None,
    }
}

pub fn remember(accel: Accel) {
    let Some(path) = verdict_file() else { return };
    let name = if accel == Accel::Kvm { "kvm" } else { "tcg" };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(path, name);
}
