//! Jobs in sequence in one restored VM, driven through vmhost directly:
//! how warm the pool's warm-up leaves a VM; and their table.

use std::time::Instant;

use vmhost::{Job, Lang, Start, Vm, VmConfig};

use crate::harness::figures::{median, ms};
use crate::{BenchError, Result};

/// The pool's warm-up jobs (`service/src/pool.rs`), then the run a pooled
/// VM is handed out for, then more of the same: how warm "warmed" is.
const SEQUENCE: [(Lang, &str); 8] = [
    (Lang::Python, "import os, sys, json\nprint('warm')"),
    (Lang::Shell, "echo warm"),
    (Lang::Python, "print(1)"),
    (Lang::Python, "print(1)"),
    (Lang::Python, "print(1)"),
    (Lang::Python, "print(1)"),
    (Lang::Shell, "echo hi"),
    (Lang::Shell, "echo hi"),
];

/// VMs restored for [`SEQUENCE`], one after another.
const SEQUENCE_VMS: usize = 5;

/// Send → exit of each job of [`SEQUENCE`] in fresh restored VMs, by
/// position.
pub fn job_sequence() -> Result<Vec<Vec<f64>>> {
    let config = VmConfig::default();
    let mut times = vec![Vec::new(); SEQUENCE.len()];
    for _ in 0..SEQUENCE_VMS {
        let vm_error = |e: &dyn std::error::Error| BenchError::Vm(vmhost::error::chain(e));
        let mut vm = Vm::boot(&config).map_err(|e| vm_error(&e))?;
        if vm.start() != Start::Restored {
            return Err(BenchError::Vm(format!("booted cold: {:?}", vm.fallback().map(|f| f.to_string()))));
        }
        for (i, (lang, code)) in SEQUENCE.iter().enumerate() {
            let sent = Instant::now();
            let out = vm.agent().run(&Job::new(*lang, *code), |_, _| {}).map_err(|e| vm_error(&e))?;
            times[i].push(ms(sent));
            if out.code() != 0 {
                return Err(BenchError::Vm(format!("{code:?} exited {}", out.code())));
            }
        }
        vm.shutdown();
    }
    Ok(times)
}

pub fn print_sequence(times: &[Vec<f64>]) {
    println!(
        "Jobs in sequence in one restored VM, send → exit (medians of {SEQUENCE_VMS} VMs, ms): jobs 1–2 are the pool's warm-up, job 3 what a pooled run gets:"
    );
    println!();
    println!("| job | code | median | min–max |");
    println!("|---|---|---|---|");
    for (i, ((_, code), t)) in SEQUENCE.iter().zip(times).enumerate() {
        let min = t.iter().copied().fold(f64::INFINITY, f64::min);
        let max = t.iter().copied().fold(0.0, f64::max);
        println!("| {} | `{}` | {:.1} | {min:.1}–{max:.1} |", i + 1, code.replace('\n', "; "), median(t));
    }
}
