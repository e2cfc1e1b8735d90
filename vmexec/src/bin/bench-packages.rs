//! `just bench-packages`: what a package set costs. First its first use,
//! in a cache of its own: resolving, installing, making the layer and
//! making the template, each timed. Then, in warm VMs, `import numpy;
//! print(numpy.__version__)` forked from a zygote that imported numpy
//! before the snapshot, against the same job with a layer that preloads
//! nothing, against `print(1)` in each, all alternating; medians and ratios.
//! Only ratios measured in one run mean anything on a noisy machine.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use vmhost::packages::{Layer, PackageOptions};
use vmhost::template::Template;
use vmhost::{Job, Start, Vm, VmConfig};

#[derive(Parser)]
#[command(about = "Package benchmark: a set's first use, and numpy jobs with and without preloading")]
struct Args {
    /// Timed jobs of each kind in the warm VMs.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// The set measured.
    #[arg(long, default_value = "numpy==2.1.3")]
    package: String,
}

/// The job the target is about, and its expected output's start.
const NUMPY_JOB: &str = "import numpy; print(numpy.__version__)";

fn main() -> Result<()> {
    let args = Args::parse();
    let base = VmConfig::default();
    let accel = vmhost::accel::resolved(base.accel, &base.cache_dir)
        .context("no accelerator verdict yet: run one VM first (`just run 'print(1)'`)")?;
    let cache = tempfile::tempdir()?;
    vmhost::accel::remember(cache.path(), accel);
    let config = VmConfig { cache_dir: cache.path().to_owned(), ..base };
    let specs = [args.package.clone()];

    println!("bench-packages: {} under {}, a cache of its own", args.package, accel.name());
    let preloaded = first_use(&config, &specs, true, accel, "preloading")?;
    let plain = first_use(&config, &specs, false, accel, "no preload")?;
    println!("  modules the zygote imports: {}", preloaded.modules.join(", "));

    let mut vms = [warm_vm(&config, &preloaded)?, warm_vm(&config, &plain)?];
    let version = args.package.split_once("==").map(|(_, v)| v.to_owned());
    // [preloaded numpy, preloaded print(1), plain numpy, plain print(1)]
    let mut times: [Vec<f64>; 4] = Default::default();
    for i in 0..=args.runs {
        for (v, vm) in vms.iter_mut().enumerate() {
            for (k, code) in [NUMPY_JOB, "print(1)"].into_iter().enumerate() {
                let sent = Instant::now();
                let out = vm.agent().run(&Job::python(code), |_, _| {})?;
                let ms = sent.elapsed().as_secs_f64() * 1e3;
                let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                let expected = if k == 0 { version.clone() } else { Some("1".to_owned()) };
                if out.code() != 0 || expected.is_some_and(|e| e != stdout) {
                    bail!("{code:?} printed {stdout:?}: {}", String::from_utf8_lossy(&out.stderr));
                }
                // The first of each kind fills the new QEMU's translation
                // cache: not timed.
                if i > 0 {
                    times[v * 2 + k].push(ms);
                }
            }
        }
    }
    for vm in vms {
        vm.shutdown();
    }
    let [pre_numpy, pre_one, plain_numpy, plain_one] = times.map(|t| median(&t));
    println!("\nwarm VMs, send -> exit, medians of {} jobs each (ms):", args.runs);
    println!("  preloading template: numpy job {pre_numpy:7.1}   print(1) {pre_one:7.1}");
    println!("  no preload:          numpy job {plain_numpy:7.1}   print(1) {plain_one:7.1}");
    println!("\nratios:");
    let target = pre_numpy / pre_one;
    println!(
        "  numpy job / print(1), preloading: {target:.2}x (target <= 1.5x: {})",
        if target <= 1.5 { "met" } else { "MISSED" }
    );
    println!("  numpy job / print(1), no preload: {:.2}x", plain_numpy / plain_one);
    println!("  numpy job, no preload / preloading: {:.2}x", plain_numpy / pre_numpy);
    Ok(())
}

/// A set's layer and template made in `config`'s cache, each step timed.
fn first_use(
    config: &VmConfig,
    specs: &[String],
    preload: bool,
    accel: vmhost::Accel,
    what: &str,
) -> Result<Layer> {
    let options = PackageOptions { preload, ..PackageOptions::new(&config.cache_dir) };
    let started = Instant::now();
    let layer = vmhost::packages::prepare(specs, &options)?.context("a set with no packages")?;
    let prepared = ms(started);
    let with_layer = VmConfig { packages: Some(layer.image.clone()), ..config.clone() };
    let template = Template::locate(&with_layer, accel)?;
    let started = Instant::now();
    if !template.build(&with_layer, accel)? {
        bail!("another process was making the template");
    }
    let template_ms = ms(started);
    let s = layer.steps;
    let cached = |yes: bool| if yes { " (cached)" } else { "" };
    println!(
        "  first use, {what}: resolve {:.0} ms{}, install {:.0} ms, layer {:.0} ms{} \
         ({prepared:.0} ms in all), template {template_ms:.0} ms; layer {}",
        s.resolve_ms,
        cached(s.set_cached),
        s.install_ms,
        s.layer_ms,
        cached(s.layer_cached),
        size(&layer.image)
    );
    Ok(layer)
}

/// A VM restored from the layer's template.
fn warm_vm(config: &VmConfig, layer: &Layer) -> Result<Vm> {
    let config = VmConfig { packages: Some(layer.image.clone()), ..config.clone() };
    let vm = Vm::boot(&config)?;
    if vm.start() != Start::Restored {
        bail!("the VM was not restored: {:?}", vm.fallback().map(|f| f.to_string()));
    }
    Ok(vm)
}

fn size(path: &Path) -> String {
    std::fs::metadata(path).map_or_else(|_| "?".into(), |m| format!("{:.1} MiB", m.len() as f64 / 1048576.0))
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}
