//! QEMU's process, supervised for its whole life: it dies when the process
//! that owns it dies, however that one ends (SIGKILL included), and
//! whichever of its threads asked for the VM.
//!
//! The kernel's parent-death signal (`PR_SET_PDEATHSIG`) fires when the
//! *thread* that forked the child exits, not its process. A pool that
//! starts VMs from worker threads would lose them when a worker retires.
//! So every QEMU is forked by one spawner thread that lives as long as the
//! process: its death signal then means exactly "the owner process is
//! gone".

use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};

type Reply = Sender<io::Result<Child>>;

/// The spawner thread's inbox, started on first use.
static SPAWNER: OnceLock<Mutex<Sender<(Command, Reply)>>> = OnceLock::new();

/// Starts `command` from the spawner thread, with SIGKILL as its death
/// signal: it cannot outlive this process.
pub fn spawn(command: Command) -> io::Result<Child> {
    let inbox = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Command, Reply)>();
        let started = std::thread::Builder::new().name("qemu-spawner".into()).spawn(move || {
            // Ends only with the process: the channel's sender is static.
            for (mut command, reply) in rx {
                die_with_owner(&mut command);
                let _ = reply.send(command.spawn());
            }
        });
        if let Err(e) = started {
            // Without the thread every spawn below fails with this.
            eprintln!("vmhost: cannot start the QEMU spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    let sent =
        inbox.lock().map_err(|_| io::Error::other("the QEMU spawner is poisoned"))?.send((command, reply));
    sent.map_err(|_| io::Error::other("the QEMU spawner thread is gone"))?;
    answer.recv().map_err(|_| io::Error::other("the QEMU spawner thread is gone"))?
}

/// The child gets SIGKILL when the thread that forks it exits; if the
/// owner already died before the signal was armed, it does not start.
fn die_with_owner(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let owner = rustix::process::getpid();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and makes only
    // async-signal-safe syscalls (prctl, getppid); it allocates nothing
    // (an `io::Error` from a raw errno does not allocate).
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            if rustix::process::getppid() != Some(owner) {
                return Err(io::Error::from_raw_os_error(libc_esrch()));
            }
            Ok(())
        });
    }
}

/// The child moves itself into the cgroup whose `cgroup.procs` is open as
/// `procs` before it execs, so no instant of it runs outside.
pub fn join_cgroup(command: &mut Command, procs: std::fs::File) {
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and makes one
    // async-signal-safe syscall (write) on a descriptor it owns; it
    // allocates nothing.
    unsafe {
        command.pre_exec(move || {
            // "0" is the writer itself.
            rustix::io::write(&procs, b"0")?;
            Ok(())
        });
    }
}

/// ESRCH: the owner is gone.
fn libc_esrch() -> i32 {
    rustix::io::Errno::SRCH.raw_os_error()
}

/// Waits up to `grace` for `child` to exit by itself; whether it did.
pub fn wait_exit(child: &mut Child, grace: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + grace;
    loop {
        if !matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_child_started_for_a_thread_that_exited_lives_on() {
        // The worker asks for the child and exits: the child must survive
        // it (it would get SIGKILL if the worker itself had forked it).
        let mut child = std::thread::spawn(|| {
            let mut command = Command::new("sleep");
            command.arg("30");
            spawn(command).unwrap()
        })
        .join()
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(matches!(child.try_wait(), Ok(None)), "the child died with the thread that asked for it");
        child.kill().unwrap();
        assert!(wait_exit(&mut child, Duration::from_secs(5)));
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let e = spawn(Command::new("/nonexistent/qemu")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
