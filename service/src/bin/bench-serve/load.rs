//! The load runs: concurrent clients, a fresh VM and a fresh connection
//! per run, measuring runs per second, latency, the host CPU a run costs
//! and the service's memory; and their table.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::Method;
use vmhost::api::{RunResult, StartKind};

use crate::harness;
use crate::harness::client::{RUN_WAIT, exchange_fresh, run_result};
use crate::harness::figures::{ms, percentile};
use crate::harness::procfs::{USER_HZ, children, stat};
use crate::harness::service::Fill;
use crate::latency::{Kind, checked};
use crate::memory::kib;
use crate::work::{self, Work};
use crate::{MAX_VMS, Result};

/// How often the service's RSS is read during a load run.
const RSS_SAMPLE: Duration = Duration::from_millis(50);

pub struct Load {
    clients: usize,
    runs: usize,
    latencies: Vec<f64>,
    pub failures: Vec<String>,
    pooled: usize,
    seconds: f64,
    cpu_per_run: f64,
    service_cpu_per_run: f64,
    bench_cpu_per_run: f64,
    peak_rss_kib: u64,
    hwm_kib: u64,
    handout_ms: f64,
    exec_ms: f64,
}

/// One client: fresh connection per run, runs until `runs` are taken.
/// CPU ticks of the service and its VMs: its own, its reaped children's
/// (cutime + cstime) and its live children's. Read while the service
/// is idle, so no child is reaped between the two reads.
fn cpu_ticks(service: i32) -> u64 {
    let own = stat(service).map_or(0, |s| s.cpu + s.reaped);
    own + children(service).into_iter().filter_map(stat).map(|s| s.cpu + s.reaped).sum::<u64>()
}

fn own_cpu_ticks(service: i32) -> u64 {
    stat(service).map_or(0, |s| s.cpu)
}

async fn client(
    socket: PathBuf,
    next: Arc<AtomicUsize>,
    runs: usize,
) -> Vec<(f64, harness::error::Result<RunResult>)> {
    let mut done = Vec::new();
    while next.fetch_add(1, Ordering::Relaxed) < runs {
        let began = Instant::now();
        let answer = exchange_fresh(&socket, Method::POST, "/v1/runs", Kind::Python.body(), RUN_WAIT).await;
        let took = ms(began);
        done.push((took, answer.and_then(run_result).and_then(|r| checked(Kind::Python, r))));
    }
    done
}

/// This bench's own CPU ticks: it shares the cores with what it measures.
fn bench_cpu_ticks() -> u64 {
    stat(i32::try_from(std::process::id()).expect("a pid fits an i32")).map_or(0, |s| s.cpu)
}

pub async fn load(work: &Work, clients: usize, runs: usize, pool: usize) -> Result<Load> {
    let mut service = work.start(&format!("load-{clients}"), pool)?;
    service.wait_full(Fill::Settled).await?;
    let (cpu_before, own_before, bench_before) =
        (cpu_ticks(service.pid), own_cpu_ticks(service.pid), bench_cpu_ticks());
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (pid, peak) = (service.pid, Arc::clone(&peak_rss));
        tokio::spawn(async move {
            loop {
                if let Some(rss) = kib(pid, "status", "VmRSS") {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(RSS_SAMPLE).await;
            }
        })
    };
    let began = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> =
        (0..clients).map(|_| tokio::spawn(client(service.socket.clone(), Arc::clone(&next), runs))).collect();
    let mut done = Vec::new();
    for task in tasks {
        done.extend(task.await.unwrap_or_default());
    }
    let seconds = began.elapsed().as_secs_f64();
    // The runs used VMs warmed before they began; the CPU is read once as
    // many are warmed again, so it covers `runs` VMs' whole lives.
    service.wait_full(Fill::Settled).await?;
    let cpu = cpu_ticks(service.pid).saturating_sub(cpu_before);
    let own = own_cpu_ticks(service.pid).saturating_sub(own_before);
    let bench = bench_cpu_ticks().saturating_sub(bench_before);
    sampler.abort();
    let metrics = service.metrics().await?;
    let mean_ms = |name: &str| {
        let sum = metrics.get(&format!("{name}_sum")).copied().unwrap_or(f64::NAN);
        sum / metrics.get(&format!("{name}_count")).copied().unwrap_or(f64::NAN) * 1000.0
    };
    let figures = Load {
        clients,
        runs,
        latencies: done.iter().map(|(ms, _)| *ms).collect(),
        failures: done.iter().filter_map(|(_, r)| r.as_ref().err().map(|e| e.to_string())).collect(),
        pooled: done.iter().filter(|(_, r)| r.as_ref().is_ok_and(|r| r.start == StartKind::Pooled)).count(),
        seconds,
        cpu_per_run: cpu as f64 / USER_HZ as f64 / runs as f64,
        service_cpu_per_run: own as f64 / USER_HZ as f64 / runs as f64,
        bench_cpu_per_run: bench as f64 / USER_HZ as f64 / runs as f64,
        peak_rss_kib: peak_rss.load(Ordering::Relaxed),
        hwm_kib: kib(service.pid, "status", "VmHWM").unwrap_or(0),
        handout_ms: mean_ms("pid1_run_handout_seconds"),
        exec_ms: mean_ms("pid1_run_exec_seconds"),
    };
    work::stop(service)?;
    Ok(figures)
}

pub fn print_load(loads: &[Load], pool: usize) {
    println!(
        "Load: a fresh VM per run, `--pool {pool} --max-vms {MAX_VMS}`, Python `print(1)`, a fresh connection per run:"
    );
    println!();
    println!(
        "| clients | runs | failed | warm-pool hits | runs/s | p50 ms | p95 ms | p99 ms | host CPU s/run (service + QEMUs) | of it the service's own | bench client s/run | service RSS peak MiB (VmHWM) | mean hand-out ms | mean job ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for l in loads {
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.3} | {:.4} | {:.4} | {:.1} ({:.1}) | {:.0} | {:.0} |",
            l.clients,
            l.runs,
            l.failures.len(),
            l.pooled,
            (l.runs - l.failures.len()) as f64 / l.seconds,
            percentile(&l.latencies, 50),
            percentile(&l.latencies, 95),
            percentile(&l.latencies, 99),
            l.cpu_per_run,
            l.service_cpu_per_run,
            l.bench_cpu_per_run,
            l.peak_rss_kib as f64 / 1024.0,
            l.hwm_kib as f64 / 1024.0,
            l.handout_ms,
            l.exec_ms,
        );
    }
    for l in loads {
        for failure in &l.failures {
            println!("failure ({} clients): {failure}", l.clients);
        }
    }
}
