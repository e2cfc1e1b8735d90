//! Hostile load on a VM: floods, a thousand orphans, garbage on the wire
//! between a job's frames, a host that hangs up, a QEMU that is killed, and
//! a job reaching for what is not its own. After each, PID 1 serves the next
//! job byte-exact. Needs the guest image (`just image`).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ZOMBIE_SCAN, double_forks, restored_vm, still_serving, template_ready, text, vm_run};
use proto::{Env, ErrorKind, Lang, Request, Run};
use vmhost::{GuestEvent, Job};

#[test]
fn floods_and_orphans() {
    let mut vm = restored_vm();
    // 100 MB at full speed on each stream: 1 MiB of each kept, flagged.
    let flood =
        "import os\nb = b'x' * (1 << 20)\nfor _ in range(100):\n    os.write(1, b)\n    os.write(2, b)";
    let mut job = Job::python(flood);
    job.timeout = Some(Duration::from_secs(300));
    let flood = vm.agent().submit(&job).unwrap();
    // The VM answers meanwhile.
    let out = vm_run(&mut vm, &Job::shell("echo beside the flood"));
    assert_eq!(text(&out.stdout), "beside the flood\n");
    let out = vm.agent().wait_job(flood, &mut |_, _| {}).unwrap();
    assert_eq!((out.code(), out.stdout.len(), out.stderr.len()), (0, 1 << 20, 1 << 20));
    assert!(out.stdout_truncated && out.stderr_truncated);

    // A thousand orphans, all reaped by PID 1.
    let before = vm.agent().ping().unwrap().orphans_reaped;
    let mut job = Job::python(format!("{}{ZOMBIE_SCAN}", double_forks(1000)));
    job.timeout = Some(Duration::from_secs(300));
    let out = vm_run(&mut vm, &job);
    assert!(
        text(&out.stdout).contains("SPAWNED:1000") && text(&out.stdout).contains("ZOMBIE_COUNT:0"),
        "{}",
        text(&out.stdout)
    );
    assert!(vm.agent().ping().unwrap().orphans_reaped - before >= 1000);
    still_serving(&mut vm);
    vm.shutdown();
}

#[test]
fn garbage_between_a_jobs_frames_hurts_only_itself() {
    let mut vm = restored_vm();
    let code = b"import sys\nsys.stdout.write('z' * 100000)\n";
    let run_frame = postcard::to_stdvec_cobs(&Request::Run(Run {
        job: 4242,
        lang: Lang::Python,
        code_len: u32::try_from(code.len()).unwrap(),
        env: heapless::Vec::<Env<'_>, { proto::MAX_ENV }>::new(),
        cwd: None,
        timeout_ms: 60_000,
        stdout_limit: 1 << 20,
        stderr_limit: 1 << 20,
        fresh: false,
        stdin: false,
        memory_limit_mb: 0,
    }))
    .unwrap();
    let (first, rest) = code.split_at(10);
    let chunk = |data| postcard::to_stdvec_cobs(&Request::Code { job: 4242, data }).unwrap();
    let garbage: [Vec<u8>; 4] = [
        vec![0x13, 0x37, 0xff, 0x00],                        // not a request
        vec![0x55; 70_000].into_iter().chain([0]).collect(), // oversize
        {
            let mut f = chunk(b"cut");
            f.truncate(f.len() - 3);
            f.push(0);
            f
        }, // truncated
        vec![0x02, 0x63, 0x00],                              // an unknown message tag
    ];
    let agent = vm.agent();
    agent.send_raw(&run_frame).unwrap();
    agent.send_raw(&garbage[0]).unwrap();
    agent.send_raw(&garbage[1]).unwrap();
    agent.send_raw(&chunk(first)).unwrap();
    agent.send_raw(&garbage[2]).unwrap();
    agent.send_raw(&garbage[3]).unwrap();
    agent.send_raw(&chunk(rest)).unwrap();
    let out = agent.wait_job(4242, &mut |_, _| {}).unwrap();
    assert_eq!(out.stdout, vec![b'z'; 100_000]);
    let mut kinds = Vec::new();
    while let Ok(GuestEvent::Error { job: None, kind, .. }) =
        agent.next_event_for(|e| matches!(e, GuestEvent::Error { job: None, .. }))
    {
        kinds.push(kind);
        if kinds.len() == 4 {
            break;
        }
    }
    kinds.sort_by_key(|k| format!("{k:?}"));
    assert_eq!(
        kinds,
        [ErrorKind::Malformed, ErrorKind::Malformed, ErrorKind::Oversize, ErrorKind::UnknownMessage]
    );
    still_serving(&mut vm);
    vm.shutdown();
}

/// A `vmexec` with a running job, and the QEMU of its VM (found by the
/// private TMPDIR on its command line).
fn vmexec_with_a_job(tmp: &std::path::Path) -> (std::process::Child, rustix::process::Pid) {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmexec"))
        .args(["run", "-l", "sh", "-c", "echo running; sleep 100"])
        .env("TMPDIR", tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 8];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    let qemu = qemu_under(tmp);
    assert_eq!(qemu.len(), 1);
    (child, rustix::process::Pid::from_raw(qemu[0]).unwrap())
}

fn qemu_under(tmp: &std::path::Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline).contains(&*tmp.to_string_lossy()).then_some(())?;
            e.file_name().to_str()?.parse().ok()
        })
        .collect()
}

#[test]
fn a_host_that_hangs_up_ends_its_vm() {
    let mut vm = restored_vm();
    let id = vm.agent().submit(&Job::shell("echo running; sleep 100")).unwrap();
    let _ = vm.agent().next_event_for(|e| matches!(e, GuestEvent::Output { job, .. } if *job == id)).unwrap();
    vm.agent().close();
    // The init reads the end of its port, kills the job, powers off.
    for _ in 0..300 {
        if vm.has_exited() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(vm.has_exited(), "QEMU still runs after its host hung up:\n{}", vm.console());
}

#[test]
fn a_host_that_dies_takes_its_vm_along() {
    template_ready();
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, _) = vmexec_with_a_job(tmp.path());
    child.kill().unwrap();
    child.wait().unwrap();
    for _ in 0..100 {
        if qemu_under(tmp.path()).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(qemu_under(tmp.path()).is_empty(), "QEMU outlived its host");
    // Its VM's directory went once QEMU had connected: nothing is left.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn vmexec_says_when_qemu_is_killed() {
    template_ready();
    let tmp = tempfile::tempdir().unwrap();
    let (child, qemu) = vmexec_with_a_job(tmp.path());
    rustix::process::kill_process(qemu, rustix::process::Signal::KILL).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("QEMU exited") || stderr.contains("closed the agent connection"), "{stderr}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "no socket or temp file left");
}

#[test]
fn a_job_cannot_reach_beyond_itself() {
    let mut vm = restored_vm();
    // A neighbour to attack.
    let neighbour = vm.agent().submit(&Job::shell("echo $$; sleep 30")).unwrap();
    let event =
        vm.agent().next_event_for(|e| matches!(e, GuestEvent::Output { job, .. } if *job == neighbour));
    let GuestEvent::Output { data, .. } = event.unwrap() else { unreachable!("filtered on Output") };
    let pid = text(&data).trim().to_owned();
    let probe = format!(
        r#"import ctypes, errno, os, time
libc = ctypes.CDLL(None, use_errno=True)
def errname(f):
    try:
        f()
        return 'allowed'
    except OSError as e:
        return errno.errorcode[e.errno]
def call(r):
    if r != 0:
        raise OSError(ctypes.get_errno(), '')
print('kill 1', errname(lambda: os.kill(1, 9)))
print('/proc/1', errname(lambda: os.listdir('/proc/1/fd')))
print('port', errname(lambda: open('/dev/vport2p1', 'rb')))
print('vda', errname(lambda: open('/dev/vda', 'rb')))
print('ptrace', errname(lambda: call(libc.ptrace(16, {pid}, None, None))))
print('mount', errname(lambda: call(libc.mount(b'none', b'/mnt', b'tmpfs', 0, None))))
print('clock', errname(lambda: time.clock_settime(time.CLOCK_REALTIME, 0)))
"#
    );
    let out = vm_run(&mut vm, &Job::python(probe));
    assert_eq!(
        text(&out.stdout),
        "kill 1 EPERM\n/proc/1 ENOENT\nport EACCES\nvda EACCES\nptrace EPERM\nmount EPERM\nclock EPERM\n",
        "{}",
        text(&out.stderr)
    );
    vm.agent().signal(neighbour, 9).unwrap();
    let _ = vm.agent().wait_job(neighbour, &mut |_, _| {});
    still_serving(&mut vm);
    vm.shutdown();
}
