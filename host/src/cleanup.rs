//! What must not outlive an interrupted program: the QEMU processes and the
//! files and directories of VMs and template builds in progress. Each is
//! registered while it exists; a Ctrl-C handler calls [`interrupt`].

use std::path::PathBuf;
use std::sync::Mutex;

enum Resource {
    Process(u32),
    Path(PathBuf),
}

static LIVE: Mutex<Vec<(u64, Resource)>> = Mutex::new(Vec::new());
static NEXT: Mutex<u64> = Mutex::new(0);

/// Unregisters its resource when dropped (the owner cleaned it up itself).
pub struct Registered(u64);

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|(id, _)| *id != self.0);
        }
    }
}

fn register(resource: Resource) -> Registered {
    let id = NEXT.lock().map(|mut next| {
        *next += 1;
        *next
    });
    let id = id.unwrap_or(u64::MAX);
    if let Ok(mut live) = LIVE.lock() {
        live.push((id, resource));
    }
    Registered(id)
}

/// A child process to SIGKILL on interrupt.
pub fn process(pid: u32) -> Registered {
    register(Resource::Process(pid))
}

/// A file or directory to remove on interrupt.
pub fn path(path: PathBuf) -> Registered {
    register(Resource::Path(path))
}

/// Kills every registered process and removes every registered path: for
/// a Ctrl-C handler, which runs on a thread of its own.
pub fn interrupt() {
    let Ok(mut live) = LIVE.lock() else { return };
    // Processes first, so that nothing writes into a path being removed.
    for (_, resource) in live.iter() {
        if let Resource::Process(pid) = resource
            && let Some(pid) = i32::try_from(*pid).ok().and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    for (_, resource) in live.drain(..) {
        if let Resource::Path(path) = resource {
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
}
