//! The one door between the API and the machines, as Firecracker's
//! `VmmAction` is: the HTTP layer turns each request into one of these
//! calls and never touches a VM itself. A run takes a VM from the pool,
//! runs its job (uploads before, downloads after) on a blocking thread,
//! streams its output if asked, and destroys the VM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vmhost::Stream;
use vmhost::api::{self, Download, RunRequest, RunResult, Timings};
use vmhost::packages::{Layer, PackageOptions};

pub use crate::error::{DoorError, agent_error, file_error};
use crate::metrics::{Metrics, Outcome};
use crate::pool::{Lease, Pool, drop_vm, kill_qemu};
use crate::sessions::{OpenRequest, SessionInfo, Sessions};

/// How long past a job's own timeout the service waits for a silent
/// guest before it counts the VM as lost.
pub const GUEST_MARGIN: Duration = Duration::from_secs(30);

/// A piece of a run's output, for a streaming response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub stream: Stream,
    pub data: Vec<u8>,
}

/// Where a streaming run's output goes as it arrives.
pub type ChunkSink = mpsc::Sender<Chunk>;

/// Kills a run's QEMU if the run is abandoned before it ends (its client
/// went away and the handler was dropped): the blocking thread then sees
/// the connection close and gives the VM up.
pub struct Abandon {
    pid: Arc<AtomicU32>,
    done: AtomicBool,
    pub cancelled: Arc<AtomicBool>,
}

impl Abandon {
    fn new() -> Abandon {
        Abandon {
            pid: Arc::new(AtomicU32::new(0)),
            done: AtomicBool::new(false),
            cancelled: Arc::new(AtomicBool::new(false)),
        }
    }

    fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.done.load(Ordering::Relaxed) {
            self.cancelled.store(true, Ordering::Relaxed);
            kill_qemu(self.pid.load(Ordering::Relaxed));
        }
    }
}

/// A used VM, destroyed with its slot given back when this drops: on a
/// thread of its own once the run has answered, or wherever the run's
/// result is dropped if nobody waits for it any more.
struct Teardown {
    lease: Option<Lease>,
    metrics: Arc<Metrics>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            drop_vm(lease.vm, &self.metrics);
            drop(lease.slot);
        }
    }
}

/// One line on stderr and the metrics for each run, however it ends: a
/// run whose client went away is dropped mid-way and reported here as
/// cancelled.
struct Report<'a> {
    metrics: &'a Metrics,
    run: u32,
    language: &'static str,
    began: Instant,
    outcome: Option<(Outcome, String)>,
}

impl Drop for Report<'_> {
    fn drop(&mut self) {
        let (outcome, detail) =
            self.outcome.take().unwrap_or((Outcome::Cancelled, "the client went away".into()));
        let ms = self.began.elapsed().as_secs_f64() * 1000.0;
        self.metrics.count(outcome);
        self.metrics.total_seconds.observe(ms / 1000.0);
        tracing::info!(
            run = self.run,
            language = self.language,
            outcome = outcome.name(),
            ms = api::round_ms(ms),
            "{detail}"
        );
    }
}

/// The service's machines, behind one door.
pub struct Door {
    pub pool: Arc<Pool>,
    pub sessions: Arc<Sessions>,
    pub metrics: Arc<Metrics>,
    pub vm: vmhost::VmConfig,
    pub packages: PackageOptions,
    next_run: AtomicU32,
}

impl Door {
    pub fn new(
        pool: Arc<Pool>,
        sessions: Arc<Sessions>,
        metrics: Arc<Metrics>,
        vm: vmhost::VmConfig,
        packages: PackageOptions,
    ) -> Door {
        Door { pool, sessions, metrics, vm, packages, next_run: AtomicU32::new(1) }
    }

    /// The layer of `specs` (none for no packages): from the cache, or
    /// resolved, installed and made now, on a blocking thread.
    pub async fn layer(&self, specs: &[String]) -> Result<Option<Layer>, DoorError> {
        if specs.is_empty() {
            return Ok(None);
        }
        let (specs, options) = (specs.to_vec(), self.packages.clone());
        let made = tokio::task::spawn_blocking(move || vmhost::packages::prepare(&specs, &options)).await;
        match made {
            Ok(layer) => Ok(layer?),
            Err(e) => Err(DoorError::Failed(format!("the packages' thread failed: {e}"))),
        }
    }

    /// A session in a VM of its own, with the packages it names.
    pub async fn open_session(&self, request: OpenRequest) -> Result<SessionInfo, DoorError> {
        api::check_packages(&request.packages)?;
        let layer = self.layer(&request.packages).await?;
        self.sessions.open(&self.pool, request, layer.as_ref()).await
    }

    /// One run in a fresh VM. Output goes to `sink` as it arrives when one
    /// is given; the whole of it is in the result either way.
    pub async fn run(&self, request: RunRequest, sink: Option<ChunkSink>) -> Result<RunResult, DoorError> {
        self.run_with(request, None, sink).await
    }

    /// [`Door::run`] with its packages' layer, if the caller made it
    /// already (else it is made here).
    pub async fn run_with(
        &self,
        request: RunRequest,
        layer: Option<Layer>,
        sink: Option<ChunkSink>,
    ) -> Result<RunResult, DoorError> {
        let mut report = Report {
            metrics: &self.metrics,
            run: self.next_run.fetch_add(1, Ordering::Relaxed),
            language: request.language.name(),
            began: Instant::now(),
            outcome: None,
        };
        let result = self.run_inner(request, layer, sink, report.began).await;
        report.outcome = Some(match &result {
            Ok(r) if r.timed_out => (Outcome::TimedOut, format!("exit {}", r.exit_code)),
            Ok(r) => (Outcome::Exited, format!("exit {}", r.exit_code)),
            Err(e) => (e.outcome(), e.to_string()),
        });
        result
    }

    async fn run_inner(
        &self,
        request: RunRequest,
        layer: Option<Layer>,
        sink: Option<ChunkSink>,
        began: Instant,
    ) -> Result<RunResult, DoorError> {
        // Every refusal of the input comes before any VM is touched.
        let (mut job, uploads) = request.check()?;
        // The packages come before the VM, whose disks they are.
        let layer = match layer {
            Some(layer) => Some(layer),
            None => self.layer(&request.packages).await?,
        };
        let packages = layer.as_ref().map(|l| l.set.pins()).unwrap_or_default();
        // Counted from before the hand-out: taking a VM wakes the refill,
        // which must already see this run's job coming.
        let running = self.pool.running();
        let mut lease = self.pool.take(layer.as_ref()).await?;
        // The uploads, the job and its downloads share one guest user: the
        // warm-up's, whose mounts it left empty and whose first job paid
        // for translating a user's paths, else a new one. The files go in
        // as the job's and come out as its (the agent's file operations act
        // on the last new user, which the warm-up's is).
        job.user = Some(match lease.user {
            Some(user) => user,
            None => lease.vm.agent().new_user(),
        });
        let handed = began.elapsed();
        self.metrics.queue_seconds.observe(handed.as_secs_f64());
        self.metrics.handout_seconds.observe(handed.as_secs_f64());
        let abandon = Abandon::new();
        abandon.pid.store(lease.vm.pid(), Ordering::Relaxed);
        let cancelled = Arc::clone(&abandon.cancelled);
        let pid = Arc::clone(&abandon.pid);
        let metrics = Arc::clone(&self.metrics);
        let downloads = request.download.clone();
        let blocking = tokio::task::spawn_blocking(move || {
            let mut lease = lease;
            let vm = &mut lease.vm;
            let start = lease.start;
            let result = (|| -> Result<(RunResult, f64), DoorError> {
                for upload in &uploads {
                    vm.write_file(&upload.path, &upload.data, upload.mode)
                        .map_err(|e| file_error(&upload.path, &e))?;
                }
                let patience = job.timeout.map(|t| t + GUEST_MARGIN);
                vm.agent().set_timeout(patience).map_err(|e| agent_error(&e))?;
                let sent = Instant::now();
                let outcome = vm.agent().run(&job, |stream, data| {
                    if let Some(sink) = &sink
                        && sink.blocking_send(Chunk { stream, data: data.to_vec() }).is_err()
                    {
                        // The reader went away: the run is over for it.
                        cancelled.store(true, Ordering::Relaxed);
                        kill_qemu(pid.load(Ordering::Relaxed));
                    }
                });
                let exec_ms = sent.elapsed().as_secs_f64() * 1000.0;
                let outcome = outcome.map_err(|e| agent_error(&e))?;
                let mut files = Vec::new();
                for path in &downloads {
                    let data = vm.read_file(path).map_err(|e| file_error(path, &e))?;
                    files.push(Download { path: path.clone(), content: api::base64(&data) });
                }
                let times = vm.times();
                let timings = Timings {
                    boot_ms: handed.as_secs_f64() * 1000.0,
                    exec_ms,
                    total_ms: began.elapsed().as_secs_f64() * 1000.0,
                    kernel_ms: times.kernel_ms,
                    init_ms: times.init_ms,
                };
                let mut result = RunResult::new(&outcome, start, vm.accel().name(), timings);
                result.files = files;
                result.packages = packages;
                Ok((result, exec_ms))
            })();
            (result, Teardown { lease: Some(lease), metrics })
        });
        let joined = blocking.await;
        drop(running);
        abandon.finish();
        let (result, teardown) = match joined {
            Ok(joined) => joined,
            Err(e) => return Err(DoorError::Failed(format!("the run's thread failed: {e}"))),
        };
        // The answer goes out before the VM is torn down: killing and
        // reaping its QEMU is not on the run's path.
        tokio::task::spawn_blocking(move || drop(teardown));
        if abandon.cancelled.load(Ordering::Relaxed) {
            return Err(DoorError::Cancelled);
        }
        let (result, exec_ms) = result?;
        self.metrics.exec_seconds.observe(exec_ms / 1000.0);
        Ok(result)
    }
}
