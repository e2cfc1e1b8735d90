//! `just bench-timeouts`: how late a job's timeout fires in a VM, in three
//! conditions taken in turn: an idle VM; two jobs beside it writing their
//! stdout as fast as they can while the host reads; the same while the
//! host reads nothing for 3 s (the init's send queue full, the floods
//! blocked in `write`). Lateness is the job's `duration_us` less its
//! timeout: from the deadline to the job killed, reaped and reported.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;
use vmhost::{Job, Vm, VmConfig};

#[derive(Parser)]
#[command(about = "Timeout lateness benchmark: idle, flood, flood with a stalled host")]
struct Args {
    /// Rounds of the three conditions.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// The timed job's timeout, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
}

/// Writes 64 KiB blocks until killed.
const FLOOD: &str = "import sys\nw = sys.stdout.buffer.write\nb = b'x' * 65536\nwhile True:\n    w(b)\n";

/// How long the host stops reading in the third condition.
const STALL: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, PartialEq)]
enum Condition {
    Idle,
    Flood,
    Stall,
}

/// One timed job in `condition`: its lateness in milliseconds.
fn lateness(vm: &mut Vm, condition: Condition, timeout: Duration) -> Result<f64> {
    let agent = vm.agent();
    let mut floods = vec![];
    if condition != Condition::Idle {
        for _ in 0..2 {
            // Everything forwarded: the queue fills instead of the init
            // dropping what is past a limit.
            let flood = Job { stdout_limit: u32::MAX, ..Job::python(FLOOD) };
            floods.push(agent.submit(&flood)?);
        }
    }
    let sleeper = agent.submit(&Job { timeout: Some(timeout), ..Job::shell("sleep 100") })?;
    if condition == Condition::Stall {
        std::thread::sleep(STALL);
    }
    let out = agent.wait_job(sleeper, &mut |_, _| {})?;
    if !out.timed_out {
        bail!("the timed job ended without its timeout: {:?}", out.exit);
    }
    for flood in floods {
        agent.signal(flood, vmhost::Signal::Kill)?;
        agent.wait_job(flood, &mut |_, _| {})?;
    }
    Ok((out.duration.as_secs_f64() - timeout.as_secs_f64()) * 1e3)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let config = VmConfig::default();
    let mut vm = Vm::boot(&config)?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let conditions = [
        (Condition::Idle, "idle VM"),
        (Condition::Flood, "2 jobs flooding stdout, host reading"),
        (Condition::Stall, "2 jobs flooding stdout, host not reading for 3 s"),
    ];
    let mut late = [vec![], vec![], vec![]];
    for run in 0..args.runs {
        for (i, (condition, _)) in conditions.iter().enumerate() {
            late[i].push(lateness(&mut vm, *condition, timeout)?);
        }
        eprintln!("bench-timeouts: run {}/{} done", run + 1, args.runs);
    }
    let accel = vm.accel();
    vm.shutdown();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "timeout lateness: {} runs, timeout {} ms, accel {accel:?}, {cpus} host CPUs, guest 1 vCPU",
        args.runs, args.timeout_ms
    );
    println!();
    println!("| ms past the deadline | median | min–max | median / idle |");
    println!("|---|---|---|---|");
    let idle = median(&late[0]);
    for ((_, name), values) in conditions.iter().zip(&late) {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!("| {name} | {:.1} | {min:.1}–{max:.1} | {:.2}× |", median(values), median(values) / idle);
    }
    Ok(())
}
