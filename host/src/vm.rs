//! Booting a pid1 microVM under QEMU and tearing it down without leaving a
//! process, socket or temporary file behind.

use std::fs;
use std::io::{ErrorKind as IoKind, Read, Seek, SeekFrom};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::accel::{self, Accel};
use crate::agent::Agent;
use crate::error::{AgentError, StartError};

type Result<T> = std::result::Result<T, StartError>;

/// How long a TCG boot may take before it is declared failed. A boot takes
/// about 1-3 s here; a loaded CI machine gets a wide margin.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a KVM boot may take before KVM is declared not to work on this
/// machine (where /dev/kvm opens but guests hang).
pub const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long QEMU gets to exit after the guest was asked to shut down.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Lines of the kernel console shown when a boot fails.
const CONSOLE_TAIL: usize = 30;

/// Where `just kernel` and `just rootfs` put the guest image.
fn default_build_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../build")
}

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
}

impl Default for VmConfig {
    /// The guest image from `PID1_KERNEL` / `PID1_ROOTFS`, else from this
    /// checkout's `build/`.
    fn default() -> Self {
        let build = default_build_dir();
        let from_env = |name: &str, default: PathBuf| std::env::var_os(name).map_or(default, PathBuf::from);
        VmConfig {
            qemu: PathBuf::from("qemu-system-x86_64"),
            kernel: from_env("PID1_KERNEL", build.join("vmlinux")),
            rootfs: from_env("PID1_ROOTFS", build.join("rootfs.erofs")),
            memory_mb: 256,
            cpus: 1,
            accel: Accel::Auto,
            boot_timeout: BOOT_TIMEOUT,
            debug: false,
        }
    }
}

/// Boot timings, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootTimes {
    /// QEMU spawn → `Ready` received.
    pub boot_ms: f64,
    /// Guest boot → the init's `_start` (CLOCK_BOOTTIME).
    pub kernel_ms: f64,
    /// The init's `_start` → `Ready` sent.
    pub init_ms: f64,
}

/// A running VM with its agent connection.
pub struct Vm {
    child: Child,
    agent: Agent,
    dir: tempfile::TempDir,
    accel: Accel,
    times: BootTimes,
}

impl Vm {
    /// Boots a VM and waits for its init's `Ready`.
    pub fn boot(config: &VmConfig) -> Result<Vm> {
        check_inputs(config)?;
        match config.accel {
            Accel::Auto => match accel::remembered() {
                Some(accel) => Vm::boot_with(config, accel, config.boot_timeout),
                None if accel::kvm_usable() => {
                    // The probe is a real boot: if KVM works, this is the VM.
                    match Vm::boot_with(config, Accel::Kvm, KVM_PROBE_TIMEOUT) {
                        Ok(vm) => {
                            accel::remember(Accel::Kvm);
                            Ok(vm)
                        }
                        Err(
                            StartError::NotReady { .. }
                            | StartError::QemuExited { .. }
                            | StartError::Panic { .. },
                        ) => {
                            accel::remember(Accel::Tcg);
                            Vm::boot_with(config, Accel::Tcg, config.boot_timeout)
                        }
                        Err(e) => Err(e),
                    }
                }
                None => Vm::boot_with(config, Accel::Tcg, config.boot_timeout),
            },
            accel => Vm::boot_with(config, accel, config.boot_timeout),
        }
    }

    fn boot_with(config: &VmConfig, accel: Accel, timeout: Duration) -> Result<Vm> {
        let dir = tempfile::Builder::new().prefix("vmexec-").tempdir().map_err(StartError::TempDir)?;
        let socket = dir.path().join("agent.sock");
        let console = dir.path().join("console.log");
        // The host listens first and QEMU connects as the client: connecting
        // to a QEMU server socket the instant it appears can lose output.
        let listen = |source| StartError::Listen { path: socket.clone(), source };
        let listener = UnixListener::bind(&socket).map_err(listen)?;
        listener.set_nonblocking(true).map_err(listen)?;

        let started = Instant::now();
        let cmdline = kernel_cmdline("/sbin/init", "pid1_boot=1", accel, config.debug);
        let serial = if config.debug { Console::Stderr } else { Console::File(&console) };
        let mut command = qemu_command(config, accel, &cmdline, &socket, serial);
        let log_path = dir.path().join("qemu.log");
        let qemu_log =
            fs::File::create(&log_path).map_err(|source| StartError::QemuLog { path: log_path, source })?;
        // With --debug the console is QEMU's stderr, which must then be ours.
        let stderr = if config.debug { Stdio::inherit() } else { Stdio::from(qemu_log) };
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        die_with_parent(&mut command);
        let child = command.spawn().map_err(|e| match e.kind() {
            IoKind::NotFound => StartError::NoQemu(config.qemu.clone()),
            _ => StartError::Spawn(e),
        })?;
        let mut vm = VmStart { child: Some(child), dir: Some(dir), console: console.clone() };

        let deadline = started + timeout;
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == IoKind::WouldBlock => {}
                Err(e) => return Err(StartError::Accept(e)),
            }
            vm.check_alive()?;
            if Instant::now() > deadline {
                return Err(vm.not_ready(timeout));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        stream.set_nonblocking(false).map_err(StartError::Accept)?;
        let mut agent = Agent::new(stream);
        // Wait for Ready in short slices, so a QEMU that dies is noticed.
        let (start_ns, ready_ns) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(vm.not_ready(timeout));
            }
            agent.set_timeout(Some(left.min(Duration::from_millis(200))))?;
            match agent.wait_ready() {
                Ok(times) => break times,
                Err(AgentError::Timeout(_)) => {
                    vm.check_alive()?;
                    vm.check_panic()?;
                }
                Err(AgentError::Closed) => {
                    // The guest went away: say why (a panic, QEMU's exit).
                    vm.check_panic()?;
                    wait_exit(vm.child.as_mut().expect("child until take"), Duration::from_secs(1));
                    vm.check_alive()?;
                    return Err(vm.not_ready(timeout));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let boot_ms = started.elapsed().as_secs_f64() * 1000.0;
        agent.set_timeout(None)?;
        let (child, dir) = vm.take();
        Ok(Vm {
            child,
            agent,
            dir,
            accel,
            times: BootTimes {
                boot_ms,
                kernel_ms: start_ns as f64 / 1e6,
                init_ms: ready_ns.saturating_sub(start_ns) as f64 / 1e6,
            },
        })
    }

    pub fn agent(&mut self) -> &mut Agent {
        &mut self.agent
    }

    pub fn times(&self) -> BootTimes {
        self.times
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// QEMU's pid and the VM's directory, for a Ctrl-C handler to clean up.
    pub fn resources(&self) -> (u32, PathBuf) {
        (self.child.id(), self.dir.path().to_owned())
    }

    /// The kernel console so far.
    pub fn console(&self) -> String {
        console_tail(&self.dir.path().join("console.log"), usize::MAX)
    }

    /// Asks the guest to shut down and waits for QEMU to exit (killing it
    /// if it does not within a few seconds).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.agent.shutdown();
            wait_exit(&mut self.child, EXIT_GRACE);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A VM between spawn and Ready: whatever fails, QEMU is killed and the
/// directory removed.
struct VmStart {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    console: PathBuf,
}

impl VmStart {
    fn check_alive(&mut self) -> Result<()> {
        let child = self.child.as_mut().expect("child until take");
        if let Ok(Some(status)) = child.try_wait() {
            let mut console = console_tail(&self.console, CONSOLE_TAIL);
            if let Some(dir) = &self.dir {
                let qemu = fs::read_to_string(dir.path().join("qemu.log")).unwrap_or_default();
                if !qemu.trim().is_empty() {
                    console = format!("{console}\nQEMU: {}", qemu.trim());
                }
            }
            return Err(StartError::QemuExited { status, console });
        }
        Ok(())
    }

    /// A kernel that panicked before the init was ready does not always
    /// reset (and so end QEMU): read the console rather than wait out the
    /// deadline.
    fn check_panic(&self) -> Result<()> {
        let tail = console_tail(&self.console, CONSOLE_TAIL);
        if tail.contains("Kernel panic") {
            return Err(StartError::Panic { console: tail });
        }
        Ok(())
    }

    fn not_ready(&self, timeout: Duration) -> StartError {
        StartError::NotReady { timeout, console: console_tail(&self.console, CONSOLE_TAIL) }
    }

    fn take(&mut self) -> (Child, tempfile::TempDir) {
        (self.child.take().expect("child"), self.dir.take().expect("dir"))
    }
}

impl Drop for VmStart {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits up to `grace` for QEMU to exit by itself.
fn wait_exit(child: &mut Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn check_inputs(config: &VmConfig) -> Result<()> {
    if !config.kernel.is_file() {
        return Err(StartError::NoKernel(config.kernel.clone()));
    }
    if !config.rootfs.is_file() {
        return Err(StartError::NoRootfs(config.rootfs.clone()));
    }
    Ok(())
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

/// Where the kernel console goes.
pub enum Console<'a> {
    File(&'a Path),
    Stderr,
    /// QEMU's stdout (for a caller that pipes it).
    Stdout,
}

/// The QEMU command line of a VM: `cmdline` for the kernel, the agent port
/// connecting to the host's socket at `socket`.
pub fn qemu_command(
    config: &VmConfig,
    accel: Accel,
    cmdline: &str,
    socket: &Path,
    console: Console<'_>,
) -> Command {
    let mut c = Command::new(&config.qemu);
    let (accel_name, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        _ => ("tcg", "max"),
    };
    // microvm: no PCI, no firmware tables; QEMU lists the virtio-mmio
    // devices on the kernel command line.
    c.args(["-M", "microvm,acpi=off", "-accel", accel_name, "-cpu", cpu]);
    c.args(["-m", &config.memory_mb.to_string(), "-smp", &config.cpus.to_string()]);
    c.args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    c.arg("-kernel").arg(&config.kernel);
    c.args(["-append", cmdline]);
    let drive = format!("id=root,file={},format=raw,if=none,readonly=on", config.rootfs.display());
    c.args(["-drive", &drive, "-device", "virtio-blk-device,drive=root"]);
    // Entropy for the guest's CRNG (with `-cpu max`'s RDRAND and
    // random.trust_cpu), so the first getrandom() does not stall.
    c.args(["-device", "virtio-rng-device"]);
    let chardev = format!("socket,id=agent,path={}", socket.display());
    c.args(["-device", "virtio-serial-device", "-chardev", &chardev, "-device", "virtconsole,chardev=agent"]);
    let serial = match console {
        Console::File(path) => format!("file:{}", path.display()),
        Console::Stderr => "file:/dev/stderr".to_owned(),
        Console::Stdout => "stdio".to_owned(),
    };
    c.args(["-serial", &serial]);
    c
}

/// QEMU dies with the process that started it, even if that one is killed.
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only makes one
    // async-signal-safe syscall (prctl); it allocates nothing.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
}

/// The last `lines` lines of a console log.
fn console_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = fs::File::open(path) else { return String::from("(no console output)") };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    text.push_str(&String::from_utf8_lossy(&bytes));
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.trim().is_empty() { String::from("(no console output)") } else { tail }
}
