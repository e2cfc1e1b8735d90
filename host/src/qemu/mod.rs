//! The QEMU layer: the kernel command line and QEMU's arguments for a VM
//! (pure functions of the configuration, unit-tested), the process and its
//! supervision ([`process`]), the monitor protocol ([`qmp`]) and the
//! console log ([`console`]). Nothing here knows about templates or jobs.

pub mod console;
pub mod jail;
pub mod process;
pub mod qmp;

use std::path::Path;
use std::process::Command;

use crate::accel::Accel;
use crate::config::VmConfig;
use crate::tsc;

/// Where a VM's RAM lives.
#[derive(Clone, Copy, Debug)]
pub enum Ram<'a> {
    /// QEMU's own anonymous memory.
    Anonymous,
    /// A file: `shared` writes go to the file (a template being made);
    /// private ones are copy-on-write over it (a restored VM).
    File { path: &'a Path, shared: bool },
}

/// Where the kernel console goes.
#[derive(Clone, Copy, Debug)]
pub enum Console<'a> {
    File(&'a Path),
    Stderr,
    /// QEMU's stdout (for a caller that pipes it).
    Stdout,
}

/// What a QEMU process is started for, besides the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Launch<'a> {
    pub cmdline: &'a str,
    /// The host's agent socket, which QEMU connects to.
    pub agent: &'a Path,
    pub console: Console<'a>,
    pub ram: Ram<'a>,
    /// The host's QMP socket, which QEMU connects to.
    pub qmp: Option<&'a Path>,
    /// Wait for device state from `migrate-incoming` instead of booting.
    pub incoming: bool,
}

/// The command line of this configuration's VMs: the init with its boot
/// duties, and under TCG the host's TSC rate (see `tsc`).
pub fn kernel_cmdline_for(config: &VmConfig, accel: Accel) -> String {
    let khz = if accel == Accel::Kvm { None } else { tsc::rate_khz(&config.cache_dir) };
    pid1_cmdline(accel, config.debug, khz)
}

/// [`kernel_cmdline_for`] with the TSC rate given.
pub fn pid1_cmdline(accel: Accel, debug: bool, tsc_khz: Option<u32>) -> String {
    let mut extra = String::from("pid1_boot=1");
    if let Some(khz) = tsc_khz {
        extra.push_str(&format!(" tsc_early_khz={khz} tsc=reliable"));
    }
    kernel_cmdline("/sbin/init", &extra, accel, debug)
}

/// The kernel command line for `init`. `extra` parameters the kernel does
/// not know (like `pid1_boot=1`, which tells the init it may do the PID-1
/// boot duties) reach the init as environment variables.
pub fn kernel_cmdline(init: &str, extra: &str, accel: Accel, debug: bool) -> String {
    // reboot=t: a reset is a triple fault (microvm has no ACPI, no 8042),
    // which QEMU with -no-reboot turns into its exit. panic=-1: a panicking
    // kernel resets at once, so a failed boot ends QEMU instead of hanging.
    // noapictimer (TCG only): without a TSC-deadline timer, which TCG does
    // not emulate, the kernel calibrates the local APIC timer against the
    // PIT for ~0.25 s; the PIT serves as the clock event device instead.
    // KVM guests get the TSC-deadline timer and keep the APIC timer.
    let mut line = format!(
        "console=ttyS0 root=/dev/vda ro rootfstype=erofs init={init} {extra} \
         random.trust_cpu=on reboot=t panic=-1 printk.time=1"
    );
    if accel != Accel::Kvm {
        line.push_str(" noapictimer");
    }
    if !debug {
        // Every console line costs time on an emulated UART.
        line.push_str(" quiet");
    }
    line
}

/// The QEMU command of a VM.
pub fn qemu_command(config: &VmConfig, accel: Accel, launch: &Launch<'_>) -> Command {
    let mut c = Command::new(&config.qemu);
    c.args(qemu_args(config, accel, launch));
    c
}

/// QEMU's arguments for a VM (also what a template's key is made of).
pub fn qemu_args(config: &VmConfig, accel: Accel, launch: &Launch<'_>) -> Vec<String> {
    let (accel_name, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        _ => ("tcg", "max"),
    };
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
    // microvm: no PCI, no firmware tables; QEMU lists the virtio-mmio
    // devices on the kernel command line.
    let machine = match launch.ram {
        Ram::Anonymous => "microvm,acpi=off".to_owned(),
        Ram::File { .. } => "microvm,acpi=off,memory-backend=mem".to_owned(),
    };
    push(&["-M", &machine, "-accel", accel_name, "-cpu", cpu]);
    push(&["-m", &format!("{}M", config.memory_mb), "-smp", &config.cpus.to_string()]);
    if let Ram::File { path, shared } = launch.ram {
        let share = if shared { "on" } else { "off" };
        let backend = format!(
            "memory-backend-file,id=mem,size={}M,mem-path={},share={share}",
            config.memory_mb,
            path.display()
        );
        push(&["-object", &backend]);
    }
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    push(&["-kernel", &config.kernel.display().to_string()]);
    push(&["-append", launch.cmdline]);
    let drive = format!("id=root,file={},format=raw,if=none,readonly=on", config.rootfs.display());
    push(&["-drive", &drive, "-device", "virtio-blk-device,drive=root"]);
    // Entropy for the guest's CRNG (with `-cpu max`'s RDRAND and
    // random.trust_cpu), so the first getrandom() does not stall.
    push(&["-device", "virtio-rng-device"]);
    let chardev = format!("socket,id=agent,path={}", launch.agent.display());
    // A serial port, not a console port (`virtconsole`): QEMU throttles a
    // serial port when the host reads slowly, and silently drops what a
    // console port writes then (corrupt frames under load, seen here).
    push(&[
        "-device",
        "virtio-serial-device",
        "-chardev",
        &chardev,
        "-device",
        "virtserialport,chardev=agent,name=pid1",
    ]);
    // The package layer is /dev/vdb. Devices are numbered in the order
    // given: last, it leaves the others' numbers (the init's port is
    // /dev/vport2p1) as they are without it.
    if let Some(layer) = &config.packages {
        let drive = format!("id=packages,file={},format=raw,if=none,readonly=on", layer.display());
        push(&["-drive", &drive, "-device", "virtio-blk-device,drive=packages"]);
    }
    let serial = match launch.console {
        Console::File(path) => format!("file:{}", path.display()),
        Console::Stderr => "file:/dev/stderr".to_owned(),
        Console::Stdout => "stdio".to_owned(),
    };
    push(&["-serial", &serial]);
    if let Some(qmp) = launch.qmp {
        let chardev = format!("socket,id=qmp,path={}", qmp.display());
        push(&["-chardev", &chardev, "-mon", "chardev=qmp,mode=control"]);
    }
    if launch.incoming {
        push(&["-incoming", "defer"]);
    }
    a
}

/// Quotes a path for the shell QEMU runs an `exec:` migration URI in.
pub fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            kernel: PathBuf::from("/img/vmlinux"),
            rootfs: PathBuf::from("/img/rootfs.erofs"),
            memory_mb: 192,
            cpus: 2,
            ..VmConfig::default()
        }
    }

    fn launch(ram: Ram<'_>) -> Launch<'_> {
        Launch {
            cmdline: "CMDLINE",
            agent: Path::new("/run/agent.sock"),
            console: Console::File(Path::new("/run/console.log")),
            ram,
            qmp: None,
            incoming: false,
        }
    }

    /// The value after `flag` (the first time it appears).
    fn after<'a>(args: &'a [String], flag: &str) -> &'a str {
        let i = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("no {flag} in {args:?}"));
        &args[i + 1]
    }

    #[test]
    fn a_cold_tcg_vm_is_a_microvm_with_the_image_read_only() {
        let args = qemu_args(&config(), Accel::Tcg, &launch(Ram::Anonymous));
        assert_eq!(after(&args, "-M"), "microvm,acpi=off");
        assert_eq!((after(&args, "-accel"), after(&args, "-cpu")), ("tcg", "max"));
        assert_eq!((after(&args, "-m"), after(&args, "-smp")), ("192M", "2"));
        assert_eq!((after(&args, "-kernel"), after(&args, "-append")), ("/img/vmlinux", "CMDLINE"));
        assert_eq!(after(&args, "-drive"), "id=root,file=/img/rootfs.erofs,format=raw,if=none,readonly=on");
        assert_eq!(after(&args, "-serial"), "file:/run/console.log");
        assert!(args.iter().any(|a| a == "socket,id=agent,path=/run/agent.sock"));
        assert!(args.iter().any(|a| a == "virtserialport,chardev=agent,name=pid1"));
        for absent in ["-object", "-mon", "-incoming"] {
            assert!(!args.iter().any(|a| a == absent), "{absent} in {args:?}");
        }
    }

    #[test]
    fn a_package_layer_is_the_second_disk_read_only() {
        let plain = qemu_args(&config(), Accel::Tcg, &launch(Ram::Anonymous));
        assert!(!plain.iter().any(|a| a.contains("id=packages")), "{plain:?}");
        let with = VmConfig { packages: Some(PathBuf::from("/c/layers/ab.erofs")), ..config() };
        let args = qemu_args(&with, Accel::Tcg, &launch(Ram::Anonymous));
        let drives: Vec<&String> = args.iter().filter(|a| a.starts_with("id=")).collect();
        assert_eq!(drives.len(), 2, "{args:?}");
        assert_eq!(drives[1], "id=packages,file=/c/layers/ab.erofs,format=raw,if=none,readonly=on");
        assert!(args.iter().any(|a| a == "virtio-blk-device,drive=packages"));
    }

    #[test]
    fn kvm_takes_the_host_cpu() {
        let args = qemu_args(&config(), Accel::Kvm, &launch(Ram::Anonymous));
        assert_eq!((after(&args, "-accel"), after(&args, "-cpu")), ("kvm", "host"));
    }

    #[test]
    fn a_restored_vm_maps_its_ram_privately_and_waits_for_state() {
        let ram = Ram::File { path: Path::new("/t/ram"), shared: false };
        let mut l = launch(ram);
        l.qmp = Some(Path::new("/run/qmp.sock"));
        l.incoming = true;
        let args = qemu_args(&config(), Accel::Tcg, &l);
        assert_eq!(after(&args, "-M"), "microvm,acpi=off,memory-backend=mem");
        assert_eq!(after(&args, "-object"), "memory-backend-file,id=mem,size=192M,mem-path=/t/ram,share=off");
        assert_eq!(after(&args, "-incoming"), "defer");
        assert_eq!(after(&args, "-mon"), "chardev=qmp,mode=control");
        let template =
            qemu_args(&config(), Accel::Tcg, &launch(Ram::File { path: Path::new("/t/ram"), shared: true }));
        assert!(after(&template, "-object").ends_with("share=on"), "a template writes its RAM file");
    }

    #[test]
    fn the_console_goes_where_it_is_told() {
        let mut l = launch(Ram::Anonymous);
        l.console = Console::Stderr;
        assert_eq!(after(&qemu_args(&config(), Accel::Tcg, &l), "-serial"), "file:/dev/stderr");
        l.console = Console::Stdout;
        assert_eq!(after(&qemu_args(&config(), Accel::Tcg, &l), "-serial"), "stdio");
    }

    #[test]
    fn the_kernel_line_names_the_init_and_quiets_the_console() {
        let line = pid1_cmdline(Accel::Tcg, false, Some(2_400_000));
        assert!(line.contains(" init=/sbin/init pid1_boot=1 tsc_early_khz=2400000 tsc=reliable "), "{line}");
        assert!(line.contains("root=/dev/vda ro rootfstype=erofs"), "{line}");
        assert!(line.ends_with(" noapictimer quiet"), "{line}");
        let kvm = pid1_cmdline(Accel::Kvm, true, None);
        assert!(!kvm.contains("noapictimer") && !kvm.contains("quiet") && !kvm.contains("tsc="), "{kvm}");
    }

    #[test]
    fn a_path_is_quoted_for_the_shell() {
        assert_eq!(shell_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
