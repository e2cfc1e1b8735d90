//! What an idle pooled VM costs the host: its memory from smaps, split by
//! what holds it (guest RAM, TCG's code, QEMU itself), and its CPU while
//! idle; and their table.

use std::fs;
use std::time::Duration;

use crate::Result;
use crate::harness::figures::median;
use crate::harness::procfs::{USER_HZ, children, processes_naming, stat};
use crate::harness::service::Fill;
use crate::work::{self, Work};

/// Idle pooled VMs whose memory is read: as many as the slots allow, so
/// the template's shared pages are split between several of ours.
const IDLE_POOL: usize = 4;

/// How long idle pooled VMs are watched for the CPU they use idle.
const IDLE_WATCH: Duration = Duration::from_secs(2);

/// A `Key:  N kB` figure of /proc/PID/status or smaps_rollup, in KiB.
pub fn kib(pid: i32, file: &str, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let line = text.lines().find(|l| l.strip_prefix(key).is_some_and(|rest| rest.starts_with(':')))?;
    line[key.len() + 1..].split_whitespace().next()?.parse().ok()
}

/// A QEMU's memory by what holds it, in KiB: (PSS, private).
#[derive(Default, Clone, Copy)]
struct Parts {
    /// The guest's RAM: the template's `ram` file mapped private, so its
    /// pages are shared until the guest writes them.
    guest: (u64, u64),
    /// TCG's translated code: QEMU's one anonymous read-write-execute
    /// mapping. KVM would have none.
    tcg: (u64, u64),
    /// QEMU itself: heap, libraries, device state.
    rest: (u64, u64),
}

/// /proc/PID/smaps, each mapping's PSS and private pages put in [`Parts`].
fn memory_parts(pid: i32) -> Parts {
    let mut parts = Parts::default();
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/smaps")) else { return parts };
    let mut at = &mut parts.rest;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(first), Some(second)) = (words.next(), words.next()) else { continue };
        if !first.ends_with(':') {
            // A mapping's header: range, permissions, offset, device, inode, path.
            let path = words.nth(3).unwrap_or("");
            at = if path.ends_with("/ram") && path.contains("/templates/") {
                &mut parts.guest
            } else if second == "rwxp" && path.is_empty() {
                &mut parts.tcg
            } else {
                &mut parts.rest
            };
            continue;
        }
        let kib: u64 = second.parse().unwrap_or(0);
        match first {
            "Pss:" => at.0 += kib,
            "Private_Clean:" | "Private_Dirty:" => at.1 += kib,
            _ => {}
        }
    }
    parts
}

/// QEMUs on the host, whoever's: they share the template's pages with ours.
fn qemus_on_host() -> usize {
    processes_naming("qemu-system").len()
}

/// One idle pooled VM's host memory (smaps_rollup) and idle CPU.
pub struct IdleVm {
    parts: Parts,
    pss_kib: u64,
    rss_kib: u64,
    private_kib: u64,
    idle_cpu_percent: f64,
}

pub async fn idle_memory(work: &Work) -> Result<(Vec<IdleVm>, usize)> {
    let mut service = work.start("idle", IDLE_POOL)?;
    service.wait_full(Fill::Settled).await?;
    let vms = children(service.pid);
    let before: Vec<u64> = vms.iter().map(|&pid| stat(pid).map_or(0, |s| s.cpu)).collect();
    tokio::time::sleep(IDLE_WATCH).await;
    let others = qemus_on_host().saturating_sub(vms.len());
    let mut idle = Vec::new();
    for (&pid, before) in vms.iter().zip(before) {
        let rollup = |key| kib(pid, "smaps_rollup", key).unwrap_or(0);
        let after = stat(pid).map_or(0, |s| s.cpu);
        idle.push(IdleVm {
            parts: memory_parts(pid),
            pss_kib: rollup("Pss"),
            rss_kib: rollup("Rss"),
            private_kib: rollup("Private_Clean") + rollup("Private_Dirty"),
            idle_cpu_percent: after.saturating_sub(before) as f64 / USER_HZ as f64 / IDLE_WATCH.as_secs_f64()
                * 100.0,
        });
    }
    work::stop(service)?;
    Ok((idle, others))
}

pub fn print_idle(idle: &[IdleVm], others: usize) {
    let mib = |pick: fn(&IdleVm) -> u64| idle.iter().map(|v| pick(v) as f64 / 1024.0).collect::<Vec<_>>();
    let (pss, rss, private) = (mib(|v| v.pss_kib), mib(|v| v.rss_kib), mib(|v| v.private_kib));
    let cpu: Vec<f64> = idle.iter().map(|v| v.idle_cpu_percent).collect();
    println!(
        "Idle pooled VMs (`--pool {IDLE_POOL}`, {} VMs, {others} other QEMUs on the host sharing the template's pages), smaps_rollup:",
        idle.len()
    );
    println!();
    println!("| per idle pooled VM | median | min–max |");
    println!("|---|---|---|");
    let line = |name: &str, v: &[f64], unit: &str| {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(0.0, f64::max);
        println!("| {name} | {:.1} {unit} | {min:.1}–{max:.1} |", median(v));
    };
    line("PSS", &pss, "MiB");
    line("RSS", &rss, "MiB");
    line("private (its own pages: what one more VM costs)", &private, "MiB");
    let part = |pick: fn(&Parts) -> (u64, u64)| {
        let (pss, private): (Vec<f64>, Vec<f64>) =
            idle.iter().map(|v| pick(&v.parts)).map(|(a, b)| (a as f64 / 1024.0, b as f64 / 1024.0)).unzip();
        (pss, private)
    };
    for (name, pick) in [
        ("guest RAM (the template's pages, copied once written)", (|p| p.guest) as fn(&Parts) -> (u64, u64)),
        ("TCG's translated code", |p| p.tcg),
        ("QEMU's own (heap, libraries, devices)", |p| p.rest),
    ] {
        let (pss, private) = part(pick);
        line(&format!("of the PSS: {name}"), &pss, "MiB");
        line(&format!("of the private: {name}"), &private, "MiB");
    }
    line(&format!("CPU while idle, over {} s", IDLE_WATCH.as_secs()), &cpu, "%");
}
