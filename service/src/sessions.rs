//! Sessions: a VM held for one caller across calls, with a Python or shell
//! session in it whose state persists from step to step, and files in and
//! out. Each session's calls are serialised; a session idle past its
//! timeout is closed and its VM destroyed.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmhost::api::{self, FieldError, Language, RunResult, StartKind, Timings};
use vmhost::packages::Layer;
use vmhost::{FileEntry, Session, SessionError};

use crate::error::{DoorError, agent_error, file_error};
use crate::metrics::{Metrics, Outcome};
use crate::pool::{Lease, Pool, drop_vm, kill_qemu};

/// Longest idle timeout a session may ask for: an hour, as exec-sandbox
/// allows; past it a forgotten session would hold a VM for nothing.
pub const MAX_IDLE: Duration = Duration::from_secs(3600);

/// How often idle sessions are looked for.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// `POST /v1/sessions`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    #[serde(default)]
    pub language: Language,
    #[serde(default)]
    pub memory_limit_mb: Option<u32>,
    /// Seconds; the service's default (300) when not given.
    #[serde(default)]
    pub idle_timeout: Option<f64>,
    /// Pip requirements every step can import, as a run's `packages`.
    #[serde(default)]
    pub packages: Vec<String>,
}

/// `POST /v1/sessions/{id}/exec`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub code: String,
    /// Seconds; 0: no limit; default 30.
    #[serde(default)]
    pub timeout: Option<f64>,
}

/// What `GET /v1/sessions/{id}` and `POST /v1/sessions` say of one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    pub language: Language,
    pub idle_timeout: f64,
    pub steps: u32,
    /// The packages' resolved set, `name==version` by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
}

struct Held {
    lease: Lease,
    session: Session,
    /// The packages' resolved set, which every step's result reports.
    packages: Vec<String>,
}

struct Entry {
    id: String,
    language: Language,
    idle: Duration,
    /// The VM and its session; `None` once closed. The async lock
    /// serialises the session's calls.
    held: tokio::sync::Mutex<Option<Held>>,
    last_used: Mutex<Instant>,
    /// The session's QEMU, to end it without waiting for a running step.
    pid: u32,
}

impl Entry {
    fn touch(&self) {
        if let Ok(mut at) = self.last_used.lock() {
            *at = Instant::now();
        }
    }

    fn idle_for(&self) -> Duration {
        self.last_used.lock().map(|at| at.elapsed()).unwrap_or_default()
    }
}

/// The open sessions.
pub struct Sessions {
    table: Mutex<HashMap<String, Arc<Entry>>>,
    default_idle: Duration,
    metrics: Arc<Metrics>,
}

fn session_id() -> Result<String, DoorError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| DoorError::Failed(format!("cannot draw a session id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Sessions {
    pub fn new(default_idle: Duration, metrics: Arc<Metrics>) -> Sessions {
        Sessions { table: Mutex::new(HashMap::new()), default_idle, metrics }
    }

    fn get(&self, id: &str) -> Result<Arc<Entry>, DoorError> {
        let table =
            self.table.lock().map_err(|_| DoorError::Failed("the session table is poisoned".into()))?;
        table.get(id).cloned().ok_or_else(|| DoorError::NoSession(id.to_owned()))
    }

    pub fn count(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// Opens a session in a VM from `pool`.
    pub async fn open(
        &self,
        pool: &Arc<Pool>,
        request: OpenRequest,
        layer: Option<&Layer>,
    ) -> Result<SessionInfo, DoorError> {
        let idle = match request.idle_timeout {
            None => self.default_idle,
            Some(secs) if secs.is_finite() && secs >= 1.0 && secs <= MAX_IDLE.as_secs_f64() => {
                Duration::from_secs_f64(secs)
            }
            Some(secs) => {
                return Err(FieldError {
                    field: "idle_timeout".into(),
                    reason: format!("{secs} is out of range: give 1 up to {} seconds", MAX_IDLE.as_secs()),
                }
                .into());
            }
        };
        if request.memory_limit_mb == Some(0) {
            return Err(
                FieldError { field: "memory_limit_mb".into(), reason: "must be at least 1".into() }.into()
            );
        }
        let id = session_id()?;
        let packages = layer.map(|l| l.set.pins()).unwrap_or_default();
        let lease = pool.take(layer).await?;
        let language = request.language;
        let memory = request.memory_limit_mb;
        let metrics = Arc::clone(&self.metrics);
        let held = tokio::task::spawn_blocking(move || {
            let mut lease = lease;
            match Session::start(&lease.vm.shared(), language.lang(), memory) {
                Ok(session) => Ok(Held { lease, session, packages }),
                Err(e) => {
                    drop_vm(lease.vm, &metrics);
                    Err(session_error(e))
                }
            }
        })
        .await
        .map_err(|e| DoorError::Failed(e.to_string()))??;
        let packages = held.packages.clone();
        let entry = Arc::new(Entry {
            id: id.clone(),
            language,
            idle,
            pid: held.lease.vm.pid(),
            held: tokio::sync::Mutex::new(Some(held)),
            last_used: Mutex::new(Instant::now()),
        });
        if let Ok(mut table) = self.table.lock() {
            table.insert(id.clone(), entry);
            self.metrics.sessions.set(table.len() as i64);
        }
        tracing::info!(session = %id, language = language.name(), "session opened");
        Ok(SessionInfo { id, language, idle_timeout: idle.as_secs_f64(), steps: 0, packages })
    }

    pub async fn info(&self, id: &str) -> Result<SessionInfo, DoorError> {
        let entry = self.get(id)?;
        let held = entry.held.lock().await;
        let Some((steps, packages)) = held.as_ref().map(|h| (h.session.steps(), h.packages.clone())) else {
            return Err(DoorError::NoSession(id.to_owned()));
        };
        Ok(SessionInfo {
            id: entry.id.clone(),
            language: entry.language,
            idle_timeout: entry.idle.as_secs_f64(),
            steps,
            packages,
        })
    }

    /// Runs `f` on the session's VM and session, on a blocking thread, with
    /// its calls serialised; a session whose driver ended is closed.
    async fn with<T: Send + 'static>(
        self: &Arc<Self>,
        id: &str,
        f: impl FnOnce(&mut Held) -> Result<T, DoorError> + Send + 'static,
    ) -> Result<T, DoorError> {
        let entry = self.get(id)?;
        let sessions = Arc::clone(self);
        let id = id.to_owned();
        // On a task of its own: a client that goes away mid-step drops
        // only its wait, and the session gets its VM back when the step
        // ends instead of losing it with the handler.
        let call = tokio::spawn(async move {
            let mut slot = entry.held.lock().await;
            let Some(mut held) = slot.take() else { return Err(DoorError::NoSession(id)) };
            entry.touch();
            let joined = tokio::task::spawn_blocking(move || {
                let result = f(&mut held);
                (held, result)
            })
            .await;
            let Ok((mut held, result)) = joined else {
                drop(slot);
                sessions.remove(&id, None);
                return Err(DoorError::Failed("the session's thread failed".into()));
            };
            entry.touch();
            if held.session.is_ended() || held.lease.vm.has_exited() {
                drop(slot);
                sessions.remove(&id, Some(held));
            } else {
                *slot = Some(held);
            }
            result
        });
        call.await.map_err(|e| DoorError::Failed(e.to_string()))?
    }

    /// One step of the session.
    pub async fn exec(self: &Arc<Self>, id: &str, request: ExecRequest) -> Result<RunResult, DoorError> {
        api::check_code(&request.code)?;
        let timeout = api::check_timeout("timeout", request.timeout)?;
        let began = Instant::now();
        let result = self
            .with(id, move |held| {
                let step = match timeout {
                    Some(t) => held.session.exec_with_timeout(&request.code, t),
                    None => held.session.exec(&request.code),
                };
                let step = step.map_err(session_error)?;
                let exec_ms = began.elapsed().as_secs_f64() * 1000.0;
                let outcome = vmhost::Outcome {
                    pid: 0,
                    exit: proto::Exit::Code(u8::try_from(step.exit & 0xff).unwrap_or(1)),
                    timed_out: step.timed_out,
                    stdout: step.stdout,
                    stderr: step.stderr,
                    stdout_truncated: false,
                    stderr_truncated: false,
                    duration: began.elapsed(),
                    peak_memory: 0,
                    cpu_time: Duration::ZERO,
                };
                let timings = Timings { exec_ms, total_ms: exec_ms, ..Timings::default() };
                let result =
                    RunResult::new(&outcome, StartKind::Pooled, held.lease.vm.accel().name(), timings);
                Ok(RunResult { packages: held.packages.clone(), ..result })
            })
            .await;
        let outcome = match &result {
            Ok(r) if r.timed_out => Outcome::TimedOut,
            Ok(_) => Outcome::Exited,
            Err(e) => e.outcome(),
        };
        self.metrics.count(outcome);
        tracing::info!(
            session = id,
            outcome = outcome.name(),
            ms = api::round_ms(began.elapsed().as_secs_f64() * 1000.0),
            "session step"
        );
        result
    }

    pub async fn write_file(
        self: &Arc<Self>,
        id: &str,
        path: String,
        data: Vec<u8>,
        mode: u32,
    ) -> Result<(), DoorError> {
        api::check_guest_path("path", &path)?;
        if mode > 0o7777 {
            return Err(FieldError {
                field: "mode".into(),
                reason: "not a permission mode (at most 0o7777)".into(),
            }
            .into());
        }
        self.with(id, move |held| {
            held.lease.vm.write_file(&path, &data, mode).map_err(|e| file_error(&path, &e))
        })
        .await
    }

    pub async fn read_file(self: &Arc<Self>, id: &str, path: String) -> Result<Vec<u8>, DoorError> {
        api::check_guest_path("path", &path)?;
        self.with(id, move |held| held.lease.vm.read_file(&path).map_err(|e| file_error(&path, &e))).await
    }

    pub async fn delete_file(self: &Arc<Self>, id: &str, path: String) -> Result<(), DoorError> {
        api::check_guest_path("path", &path)?;
        self.with(id, move |held| held.lease.vm.delete_file(&path).map_err(|e| file_error(&path, &e))).await
    }

    /// The entries of a directory; the home when `path` is empty.
    pub async fn list_files(self: &Arc<Self>, id: &str, path: String) -> Result<Vec<FileEntry>, DoorError> {
        if !path.is_empty() {
            api::check_guest_path("path", &path)?;
        }
        self.with(id, move |held| held.lease.vm.list_files(&path).map_err(|e| file_error(&path, &e))).await
    }

    /// Closes a session and destroys its VM.
    pub async fn close(&self, id: &str) -> Result<(), DoorError> {
        let entry = self.get(id)?;
        // A step still running ends now: its VM goes first, and the step's
        // call gives the session back at once (never waited out).
        kill_qemu(entry.pid);
        let held = entry.held.lock().await.take();
        self.remove(id, held);
        Ok(())
    }

    fn remove(&self, id: &str, held: Option<Held>) {
        if let Ok(mut table) = self.table.lock() {
            table.remove(id);
            self.metrics.sessions.set(table.len() as i64);
        }
        if let Some(held) = held {
            let metrics = Arc::clone(&self.metrics);
            // The session's own end waits on its driver: not on this thread.
            tokio::task::spawn_blocking(move || {
                let Held { lease, session, .. } = held;
                // The VM goes first: the session's end then sees it gone
                // instead of waiting for its driver.
                drop_vm(lease.vm, &metrics);
                drop(session);
            });
        }
        tracing::info!(session = id, "session closed");
    }

    /// Closes the sessions idle past their timeout, until the service ends.
    pub async fn reap_idle(self: Arc<Self>) {
        loop {
            tokio::time::sleep(REAP_EVERY).await;
            let expired: Vec<Arc<Entry>> = match self.table.lock() {
                Ok(table) => table.values().filter(|e| e.idle_for() > e.idle).cloned().collect(),
                Err(_) => continue,
            };
            for entry in expired {
                // A session in a call is not idle: its lock is held.
                if let Ok(mut held) = entry.held.try_lock() {
                    let held = held.take();
                    tracing::info!(session = %entry.id, "session idle past its timeout");
                    self.remove(&entry.id, held);
                }
            }
        }
    }

    /// Closes every session (the service is stopping).
    pub fn close_all(&self) {
        let all: Vec<Arc<Entry>> = match self.table.lock() {
            Ok(mut table) => table.drain().map(|(_, e)| e).collect(),
            Err(_) => return,
        };
        for entry in all {
            if let Ok(mut held) = entry.held.try_lock()
                && let Some(held) = held.take()
            {
                drop_vm(held.lease.vm, &self.metrics);
            }
        }
        self.metrics.sessions.set(0);
    }
}

fn session_error(e: SessionError) -> DoorError {
    match e {
        SessionError::Agent(agent) => agent_error(&agent),
        SessionError::Nul => FieldError { field: "code".into(), reason: "contains a NUL byte".into() }.into(),
        SessionError::Ended(why) => DoorError::SessionEnded(why.unwrap_or_else(|| "closed".into())),
        SessionError::Random(e) => DoorError::Failed(e.to_string()),
    }
}
