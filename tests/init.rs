//! The init itself, run on this host outside a VM: as PID 1 of a fresh
//! PID namespace it reaps every process, orphans included; bad input never
//! runs anything and never takes it down (each gets an error frame, and the
//! next request is served); and the binary is a static, non-PIE x86_64 ELF
//! with no dynamic section and no interpreter, small enough to matter.
//!
//! The zombie scenarios fail when orphan reaping is switched off: checked
//! once with `reap_children` waiting only on job leaders, they read
//! `ZOMBIE_COUNT:1` and `ZOMBIE_COUNT:3`, and the subreaper counted 0 of 10
//! orphans.

use common::{Init, LEFTOVERS, Mode, Options, Python, ZOMBIE_SCAN, both_paths, double_forks, text};
use proto::{ErrorKind, Lang};
use vmhost::{AgentError, GuestEvent, Job};

// ---- reaping ---------------------------------------------------------------

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
    let mut init = Init::start(Options { mode: Mode::Pid1, python: py, ..Options::default() });
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
    let mut init = Init::start(Options { mode: Mode::Pid1, python: py, ..Options::default() });
    for n in [1u32, 20, 50] {
        let (scan, reaped) = orphans_then_scan(&mut init, &double_forks(n as usize), false);
        assert_eq!(scan, "ZOMBIE_COUNT:0", "after {n} orphans");
        assert!(reaped >= n, "{reaped} orphans reaped after {n} double forks");
    }
}

fn shell_orphans_leave_no_zombie(py: Python) {
    let mut init = Init::start(Options { mode: Mode::Pid1, python: py, ..Options::default() });
    let spawner = "for i in 1 2 3; do sh -c 'sh -c \"sleep 0.1\" &'; done; sleep 0.4";
    let (scan, reaped) = orphans_then_scan(&mut init, spawner, true);
    assert_eq!(scan, "ZOMBIE_COUNT:0");
    assert!(reaped >= 3, "{reaped} shell orphans reaped");
}

fn subreaper_reaps_orphans_outside_a_namespace(py: Python) {
    let mut init = Init::start(Options { mode: Mode::Subreaper, python: py, ..Options::default() });
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
    let mut init = Init::start(Options { mode: Mode::Pid1, python: py, ..Options::default() });
    // A daemon leaves the job's session and process group, so the group
    // kill cannot reach it.
    let out = init.shell("setsid sh -c 'sleep 100' & sleep 0.2; echo started");
    assert_eq!(text(&out.stdout), "started\n");
    // Any process of the job user but the scanning job would be a leftover.
    let out = init.python(LEFTOVERS);
    assert_eq!(text(&out.stdout), "[]\n");
}

fn shutdown_as_pid_1_ends_every_process(py: Python) {
    let mut init = Init::start(Options { mode: Mode::Pid1, python: py, ..Options::default() });
    let mut job = Job::shell("setsid sleep 100 & echo started");
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

// ---- refusals --------------------------------------------------------------

fn refused(init: &mut Init, job: &Job) -> (ErrorKind, String) {
    match init.agent.run(job, |_, _| {}) {
        Err(AgentError::Refused { kind, message }) => (kind, message),
        other => panic!("expected a refusal for {job:?}, got {other:?}"),
    }
}

fn next_error(init: &mut Init) -> (Option<u32>, ErrorKind, String) {
    match init.agent.next_event().unwrap() {
        GuestEvent::Error { job, kind, message } => (job, kind, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn invalid_jobs_are_refused_by_field_and_nothing_runs() {
    let mut init = Init::start(Options::default());
    let with_env = |name: &str, value: &str| {
        let mut job = Job::shell("echo should not run");
        job.env = vec![(name.into(), value.into())];
        job
    };
    let cases: Vec<(Job, &str)> = vec![
        (Job::python(""), "code: empty"),
        (Job::python(" \n\t  \n"), "code: only whitespace"),
        (Job::shell("echo a\0b"), "code: contains a NUL byte at offset 6"),
        (with_env("", "x"), "env[0].name: empty"),
        (with_env("A=B", "x"), "env[0].name: contains '='"),
        (with_env("A\0", "x"), "env[0].name: contains a NUL byte"),
        (with_env("A", "x\0y"), "env[0].value: contains a NUL byte"),
        (Job::new(Lang::Unknown(7), "print(1)"), "lang: unknown language 7"),
        (Job { cwd: Some("/nonexistent/dir".into()), ..Job::shell("pwd") }, "cwd: no such directory"),
        (Job { cwd: Some("".into()), ..Job::shell("pwd") }, "cwd: empty"),
    ];
    for (job, want) in cases {
        let (kind, message) = refused(&mut init, &job);
        assert_eq!(kind, ErrorKind::InvalidJob, "{want}");
        assert!(message.starts_with(want), "got {message:?}, want {want:?}");
    }
    let stats = init.agent.ping().unwrap();
    assert_eq!((stats.jobs_started, stats.jobs_active), (0, 0), "nothing ran, no slot leaked");
    assert_eq!(text(&init.shell("echo fine").stdout), "fine\n");
}

#[test]
fn malformed_oversize_and_unknown_frames_get_errors() {
    let mut init = Init::start(Options::default());
    // Not valid COBS.
    init.agent.send_raw(&[0x09, 0x41, 0x42, 0x00]).unwrap();
    assert_eq!(next_error(&mut init).1, ErrorKind::Malformed);
    // Valid COBS, not a request: tag 0 (Run) and nothing else.
    init.agent.send_raw(&[0x01, 0x01, 0x00]).unwrap();
    assert_eq!(next_error(&mut init).1, ErrorKind::Malformed);
    // Valid COBS for an empty message: no tag at all (this once panicked
    // PID 1 in its unknown-tag check).
    init.agent.send_raw(&[0x01, 0x00]).unwrap();
    assert_eq!(next_error(&mut init).1, ErrorKind::Malformed);
    // A tag from a newer host.
    init.agent.send_raw(&[0x03, 0x09, 0x01, 0x00]).unwrap();
    assert_eq!(next_error(&mut init).1, ErrorKind::UnknownMessage);
    // Longer than MAX_FRAME, then garbage, then a good ping.
    let mut big = vec![0x41u8; proto::MAX_FRAME + 10];
    big.push(0);
    init.agent.send_raw(&big).unwrap();
    assert_eq!(next_error(&mut init).1, ErrorKind::Oversize);
    init.agent.send_raw(&[0, 0, 0]).unwrap();
    assert_eq!(init.agent.ping().unwrap().jobs_started, 0);
    assert_eq!(text(&init.python("print('alive')").stdout), "alive\n");
}

#[test]
fn unknown_duplicate_and_overflowing_jobs() {
    let mut init = Init::start(Options::default());
    init.agent.send(&proto::Request::Code { job: 77, data: b"x" }).unwrap();
    assert_eq!(next_error(&mut init), (Some(77), ErrorKind::UnknownJob, "no job with this id".into()));
    init.agent.signal(78, vmhost::Signal::Kill).unwrap();
    assert_eq!(next_error(&mut init).1, ErrorKind::UnknownJob);

    // Fill every slot with a job that waits, then one more.
    let mut ids = Vec::new();
    for _ in 0..16 {
        let mut job = Job::shell("sleep 30");
        job.timeout = None;
        ids.push(init.agent.submit(&job).unwrap());
    }
    // A refused header's code chunks are refused too: the running job with
    // that id does not take them, and an id that never opened is unknown.
    init.agent.submit_as(ids[0], &Job::shell("echo dup")).unwrap();
    assert_eq!(next_error_for(&mut init, ids[0]), ErrorKind::DuplicateJob);
    assert_eq!(next_error_for(&mut init, ids[0]), ErrorKind::InvalidJob);
    let extra = init.agent.submit(&Job::shell("echo one too many")).unwrap();
    assert_eq!(next_error_for(&mut init, extra), ErrorKind::Busy);
    assert_eq!(next_error_for(&mut init, extra), ErrorKind::UnknownJob);
    for &id in &ids {
        init.agent.signal(id, vmhost::Signal::Kill).unwrap();
    }
    for id in ids {
        assert_eq!(init.agent.wait_job(id, &mut |_, _| {}).unwrap().code(), 137);
    }
    assert_eq!(text(&init.shell("echo room again").stdout), "room again\n");
}

#[test]
fn code_longer_than_announced_is_refused() {
    let mut init = Init::start(Options::default());
    let job = Job::shell("echo hi");
    init.agent.submit_as(5, &job).unwrap();
    // The job already has its 7 bytes and started; more code is refused.
    init.agent.send(&proto::Request::Code { job: 5, data: b"more" }).unwrap();
    let err = init.agent.next_event_for(|e| matches!(e, GuestEvent::Error { .. })).unwrap();
    assert!(matches!(err, GuestEvent::Error { job: Some(5), kind: ErrorKind::InvalidJob, .. }), "{err:?}");
    assert_eq!(text(&init.agent.wait_job(5, &mut |_, _| {}).unwrap().stdout), "hi\n");
}

fn next_error_for(init: &mut Init, id: u32) -> ErrorKind {
    match init
        .agent
        .next_event_for(|e| matches!(e, GuestEvent::Error { job: Some(j), .. } if *j == id))
        .unwrap()
    {
        GuestEvent::Error { kind, .. } => kind,
        _ => unreachable!(),
    }
}

#[test]
fn refresh_outside_a_vm_is_refused() {
    // The host's clock and random pool are not the init's to set.
    let mut init = Init::start(Options::default());
    init.agent.send(&proto::Request::Refresh { seq: 3, realtime_ns: 1, entropy: &[7; 32] }).unwrap();
    let (job, kind, message) = next_error(&mut init);
    assert_eq!((job, kind), (None, ErrorKind::Refresh));
    assert!(message.starts_with("refresh: not in a VM"), "{message}");
    assert_eq!(text(&init.shell("echo fine").stdout), "fine\n");
}

// ---- the binary ------------------------------------------------------------

/// Program header types that would mean a dynamic loader gets involved.
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const ET_EXEC: u16 = 2;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn init_is_a_static_non_pie_elf_without_libc() {
    let elf = std::fs::read(common::init_binary()).unwrap();
    assert_eq!(&elf[..5], b"\x7fELF\x02", "64-bit ELF");
    assert_eq!(u16_at(&elf, 16), ET_EXEC, "ET_EXEC: not position-independent");
    let (phoff, phentsize, phnum) = (
        usize::try_from(u64_at(&elf, 32)).unwrap(),
        usize::from(u16_at(&elf, 54)),
        usize::from(u16_at(&elf, 56)),
    );
    let mut loads = Vec::new();
    for i in 0..phnum {
        let ph = &elf[phoff + i * phentsize..];
        let (kind, flags) = (u32_at(ph, 0), u32_at(ph, 4));
        assert!(kind != PT_DYNAMIC && kind != PT_INTERP, "program header {i} is dynamic or an interpreter");
        if kind == 1 {
            loads.push(flags);
        }
    }
    // Exactly one R+X and one R+W segment: no page both writable and executable.
    assert_eq!(loads, vec![5, 6]);
    for needle in [&b"GLIBC_"[..], b"libc.so", b"ld-linux"] {
        assert!(
            !elf.windows(needle.len()).any(|w| w == needle),
            "{:?} inside",
            String::from_utf8_lossy(needle)
        );
    }
    assert!(elf.len() <= 64 * 1024, "{} bytes: over the 64 KiB budget", elf.len());
}
