//! A VM's life, with no policy: launch one cold, restore one from a
//! template's files, and tear it down without leaving a process, socket or
//! temporary file behind. Which of the two to do is [`crate::boot`]'s
//! choice; the QEMU command line is [`crate::qemu`]'s.

use std::fs;
use std::io::{ErrorKind as IoKind, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::accel::Accel;
use crate::agent::{Agent, Runner, Shared};
use crate::cleanup::{self, Registered};
use crate::config::VmConfig;
use crate::error::{AgentError, Fallback, StartError, TemplateError};
use crate::guest::files::{self, FileEntry, FileError};
use crate::guest::session::{Session, SessionError};
use crate::jail::{self, VmJail};
use crate::qemu::qmp::Qmp;
use crate::qemu::{self, Console, Launch, Ram, console, process};

type Result<T> = std::result::Result<T, StartError>;

/// How long QEMU gets to exit after the guest was asked to shut down.
const EXIT_GRACE: Duration = Duration::from_secs(5);

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

/// A running VM with its agent connection.
pub struct Vm {
    child: Child,
    /// The connection, until [`Vm::shared`] hands it to an owner thread.
    agent: Option<Agent>,
    shared: Option<Shared>,
    accel: Accel,
    times: BootTimes,
    start: Start,
    /// Why a restore was wanted but did not happen.
    pub(crate) fallback: Option<Fallback>,
    /// The console log, whose name is gone (see [`VmStart::finish`]).
    console: Option<fs::File>,
    pub(crate) qmp: Option<Qmp>,
    /// Where a VM whose RAM is a shared file saves its device state.
    save: Option<SaveSocket>,
    /// Dropped after QEMU is reaped (the fields drop after `Drop::drop`).
    jail: VmJail,
    _cleanup: [Registered; 2],
}

/// The socket QEMU sends its saved state to (`migrate unix:`): its seccomp
/// filter forbids the `exec:` a shell command would need, and its chroot
/// and ids leave it nothing else to write. The VM's directory, which holds
/// it, lives as long as the VM.
struct SaveSocket {
    listener: UnixListener,
    /// The socket's path as QEMU sees it (in its chroot).
    uri: String,
    _dir: tempfile::TempDir,
}

impl Vm {
    /// A cold boot: the kernel starts and the init sends `Ready`.
    pub fn cold(config: &VmConfig, accel: Accel) -> Result<Vm> {
        Vm::launch(config, accel, config.boot_timeout, Ram::Anonymous)
    }

    /// Boots with RAM in `ram` (a cold boot either way) and a QMP socket.
    pub fn launch(config: &VmConfig, accel: Accel, timeout: Duration, ram: Ram<'_>) -> Result<Vm> {
        let cmdline = qemu::kernel_cmdline_for(config, accel);
        let with_qmp = matches!(ram, Ram::File { .. });
        let mut start = VmStart::spawn(config, accel, &cmdline, ram, with_qmp, None)?;
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
                    process::wait_exit(
                        start.child.as_mut().expect("child until take"),
                        Duration::from_secs(1),
                    );
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
    pub fn restore(config: &VmConfig, accel: Accel, ram: &Path, state: &Path) -> Result<Vm> {
        let cmdline = qemu::kernel_cmdline_for(config, accel);
        let ram = Ram::File { path: ram, shared: false };
        // The state comes in on QEMU's stdin: opened here, it needs no
        // path in QEMU's chroot and no command (which seccomp forbids).
        let incoming = fs::File::open(state).map_err(StartError::State)?;
        let mut start = VmStart::spawn(config, accel, &cmdline, ram, true, Some(incoming))?;
        let timeout = config.boot_timeout;
        let deadline = start.started + timeout;
        let mut qmp = start.qmp(deadline, timeout)?;
        let step = |step| move |source| StartError::Qmp { step, source };
        qmp.ignore_shared_ram().map_err(step("set x-ignore-shared"))?;
        qmp.execute("migrate-incoming", serde_json::json!({ "uri": "fd:0" }))
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

    /// Pauses the VM and saves its device state to `state` (its RAM is
    /// in its file already: `x-ignore-shared`), within `deadline`.
    pub(crate) fn save_state(
        &mut self,
        state: &Path,
        deadline: Instant,
    ) -> std::result::Result<(), TemplateError> {
        let (Some(qmp), Some(save)) = (self.qmp.as_mut(), self.save.as_ref()) else {
            return Err(TemplateError::NotSavable);
        };
        let step = |step| move |source| TemplateError::Qmp { step, source };
        qmp.execute("stop", serde_json::json!({})).map_err(step("pause the VM"))?;
        qmp.ignore_shared_ram().map_err(step("set x-ignore-shared"))?;
        let write = |source| TemplateError::Write { path: state.to_owned(), source };
        let mut file = fs::File::create(state).map_err(write)?;
        let listener = save.listener.try_clone().map_err(write)?;
        // QEMU writes while the monitor is polled: the copy runs beside it.
        let copy = std::thread::spawn(move || -> std::io::Result<u64> {
            let mut stream = accept_until(&listener, deadline)?;
            stream.set_read_timeout(Some(
                deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
            ))?;
            std::io::copy(&mut stream, &mut file)
        });
        let uri = format!("unix:{}", save.uri);
        let migrated = qmp
            .execute("migrate", serde_json::json!({ "uri": uri }))
            .map_err(step("start saving"))
            .and_then(|_| qmp.wait_migration(deadline).map_err(step("save the device state")));
        let copied = copy.join().unwrap_or_else(|_| Err(std::io::Error::other("the copy thread panicked")));
        migrated?;
        copied.map(drop).map_err(write)
    }

    /// What confines this VM's QEMU.
    pub fn jail(&self) -> &VmJail {
        &self.jail
    }

    /// The blocking connection to the init.
    ///
    /// # Panics
    /// Once [`Vm::shared`] has handed the connection over.
    pub fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("the VM's agent was shared: use Vm::shared")
    }

    /// The connection as a [`Shared`] handle, for callers on several
    /// threads; from then on [`Vm::agent`] is gone.
    pub fn shared(&mut self) -> Shared {
        if let Some(agent) = self.agent.take() {
            self.shared = Some(agent.into_shared());
        }
        self.shared.clone().expect("an agent or its shared handle")
    }

    fn runner(&mut self) -> &mut dyn Runner {
        match (&mut self.agent, &mut self.shared) {
            (Some(agent), _) => agent,
            (None, Some(shared)) => shared,
            (None, None) => unreachable!("a VM has its agent or its shared handle"),
        }
    }

    /// A stateful session of `lang` in this VM (the connection becomes
    /// shared); see [`crate::guest::session`].
    pub fn session(&mut self, lang: crate::Lang) -> std::result::Result<Session, SessionError> {
        Session::start(&self.shared(), lang, None)
    }

    /// Writes `data` to `path` in the guest; see [`crate::guest::files`].
    pub fn write_file(&mut self, path: &str, data: &[u8], mode: u32) -> std::result::Result<(), FileError> {
        files::write(self.runner(), path, data, mode)
    }

    /// The bytes of the guest file `path`; see [`crate::guest::files`].
    pub fn read_file(&mut self, path: &str) -> std::result::Result<Vec<u8>, FileError> {
        files::read(self.runner(), path)
    }

    /// Removes the guest file (or empty directory) `path`.
    pub fn delete_file(&mut self, path: &str) -> std::result::Result<(), FileError> {
        files::delete(self.runner(), path)
    }

    /// The entries of the guest directory `path`; see [`crate::guest::files`].
    pub fn list_files(&mut self, path: &str) -> std::result::Result<Vec<FileEntry>, FileError> {
        files::list(self.runner(), path)
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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
    pub fn fallback(&self) -> Option<&Fallback> {
        self.fallback.as_ref()
    }

    /// The kernel console so far.
    pub fn console(&self) -> String {
        self.console
            .as_ref()
            .map_or_else(|| String::from("(no console output)"), |f| console::tail_of(f, usize::MAX))
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
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let asked = match (&mut self.agent, &self.shared) {
                (Some(agent), _) => agent.shutdown(),
                (None, Some(shared)) => shared.shutdown(),
                (None, None) => Err(AgentError::Closed),
            };
            if asked.is_ok() {
                process::wait_exit(&mut self.child, EXIT_GRACE);
            }
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
    save: Option<(UnixListener, String)>,
    jail: Option<VmJail>,
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
        incoming: Option<fs::File>,
    ) -> Result<VmStart> {
        let dir = tempfile::Builder::new().prefix("vmexec-").tempdir().map_err(StartError::TempDir)?;
        let dir_cleanup = cleanup::path(dir.path().to_owned());
        let jail = VmJail::prepare(&config.jail, dir.path(), config.memory_mb).map_err(StartError::Jail)?;
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
        let save = match ram {
            Ram::File { shared: true, .. } => {
                let path = dir.path().join("save.sock");
                let listener = listen(path.clone())?;
                jail.open_to_qemu(dir.path(), &path).map_err(StartError::Jail)?;
                Some((listener, jail.path_seen_by_qemu(&path).display().to_string()))
            }
            _ => None,
        };
        let console = dir.path().join("console.log");
        let launch = Launch {
            cmdline,
            agent: &agent_path,
            console: if config.debug { Console::Stderr } else { Console::File(&console) },
            ram,
            qmp: with_qmp.then_some(qmp_path.as_path()),
            incoming: incoming.is_some(),
        };
        let mut command = qemu::qemu_command(config, accel, &launch);
        command.args(qemu::jail::confinement_args(&jail.confinement()));
        if let Some(procs) = jail.cgroup_procs().map_err(StartError::Jail)? {
            process::join_cgroup(&mut command, procs);
        }
        let log_path = dir.path().join("qemu.log");
        let qemu_log =
            fs::File::create(&log_path).map_err(|source| StartError::QemuLog { path: log_path, source })?;
        // With --debug the console is QEMU's stderr, which must then be ours.
        let stderr = if config.debug { Stdio::inherit() } else { Stdio::from(qemu_log) };
        let stdin = incoming.map_or_else(Stdio::null, Stdio::from);
        command.stdin(stdin).stdout(Stdio::null()).stderr(stderr);
        let started = Instant::now();
        let child = process::spawn(command).map_err(|e| match e.kind() {
            IoKind::NotFound => StartError::NoQemu(config.qemu.clone()),
            _ => StartError::Spawn(e),
        })?;
        let cleanup = Some([cleanup::process(child.id()), dir_cleanup]);
        Ok(VmStart {
            child: Some(child),
            dir: Some(dir),
            console,
            started,
            agent,
            qmp,
            save,
            jail: Some(jail),
            cleanup,
        })
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
            let mut console = console::tail(&self.console, console::TAIL_LINES);
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
        let tail = console::tail(&self.console, console::TAIL_LINES);
        if tail.contains("Kernel panic") {
            return Err(StartError::Panic { console: tail });
        }
        Ok(())
    }

    fn not_ready(&self, timeout: Duration) -> StartError {
        StartError::NotReady { timeout, console: console::tail(&self.console, console::TAIL_LINES) }
    }

    /// The VM is up: hand its parts to a [`Vm`].
    /// Once QEMU has connected to its sockets and opened its logs, their
    /// names are not needed: the VM's directory goes now (the console is
    /// read through a descriptor), so a host killed with SIGKILL leaves
    /// nothing behind in TMPDIR.
    /// A VM that can save its state keeps its directory, where the save
    /// socket is, until it is dropped.
    fn finish(mut self, agent: Agent, accel: Accel, times: BootTimes, start: Start, qmp: Option<Qmp>) -> Vm {
        let console = fs::File::open(&self.console).ok();
        let dir = self.dir.take().expect("the directory until finish");
        let save = match self.save.take() {
            Some((listener, uri)) => Some(SaveSocket { listener, uri, _dir: dir }),
            None => {
                // Dropping the TempDir removes it.
                drop(dir);
                None
            }
        };
        Vm {
            console,
            child: self.child.take().expect("child"),
            agent: Some(agent),
            shared: None,
            accel,
            times,
            start,
            fallback: None,
            qmp,
            save,
            jail: self.jail.take().expect("the jail until finish"),
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

/// Accepts one connection on a non-blocking `listener` before `deadline`.
fn accept_until(listener: &UnixListener, deadline: Instant) -> std::io::Result<UnixStream> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == IoKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == IoKind::WouldBlock => {
                return Err(std::io::Error::new(IoKind::TimedOut, "QEMU did not connect to save its state"));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The guest image is there, and the jail asked for can be had here.
pub(crate) fn check_inputs(config: &VmConfig) -> Result<()> {
    jail::status(&config.jail).map_err(StartError::Jail)?;
    if !config.kernel.is_file() {
        return Err(StartError::NoKernel(config.kernel.clone()));
    }
    if !config.rootfs.is_file() {
        return Err(StartError::NoRootfs(config.rootfs.clone()));
    }
    Ok(())
}
