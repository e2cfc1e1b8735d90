//! A cgroup per job in a VM, and jobs that try to hurt each other: a
//! memory hog, a fork bomb, a leftover `setsid` daemon, a full job table.
//! After each, the next job runs normally. Needs the guest image
//! (`just image`).

mod common;

use std::time::Duration;

use common::{restored_vm, still_serving, text, vm_run};
use vmhost::{ErrorKind, Job, Outcome, Vm};

fn wait(vm: &mut Vm, id: u32) -> Outcome {
    vm.agent().wait_job(id, &mut |_, _| {}).unwrap()
}

#[test]
fn each_job_has_a_cgroup_and_reports_its_usage() {
    let mut vm = restored_vm();
    let cgroup =
        "print(open('/proc/self/cgroup').read().strip())\nx = bytearray(32 << 20)\nsum(range(3_000_000))";
    let first = vm_run(&mut vm, &Job::python(cgroup));
    let second = vm_run(&mut vm, &Job::shell("cat /proc/self/cgroup"));
    let (a, b) = (text(&first.stdout), text(&second.stdout));
    assert!(a.starts_with("0::/j") && b.starts_with("0::/j") && a.trim() != b.trim(), "{a:?} {b:?}");
    // 32 MiB touched, and CPU spent.
    assert!(first.peak_memory > 32 << 20 && first.peak_memory < 128 << 20, "{}", first.peak_memory);
    assert!(first.cpu_time > Duration::from_millis(10), "{:?}", first.cpu_time);
    assert!(second.peak_memory > 0);

    // At most 1024 processes per job, not per user.
    let fill = "import os\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            os.execv('/bin/sleep', ['sleep', '120'])\n        n += 1\nexcept OSError as e:\n    print(n, e.errno)";
    let mut job = Job::python(fill);
    job.timeout = Some(Duration::from_secs(300));
    let out = vm_run(&mut vm, &job);
    assert_eq!(text(&out.stdout), "1023 11\n", "{}", text(&out.stderr));
    still_serving(&mut vm);
    vm.shutdown();
}

#[test]
fn a_memory_hog_is_killed_alone() {
    let mut vm = restored_vm();
    let neighbour = vm
        .agent()
        .submit(&Job::python(
            "import time\nx = bytearray(16 << 20)\ntime.sleep(3)\nprint('neighbour', len(x))",
        ))
        .unwrap();
    let mut hog = Job::python("x = []\nwhile True:\n    x.append(bytearray(1 << 20))");
    hog.memory_limit_mb = Some(48);
    let out = vm_run(&mut vm, &hog);
    assert_eq!(out.code(), 137, "OOM-killed: {}", text(&out.stderr));
    assert!(out.peak_memory <= 48 << 20 && out.peak_memory > 40 << 20, "{}", out.peak_memory);
    let out = wait(&mut vm, neighbour);
    assert_eq!((text(&out.stdout), out.code()), ("neighbour 16777216\n".into(), 0));
    still_serving(&mut vm);
    vm.shutdown();
}

#[test]
fn a_fork_bomb_stays_in_its_job() {
    let mut vm = restored_vm();
    let bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass";
    let mut job = Job::python(bomb);
    job.timeout = Some(Duration::from_secs(20));
    let bomb = vm.agent().submit(&job).unwrap();
    // Its neighbour gets its share of the CPU and its processes.
    let out = vm_run(
        &mut vm,
        &Job::shell("for i in 1 2 3; do (echo $i); done; python3 -c 'print(sum(range(10**5)))'"),
    );
    assert_eq!((text(&out.stdout), out.code()), ("1\n2\n3\n4999950000\n".into(), 0), "{}", text(&out.stderr));
    let out = wait(&mut vm, bomb);
    // Stopped at its deadline, or by its memory limit (its page tables).
    assert!(out.timed_out || out.code() == 137, "{:?}", out.exit);
    // Nothing of it is left.
    let left = vm_run(&mut vm, &Job::shell("ps -o user,args | grep -c '^user.*[p]ython'"));
    assert_eq!(text(&left.stdout), "0\n");
    still_serving(&mut vm);
    vm.shutdown();
}

#[test]
fn a_setsid_daemon_ends_with_its_job_while_others_run() {
    let mut vm = restored_vm();
    let mut other = Job::shell("sleep 8; echo other");
    other.timeout = Some(Duration::from_secs(60));
    let other = vm.agent().submit(&other).unwrap();
    let out = vm_run(&mut vm, &Job::shell("setsid sleep 1000 & echo started"));
    assert_eq!(text(&out.stdout), "started\n");
    let left = vm_run(&mut vm, &Job::shell("ps -o args | grep -c '^sleep 1000'"));
    assert_eq!(text(&left.stdout), "0\n", "the daemon went with its job");
    assert_eq!(text(&wait(&mut vm, other).stdout), "other\n");

    // Sixteen jobs at once; a seventeenth is refused as Busy.
    let ids: Vec<u32> =
        (0..16).map(|i| vm.agent().submit(&Job::shell(format!("sleep 2; echo {i}"))).unwrap()).collect();
    let err = run_refused(&mut vm);
    assert_eq!(err, ErrorKind::Busy);
    for (i, id) in ids.into_iter().enumerate() {
        assert_eq!(text(&wait(&mut vm, id).stdout), format!("{i}\n"));
    }
    still_serving(&mut vm);
    vm.shutdown();
}

fn run_refused(vm: &mut Vm) -> ErrorKind {
    match vm.agent().run(&Job::shell("echo 17"), |_, _| {}) {
        Err(vmhost::AgentError::Refused { kind, .. }) => kind,
        other => panic!("not refused: {other:?}"),
    }
}
