//! QEMU jailed on the host: under its seccomp filter, as a uid of its own
//! per VM when the tests run as root, chrooted into its VM's directory;
//! and jailed so, it still boots, makes a template, restores from it and
//! runs jobs. A measure required where it is impossible fails with a clear
//! error before any QEMU starts. Needs the guest image (`just image`).

use std::fs;

use common::{ensure_template, fresh_config, is_root, run, text, vmexec};
use vmhost::jail::{JailConfig, Measure};
use vmhost::{Job, Start, StartError, Vm, VmConfig};

/// One field of `/proc/<pid>/status`, e.g. `Uid` (its first number).
fn status_field(pid: u32, field: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).unwrap_or_else(|| {
        panic!("no {field} in the status of {pid}");
    });
    line.split_whitespace().next().unwrap_or_default().to_owned()
}

/// What the tests check of a jailed QEMU; its uid, when it dropped one.
fn assert_jailed(vm: &Vm) -> Option<u32> {
    let pid = vm.pid();
    assert_eq!(status_field(pid, "Seccomp"), "2", "QEMU {pid} runs without its seccomp filter");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    if !is_root() {
        return None;
    }
    let uid: u32 = status_field(pid, "Uid").parse().unwrap();
    let gid: u32 = status_field(pid, "Gid").parse().unwrap();
    assert!(uid != 0 && gid != 0, "QEMU {pid} runs as root");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000", "QEMU {pid} kept capabilities");
    let root = fs::read_link(format!("/proc/{pid}/root")).unwrap();
    assert_ne!(root, std::path::Path::new("/"), "QEMU {pid} is not chrooted");
    assert_eq!(vm.jail().ids(), Some(uid));
    Some(uid)
}

#[test]
fn a_jailed_qemu_makes_a_template_restores_from_it_and_runs_jobs() {
    // A private cache: this template is made here, by a jailed QEMU.
    let cache = tempfile::tempdir().unwrap();
    let config = fresh_config(cache.path());
    ensure_template(&config);
    let mut a = Vm::boot(&config).unwrap_or_else(|e| panic!("{}", vmhost::error::chain(&e)));
    assert_eq!(a.start(), Start::Restored, "fallback: {:?}", a.fallback());
    let mut b = Vm::boot(&config).unwrap();
    assert_eq!(b.start(), Start::Restored, "fallback: {:?}", b.fallback());
    let (ua, ub) = (assert_jailed(&a), assert_jailed(&b));
    if is_root() {
        assert_ne!(ua, ub, "two VMs share a uid");
    }
    for vm in [&mut a, &mut b] {
        let out = run(vm, &Job::python("print(6 * 7)"));
        assert_eq!(text(&out.stdout), "42\n", "{}", text(&out.stderr));
        let out = run(vm, &Job::shell("echo shell"));
        assert_eq!(text(&out.stdout), "shell\n");
    }
    let mut cold = Vm::boot(&VmConfig { cold: true, ..config.clone() }).unwrap();
    assert_jailed(&cold);
    assert_eq!(text(&run(&mut cold, &Job::shell("echo cold")).stdout), "cold\n");
}

#[test]
fn a_required_measure_that_is_impossible_stops_the_vm_with_a_clear_error() {
    let cache = tempfile::tempdir().unwrap();
    let required = JailConfig { cgroup: Measure::On, ..JailConfig::default() };
    if vmhost::jail::status(&required).is_ok() {
        // This host delegates a cgroup: the measure is possible.
        return;
    }
    let config =
        VmConfig { cache_dir: cache.path().to_owned(), jail: required, cold: true, ..VmConfig::default() };
    let e = Vm::boot(&config).err().expect("a VM started without the cgroup it requires");
    assert!(matches!(e, StartError::Jail(_)), "{e:?}");
    let line = vmhost::error::chain(&e);
    assert!(line.contains("the jail's cgroup measure is required but impossible here"), "{line}");
}

#[test]
fn template_status_says_which_measures_are_on() {
    let cache = tempfile::tempdir().unwrap();
    let out = vmexec().args(["template", "status"]).env("XDG_CACHE_HOME", cache.path()).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with("jail: ")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains("seccomp on"), "{line}");
    let privileged = if is_root() { "on" } else { "off" };
    assert!(line.contains(&format!("user {privileged}")), "{line}");
    assert!(line.contains(&format!("chroot {privileged}")), "{line}");
    assert!(line.contains("cgroup "), "{line}");
}
