//! `just bench-boot`: boots pid1 VMs and, alternating with them, VMs whose
//! init is a busybox `sh` script doing the same mounts and the same job
//! (`/sbin/baseline-init`), and reports medians, spreads and ratios. Only
//! ratios measured in one run mean anything on a noisy machine.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use vmhost::vm::{Console, Launch, Ram, die_with_parent, kernel_cmdline, qemu_command};
use vmhost::{Accel, Job, Lang, Vm, VmConfig};

#[derive(Parser)]
#[command(about = "Boot benchmark: pid1 against a busybox-sh init")]
struct Args {
    /// Boots of each kind (pid1/baseline × python/shell).
    #[arg(long, default_value_t = 10)]
    runs: usize,
}

/// Picks one figure out of a run.
type Metric = fn(&Pid1Run) -> f64;

/// One pid1 boot, in milliseconds.
struct Pid1Run {
    boot: f64,
    kernel: f64,
    init: f64,
    exec: f64,
    to_output: f64,
}

fn pid1_run(config: &VmConfig, lang: Lang) -> Result<Pid1Run> {
    let spawned = Instant::now();
    let mut vm = Vm::boot(config)?;
    let times = vm.times();
    let job =
        Job::new(lang, if lang == Lang::Python { "print('BENCH_OUTPUT')" } else { "echo BENCH_OUTPUT" });
    let sent = Instant::now();
    let mut first = None;
    let out = vm.agent().run(&job, |_, _| {
        first.get_or_insert_with(Instant::now);
    })?;
    let exec = sent.elapsed().as_secs_f64() * 1e3;
    if out.stdout != b"BENCH_OUTPUT\n" {
        bail!("unexpected output {:?}", String::from_utf8_lossy(&out.stdout));
    }
    let to_output = first.context("no output")?.duration_since(spawned).as_secs_f64() * 1e3;
    vm.shutdown();
    Ok(Pid1Run { boot: times.boot_ms, kernel: times.kernel_ms, init: times.init_ms, exec, to_output })
}

/// One baseline boot: QEMU spawn → the job's output on the console.
fn baseline_run(config: &VmConfig, accel: Accel, lang: Lang) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    // The agent port is wired as for pid1 (QEMU connects to it) but unused.
    let socket = dir.path().join("agent.sock");
    let _listener = UnixListener::bind(&socket)?;
    let job = if lang == Lang::Python { "bench_job=python" } else { "bench_job=sh" };
    let cmdline = kernel_cmdline("/sbin/baseline-init", job, accel, false);
    let launch = Launch {
        cmdline: &cmdline,
        agent: &socket,
        console: Console::Stdout,
        ram: Ram::Anonymous,
        qmp: None,
        incoming: false,
    };
    let mut command = qemu_command(config, accel, &launch);
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    die_with_parent(&mut command);
    let spawned = Instant::now();
    let mut child = command.spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut seen = None;
    for line in BufReader::new(stdout).lines() {
        if line?.trim_end() == "BENCH_OUTPUT" {
            seen = Some(spawned.elapsed().as_secs_f64() * 1e3);
            break;
        }
        if spawned.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    seen.context("the baseline never printed its output")
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    format!("{min:.0}–{max:.0}")
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut config = VmConfig::default();
    // Resolve the accelerator once (probing KVM if need be) for both kinds.
    let probe = Vm::boot(&config)?;
    let accel = probe.accel();
    probe.shutdown();
    config.accel = accel;

    let mut pid1 = [Vec::new(), Vec::new()];
    let mut baseline = [Vec::new(), Vec::new()];
    for run in 0..args.runs {
        for (i, lang) in [Lang::Python, Lang::Shell].into_iter().enumerate() {
            pid1[i].push(pid1_run(&config, lang)?);
            baseline[i].push(baseline_run(&config, accel, lang)?);
        }
        eprintln!("bench-boot: run {}/{} done", run + 1, args.runs);
    }

    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "pid1 boot benchmark: {} runs per kind, accel {accel:?}, {cpus} host CPUs, guest 1 vCPU / {} MiB",
        args.runs, config.memory_mb
    );
    println!();
    println!("| pid1, ms | python job: median | spread | shell job: median | spread |");
    println!("|---|---|---|---|---|");
    let rows: [(&str, Metric); 5] = [
        ("boot (QEMU spawn → Ready)", |r| r.boot),
        ("kernel (boot → init start)", |r| r.kernel),
        ("init (start → Ready)", |r| r.init),
        ("first job exec (sent → exited)", |r| r.exec),
        ("QEMU spawn → job output", |r| r.to_output),
    ];
    for (name, get) in rows {
        let py: Vec<f64> = pid1[0].iter().map(get).collect();
        let sh: Vec<f64> = pid1[1].iter().map(get).collect();
        println!("| {name} | {:.1} | {} | {:.1} | {} |", median(&py), spread(&py), median(&sh), spread(&sh));
    }
    println!();
    println!(
        "| QEMU spawn → job output, ms | pid1 median | baseline (busybox sh init) median | baseline / pid1 |"
    );
    println!("|---|---|---|---|");
    for (i, name) in ["python", "shell"].into_iter().enumerate() {
        let ours: Vec<f64> = pid1[i].iter().map(|r| r.to_output).collect();
        let (a, b) = (median(&ours), median(&baseline[i]));
        println!(
            "| {name} | {a:.0} ({}) | {b:.0} ({}) | {:.2}× |",
            spread(&ours),
            spread(&baseline[i]),
            b / a
        );
    }
    Ok(())
}
