//! Runs the real release init on this machine, outside a VM: as a child
//! subreaper, or as PID 1 of a new PID namespace, driven over a socketpair
//! through the host library's `Agent`.
#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vmhost::{Agent, Job, Outcome};

/// Longest any single read from the init may wait: a hung test fails
/// instead of hanging CI.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The release binary (`cargo build --release`), or `$PID1_BIN`.
pub fn init_binary() -> PathBuf {
    let path = std::env::var_os("PID1_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/init/pid1"));
    assert!(
        path.is_file(),
        "no init binary at {}: run `cargo build --profile init -p pid1` (or `just build`)",
        path.display()
    );
    path
}

pub fn is_root() -> bool {
    rustix::process::getuid().is_root()
}

/// A running init and the connection to it.
pub struct Init {
    child: Child,
    pub agent: Agent,
    /// The jobs' home directory (owned by the job user).
    pub home: tempfile::TempDir,
}

impl Init {
    /// CPU time the init process has used (user + system), from
    /// `/proc/PID/stat` in clock ticks of 10 ms (Mode::Subreaper: the child
    /// is the init).
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("stat");
        // Fields after the command, which is in parentheses: utime is the
        // 14th field, stime the 15th.
        let fields: Vec<&str> = stat.rsplit_once(')').expect("stat").1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }
}

/// How the init runs Python jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Python {
    /// `python3` exec'd for each job (no zygote script given).
    Exec,
    /// Forked from the zygote (`rootfs/zygote.py`), which the init started
    /// and reported ready before the test's first job.
    Zygote,
}

/// The zygote script of this checkout.
pub const ZYGOTE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../rootfs/zygote.py");

/// Defines `exec::NAME` and `zygote::NAME` tests that call `NAME(Python)`:
/// the same body on both paths.
#[macro_export]
macro_rules! both_paths {
    ($($name:ident),* $(,)?) => {
        mod exec {
            $(#[test] fn $name() { super::$name(super::common::Python::Exec) })*
        }
        mod zygote {
            $(#[test] fn $name() { super::$name(super::common::Python::Zygote) })*
        }
    };
}

pub enum Mode {
    /// A plain child of the test, which makes itself a child subreaper.
    Subreaper,
    /// PID 1 of a new PID namespace with its own /proc.
    Pid1,
}

impl Init {
    pub fn start(mode: Mode) -> Init {
        Init::start_with(mode, &[])
    }

    pub fn start_on(python: Python, mode: Mode) -> Init {
        Init::start_with_on(python, mode, &[])
    }

    /// Started with the zygote when `python` says so, once it is ready.
    pub fn start_with_on(python: Python, mode: Mode, extra: &[&str]) -> Init {
        if python == Python::Exec {
            return Init::start_with(mode, extra);
        }
        let mut init = Init::start_with(mode, &[&["--zygote", ZYGOTE][..], extra].concat());
        for _ in 0..600 {
            if init.agent.ping().expect("ping").zygote {
                return init;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the zygote was not ready within 30 s");
    }

    pub fn start_with(mode: Mode, extra: &[&str]) -> Init {
        let home = tempfile::Builder::new().prefix("pid1-home-").tempdir().expect("temp home");
        if is_root() {
            let uid = rustix::process::Uid::from_raw(1000);
            let gid = rustix::process::Gid::from_raw(1000);
            rustix::fs::chown(home.path(), Some(uid), Some(gid)).expect("chown home");
        }
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let mut command = match mode {
            Mode::Subreaper => Command::new(init_binary()),
            Mode::Pid1 => {
                assert!(is_root(), "PID-namespace tests need root (unshare --pid)");
                let mut c = Command::new("unshare");
                // --kill-child: if unshare dies, so does the namespace.
                c.args(["--pid", "--fork", "--mount-proc", "--kill-child"]).arg(init_binary());
                c
            }
        };
        command.arg("--home").arg(home.path()).args(extra);
        command
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs.try_clone().expect("clone"))))
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stderr(Stdio::inherit());
        let child = command.spawn().expect("spawn the init");
        let mut agent = Agent::new(ours);
        agent.set_timeout(Some(READ_TIMEOUT)).expect("timeout");
        agent.wait_ready().expect("Ready from the init");
        Init { child, agent, home }
    }

    /// The process this test started: the init, or `unshare` above it.
    pub fn process_id(&self) -> u32 {
        self.child.id()
    }

    /// Runs one job to its end.
    pub fn run(&mut self, job: &Job) -> Outcome {
        self.agent.run(job, |_, _| {}).unwrap_or_else(|e| panic!("job {job:?} failed: {e}"))
    }

    pub fn python(&mut self, code: &str) -> Outcome {
        self.run(&Job::python(code))
    }

    pub fn shell(&mut self, code: &str) -> Outcome {
        self.run(&Job::shell(code))
    }

    /// Asks the init to shut down and waits for it to exit.
    pub fn shutdown(mut self) -> std::process::ExitStatus {
        self.agent.shutdown().expect("send shutdown");
        self.child.wait().expect("wait for the init")
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        let _ = self.agent.shutdown();
        for _ in 0..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A Python job that counts zombies whose parent is PID 1, polling until
/// there are none (or 5 s pass), and prints `ZOMBIE_COUNT:<n>`.
pub const ZOMBIE_SCAN: &str = r#"
import os, time
def zombies():
    n = 0
    for p in os.listdir('/proc'):
        if not p.isdigit():
            continue
        try:
            fields = dict(l.split(':', 1) for l in open(f'/proc/{p}/status') if ':' in l)
        except OSError:
            continue
        if fields['State'].strip().startswith('Z') and fields['PPid'].strip() == '1':
            n += 1
    return n
for _ in range(50):
    n = zombies()
    if n == 0:
        break
    time.sleep(0.1)
print(f'ZOMBIE_COUNT:{n}')
"#;

/// A Python job that lists the processes of the job user other than
/// itself (by `comm`), polling until there are none (or 5 s pass): a killed
/// process may still be on its way out when the next job starts.
pub const LEFTOVERS: &str = r#"
import os, time
def left():
    found = []
    for p in os.listdir('/proc'):
        try:
            if p.isdigit() and int(p) != os.getpid() and os.stat(f'/proc/{p}').st_uid == os.getuid():
                found.append(open(f'/proc/{p}/comm').read().strip())
        except OSError:
            pass
    return found
for _ in range(50):
    if not left():
        break
    time.sleep(0.1)
print(left())
"#;

/// A Python job that double-forks `n` orphans as fast as it can.
pub fn double_forks(n: usize) -> String {
    format!(
        r#"
import os
for _ in range({n}):
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            os._exit(0)
        os._exit(0)
    os.waitpid(pid, 0)
print('SPAWNED:{n}')
"#
    )
}

/// The default VM configuration, after checking that the guest image exists.
pub fn vm_config() -> vmhost::VmConfig {
    let config = vmhost::VmConfig::default();
    assert!(
        config.kernel.is_file() && config.rootfs.is_file(),
        "no guest image at {} / {}: run `just image`",
        config.kernel.display(),
        config.rootfs.display()
    );
    config
}

/// Makes sure `config`'s snapshot template exists (making it, or waiting
/// while another test process makes it), so that `Vm::boot` restores.
pub fn ensure_template(config: &vmhost::VmConfig) {
    let accel = match vmhost::accel::resolved(config.accel, &config.cache_dir) {
        Some(accel) => accel,
        None => {
            // The first VM here probes KVM (a cold boot) and remembers.
            vmhost::Vm::boot(config).expect("probe boot").shutdown();
            vmhost::accel::resolved(config.accel, &config.cache_dir).expect("a verdict after the probe")
        }
    };
    let template = vmhost::template::Template::locate(config, accel).expect("template key");
    for _ in 0..1200 {
        if template.check(config).is_ok() {
            return;
        }
        match template.build(config, accel) {
            Ok(true) => return,
            Ok(false) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("cannot make the template: {}", vmhost::template::chain(&e)),
        }
    }
    panic!("the template was not made within 2 minutes");
}

/// Makes sure the default template exists, once per test process: then
/// every VM (and `vmexec run` without `--cold`) restores.
pub fn template_ready() {
    static TEMPLATE: std::sync::Once = std::sync::Once::new();
    TEMPLATE.call_once(|| ensure_template(&vm_config()));
}

/// A VM restored from the default template (made if need be).
pub fn restored_vm() -> vmhost::Vm {
    template_ready();
    let config = vm_config();
    let vm = vmhost::Vm::boot(&config).unwrap_or_else(|e| panic!("restore failed: {e}"));
    assert_eq!(vm.start(), vmhost::Start::Restored, "fallback: {:?}", vm.fallback());
    vm
}

/// A VM that booted its kernel.
pub fn cold_vm() -> vmhost::Vm {
    let config = vmhost::VmConfig { cold: true, ..vm_config() };
    let vm = vmhost::Vm::boot(&config).unwrap_or_else(|e| panic!("boot failed: {e}"));
    assert_eq!(vm.start(), vmhost::Start::Cold);
    vm
}

/// Runs a job in a VM to its end; panics with the job if the VM refuses it.
pub fn vm_run(vm: &mut vmhost::Vm, job: &Job) -> Outcome {
    vm.agent().run(job, |_, _| {}).unwrap_or_else(|e| panic!("{job:?}: {e}"))
}

/// After a hostile case: the next job is byte-exact and the init's job
/// table is empty.
pub fn still_serving(vm: &mut vmhost::Vm) {
    let out = vm_run(vm, &Job::python("print('still serving')"));
    assert_eq!(text(&out.stdout), "still serving\n");
    assert_eq!(vm.agent().ping().unwrap().jobs_active, 0);
}
