//! `just soak`: many runs through one `vmexec serve`, a fresh VM each, from
//! concurrent clients: Python and shell jobs, each printing a nonce of its
//! own and a value computed from its own input (code, stdin, environment,
//! an uploaded file, a downloaded one), every answer checked. At the end
//! the service gets SIGTERM and must leave no QEMU, socket or VM directory
//! behind. Exits non-zero on any failure.
//!
//! A run that takes far longer than a run does is watched as it hangs: the
//! service's old QEMUs are read from /proc (state, CPU time, the guest's
//! console) twice, so a silent guest can be told from a busy one.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use harness::error::{ServiceError, io};
use harness::figures::percentile;
use harness::service::{Fill, Service, tail};

mod clients;
#[path = "../harness/mod.rs"]
#[allow(dead_code, reason = "the harness serves two binaries; each uses part of it")]
mod harness;
mod jobs;
mod watch;

use clients::{Done, Shared};
use jobs::{KINDS, Nonces};

/// Lines of a guest console or of the service log shown with a failure.
const TAIL_LINES: usize = 40;

#[derive(Debug, thiserror::Error)]
enum SoakError {
    #[error("{0}\nusage: soak [--runs N] [--clients N] [--pool N] [--max-vms N]")]
    Usage(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("wrong answer: {0}")]
    Wrong(String),
}

type Result<T> = std::result::Result<T, SoakError>;

struct Args {
    runs: usize,
    clients: usize,
    pool: usize,
    max_vms: usize,
}

fn parse_args() -> Result<Args> {
    // The pool and the VMs at once default to the service's own defaults:
    // the soak tries the service as it ships.
    let mut args = Args {
        runs: 2000,
        clients: 8,
        pool: vmserve::options::DEFAULT_POOL,
        max_vms: vmserve::options::DEFAULT_MAX_VMS,
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words.next().ok_or_else(|| SoakError::Usage(format!("{flag} needs a value")))?;
        let number = value
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0 || flag == "--pool")
            .ok_or_else(|| SoakError::Usage(format!("{flag}: `{value}` is not a count")))?;
        match flag.as_str() {
            "--runs" => args.runs = number,
            "--clients" => args.clients = number,
            "--pool" => args.pool = number,
            "--max-vms" => args.max_vms = number,
            _ => return Err(SoakError::Usage(format!("unknown flag {flag}"))),
        }
    }
    Ok(args)
}

/// The figures of /metrics the soak reports: runs by outcome, and how the
/// service came by its VMs.
fn outcome_figure(name: &str) -> bool {
    name.starts_with("pid1_runs_total")
        || ["restores", "restore_failures", "cold_boots", "discarded"].iter().any(|n| name.contains(n))
}

async fn soak(args: &Args, dir: &Path) -> Result<bool> {
    let mut nonces = Nonces::new()?;
    let jobs = (0..args.runs)
        .map(|i| {
            let nonce = format!("{:016x}", nonces.next());
            jobs::job(KINDS[i % KINDS.len()], &nonce, 1000 + nonces.next() % 20_000)
        })
        .collect();
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    let vmexec = std::env::current_exe().map_err(io("locating this program"))?.with_file_name("vmexec");
    let (socket, log) = (dir.join("soak.sock"), dir.join("service.log"));
    let mut service = Service::start(&vmexec, socket, log, &tmp, args.pool, args.max_vms)?;
    service.wait_full(Fill::Ready).await?;
    eprintln!(
        "soak: {} runs, {} clients, service --pool {} --max-vms {}",
        args.runs, args.clients, args.pool, args.max_vms
    );
    let shared = Arc::new(Shared {
        socket: service.socket.clone(),
        jobs,
        next: AtomicUsize::new(0),
        began: Instant::now(),
        in_flight: Mutex::new(BTreeMap::new()),
    });
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let watcher = tokio::spawn(watch::watch(Arc::clone(&shared), service.pid, Arc::clone(&seen)));
    let tasks: Vec<_> =
        (0..args.clients).map(|_| tokio::spawn(clients::client(Arc::clone(&shared)))).collect();
    let mut done = Vec::new();
    for task in tasks {
        done.extend(task.await.unwrap_or_default());
    }
    let seconds = shared.began.elapsed().as_secs_f64();
    watcher.abort();
    let outcomes = service.metrics().await.map(|metrics| {
        metrics
            .into_iter()
            .filter(|(name, _)| name.starts_with("pid1_") && outcome_figure(name))
            .collect::<Vec<_>>()
    });
    let log = service.log_text();
    let left = service.stop();

    done.sort_by_key(|d| d.run);
    let failed: Vec<&Done> = done.iter().filter(|d| d.error.is_some()).collect();
    let ms: Vec<f64> = done.iter().map(|d| d.ms).collect();
    println!(
        "soak: {} runs, {} clients, `--pool {} --max-vms {}`, a fresh VM each",
        done.len(),
        args.clients,
        args.pool,
        args.max_vms
    );
    println!("| kind | runs | failed |");
    println!("|---|---|---|");
    for kind in KINDS {
        let runs = done.iter().filter(|d| d.kind == kind).count();
        println!("| {kind:?} | {runs} | {} |", failed.iter().filter(|d| d.kind == kind).count());
    }
    println!(
        "{} ok, {} failed, {:.0} s, {:.2} runs/s, latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        done.len() - failed.len(),
        failed.len(),
        seconds,
        done.len() as f64 / seconds,
        percentile(&ms, 50),
        percentile(&ms, 99),
        percentile(&ms, 100)
    );
    match outcomes {
        Ok(outcomes) => {
            for (name, value) in outcomes {
                println!("metrics: {name} {value}");
            }
        }
        Err(e) => println!("metrics: unreadable: {e}"),
    }
    let seen = seen.lock().expect("not poisoned");
    for d in &failed {
        let error = d.error.as_ref().expect("a failure");
        println!("FAILED run {} ({:?}) after {:.0} ms, {:.1} s in: {error}", d.run, d.kind, d.ms, d.at);
        if let Some(report) = seen.get(&d.run) {
            println!("{report}");
        }
    }
    for (run, report) in seen.iter() {
        if !failed.iter().any(|d| d.run == *run) {
            println!("slow but right: {report}");
        }
    }
    let unusual: Vec<&str> =
        log.lines().filter(|l| !l.contains("outcome=\"exited\"") && !l.contains("INFO")).collect();
    if !failed.is_empty() || !unusual.is_empty() {
        println!("the service's log, all but its exited runs and INFO lines (last {TAIL_LINES}):");
        println!("{}", tail(&unusual.join("\n"), TAIL_LINES));
    }
    for l in &left {
        println!("LEFT BEHIND: {l}");
    }
    if left.is_empty() {
        println!("after SIGTERM: the service exited 0; no QEMU, no socket, no vmexec-* directory left");
    }
    Ok(failed.is_empty() && left.is_empty() && done.len() == args.runs)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let outcome = async {
        let args = parse_args()?;
        let dir = std::env::temp_dir().join(format!("soak-{}", std::process::id()));
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let outcome = soak(&args, &dir).await;
        // The log stays where a failure can be read.
        if matches!(outcome, Ok(true)) {
            let _ = fs::remove_dir_all(&dir);
        } else {
            eprintln!("soak: the service's log is {}", dir.join("service.log").display());
        }
        outcome
    };
    match outcome.await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
