//! Booting a pid1 microVM under QEMU and tearing it down without leaving a
//! process, socket or temporary file behind.

use std::fs;
use std::io::{ErrorKind as IoKind, Read, Seek, SeekFrom};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::accel::{self, Accel};
use crate::agent::Agent;
use crate::cleanup::{self, Registered};
use crate::error::{AgentError, StartError};
use crate::files::{FileEntry, FileError};
use crate::qmp::Qmp;
use crate::session::{Session, SessionError};
use crate::{template, tsc};

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
    /// Boot the kernel, never restore a snapshot template.
    pub cold: bool,
    /// Where templates, the accelerator verdict and the TSC rate are kept.
    pub cache_dir: PathBuf,
}

impl Default for VmConfig {
    /// The guest image from `PID1_KERNEL` / `PID1_ROOTFS`, else from this
    /// checkout's `build/`; the cache in `$XDG_CACHE_HOME/pid1` (else
    /// `~/.cache/pid1`).
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
            cold: false,
            cache_dir: default_cache_dir(),
        }
    }
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

/// Boot timings, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootTimes {
    /// QEMU spawn → the guest serves: `Ready` received (cold), or the
    /// restored guest's answer to `Refresh`.
    pub boot_ms: f64,
    /// Guest boot → the init's `_start` (CLOCK_BOOTTIME); 0 when restored.
    pub kernel_ms: f64,
    /// The init's `_start` → `Ready` sent; 0 when restored.
    pub init_ms: f64,
}

/// How a VM came to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The kernel booted.
    Cold,
    /// Restored from a snapshot template.
    Restored,
}

impl Start {
    pub fn name(self) -> &'static str {
        match self {
            Start::Cold => "cold",
            Start::Restored => "restored",
        }
    }
}

/// Where a VM's RAM lives.
#[derive(Clone, Copy)]
pub enum Ram<'a> {
    /// QEMU's own anonymous memory.
    Anonymous,
    /// A file: `shared` writes go to the file (a template being made);
    /// private ones are copy-on-write over it (a restored VM).
    File { path: &'a Path, shared: bool },
}

/// What a QEMU process is started for, besides the configuration.
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

/// A running VM with its agent connection.
pub struct Vm {
    child: Child,
    agent: Agent,
    accel: Accel,
    times: BootTimes,
    start: Start,
    /// Why a restore was wanted but did not happen.
    fallback: Option<String>,
    /// The console log, whose name is gone (see [`VmStart::finish`]).
    console: Option<fs::File>,
    pub(crate) qmp: Option<Qmp>,
    _cleanup: [Registered; 2],
}

impl Vm {
    /// Starts a VM: restored from this configuration's snapshot template
    /// (made on first use) unless `config.cold`; a cold boot when there is
    /// no template to be had, saying why in [`Vm::fallback`].
    pub fn boot(config: &VmConfig) -> Result<Vm> {
        check_inputs(config)?;
        let Some(accel) = accel::resolved(config.accel, &config.cache_dir) else {
            // The probe is a cold boot; templates start with the next VM.
            return Vm::probe_accel(config);
        };
        if config.cold {
            return Vm::cold(config, accel);
        }
        let fallback = match template::restore_or_build(config, accel) {
            Ok(vm) => return Ok(vm),
            Err(why) => why,
        };
        let mut vm = Vm::cold(config, accel)?;
        vm.fallback = Some(fallback);
        Ok(vm)
    }

    /// Boots cold with KVM if it works here (a boot with a short deadline),
    /// else with TCG, and remembers which.
    fn probe_accel(config: &VmConfig) -> Result<Vm> {
        match Vm::launch(config, Accel::Kvm, KVM_PROBE_TIMEOUT, Ram::Anonymous) {
            Ok(vm) => {
                accel::remember(&config.cache_dir, Accel::Kvm);
                Ok(vm)
            }
            Err(StartError::NotReady { .. } | StartError::QemuExited { .. } | StartError::Panic { .. }) => {
                accel::remember(&config.cache_dir, Accel::Tcg);
                Vm::cold(config, Accel::Tcg)
            }
            Err(e) => Err(e),
        }
    }

    /// A cold boot: the kernel starts and the init sends `Ready`.
    pub fn cold(config: &VmConfig, accel: Accel) -> Result<Vm> {
        Vm::launch(config, accel, config.boot_timeout, Ram::Anonymous)
    }

    /// Boots with RAM in `ram` (a cold boot either way) and a QMP socket.
    pub(crate) fn launch(config: &VmConfig, accel: Accel, timeout: Duration, ram: Ram<'_>) -> Result<Vm> {
        let cmdline = kernel_cmdline_for(config, accel);
        let with_qmp = matches!(ram, Ram::File { .. });
        let mut start = VmStart::spawn(config, accel, &cmdline, ram, with_qmp, false)?;
        let deadline = start.started + timeout;
        let stream = start.accept(Socket::Agent, deadline, timeout)?;
        let mut agent = Agent::new(stream);
        // Wait for Ready in short slices, so a QEMU that dies is noticed.
        let (start_ns, ready_ns) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(start.not_ready(timeout));
            }
            agent.set_timeout(Some(left.min(Duration::from_millis(200))))?;
            match agent.wait_ready() {
                Ok(times) => break times,
                Err(AgentError::Timeout(_)) => {
                    start.check_alive()?;
                    start.check_panic()?;
                }
                Err(AgentError::Closed) => {
                    // The guest went away: say why (a panic, QEMU's exit).
                    start.check_panic()?;
                    wait_exit(start.child.as_mut().expect("child until take"), Duration::from_secs(1));
                    start.check_alive()?;
                    return Err(start.not_ready(timeout));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let boot_ms = start.started.elapsed().as_secs_f64() * 1000.0;
        agent.set_timeout(None)?;
        let qmp = match with_qmp {
            true => Some(start.qmp(deadline, timeout)?),
            false => None,
        };
        let times = BootTimes {
            boot_ms,
            kernel_ms: start_ns as f64 / 1e6,
            init_ms: ready_ns.saturating_sub(start_ns) as f64 / 1e6,
        };
        Ok(start.finish(agent, accel, times, Start::Cold, qmp))
    }

    /// A new QEMU loads the template's device state over its RAM file
    /// (copy-on-write), then the guest takes a fresh clock and entropy.
    pub(crate) fn restore(config: &VmConfig, accel: Accel, ram: &Path, state: &Path) -> Result<Vm> {
        let cmdline = kernel_cmdline_for(config, accel);
        let ram = Ram::File { path: ram, shared: false };
        let mut start = VmStart::spawn(config, accel, &cmdline, ram, true, true)?;
        let timeout = config.boot_timeout;
        let deadline = start.started + timeout;
        let mut qmp = start.qmp(deadline, timeout)?;
        let step = |step| move |source| StartError::Qmp { step, source };
        qmp.ignore_shared_ram().map_err(step("set x-ignore-shared"))?;
        let uri = format!("exec:cat {}", shell_quote(state));
        qmp.execute("migrate-incoming", serde_json::json!({ "uri": uri }))
            .map_err(step("start the migration"))?;
        if let Err(e) = qmp.wait_migration(deadline) {
            start.check_alive()?;
            return Err(StartError::Qmp { step: "load the template", source: e });
        }
        // The template was saved paused, and so it arrives.
        qmp.execute("cont", serde_json::json!({})).map_err(step("resume the VM"))?;
        let stream = start.accept(Socket::Agent, deadline, timeout)?;
        let mut agent = Agent::new(stream);
        agent.set_timeout(Some(deadline.saturating_duration_since(Instant::now())))?;
        let mut entropy = [0u8; 64];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut entropy))
            .map_err(StartError::Entropy)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let realtime_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        agent.refresh(realtime_ns, &entropy).map_err(StartError::Refresh)?;
        agent.set_timeout(None)?;
        let boot_ms = start.started.elapsed().as_secs_f64() * 1000.0;
        let times = BootTimes { boot_ms, kernel_ms: 0.0, init_ms: 0.0 };
        Ok(start.finish(agent, accel, times, Start::Restored, None))
    }

    pub fn agent(&mut self) -> &mut Agent {
        &mut self.agent
    }

    /// A stateful session of `lang` in this VM; see [`crate::session`].
    pub fn session(&mut self, lang: crate::Lang) -> std::result::Result<Session<'_>, SessionError> {
        self.agent.session(lang)
    }

    /// Writes `data` to `path` in the guest; see [`crate::files`].
    pub fn write_file(&mut self, path: &str, data: &[u8], mode: u32) -> std::result::Result<(), FileError> {
        self.agent.write_file(path, data, mode)
    }

    /// The bytes of the guest file `path`; see [`crate::files`].
    pub fn read_file(&mut self, path: &str) -> std::result::Result<Vec<u8>, FileError> {
        self.agent.read_file(path)
    }

    /// The entries of the guest directory `path`; see [`crate::files`].
    pub fn list_files(&mut self, path: &str) -> std::result::Result<Vec<FileEntry>, FileError> {
        self.agent.list_files(path)
    }

    pub fn times(&self) -> BootTimes {
        self.times
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// Cold boot or restored.
    pub fn start(&self) -> Start {
        self.start
    }

    /// Why this VM booted cold although a restore was wanted (no template
    /// could be made or restored), in one line.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The kernel console so far.
    pub fn console(&self) -> String {
        self.console.as_ref().map_or_else(|| String::from("(no console output)"), |f| tail_of(f, usize::MAX))
    }

    /// Whether QEMU has exited (the guest powered off, or it was killed).
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks the guest to shut down and waits for QEMU to exit (killing it
    /// if it does not within a few seconds).
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Ends QEMU at once, without the guest's shutdown (a paused template).
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// Quotes a path for the shell QEMU runs an `exec:` migration URI in.
pub(crate) fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// The sockets QEMU connects to.
#[derive(Clone, Copy)]
enum Socket {
    Agent,
    Qmp,
}

/// A VM between spawn and serving: whatever fails, QEMU is killed and the
/// directory removed.
struct VmStart {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    console: PathBuf,
    started: Instant,
    agent: UnixListener,
    qmp: Option<UnixListener>,
    cleanup: Option<[Registered; 2]>,
}

impl VmStart {
    /// Listens on the VM's sockets and starts QEMU.
    fn spawn(
        config: &VmConfig,
        accel: Accel,
        cmdline: &str,
        ram: Ram<'_>,
        with_qmp: bool,
        incoming: bool,
    ) -> Result<VmStart> {
        let dir = tempfile::Builder::new().prefix("vmexec-").tempdir().map_err(StartError::TempDir)?;
        let dir_cleanup = cleanup::path(dir.path().to_owned());
        // The host listens first and QEMU connects as the client: connecting
        // to a QEMU server socket the instant it appears can lose output.
        let listen = |path: PathBuf| -> Result<UnixListener> {
            let fail = |source| StartError::Listen { path: path.clone(), source };
            let listener = UnixListener::bind(&path).map_err(fail)?;
            listener.set_nonblocking(true).map_err(fail)?;
            Ok(listener)
        };
        let agent_path = dir.path().join("agent.sock");
        let qmp_path = dir.path().join("qmp.sock");
        let agent = listen(agent_path.clone())?;
        let qmp = if with_qmp { Some(listen(qmp_path.clone())?) } else { None };
        let console = dir.path().join("console.log");
        let launch = Launch {
            cmdline,
            agent: &agent_path,
            console: if config.debug { Console::Stderr } else { Console::File(&console) },
            ram,
            qmp: with_qmp.then_some(qmp_path.as_path()),
            incoming,
        };
        let mut command = qemu_command(config, accel, &launch);
        let log_path = dir.path().join("qemu.log");
        let qemu_log =
            fs::File::create(&log_path).map_err(|source| StartError::QemuLog { path: log_path, source })?;
        // With --debug the console is QEMU's stderr, which must then be ours.
        let stderr = if config.debug { Stdio::inherit() } else { Stdio::from(qemu_log) };
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        die_with_parent(&mut command);
        let started = Instant::now();
        let child = command.spawn().map_err(|e| match e.kind() {
            IoKind::NotFound => StartError::NoQemu(config.qemu.clone()),
            _ => StartError::Spawn(e),
        })?;
        let cleanup = Some([cleanup::process(child.id()), dir_cleanup]);
        Ok(VmStart { child: Some(child), dir: Some(dir), console, started, agent, qmp, cleanup })
    }

    /// QEMU's connection to one of the sockets, watching that it lives.
    fn accept(&mut self, socket: Socket, deadline: Instant, timeout: Duration) -> Result<UnixStream> {
        loop {
            let listener = match socket {
                Socket::Agent => &self.agent,
                Socket::Qmp => self.qmp.as_ref().expect("a QMP listener when QMP is asked for"),
            };
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).map_err(StartError::Accept)?;
                    return Ok(stream);
                }
                Err(e) if e.kind() == IoKind::WouldBlock => {}
                Err(e) => return Err(StartError::Accept(e)),
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err(self.not_ready(timeout));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The QMP session of this QEMU.
    fn qmp(&mut self, deadline: Instant, timeout: Duration) -> Result<Qmp> {
        let stream = self.accept(Socket::Qmp, deadline, timeout)?;
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        Qmp::handshake(stream, left).map_err(|source| StartError::Qmp { step: "connect", source })
    }

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

    /// The VM is up: hand its parts to a [`Vm`].
    /// Once QEMU has connected to its sockets and opened its logs, their
    /// names are not needed: the VM's directory goes now (the console is
    /// read through a descriptor), so a host killed with SIGKILL leaves
    /// nothing behind in TMPDIR.
    fn finish(mut self, agent: Agent, accel: Accel, times: BootTimes, start: Start, qmp: Option<Qmp>) -> Vm {
        let console = fs::File::open(&self.console).ok();
        // Dropping the TempDir removes it.
        drop(self.dir.take());
        Vm {
            console,
            child: self.child.take().expect("child"),
            agent,
            accel,
            times,
            start,
            fallback: None,
            qmp,
            _cleanup: self.cleanup.take().expect("cleanup"),
        }
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

/// The command line of this configuration's VMs: the init with its boot
/// duties, and under TCG the host's TSC rate (see `tsc`).
pub(crate) fn kernel_cmdline_for(config: &VmConfig, accel: Accel) -> String {
    let mut extra = String::from("pid1_boot=1");
    if accel != Accel::Kvm
        && let Some(khz) = tsc::rate_khz(&config.cache_dir)
    {
        extra.push_str(&format!(" tsc_early_khz={khz} tsc=reliable"));
    }
    kernel_cmdline("/sbin/init", &extra, accel, config.debug)
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
#[derive(Clone, Copy)]
pub enum Console<'a> {
    File(&'a Path),
    Stderr,
    /// QEMU's stdout (for a caller that pipes it).
    Stdout,
}

/// The QEMU command line of a VM.
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
    match fs::File::open(path) {
        Ok(file) => tail_of(&file, lines),
        Err(_) => String::from("(no console output)"),
    }
}

/// The last `lines` lines of an open console log.
fn tail_of(mut file: &fs::File, lines: usize) -> String {
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
