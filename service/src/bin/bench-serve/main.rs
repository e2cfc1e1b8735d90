//! `just bench-serve`: what the sandbox service buys. In one run, alternating,
//! a one-line job through `vmexec serve` (a warm VM from its pool, over its
//! Unix socket) against the same job as a whole `vmexec run` (a VM restored
//! from the template); then the service under load, a fresh VM per run:
//! runs per second, latency, the host CPU a run costs, the service's own
//! memory, and the memory of each idle pooled VM.
//!
//! Only ratios measured in one run mean much on a shared TCG machine.

use std::fs;

use harness::error::ServiceError;

#[path = "../harness/mod.rs"]
#[allow(dead_code, reason = "the harness serves two binaries; each uses part of it")]
mod harness;
mod latency;
mod load;
mod memory;
mod sequence;
mod work;

use work::Work;

/// Warm VMs of the service in the latency rounds: the service's default.
/// Every sample waits for the pool to be full, so its size only decides
/// how long the refill between samples takes.
const LATENCY_POOL: usize = 2;

/// VMs the service may hold at once in every phase: on 2 cores more than
/// ~4 QEMUs at once only queue behind each other for the CPU.
const MAX_VMS: usize = 4;

/// Warm VMs in the load runs: the service's default. Runs that find none
/// ready restore one on demand (unwarmed) while a slot is free.
const LOAD_POOL: usize = 2;

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("{0}\nusage: bench-serve [--runs N] [--load-runs N] [--clients N,N,...] [--load-pool N]")]
    Usage(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("a VM of this bench: {0}")]
    Vm(String),
}

type Result<T> = std::result::Result<T, BenchError>;

struct Args {
    runs: usize,
    load_runs: usize,
    clients: Vec<usize>,
    load_pool: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args { runs: 20, load_runs: 200, clients: vec![4, 16], load_pool: LOAD_POOL };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words.next().ok_or_else(|| BenchError::Usage(format!("{flag} needs a value")))?;
        let number = |text: &str| {
            text.parse::<usize>()
                .ok()
                .filter(|n| *n > 0 || flag == "--load-pool")
                .ok_or_else(|| BenchError::Usage(format!("{flag}: `{text}` is not a count")))
        };
        match flag.as_str() {
            "--runs" => args.runs = number(&value)?,
            "--load-runs" => args.load_runs = number(&value)?,
            "--load-pool" => args.load_pool = number(&value)?,
            "--clients" => args.clients = value.split(',').map(number).collect::<Result<_>>()?,
            _ => return Err(BenchError::Usage(format!("unknown flag {flag}"))),
        }
    }
    Ok(args)
}

// ---- the run --------------------------------------------------------------

async fn bench(args: &Args, work: &Work) -> Result<bool> {
    if !work.vmexec.is_file() {
        return Err(ServiceError::Service(format!(
            "binary is missing: build it with `cargo build --release -p vmexec` ({})",
            work.vmexec.display()
        ))
        .into());
    }
    let latency = latency::latency(work, args.runs).await?;
    let (idle, others) = memory::idle_memory(work).await?;
    let sequence = sequence::job_sequence()?;
    let mut loads = Vec::new();
    for &clients in &args.clients {
        eprintln!("bench-serve: load, {clients} clients, {} runs", args.load_runs);
        loads.push(load::load(work, clients, args.load_runs, args.load_pool).await?);
    }

    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "bench-serve: {} runs of each kind, alternating; {cpus} host CPUs; guest 1 vCPU / 256 MiB; service `--pool {LATENCY_POOL} --max-vms {MAX_VMS}`.",
        args.runs
    );
    println!(
        "Every service sample waited for the pool to be full (health: pool.ready == pool.target, none warming) and was a warm-pool hit (its result says start: pooled); every `vmexec run` began the same way, with the service idle. One untimed round came first."
    );
    println!();
    latency::print_latency(&latency);
    println!();
    sequence::print_sequence(&sequence);
    println!();
    memory::print_idle(&idle, others);
    println!();
    load::print_load(&loads, args.load_pool);
    println!();
    Ok(loads.iter().all(|l| l.failures.is_empty()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let outcome = async {
        let args = parse_args()?;
        let work = Work::new()?;
        let outcome = bench(&args, &work).await;
        // The logs stay where a failure can be read.
        if matches!(outcome, Ok(true)) {
            let _ = fs::remove_dir_all(&work.dir);
        } else {
            eprintln!("bench-serve: the services' logs are in {}", work.dir.display());
        }
        outcome
    };
    match outcome.await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("bench-serve: some runs failed (listed above)");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bench-serve: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
