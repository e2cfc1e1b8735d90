//! One `vmexec serve` under test, with a private TMPDIR and its own log:
//! started as vmhost starts QEMU, waited on until its pool is full, read
//! through /metrics, and stopped with SIGTERM, after which whatever it
//! left behind is named.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;

use super::client::{QUICK_WAIT, exchange_fresh};
use super::error::{Result, ServiceError, io};
use super::procfs::processes_naming;

/// How long the pool may take to fill: four restores and warm-ups take
/// ~1 s each here; a loaded shared machine gets a wide margin.
const FILL_WAIT: Duration = Duration::from_secs(120);

/// How long SIGTERM may take: the service's grace (10 s) and some.
pub const STOP_WAIT: Duration = Duration::from_secs(20);

/// Lines of the service's log shown when it exits early.
const LOG_TAIL: usize = 20;

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What "the pool is full" means to a caller of [`Service::wait_full`].
#[derive(Clone, Copy)]
pub enum Fill {
    /// As many warm VMs ready as the pool aims at.
    Ready,
    /// Ready, none being warmed, and the template ready: a run taken now
    /// is a warm-pool hit and no refill competes with it for the CPU.
    Settled,
}

impl Fill {
    /// How often health is asked while the pool fills.
    fn poll(self) -> Duration {
        match self {
            Fill::Ready => Duration::from_millis(50),
            Fill::Settled => Duration::from_millis(20),
        }
    }
}

/// Something a stopped service left behind, or how it failed to stop.
pub enum Leftover {
    /// It exited, but not with 0.
    Exit(ExitStatus),
    /// It was still running [`STOP_WAIT`] after SIGTERM.
    NoStop,
    /// An entry in its TMPDIR.
    Entry(PathBuf),
    /// A process that names its TMPDIR (a QEMU of its VMs).
    Process(i32),
    /// Its socket, still there.
    Socket(PathBuf),
}

impl fmt::Display for Leftover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Leftover::Exit(status) => write!(f, "the service exited with {status}"),
            Leftover::NoStop => {
                write!(f, "the service did not stop within {} s of SIGTERM", STOP_WAIT.as_secs())
            }
            Leftover::Entry(path) => write!(f, "{} in its TMPDIR", path.display()),
            Leftover::Process(pid) => write!(f, "process {pid}, which names its TMPDIR"),
            Leftover::Socket(path) => write!(f, "its socket {}", path.display()),
        }
    }
}

pub struct Service {
    child: Child,
    pub pid: i32,
    pub socket: PathBuf,
    log: PathBuf,
    tmp: PathBuf,
}

impl Service {
    /// `vmexec serve` listening on `socket`, logging to `log`, its VMs'
    /// directories under `tmp`.
    pub fn start(
        vmexec: &Path,
        socket: PathBuf,
        log: PathBuf,
        tmp: &Path,
        pool: usize,
        max_vms: usize,
    ) -> Result<Service> {
        let log_file = fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let mut command = Command::new(vmexec);
        command
            .arg("serve")
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(["--pool", &pool.to_string(), "--max-vms", &max_vms.to_string()])
            .env("TMPDIR", tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        // Spawned as vmhost spawns QEMU: if this program dies, so does the
        // service, and its QEMUs with it.
        let child =
            vmhost::qemu::process::spawn(command).map_err(io(format!("starting {}", vmexec.display())))?;
        let pid = i32::try_from(child.id()).expect("a pid fits an i32");
        Ok(Service { child, pid, socket, log, tmp: tmp.to_owned() })
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log_text(), LOG_TAIL)
    }

    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            _ => Err(ServiceError::Service(format!("exited early; its log ends:\n{}", self.log_tail()))),
        }
    }

    async fn health(&self) -> Result<serde_json::Value> {
        let (status, body) =
            exchange_fresh(&self.socket, Method::GET, "/v1/health", Bytes::new(), QUICK_WAIT).await?;
        let health: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if status != 200 {
            return Err(ServiceError::Output { what: "GET /v1/health".into(), got: health.to_string() });
        }
        Ok(health)
    }

    /// Waits until the pool is full as `fill` means it.
    pub async fn wait_full(&mut self, fill: Fill) -> Result<()> {
        let deadline = Instant::now() + FILL_WAIT;
        loop {
            self.check_alive()?;
            // Until it listens, the socket refuses: that is not a failure.
            if let Ok(health) = self.health().await {
                let pool = &health["pool"];
                let full = match fill {
                    Fill::Ready => pool["ready"] == pool["target"],
                    Fill::Settled => {
                        if health["template"]["state"] != "ready" {
                            return Err(ServiceError::Service(format!(
                                "has no template: {}",
                                health["template"]
                            )));
                        }
                        pool["ready"] == pool["target"] && pool["warming"] == 0
                    }
                };
                if full {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(ServiceError::Timeout { what: "the pool filling", after: FILL_WAIT });
            }
            tokio::time::sleep(fill.poll()).await;
        }
    }

    /// The service's figures from /metrics, by name (labels included).
    pub async fn metrics(&self) -> Result<BTreeMap<String, f64>> {
        let (_, body) =
            exchange_fresh(&self.socket, Method::GET, "/metrics", Bytes::new(), QUICK_WAIT).await?;
        let text = String::from_utf8_lossy(&body);
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect())
    }

    /// SIGTERM, then the checks: it exited 0 within the grace and left no
    /// QEMU, no socket and nothing in its TMPDIR. Every leftover.
    pub fn stop(mut self) -> Vec<Leftover> {
        let pid = rustix::process::Pid::from_raw(self.pid).expect("a child's pid is positive");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + STOP_WAIT;
        let mut left = Vec::new();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => break,
                Ok(Some(status)) => {
                    left.push(Leftover::Exit(status));
                    break;
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    left.push(Leftover::NoStop);
                    break;
                }
            }
        }
        if let Ok(dir) = fs::read_dir(&self.tmp) {
            left.extend(dir.flatten().map(|entry| Leftover::Entry(entry.path())));
        }
        left.extend(processes_naming(&self.tmp.display().to_string()).into_iter().map(Leftover::Process));
        if self.socket.exists() {
            left.push(Leftover::Socket(self.socket.clone()));
        }
        left
    }
}

impl Drop for Service {
    /// On an error path the service is asked to stop as on SIGTERM, so it
    /// cleans up; killed only if it does not. A SIGKILL leaves behind the
    /// directories of VMs still starting (their QEMUs die with it).
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + STOP_WAIT;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
