//! Choosing the accelerator: KVM when it really works, else TCG. On some
//! machines /dev/kvm opens but guests hang, so "works" is decided by a real
//! boot (see `Vm::boot`), and the verdict is remembered in the user's cache.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM if a probe boot showed it works here, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    /// Every accelerator choice, as the CLI spells them.
    pub const NAMES: [&'static str; 3] = ["auto", "kvm", "tcg"];

    pub fn name(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Accel {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(format!("`{text}` is not an accelerator (auto, kvm or tcg)")),
        }
    }
}

/// The accelerator `choice` means on this machine, without booting: `None`
/// when only a probe boot can tell (auto, KVM usable, no verdict yet).
pub fn resolved(choice: Accel, cache: &Path) -> Option<Accel> {
    match choice {
        Accel::Auto => remembered(cache).or_else(|| (!kvm_usable()).then_some(Accel::Tcg)),
        accel => Some(accel),
    }
}

/// /dev/kvm exists and this user may open it.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// The verdict of an earlier probe on this machine, kept in `cache`.
pub fn remembered(cache: &Path) -> Option<Accel> {
    match std::fs::read_to_string(cache.join("accel")).ok()?.trim().parse() {
        Ok(accel @ (Accel::Kvm | Accel::Tcg)) => Some(accel),
        _ => None,
    }
}

pub fn remember(cache: &Path, accel: Accel) {
    let verdict = if accel == Accel::Kvm { Accel::Kvm } else { Accel::Tcg };
    let _ = std::fs::create_dir_all(cache);
    let _ = std::fs::write(cache.join("accel"), verdict.name());
}
