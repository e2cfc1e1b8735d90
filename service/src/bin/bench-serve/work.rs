//! Where this bench keeps its services' sockets, logs and TMPDIR, and how
//! it starts a service there and stops it clean.

use std::fs;
use std::path::PathBuf;

use crate::harness::error::{ServiceError, io};
use crate::harness::service::{Leftover, Service};
use crate::{MAX_VMS, Result};

pub struct Work {
    pub dir: PathBuf,
    pub tmp: PathBuf,
    pub vmexec: PathBuf,
}

impl Work {
    pub fn new() -> Result<Work> {
        let dir = std::env::temp_dir().join(format!("bench-serve-{}", std::process::id()));
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        let vmexec = std::env::current_exe().map_err(io("locating this program"))?.with_file_name("vmexec");
        Ok(Work { dir, tmp, vmexec })
    }

    /// A service of ours named `name` (its socket and log), `--pool pool`.
    pub fn start(&self, name: &str, pool: usize) -> Result<Service> {
        let socket = self.dir.join(format!("{name}.sock"));
        let log = self.dir.join(format!("{name}.log"));
        Ok(Service::start(&self.vmexec, socket, log, &self.tmp, pool, MAX_VMS)?)
    }
}

/// Stops `service` and fails if it left anything behind. The TMPDIR is
/// shared with `vmexec run`, so only VM directories in it count.
pub fn stop(service: Service) -> Result<()> {
    let log = service.log_tail();
    let left: Vec<String> = service
        .stop()
        .into_iter()
        .filter(|l| match l {
            Leftover::Entry(path) => {
                path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmexec-"))
            }
            _ => true,
        })
        .map(|l| match l {
            Leftover::Exit(_) => format!("{l}; its log ends:\n{log}"),
            _ => l.to_string(),
        })
        .collect();
    if left.is_empty() {
        Ok(())
    } else {
        Err(ServiceError::Service(format!("left behind: {}", left.join("; "))).into())
    }
}
