//! The warm pool: VMs restored from the template, refreshed and warmed (a
//! Python and a shell job have run, so the new QEMU's translation cache is
//! filled before a request pays for it), kept ready to hand out. Each run
//! takes one and it is destroyed after. Every VM holds a [`Slot`] of the
//! service's capacity for its life; a run that finds no warm VM restores one
//! on demand if a slot is free, else waits, bounded, in the queue.
//!
//! VMs are kept warm per `Kept` set: the default (no packages) and any
//! package set the service was told to keep (`--pool-packages`). A run
//! naming another set gets a VM with that set's layer restored on demand.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use vmhost::api::StartKind;
use vmhost::packages::Layer;
use vmhost::{Job, Start, Vm, VmConfig};

use crate::metrics::Metrics;

/// How long a pooled VM has to answer its ping before hand-out.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a warm-up job may take: a first Python job in a new QEMU
/// takes ~300 ms under TCG; a loaded host gets a wide margin.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Host memory a VM needs beyond its guest RAM (QEMU itself, page tables).
const QEMU_OVERHEAD_MB: u64 = 64;

/// After a failed VM start, how long the pool waits before trying again.
const RETRY_BACKOFF: Duration = Duration::from_secs(2);

/// The Python warm-up: the interpreter's start, `print` and an import
/// most jobs make, so their translated code is hot.
const WARM_UP_PYTHON: &str = "import os, sys, json\nprint('warm')";

/// One unit of capacity (`--max-vms`), held by a VM for its life; giving
/// it back wakes whoever waits for one.
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The permit goes back first: a waiter woken before it would find
        // no slot and wait again for a wake-up that already came.
        drop(self.permit.take());
        self.freed.notify_waiters();
    }
}

/// A run executing its job; the refill holds back until it ends.
pub struct Running(Arc<Pool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_waiters();
    }
}

/// A VM a run or session owns, with its slot.
pub struct Lease {
    pub vm: Vm,
    pub slot: Slot,
    pub start: StartKind,
    /// The guest user the warm-up jobs ran as, for the run's job: its
    /// mounts are still empty (the warm-up writes nothing), its paths
    /// already translated; `None` for a VM that was not warmed.
    pub user: Option<u32>,
}

/// Why no VM could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("every VM is busy and {0} runs are already waiting")]
    QueueFull(usize),
    #[error("no VM became free within {} s", .0.as_secs())]
    QueueTimeout(Duration),
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("not enough host memory for another VM ({available_mb} MiB available, {needed_mb} MiB needed)")]
    Memory { available_mb: u64, needed_mb: u64 },
    #[error("cannot start a VM: {0}")]
    Start(String),
}

/// The pool's figures, for health.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PoolState {
    pub ready: usize,
    pub warming: usize,
    pub in_use: usize,
    pub capacity: usize,
    pub target: usize,
    pub waiting: usize,
    pub queue_limit: usize,
}

/// VMs of one configuration kept warm: the default, or a package set's.
struct Kept {
    config: VmConfig,
    /// The package layer's address; `None` for VMs without packages.
    address: Option<String>,
    target: usize,
    ready: Mutex<VecDeque<Lease>>,
    warming: AtomicUsize,
}

impl Kept {
    fn new(config: VmConfig, address: Option<String>, target: usize) -> Arc<Kept> {
        Arc::new(Kept { config, address, target, ready: Mutex::default(), warming: AtomicUsize::new(0) })
    }

    fn ready(&self) -> usize {
        self.ready.lock().map(|r| r.len()).unwrap_or(0)
    }

    fn warming(&self) -> usize {
        self.warming.load(Ordering::Relaxed)
    }
}

pub struct Pool {
    /// The default configuration: VMs without packages.
    config: VmConfig,
    capacity: usize,
    queue_limit: usize,
    queue_timeout: Duration,
    /// The default set first, then any package set kept warm.
    kept: std::sync::RwLock<Vec<Arc<Kept>>>,
    slots: Arc<Semaphore>,
    /// A slot was freed or a VM became ready.
    changed: Arc<Notify>,
    waiting: AtomicUsize,
    /// Runs executing their job now (see [`Pool::running`]).
    running: AtomicUsize,
    closing: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Pool {
    pub fn new(
        config: VmConfig,
        target: usize,
        capacity: usize,
        queue_limit: usize,
        queue_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Pool> {
        let capacity = capacity.max(1);
        let default = Kept::new(config.clone(), None, target.min(capacity));
        Arc::new(Pool {
            config,
            capacity,
            queue_limit,
            queue_timeout,
            kept: std::sync::RwLock::new(vec![default]),
            slots: Arc::new(Semaphore::new(capacity)),
            changed: Arc::new(Notify::new()),
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            metrics,
        })
    }

    /// Keeps `target` warm VMs with `layer` attached too, within the
    /// capacity left by the sets kept already.
    pub fn keep(&self, layer: &Layer, target: usize) {
        let config = self.config_for(Some(layer));
        if let Ok(mut kept) = self.kept.write() {
            let taken: usize = kept.iter().map(|k| k.target).sum();
            let target = target.min(self.capacity.saturating_sub(taken));
            kept.push(Kept::new(config, Some(layer.address.clone()), target));
        }
        self.changed.notify_waiters();
    }

    /// The configuration of VMs with `layer` attached (none: the default).
    fn config_for(&self, layer: Option<&Layer>) -> VmConfig {
        VmConfig { packages: layer.map(|l| l.image.clone()), ..self.config.clone() }
    }

    fn kept(&self) -> Vec<Arc<Kept>> {
        self.kept.read().map(|k| k.clone()).unwrap_or_default()
    }

    /// The kept set of `layer`'s VMs (the default's for none), if kept.
    fn kept_for(&self, layer: Option<&Layer>) -> Option<Arc<Kept>> {
        let address = layer.map(|l| l.address.as_str());
        self.kept().into_iter().find(|k| k.address.as_deref() == address)
    }

    pub fn state(&self) -> PoolState {
        let kept = self.kept();
        let ready = kept.iter().map(|k| k.ready()).sum::<usize>();
        let warming = kept.iter().map(|k| k.warming()).sum::<usize>();
        let held = self.capacity - self.slots.available_permits();
        PoolState {
            ready,
            warming,
            in_use: held.saturating_sub(ready + warming),
            capacity: self.capacity,
            target: kept.iter().map(|k| k.target).sum(),
            waiting: self.waiting.load(Ordering::Relaxed),
            queue_limit: self.queue_limit,
        }
    }

    fn slot(&self) -> Option<Slot> {
        let permit = Arc::clone(&self.slots).try_acquire_owned().ok()?;
        Some(Slot { permit: Some(permit), freed: Arc::clone(&self.changed) })
    }

    /// Keeps the pool at its target until [`Pool::close`]: started once,
    /// runs for the service's life.
    pub async fn refill(self: Arc<Pool>) {
        loop {
            if self.closing.load(Ordering::Relaxed) {
                return;
            }
            let state = self.state();
            // Runs waiting take free slots first: they are owed a VM now.
            // While warm VMs are left and a job runs, a restore and its
            // warm-up would take the CPU from that job (a warm run went
            // from 32 to 48 ms under TCG on 2 cores beside one): the refill
            // waits for the run, unless the set has none ready.
            let running = self.running.load(Ordering::Relaxed);
            let short = self.kept().into_iter().find(|k| {
                let ready = k.ready();
                ready + k.warming() < k.target && state.waiting == 0 && (running == 0 || ready == 0)
            });
            let slot = short.and_then(|kept| Some((kept, self.slot()?)));
            let Some((kept, slot)) = slot else {
                let changed = self.changed.notified();
                let _ = tokio::time::timeout(Duration::from_millis(500), changed).await;
                continue;
            };
            kept.warming.fetch_add(1, Ordering::Relaxed);
            self.metrics.pool_warming.set(self.state().warming as i64);
            let pool = Arc::clone(&self);
            let config = kept.config.clone();
            let made = tokio::task::spawn_blocking(move || pool.start_vm(&config, true)).await;
            kept.warming.fetch_sub(1, Ordering::Relaxed);
            self.metrics.pool_warming.set(self.state().warming as i64);
            match made {
                Ok(Ok((vm, start, user))) => {
                    if self.closing.load(Ordering::Relaxed) {
                        drop_vm(vm, &self.metrics);
                        return;
                    }
                    self.push(&kept, Lease { vm, slot, start, user });
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "pool: cannot start a VM; retrying");
                    drop(slot);
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
                Err(_) => drop(slot),
            }
        }
    }

    fn push(&self, kept: &Kept, lease: Lease) {
        if let Ok(mut ready) = kept.ready.lock() {
            ready.push_back(lease);
        }
        self.metrics.pool_ready.set(self.state().ready as i64);
        self.changed.notify_waiters();
    }

    fn pop(&self, kept: &Kept) -> Option<Lease> {
        let lease = kept.ready.lock().ok()?.pop_front();
        self.metrics.pool_ready.set(self.state().ready as i64);
        lease
    }

    /// A checked VM for one run or session, with `layer` attached if one
    /// is given: a warm one from the pool, else one restored now if a slot
    /// is free, else the first to free up within the queue's deadline.
    pub async fn take(self: &Arc<Pool>, layer: Option<&Layer>) -> Result<Lease, PoolError> {
        let kept = self.kept_for(layer);
        let config = self.config_for(layer);
        let deadline = Instant::now() + self.queue_timeout;
        let mut queued = false;
        let result = loop {
            if self.closing.load(Ordering::Relaxed) {
                break Err(PoolError::ShuttingDown);
            }
            // Registered before looking, so a change in between is not lost.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(lease) = kept.as_deref().and_then(|k| self.pop(k)) {
                match self.check(lease).await {
                    Some(lease) => break Ok(lease),
                    None => continue,
                }
            }
            if let Some(slot) = self.slot() {
                let pool = Arc::clone(self);
                let config = config.clone();
                let made = tokio::task::spawn_blocking(move || pool.start_vm(&config, false)).await;
                break match made {
                    Ok(Ok((vm, start, user))) => Ok(Lease { vm, slot, start, user }),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(PoolError::Start(e.to_string())),
                };
            }
            if !queued {
                if self.waiting.load(Ordering::Relaxed) >= self.queue_limit {
                    break Err(PoolError::QueueFull(self.queue_limit));
                }
                queued = true;
                self.waiting.fetch_add(1, Ordering::Relaxed);
                self.metrics.queue_depth.inc();
            }
            if tokio::time::timeout_at(deadline.into(), changed).await.is_err() {
                break Err(PoolError::QueueTimeout(self.queue_timeout));
            }
        };
        if queued {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            self.metrics.queue_depth.dec();
        }
        // A refill waits while runs wait; tell it the queue moved.
        self.changed.notify_waiters();
        result
    }

    /// A pooled VM that died or stopped answering is never handed out.
    async fn check(&self, mut lease: Lease) -> Option<Lease> {
        let checked = tokio::task::spawn_blocking(move || {
            let alive = !lease.vm.has_exited()
                && lease.vm.agent().set_timeout(Some(PING_TIMEOUT)).is_ok()
                && lease.vm.agent().ping().is_ok();
            (alive, lease)
        })
        .await;
        match checked {
            Ok((true, lease)) => Some(Lease { start: StartKind::Pooled, ..lease }),
            Ok((false, lease)) => {
                tracing::warn!(pid = lease.vm.pid(), "pool: a warm VM did not answer; replaced");
                self.metrics.discarded.inc();
                let metrics = Arc::clone(&self.metrics);
                tokio::task::spawn_blocking(move || drop_vm(lease.vm, &metrics));
                None
            }
            Err(_) => None,
        }
    }

    /// Restores (or boots) a VM and, for the pool, warms it up.
    fn start_vm(&self, config: &VmConfig, warm: bool) -> Result<(Vm, StartKind, Option<u32>), PoolError> {
        let needed_mb = u64::from(config.memory_mb) + QEMU_OVERHEAD_MB;
        if let Some(available_mb) = available_memory_mb()
            && available_mb < needed_mb
        {
            return Err(PoolError::Memory { available_mb, needed_mb });
        }
        let mut vm = Vm::boot(config).map_err(|e| {
            self.metrics.restore_failures.inc();
            PoolError::Start(vmhost::error::chain(&e))
        })?;
        self.metrics.vms_running.inc();
        let start = match vm.start() {
            Start::Restored => {
                self.metrics.restores.inc();
                StartKind::Restored
            }
            Start::Cold => {
                self.metrics.cold_boots.inc();
                if let Some(why) = vm.fallback() {
                    tracing::warn!(reason = %why, "booted a VM cold");
                }
                StartKind::Cold
            }
        };
        let user = match warm.then(|| warm_up(&mut vm)) {
            None => None,
            Some(Ok(user)) => Some(user),
            Some(Err(e)) => {
                self.metrics.restore_failures.inc();
                drop_vm(vm, &self.metrics);
                return Err(PoolError::Start(format!("the warm-up failed: {e}")));
            }
        };
        Ok((vm, start, user))
    }

    /// Marks a run's job as executing until the guard drops.
    pub fn running(self: &Arc<Pool>) -> Running {
        self.running.fetch_add(1, Ordering::Relaxed);
        Running(Arc::clone(self))
    }

    /// Stops refilling and destroys every pooled VM.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.changed.notify_waiters();
        for kept in self.kept() {
            while let Some(lease) = self.pop(&kept) {
                drop_vm(lease.vm, &self.metrics);
            }
        }
    }
}

/// A warm-up job of each language, each of which must exit 0, as one new
/// guest user, whose key it returns.
fn warm_up(vm: &mut Vm) -> Result<u32, String> {
    let agent = vm.agent();
    agent.set_timeout(Some(WARM_UP_TIMEOUT)).map_err(|e| e.to_string())?;
    let user = agent.new_user();
    for job in [Job::python(WARM_UP_PYTHON), Job::shell("echo warm")] {
        let job = Job { user: Some(user), ..job };
        let outcome = agent.run(&job, |_, _| {}).map_err(|e| vmhost::error::chain(&e))?;
        if outcome.code() != 0 {
            return Err(format!("a warm-up job exited with {}", outcome.code()));
        }
    }
    agent.set_timeout(None).map_err(|e| e.to_string())?;
    Ok(user)
}

/// Ends a VM at once: it is never used again, and nothing of it is kept.
pub fn drop_vm(vm: Vm, metrics: &Metrics) {
    vm.kill();
    metrics.vms_running.dec();
}

/// SIGKILL to a VM's QEMU (0: none yet).
pub fn kill_qemu(pid: u32) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// The host's available memory in MiB, from /proc/meminfo.
fn available_memory_mb() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}
