//! Snapshot templates: every restored VM is its own machine (randomness,
//! wall clock), guest clocks are real clocks, and a template is made once,
//! remade when its inputs change and never trusted when damaged. (That it
//! is never left half-made, `vmexec` interrupted, is in `cli`.) Needs the
//! guest image (`just image`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{cold_vm, ensure_template, fresh_config, restored_vm, run, text, vm_config};
use vmhost::template::{Template, list};
use vmhost::{Job, Start, Vm, VmConfig};

fn seconds_since_epoch() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

const RANDOMNESS: &str = "import os, uuid, random, secrets\n\
                          print(os.urandom(16).hex(), uuid.uuid4(), random.random(), secrets.token_hex())";

#[test]
fn restored_vms_draw_different_random_numbers_and_know_the_time() {
    let mut a = restored_vm();
    let mut b = restored_vm();
    let one = text(&run(&mut a, &Job::python(RANDOMNESS)).stdout);
    let two = text(&run(&mut b, &Job::python(RANDOMNESS)).stdout);
    let (one, two): (Vec<&str>, Vec<&str>) =
        (one.split_whitespace().collect(), two.split_whitespace().collect());
    assert_eq!((one.len(), two.len()), (4, 4), "{one:?} {two:?}");
    for (what, (x, y)) in
        ["os.urandom", "uuid4", "random.random", "secrets.token_hex"].iter().zip(one.iter().zip(&two))
    {
        assert_ne!(x, y, "{what} is the same in two restored VMs");
    }
    for vm in [&mut a, &mut b] {
        let before = seconds_since_epoch();
        let out = run(vm, &Job::python("import time; print(time.time())"));
        let after = seconds_since_epoch();
        let guest: f64 = text(&out.stdout).trim().parse().unwrap();
        assert!(guest > before - 1.0 && guest < after + 1.0, "guest {guest}, host {before}..{after}");
    }
}

/// Readings of `perf_counter_ns` have nanosecond grain: on jiffies they are
/// multiples of 4 ms, on the TSC their differences share no big factor.
const CLOCK_GRAIN: &str = "import math, time\n\
                           t = [time.perf_counter_ns() for _ in range(2000)]\n\
                           print(math.gcd(*[b - a for a, b in zip(t, t[1:])]))";

fn clock_grain_ns(vm: &mut Vm) -> u64 {
    text(&run(vm, &Job::python(CLOCK_GRAIN)).stdout).trim().parse().unwrap()
}

/// Fine-grained clocks, and 10 s of host time read by the guest's boot
/// clock, bracketed by the host times before and after each reading.
fn guest_clock_rate(vm: &mut Vm) {
    // The kernel's own calibration under TCG succeeds on some boots and
    // falls back to jiffies on others: only the host's rate is reliable.
    let cmdline = text(&run(vm, &Job::shell("cat /proc/cmdline")).stdout);
    assert!(cmdline.contains(" tsc_early_khz=") && cmdline.contains(" tsc=reliable"), "{cmdline}");
    let grain = clock_grain_ns(vm);
    assert!(grain <= 1000, "perf_counter_ns steps by {grain} ns");

    let uptime = |vm: &mut Vm| {
        let before = Instant::now();
        let out = run(vm, &Job::shell("cut -d' ' -f1 /proc/uptime"));
        (before, Instant::now(), text(&out.stdout).trim().parse::<f64>().unwrap())
    };
    let (before_a, after_a, a) = uptime(vm);
    std::thread::sleep(Duration::from_secs(10));
    let (before_b, after_b, b) = uptime(vm);
    let (shortest, longest) = ((before_b - after_a).as_secs_f64(), (after_b - before_a).as_secs_f64());
    let guest = b - a;
    // /proc/uptime has 10 ms steps; 1% of 10 s is 100 ms.
    assert!(
        guest >= shortest * 0.99 - 0.01 && guest <= longest * 1.01 + 0.01,
        "the guest counted {guest:.3} s while the host counted {shortest:.3}..{longest:.3} s"
    );
    // Still fine-grained: a kernel that distrusts its TSC switches to
    // jiffies a few seconds after boot (from `tsc-early` to `tsc` if not).
    let source = run(vm, &Job::shell("cat /sys/devices/system/clocksource/clocksource0/current_clocksource"));
    assert_eq!(text(&source.stdout), "tsc\n");
    let grain = clock_grain_ns(vm);
    assert!(grain <= 1000, "perf_counter_ns steps by {grain} ns after 10 s");
}

#[test]
fn a_restored_guest_clock_is_fine_grained_and_keeps_time() {
    guest_clock_rate(&mut restored_vm());
}

#[test]
fn a_cold_guest_clock_is_fine_grained_and_keeps_time() {
    guest_clock_rate(&mut cold_vm());
}

#[test]
fn a_damaged_template_means_a_cold_boot_with_a_warning_then_a_new_template() {
    let cache = tempfile::tempdir().unwrap();
    let config = fresh_config(cache.path());
    ensure_template(&config);
    let template = Template::locate(&config, config.accel).unwrap();

    // Same size, other bytes: only restoring it can tell.
    let size = std::fs::metadata(template.state()).unwrap().len();
    std::fs::write(template.state(), vec![0x5a; usize::try_from(size).unwrap()]).unwrap();
    let mut vm = Vm::boot(&config).unwrap();
    assert_eq!(vm.start(), Start::Cold);
    assert!(matches!(vm.fallback(), Some(vmhost::Fallback::Restore(_))), "{:?}", vm.fallback());
    let why = vm.fallback().expect("a warning").to_string();
    assert!(why.contains("cannot restore the snapshot template") && !why.contains('\n'), "{why}");
    assert_eq!(text(&run(&mut vm, &Job::shell("echo fine")).stdout), "fine\n");
    vm.shutdown();

    // The next VM makes a new template and restores it.
    let vm = Vm::boot(&config).unwrap();
    assert_eq!((vm.start(), vm.fallback().map(|f| f.to_string())), (Start::Restored, None));
    vm.shutdown();

    // Truncated: seen before any restore is tried.
    let ram = std::fs::OpenOptions::new().write(true).open(template.ram()).unwrap();
    ram.set_len(1 << 20).unwrap();
    let vm = Vm::boot(&config).unwrap();
    assert_eq!(vm.start(), Start::Cold);
    let truncated = vmhost::Fallback::Unusable(vmhost::error::Unusable::Truncated);
    assert!(
        matches!(vm.fallback(), Some(f) if f.to_string() == truncated.to_string()),
        "{:?}",
        vm.fallback()
    );
    assert!(!template.dir().exists(), "the damaged template is gone");
}

#[test]
fn a_template_is_remade_when_the_rootfs_changes() {
    let cache = tempfile::tempdir().unwrap();
    let rootfs = cache.path().join("rootfs.erofs");
    std::fs::copy(vm_config().rootfs, &rootfs).unwrap();
    let config = VmConfig { rootfs: rootfs.clone(), ..fresh_config(cache.path()) };
    let vm = Vm::boot(&config).unwrap();
    assert_eq!((vm.start(), vm.fallback().map(|f| f.to_string())), (Start::Restored, None));
    vm.shutdown();
    let first = Template::locate(&config, config.accel).unwrap().dir();

    // Rewritten in place with the same bytes: a new ctime, a new key.
    let bytes = std::fs::read(&rootfs).unwrap();
    std::fs::write(&rootfs, bytes).unwrap();
    let vm = Vm::boot(&config).unwrap();
    assert_eq!((vm.start(), vm.fallback().map(|f| f.to_string())), (Start::Restored, None));
    vm.shutdown();
    let second = Template::locate(&config, config.accel).unwrap().dir();
    assert_ne!(first, second);
    let all = list(&config, config.accel).unwrap();
    assert!(all.iter().any(|t| t.dir == second && t.current), "{all:?}");
    assert!(!first.exists(), "the template of the old rootfs is swept: {all:?}");
}
