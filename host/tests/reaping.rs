//! The PID-1 suite: the init as PID 1 of a fresh PID namespace reaps every
//! process, orphans included. The zombie scenarios fail when orphan reaping
//! is switched off: checked once with `reap_children` waiting only on job
//! leaders, they read `ZOMBIE_COUNT:1` and `ZOMBIE_COUNT:3`, and the
//! subreaper counted 0 of 10 orphans.

mod common;

use common::{Init, LEFTOVERS, Mode, Python, ZOMBIE_SCAN, double_forks, text};

/// Runs `spawner`, then the zombie scan; returns the scan's line and how
/// many orphans the init counted meanwhile.
fn orphans_then_scan(init: &mut Init, spawner: &str, shell: bool) -> (String, u32) {
    let before = init.agent.ping().unwrap().orphans_reaped;
    let out = if shell { init.shell(spawner) } else { init.python(spawner) };
    assert_eq!(out.code(), 0, "spawner failed: {}", text(&out.stderr));
    let scan = init.python(ZOMBIE_SCAN);
    let reaped = init.agent.ping().unwrap().orphans_reaped - before;
    (text(&scan.stdout).trim().to_owned(), reaped)
}

fn double_forked_orphan_is_adopted_by_pid_1(py: Python) {
    let mut init = Init::start_on(py, Mode::Pid1);
    let out = init.python(
        "import os, time\n\
         r, w = os.pipe()\n\
         if os.fork() == 0:\n\
         \x20   if os.fork() == 0:\n\
         \x20       os.read(r, 1)\n\
         \x20       print(f'ORPHAN_PPID:{os.getppid()}', flush=True)\n\
         \x20       os._exit(0)\n\
         \x20   os._exit(0)\n\
         os.wait()\n\
         time.sleep(0.1)\n\
         os.write(w, b'x')\n\
         time.sleep(0.5)",
    );
    assert_eq!(text(&out.stdout), "ORPHAN_PPID:1\n");
}

fn one_twenty_and_fifty_orphans_leave_no_zombie(py: Python) {
    let mut init = Init::start_on(py, Mode::Pid1);
    for n in [1u32, 20, 50] {
        let (scan, reaped) = orphans_then_scan(&mut init, &double_forks(n as usize), false);
        assert_eq!(scan, "ZOMBIE_COUNT:0", "after {n} orphans");
        assert!(reaped >= n, "{reaped} orphans reaped after {n} double forks");
    }
}

fn shell_orphans_leave_no_zombie(py: Python) {
    let mut init = Init::start_on(py, Mode::Pid1);
    let spawner = "for i in 1 2 3; do sh -c 'sh -c \"sleep 0.1\" &'; done; sleep 0.4";
    let (scan, reaped) = orphans_then_scan(&mut init, spawner, true);
    assert_eq!(scan, "ZOMBIE_COUNT:0");
    assert!(reaped >= 3, "{reaped} shell orphans reaped");
}

fn subreaper_reaps_orphans_outside_a_namespace(py: Python) {
    let mut init = Init::start_on(py, Mode::Subreaper);
    let before = init.agent.ping().unwrap().orphans_reaped;
    let out = init.python(&double_forks(10));
    assert_eq!(text(&out.stdout), "SPAWNED:10\n");
    // The orphans may still be exiting: let the init catch up.
    let mut reaped = 0;
    for _ in 0..100 {
        reaped = init.agent.ping().unwrap().orphans_reaped - before;
        if reaped >= 10 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(reaped, 10);
}

fn nothing_outlives_its_job_when_the_init_is_idle(py: Python) {
    let mut init = Init::start_on(py, Mode::Pid1);
    // A daemon leaves the job's session and process group, so the group
    // kill cannot reach it.
    let out = init.shell("setsid sh -c 'sleep 100' & sleep 0.2; echo started");
    assert_eq!(text(&out.stdout), "started\n");
    // Any process of the job user but the scanning job would be a leftover.
    let out = init.python(LEFTOVERS);
    assert_eq!(text(&out.stdout), "[]\n");
}

fn shutdown_as_pid_1_ends_every_process(py: Python) {
    let mut init = Init::start_on(py, Mode::Pid1);
    let mut job = vmhost::Job::shell("setsid sleep 100 & echo started");
    job.timeout = None;
    assert_eq!(text(&init.run(&job).stdout), "started\n");
    let status = init.shutdown();
    assert!(status.success(), "unshare reports the init's exit: {status}");
}

both_paths!(
    double_forked_orphan_is_adopted_by_pid_1,
    one_twenty_and_fifty_orphans_leave_no_zombie,
    shell_orphans_leave_no_zombie,
    subreaper_reaps_orphans_outside_a_namespace,
    nothing_outlives_its_job_when_the_init_is_idle,
    shutdown_as_pid_1_ends_every_process,
);
