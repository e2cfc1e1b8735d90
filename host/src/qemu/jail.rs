//! QEMU's own confinement, as command-line arguments: its seccomp sandbox,
//! the uid and gid it drops to and the directory it chroots into. QEMU
//! applies the last two once it has opened every file and socket on its
//! command line, just before the guest runs (`os_setup_post` in QEMU 7.2),
//! so what it opens at start needs no permission for the uid it becomes.

use std::path::Path;

/// The ids a jailed QEMU runs as; never 0 (QEMU refuses it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// How one QEMU process is confined.
#[derive(Clone, Copy, Debug, Default)]
pub struct Confinement<'a> {
    /// QEMU's seccomp filter (`-sandbox on`).
    pub seccomp: bool,
    /// Drop to these ids (`-runas uid:gid`, which needs no passwd entry).
    pub runas: Option<Ids>,
    /// Chroot here (`-chroot`).
    pub chroot: Option<&'a Path>,
}

/// The arguments that confine QEMU as `c` says; none when nothing does.
pub fn confinement_args(c: &Confinement<'_>) -> Vec<String> {
    let mut a = Vec::new();
    if c.seccomp {
        // QEMU installs its filter before it drops to the -runas ids, so
        // denying set*id would kill it at that drop (seen: SIGSYS). Once
        // every id is non-zero and the capabilities are gone, set*id
        // cannot win root back, and spawn=deny stops the exec of a setuid
        // program. Without -runas nothing needs set*id: it is denied.
        let elevate = if c.runas.is_some() { "allow" } else { "deny" };
        a.push("-sandbox".to_owned());
        a.push(format!("on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny"));
    }
    if let Some(Ids { uid, gid }) = c.runas {
        a.push("-runas".to_owned());
        a.push(format!("{uid}:{gid}"));
    }
    if let Some(dir) = c.chroot {
        a.push("-chroot".to_owned());
        a.push(dir.display().to_string());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_confinement_adds_nothing() {
        assert!(confinement_args(&Confinement::default()).is_empty());
    }

    #[test]
    fn a_jailed_qemu_drops_to_its_ids_in_its_root_under_seccomp() {
        let c = Confinement {
            seccomp: true,
            runas: Some(Ids { uid: 1_879_048_193, gid: 1_879_048_193 }),
            chroot: Some(Path::new("/tmp/vmexec-x")),
        };
        assert_eq!(
            confinement_args(&c),
            [
                "-sandbox",
                "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny",
                "-runas",
                "1879048193:1879048193",
                "-chroot",
                "/tmp/vmexec-x",
            ]
        );
    }

    #[test]
    fn without_a_drop_the_filter_denies_set_id_calls() {
        let c = Confinement { seccomp: true, ..Confinement::default() };
        assert_eq!(
            confinement_args(&c),
            ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
        );
    }
}
