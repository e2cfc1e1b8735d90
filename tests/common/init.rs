//! Runs the real release init on this machine, outside a VM: as a child
//! subreaper, or as PID 1 of a new PID namespace, driven over a socketpair
//! through the host library's `Agent`.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vmhost::{Agent, Job, Outcome};

/// Longest any single read from the init may wait: a hung test fails
/// instead of hanging CI.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The zygote script of this checkout.
pub const ZYGOTE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../rootfs/zygote.py");

/// The init built with the `init` profile, or `$PID1_BIN`.
pub fn init_binary() -> PathBuf {
    let path = std::env::var_os("PID1_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::workspace().join("target/init/pid1"));
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

/// How the init runs Python jobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Python {
    /// `python3` exec'd for each job (no zygote script given).
    #[default]
    Exec,
    /// Forked from the zygote (`rootfs/zygote.py`), which the init started
    /// and reported ready before the test's first job.
    Zygote,
}

/// Defines `exec::NAME` and `zygote::NAME` tests that call `NAME(Python)`:
/// the same body on both paths.
#[macro_export]
macro_rules! both_paths {
    ($($name:ident),* $(,)?) => {
        mod exec {
            $(#[test] fn $name() { super::$name($crate::Python::Exec) })*
        }
        mod zygote {
            $(#[test] fn $name() { super::$name($crate::Python::Zygote) })*
        }
    };
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// A plain child of the test, which makes itself a child subreaper.
    #[default]
    Subreaper,
    /// PID 1 of a new PID namespace with its own /proc.
    Pid1,
}

/// How to start an init: `Options { mode: Mode::Pid1, ..Options::default() }`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options<'a> {
    pub mode: Mode,
    pub python: Python,
    /// More of the init's flags, after `--home` (and `--zygote`).
    pub flags: &'a [&'a str],
}

/// A running init and the connection to it.
pub struct Init {
    child: Child,
    pub agent: Agent,
    /// The jobs' home directory (owned by the job user).
    pub home: tempfile::TempDir,
}

impl Init {
    /// Starts an init and waits for its `Ready`, and for its zygote when
    /// the options ask for one.
    pub fn start(options: Options<'_>) -> Init {
        if options.python == Python::Exec {
            return Init::spawn(options.mode, options.flags);
        }
        let mut init = Init::spawn(options.mode, &[&["--zygote", ZYGOTE][..], options.flags].concat());
        for _ in 0..600 {
            if init.agent.ping().expect("ping").zygote {
                return init;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the zygote was not ready within 30 s");
    }

    fn spawn(mode: Mode, flags: &[&str]) -> Init {
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
        command.arg("--home").arg(home.path()).args(flags);
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
