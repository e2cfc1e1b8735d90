//! `just bench-boot`: starts pid1 VMs cold and restored from their snapshot
//! template, VMs whose init is a busybox `sh` script doing the same mounts
//! and the same job (`/sbin/baseline-init`), and whole `vmexec run`s with
//! and without `--cold`, all alternating; reports medians, spreads and
//! ratios. Only ratios measured in one run mean anything on a noisy machine.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use vmhost::qemu::{Console, Launch, Ram, kernel_cmdline, process, qemu_command};
use vmhost::{Accel, Job, Lang, Start, Vm, VmConfig};

#[derive(Parser)]
#[command(about = "Boot benchmark: pid1 against a busybox-sh init")]
struct Args {
    /// Boots of each kind (pid1/baseline × python/shell).
    #[arg(long, default_value_t = 10)]
    runs: usize,
}

/// Picks one figure out of a run.
type Metric = fn(&Pid1Run) -> f64;

/// One pid1 VM start, in milliseconds.
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
    let want = if config.cold { Start::Cold } else { Start::Restored };
    if vm.start() != want {
        bail!(
            "wanted a {} VM, got a {} one: {:?}",
            want.name(),
            vm.start().name(),
            vm.fallback().map(|f| f.to_string())
        );
    }
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
    let spawned = Instant::now();
    let mut child = process::spawn(command)?;
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

/// One whole `vmexec run -c 'print(1)'`: process start to exit, in ms.
fn vmexec_run(accel: Accel, cold: bool) -> Result<f64> {
    let vmexec = std::env::current_exe()?.with_file_name("vmexec");
    let mut command = std::process::Command::new(&vmexec);
    command.args(["run", "--accel", accel.name(), "-c", "print(1)"]);
    if cold {
        command.arg("--cold");
    }
    let started = Instant::now();
    let out = command.output().with_context(|| format!("running {}", vmexec.display()))?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if out.stdout != b"1\n" || !out.stderr.is_empty() {
        bail!(
            "vmexec said {:?} / {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(ms)
}

/// Jobs in one warm VM, send → exit in ms, alternating, the first of each
/// kind not timed: Python forked from the zygote, Python exec'd (`fresh`),
/// a shell job (bash), the same as a `#!/bin/sh` script (busybox).
fn warm_jobs(config: &VmConfig, runs: usize) -> Result<[Vec<f64>; 4]> {
    let mut vm = Vm::boot(config)?;
    let mut times = [vec![], vec![], vec![], vec![]];
    let kinds = [
        Job::python("print('BENCH_OUTPUT')"),
        Job { fresh: true, ..Job::python("print('BENCH_OUTPUT')") },
        Job::shell("echo BENCH_OUTPUT"),
        Job::shell("#!/bin/sh\necho BENCH_OUTPUT"),
    ];
    for i in 0..=runs {
        for (kind, job) in kinds.iter().enumerate() {
            let sent = Instant::now();
            let out = vm.agent().run(job, |_, _| {})?;
            let ms = sent.elapsed().as_secs_f64() * 1e3;
            if out.stdout != b"BENCH_OUTPUT\n" {
                bail!("unexpected output {:?}", String::from_utf8_lossy(&out.stdout));
            }
            if i > 0 {
                times[kind].push(ms);
            }
        }
    }
    vm.shutdown();
    Ok(times)
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
    // Resolve the accelerator once (probing KVM if need be) for every kind,
    // and make the template before anything is timed.
    let probe = Vm::boot(&config)?;
    let accel = probe.accel();
    probe.shutdown();
    config.accel = accel;
    let template = vmhost::template::Template::locate(&config, accel)?;
    if template.check(&config).is_err() && !template.build(&config, accel)? {
        bail!("another process is making the template; run again when it is done");
    }
    let cold = VmConfig { cold: true, ..config.clone() };

    // [python, shell] for each.
    let (mut restored, mut booted, mut baseline) = ([vec![], vec![]], [vec![], vec![]], [vec![], vec![]]);
    let (mut whole_restored, mut whole_cold) = (vec![], vec![]);
    for run in 0..args.runs {
        for (i, lang) in [Lang::Python, Lang::Shell].into_iter().enumerate() {
            booted[i].push(pid1_run(&cold, lang)?);
            restored[i].push(pid1_run(&config, lang)?);
            baseline[i].push(baseline_run(&config, accel, lang)?);
        }
        whole_cold.push(vmexec_run(accel, true)?);
        whole_restored.push(vmexec_run(accel, false)?);
        eprintln!("bench-boot: run {}/{} done", run + 1, args.runs);
    }

    let [zygote, execd, bash, busybox] = warm_jobs(&config, args.runs)?;

    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "pid1 boot benchmark: {} runs per kind, accel {accel:?}, {cpus} host CPUs, guest 1 vCPU / {} MiB",
        args.runs, config.memory_mb
    );
    println!();
    println!("| ms, median (spread) | cold | restored | restored / cold |");
    println!("|---|---|---|---|");
    let ready = |runs: &[Pid1Run]| runs.iter().map(|r| r.boot).collect::<Vec<f64>>();
    let output = |runs: &[Pid1Run]| runs.iter().map(|r| r.to_output).collect::<Vec<f64>>();
    let exec = |runs: &[Pid1Run]| runs.iter().map(|r| r.exec).collect::<Vec<f64>>();
    let both =
        |runs: &[Vec<Pid1Run>; 2]| ready(&runs[0]).into_iter().chain(ready(&runs[1])).collect::<Vec<f64>>();
    let rows: [(&str, Vec<f64>, Vec<f64>); 6] = [
        ("QEMU spawn → serving (Ready / Refresh answered)", both(&booted), both(&restored)),
        ("QEMU spawn → first shell output", output(&booted[1]), output(&restored[1])),
        ("QEMU spawn → first Python output", output(&booted[0]), output(&restored[0])),
        ("first shell job (sent → exited)", exec(&booted[1]), exec(&restored[1])),
        ("first Python job (sent → exited)", exec(&booted[0]), exec(&restored[0])),
        ("`vmexec run -c 'print(1)'`, start → exit", whole_cold.clone(), whole_restored.clone()),
    ];
    for (name, c, r) in rows {
        let (mc, mr) = (median(&c), median(&r));
        println!("| {name} | {mc:.0} ({}) | {mr:.0} ({}) | {:.2}× |", spread(&c), spread(&r), mr / mc);
    }
    println!();
    println!("| warm VM, Python job send → exit, ms | median (spread) |");
    println!("|---|---|");
    println!("| forked from the zygote | {:.1} ({}) |", median(&zygote), spread(&zygote));
    println!("| exec'd `python3` (`fresh`) | {:.1} ({}) |", median(&execd), spread(&execd));
    println!("| exec / zygote | {:.2}× |", median(&execd) / median(&zygote));
    println!();
    println!("| warm VM, shell job send → exit, ms | median (spread) |");
    println!("|---|---|");
    println!("| bash (code without `#!`) | {:.1} ({}) |", median(&bash), spread(&bash));
    println!("| busybox sh (`#!/bin/sh`) | {:.1} ({}) |", median(&busybox), spread(&busybox));
    println!("| bash / busybox | {:.2}× |", median(&bash) / median(&busybox));
    println!();
    println!("| cold pid1, ms | python job: median | spread | shell job: median | spread |");
    println!("|---|---|---|---|---|");
    let rows: [(&str, Metric); 3] = [
        ("kernel (boot → init start)", |r| r.kernel),
        ("init (start → Ready)", |r| r.init),
        ("QEMU spawn → job output", |r| r.to_output),
    ];
    for (name, get) in rows {
        let py: Vec<f64> = booted[0].iter().map(get).collect();
        let sh: Vec<f64> = booted[1].iter().map(get).collect();
        println!("| {name} | {:.1} | {} | {:.1} | {} |", median(&py), spread(&py), median(&sh), spread(&sh));
    }
    println!();
    println!(
        "| QEMU spawn → job output, ms | cold pid1 | restored pid1 | busybox sh init | baseline / cold | baseline / restored |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, name) in ["python", "shell"].into_iter().enumerate() {
        let (c, r) = (output(&booted[i]), output(&restored[i]));
        let (mc, mr, mb) = (median(&c), median(&r), median(&baseline[i]));
        println!(
            "| {name} | {mc:.0} ({}) | {mr:.0} ({}) | {mb:.0} ({}) | {:.2}× | {:.2}× |",
            spread(&c),
            spread(&r),
            spread(&baseline[i]),
            mb / mc,
            mb / mr
        );
    }
    Ok(())
}
