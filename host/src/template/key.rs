//! A template's key: every input that makes it valid, as text, and its
//! name, the SHA-256 of that text (stable across Rust releases, unlike
//! std's hasher, so an upgrade keeps finding and sweeping old templates).
//! Files are named by their real path and identified by size, times and
//! inode: any write to a file changes its ctime, so a changed kernel,
//! rootfs (which holds the init) or QEMU never matches an old key, without
//! hashing 60 MB per VM.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::accel::Accel;
use crate::config::VmConfig;
use crate::error::TemplateError;
use crate::qemu::{self, Console, Launch, Ram};

/// First line of every key; bumped when what a template holds changes.
pub const FORMAT: &str = "pid1 template 5";

/// Hex digits of the SHA-256 in a template's name: 128 bits, far past any
/// chance of two keys meeting in one cache.
const NAME_DIGITS: usize = 32;

/// The key of VMs started from `config` with `accel`.
pub fn key(config: &VmConfig, accel: Accel) -> Result<String, TemplateError> {
    let qemu = find_in_path(&config.qemu).ok_or_else(|| TemplateError::NoQemu(config.qemu.clone()))?;
    let mut files = Vec::new();
    for (what, path) in [("qemu", &qemu), ("kernel", &config.kernel), ("rootfs", &config.rootfs)] {
        let input = |source| TemplateError::Input { path: path.clone(), source };
        let real = fs::canonicalize(path).map_err(input)?;
        let identity = file_identity(&real).map_err(input)?;
        files.push((what, real, identity));
    }
    Ok(key_text(config, accel, &files, &qemu::kernel_cmdline_for(config, accel)))
}

/// The key from its parts: the inputs' identities, then the machine
/// exactly as QEMU is told, with per-VM paths left out.
fn key_text(config: &VmConfig, accel: Accel, files: &[(&str, PathBuf, String)], cmdline: &str) -> String {
    let mut key = format!("{FORMAT}\n");
    for (what, path, identity) in files {
        key.push_str(&format!("{what} {} {identity}\n", path.display()));
    }
    let launch = Launch {
        cmdline,
        agent: Path::new("AGENT"),
        console: Console::File(Path::new("CONSOLE")),
        ram: Ram::File { path: Path::new("RAM"), shared: true },
        qmp: Some(Path::new("QMP")),
        incoming: false,
    };
    for arg in qemu::qemu_args(config, accel, &launch) {
        key.push_str(&arg);
        key.push('\n');
    }
    key
}

/// A template's directory name.
pub fn name(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..NAME_DIGITS].to_owned()
}

/// What identifies a file's content without reading it: any write changes
/// its ctime.
pub fn file_identity(path: &Path) -> std::io::Result<String> {
    let m = fs::metadata(path)?;
    Ok(format!(
        "size={} mtime={}.{} ctime={}.{} ino={}",
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.ino()
    ))
}

/// Whether a template's meta names inputs that are gone or changed, or was
/// made by another format: no configuration can restore it again.
pub fn is_stale(meta: &str, identity: impl Fn(&Path) -> Option<String>) -> bool {
    if meta.lines().next() != Some(FORMAT) {
        return true;
    }
    // `WHAT PATH size=… mtime=… ctime=… ino=…`, the path possibly with
    // spaces: split from both ends.
    meta.lines().skip(1).take(3).any(|line| {
        let fields: Vec<&str> = line.rsplitn(5, ' ').collect();
        let [ino, ctime, mtime, size, named] = fields[..] else { return true };
        let Some((_, path)) = named.split_once(' ') else { return true };
        let recorded = format!("{size} {mtime} {ctime} {ino}");
        identity(Path::new(path)).is_none_or(|now| now != recorded)
    })
}

/// `program` as the shell would find it.
pub fn find_in_path(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Vec<(&'static str, PathBuf, String)> {
        vec![
            ("qemu", PathBuf::from("/usr/bin/qemu-system-x86_64"), "size=1 mtime=2.0 ctime=3.0 ino=4".into()),
            ("kernel", PathBuf::from("/img/my kernel"), "size=5 mtime=6.0 ctime=7.0 ino=8".into()),
            ("rootfs", PathBuf::from("/img/rootfs.erofs"), "size=9 mtime=1.0 ctime=2.0 ino=3".into()),
        ]
    }

    #[test]
    fn the_key_holds_the_inputs_and_the_machine() {
        let config = VmConfig::default();
        let key = key_text(&config, Accel::Tcg, &files(), "CMDLINE");
        let lines: Vec<&str> = key.lines().collect();
        assert_eq!(lines[0], FORMAT);
        assert_eq!(lines[2], "kernel /img/my kernel size=5 mtime=6.0 ctime=7.0 ino=8");
        assert!(lines.contains(&"CMDLINE") && !lines.contains(&"RAM"));
        assert!(key.contains("mem-path=RAM,share=on"), "{key}");
        assert!(key.contains("socket,id=agent,path=AGENT"), "no per-VM path: {key}");
    }

    #[test]
    fn the_name_is_a_stable_sha256() {
        // SHA-256("abc"), a published test vector: the same on every
        // release of every compiler.
        assert_eq!(name("abc"), "ba7816bf8f01cfea414140de5dae2223");
        let config = VmConfig::default();
        let a = name(&key_text(&config, Accel::Tcg, &files(), "CMDLINE"));
        let more = VmConfig { memory_mb: 512, ..VmConfig::default() };
        assert_ne!(a, name(&key_text(&more, Accel::Tcg, &files(), "CMDLINE")), "guest RAM is in the key");
        assert_ne!(a, name(&key_text(&config, Accel::Kvm, &files(), "CMDLINE")), "the accelerator is");
        assert_ne!(a, name(&key_text(&config, Accel::Tcg, &files(), "OTHER")), "the kernel line is");
        assert_eq!(a.len(), NAME_DIGITS);
    }

    #[test]
    fn a_template_is_stale_when_an_input_changed_or_the_format_did() {
        let config = VmConfig::default();
        let key = key_text(&config, Accel::Tcg, &files(), "CMDLINE");
        let now =
            |path: &Path| files().into_iter().find(|(_, p, _)| p == path).map(|(_, _, identity)| identity);
        assert!(!is_stale(&key, now), "unchanged inputs");
        let rebuilt = |path: &Path| match path.ends_with("rootfs.erofs") {
            true => Some("size=9 mtime=1.0 ctime=99.0 ino=3".to_owned()),
            false => now(path),
        };
        assert!(is_stale(&key, rebuilt), "a rebuilt rootfs");
        assert!(is_stale(&key, |_| None), "inputs gone");
        assert!(is_stale(&key.replacen(FORMAT, "pid1 template 4", 1), now), "an older format");
    }

    #[test]
    fn a_program_is_found_as_the_shell_would() {
        assert_eq!(find_in_path(Path::new("/bin/sh")), Some(PathBuf::from("/bin/sh")));
        assert!(find_in_path(Path::new("sh")).is_some_and(|p| p.ends_with("sh") && p.is_absolute()));
        assert_eq!(find_in_path(Path::new("no-such-program-here")), None);
    }
}
