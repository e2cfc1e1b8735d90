//! `vmexec serve`: the pid1 sandbox service. A warm [`pool`] of VMs behind
//! one [`door`], [`sessions`] that hold theirs, an HTTP API ([`http`]) on a
//! Unix socket or on TCP with a bearer token, and [`metrics`].
//!
//! The service never waits without a deadline, never hands out a VM it
//! has not checked, and leaves no QEMU, socket or file behind: on SIGTERM it
//! stops accepting, lets running runs finish for a grace, then kills what
//! is left; a SIGKILL takes every QEMU with it (see `vmhost::qemu::process`).

pub mod door;
pub mod error;
pub mod http;
pub mod metrics;
pub mod options;
pub mod pool;
pub mod sessions;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use vmhost::template::Template;

pub use self::options::{Listen, Options};
use crate::door::Door;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::sessions::Sessions;

/// Why the service could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listening on TCP needs a bearer token: give --token-file FILE")]
    NoToken,
    #[error("{} is in use by a running service", .0.display())]
    InUse(PathBuf),
    #[error("cannot listen on {listen}")]
    Listen {
        listen: Listen,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest image is missing: {0}")]
    NoImage(String),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// Serves until SIGTERM or SIGINT, then shuts down within the grace.
pub async fn serve(options: Options) -> Result<(), ServeError> {
    if matches!(options.listen, Listen::Tcp(_)) && options.token.is_none() {
        return Err(ServeError::NoToken);
    }
    for (what, path) in [("kernel", &options.vm.kernel), ("root filesystem", &options.vm.rootfs)] {
        if !path.is_file() {
            return Err(ServeError::NoImage(format!(
                "no guest {what} at {}; build it with `just image` or set PID1_IMAGE_DIR",
                path.display()
            )));
        }
    }
    let started = Instant::now();
    let metrics = Arc::new(Metrics::default());
    let pool = Pool::new(
        options.vm.clone(),
        options.pool,
        options.max_vms,
        options.queue,
        options.queue_timeout,
        Arc::clone(&metrics),
    );
    let sessions = Sessions::new(options.session_idle, Arc::clone(&metrics));
    let door = Arc::new(Door::new(
        Arc::clone(&pool),
        Arc::new(sessions),
        Arc::clone(&metrics),
        options.vm.clone(),
        options.packages.clone(),
    ));
    let app = http::App {
        door: Arc::clone(&door),
        token: options.token.as_deref().map(Arc::from),
        health: Arc::new(health(Arc::clone(&door))),
    };
    let router = http::router(app);
    let refill = tokio::spawn(Arc::clone(&pool).refill());
    let kept = (!options.pool_packages.is_empty())
        .then(|| tokio::spawn(keep_packages(Arc::clone(&door), options.pool_packages.clone())));
    let reaper = tokio::spawn(Arc::clone(&door.sessions).reap_idle());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }
    };
    let served = match &options.listen {
        Listen::Unix(path) => {
            let listener = bind_unix(path).map_err(|source| match source.kind() {
                std::io::ErrorKind::AddrInUse => ServeError::InUse(path.clone()),
                _ => ServeError::Listen { listen: options.listen.clone(), source },
            })?;
            tracing::info!(listen = %options.listen, ms = ms(started), pool = options.pool, max_vms = options.max_vms, "serving");
            tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(shutdown).await })
        }
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen { listen: options.listen.clone(), source })?;
            tracing::info!(listen = %options.listen, ms = ms(started), pool = options.pool, max_vms = options.max_vms, "serving");
            tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(shutdown).await })
        }
    };
    wait_for_signal().await;
    tracing::info!(
        grace_s = options.grace.as_secs_f64(),
        "stopping: no new requests; running ones have the grace"
    );
    let _ = stop_tx.send(true);
    pool.close();
    let finished = tokio::time::timeout(options.grace, served).await;
    if finished.is_err() {
        tracing::warn!("the grace passed with requests still running; killing their VMs");
    }
    refill.abort();
    reaper.abort();
    if let Some(kept) = kept {
        kept.abort();
    }
    door.sessions.close_all();
    // Whatever still runs (a run past the grace, a VM being warmed) is
    // registered with vmhost's cleanup: every QEMU killed, every VM
    // directory removed.
    vmhost::cleanup::interrupt();
    if let Listen::Unix(path) = &options.listen {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopped");
    match finished {
        Ok(Ok(Err(e))) => Err(ServeError::Serve(e)),
        _ => Ok(()),
    }
}

/// `--pool-packages`: the set's layer, made in the background (its first
/// use resolves and installs, which may take minutes), then kept warm by
/// the pool beside the default VMs.
async fn keep_packages(door: Arc<Door>, specs: Vec<String>) {
    let started = Instant::now();
    match door.layer(&specs).await {
        Ok(Some(layer)) => {
            tracing::info!(packages = %layer.set, ms = ms(started), "pool: keeping this package set warm");
            door.pool.keep(&layer, KEPT_PACKAGE_VMS);
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(error = %e, "pool: the --pool-packages set cannot be had; runs naming it will fail the same way")
        }
    }
}

/// Warm VMs kept of the `--pool-packages` set.
const KEPT_PACKAGE_VMS: usize = 1;

fn ms(since: Instant) -> f64 {
    vmhost::api::round_ms(since.elapsed().as_secs_f64() * 1000.0)
}

/// Binds a Unix socket that only its owner may use. A socket file left by
/// a service that died is replaced; one that answers is in use.
fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::ErrorKind::AddrInUse.into());
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers the service cannot stop cleanly: it
        // serves until killed, and SIGKILL still takes its QEMUs along.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// `GET /v1/health`: the pool, the queue, the sessions and the template.
fn health(door: Arc<Door>) -> impl Fn() -> serde_json::Value + Send + Sync {
    move || {
        let config = &door.vm;
        let accel = vmhost::accel::resolved(config.accel, &config.cache_dir).unwrap_or(vmhost::Accel::Tcg);
        let (template, detail) = match Template::locate(config, accel) {
            Ok(t) => match t.check(config) {
                Ok(()) => ("ready", t.dir().display().to_string()),
                Err(why) => ("missing", format!("{why}; VMs boot cold until it is made")),
            },
            Err(e) => ("unavailable", vmhost::error::chain(&e)),
        };
        let pool = door.pool.state();
        serde_json::json!({
            "status": if template == "ready" { "ok" } else { "degraded" },
            "version": env!("CARGO_PKG_VERSION"),
            "pool": pool,
            "sessions": door.sessions.count(),
            "template": { "state": template, "detail": detail },
            "accel": accel.name(),
            "jail": jail_health(&config.jail),
        })
    }
}

/// Each of the jail's measures: whether it confines QEMU here, and why not.
fn jail_health(jail: &vmhost::jail::JailConfig) -> serde_json::Value {
    use vmhost::jail::Setting;
    let measure = |on: bool, detail: String| serde_json::json!({ "on": on, "detail": detail });
    let measures: serde_json::Map<String, serde_json::Value> = match vmhost::jail::status(jail) {
        Ok(status) => status
            .measures()
            .iter()
            .map(|(name, setting)| {
                let value = match setting {
                    Setting::On => measure(true, "on".to_owned()),
                    Setting::Off(why) => measure(false, why.to_string()),
                };
                ((*name).to_owned(), value)
            })
            .collect(),
        // A required measure is impossible: no VM starts, none is on.
        Err(e) => {
            let why = vmhost::error::chain(&e);
            vmhost::jail::MEASURES
                .iter()
                .map(|name| ((*name).to_owned(), measure(false, why.clone())))
                .collect()
        }
    };
    measures.into()
}
