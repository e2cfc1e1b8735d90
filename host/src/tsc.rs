//! The host's TSC rate, for a TCG guest's clock.
//!
//! Under TCG the guest's `rdtsc` reads the host's TSC, but the guest kernel
//! cannot calibrate it against an emulated PIT, marks it unstable and falls
//! back to jiffies: every clock in a job then steps in 4 ms. Given the rate
//! on its command line (`tsc_early_khz=`, with `tsc=reliable` to skip the
//! watchdog that would distrust it), the guest keeps the TSC as its
//! clocksource. The rate is measured once per machine and remembered, so
//! that every VM (and the template key) sees the same number.

use std::path::Path;
use std::time::{Duration, Instant};

/// How long one measurement counts TSC ticks: 0.1 s gives the rate to a few
/// parts per million, far inside the 1% a clock must keep.
const SPAN: Duration = Duration::from_millis(100);

/// The host TSC's rate in kHz, rounded to whole MHz; `None` where the TSC
/// is not a constant-rate clock (no `constant_tsc` and `nonstop_tsc`).
pub fn rate_khz(cache: &Path) -> Option<u32> {
    let file = cache.join("tsc_khz");
    if let Some(khz) = std::fs::read_to_string(&file).ok().and_then(|text| text.trim().parse().ok()) {
        return Some(khz);
    }
    let khz = measure()?;
    let _ = std::fs::create_dir_all(cache);
    let _ = std::fs::write(&file, khz.to_string());
    Some(khz)
}

#[cfg(target_arch = "x86_64")]
fn measure() -> Option<u32> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let flags = cpuinfo.lines().find(|line| line.starts_with("flags"))?;
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    if !(has("constant_tsc") && has("nonstop_tsc")) {
        return None;
    }
    let rdtsc = || {
        // SAFETY: rdtsc only reads the time-stamp counter; every x86_64
        // CPU has it.
        #[allow(unsafe_code)]
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    };
    let (t0, c0) = (Instant::now(), rdtsc());
    std::thread::sleep(SPAN);
    let (c1, t1) = (rdtsc(), Instant::now());
    let khz = (c1.wrapping_sub(c0)) as f64 / t1.duration_since(t0).as_secs_f64() / 1000.0;
    // Whole MHz: nominal rates are, and a measurement's last digits are noise.
    let khz = (khz / 1000.0).round() * 1000.0;
    // Checked to be in range, and a whole number: the cast is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (khz >= 1000.0 && khz < f64::from(u32::MAX)).then_some(khz as u32)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure() -> Option<u32> {
    None
}
