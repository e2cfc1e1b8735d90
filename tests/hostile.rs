//! Hostile load and hostile hosts: floods, a thousand orphans, garbage on
//! the wire between a job's frames, a host that stops reading, a host that
//! hangs up. The VM cases (`just image`) end with the next job served
//! byte-exact; the host that stops reading (the init on this host, on both
//! Python paths) gets every byte once it reads again.

use std::time::Duration;

use common::{
    Init, Mode, Options, Python, ZOMBIE_SCAN, both_paths, double_forks, restored_vm, run, still_serving, text,
};
use proto::{Env, ErrorKind, Exit, Lang, Request, Run};
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
    let out = run(&mut vm, &Job::shell("echo beside the flood"));
    assert_eq!(text(&out.stdout), "beside the flood\n");
    let out = vm.agent().wait_job(flood, &mut |_, _| {}).unwrap();
    assert_eq!((out.code(), out.stdout.len(), out.stderr.len()), (0, 1 << 20, 1 << 20));
    assert!(out.stdout_truncated && out.stderr_truncated);

    // A thousand orphans, all reaped by PID 1.
    let before = vm.agent().ping().unwrap().orphans_reaped;
    let mut job = Job::python(format!("{}{ZOMBIE_SCAN}", double_forks(1000)));
    job.timeout = Some(Duration::from_secs(300));
    let out = run(&mut vm, &job);
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
        user: None,
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

/// A host that stops reading stalls only itself: for 10 s it reads nothing
/// while a job floods its output, and meanwhile another job's timeout
/// fires on time and orphans are reaped; then every byte arrives, in order.
/// (Checked to fail when a full send queue waits for the host, as it once
/// did: the pings' answers filled it, and the timed job lasted the stall.)
fn a_host_that_stops_reading_stalls_only_itself(py: Python) {
    let mut init = Init::start(Options { mode: Mode::Subreaper, python: py, ..Options::default() });
    let lines = 1_000_000;
    let mut flood = Job::python(format!(
        "import sys\nw = sys.stdout.write\nfor i in range({lines}):\n    w(f'{{i}}\\n')"
    ));
    flood.stdout_limit = 64 << 20;
    let flood = init.agent.submit(&flood).unwrap();
    // End at once, 60 KB each still in their pipes (which hold 64 KB):
    // the init must neither wait for the host to take it nor drop it.
    let bursts: Vec<u32> = (0..2)
        .map(|_| init.agent.submit(&Job::python("import sys; sys.stdout.write('x' * 60_000)")).unwrap())
        .collect();
    let mut sleeper = Job::shell("sleep 100");
    // After the bursts have ended (1.5 s with the drain grace).
    sleeper.timeout = Some(Duration::from_secs(2));
    let sleeper = init.agent.submit(&sleeper).unwrap();
    // Orphans, and their zombies gone while the host still is not reading.
    let reaped = init
        .agent
        .submit(&Job::python(format!(
            "{}\nimport os, time\nfor _ in range(50):\n    z = 0\n    for p in os.listdir('/proc'):\n        try:\n            s = open(f'/proc/{{p}}/status').read()\n        except OSError:\n            continue\n        z += 'State:\\tZ' in s and f'PPid:\\t{{os.getppid()}}\\n' in s\n    if z == 0:\n        break\n    time.sleep(0.1)\nprint('zombies', z)",
            double_forks(10)
        )))
        .unwrap();
    // And pings it cannot answer while the host does not read: it takes
    // what it has room to answer, the rest waits in the port.
    let pings: Vec<u8> =
        (0..PINGS).flat_map(|seq| postcard::to_stdvec_cobs(&Request::Ping { seq }).unwrap()).collect();
    init.agent.send_raw(&pings).unwrap();
    let cpu = init.cpu_time();
    std::thread::sleep(Duration::from_secs(10));
    // Waiting, not spinning: ended jobs' pipes, which epoll reports as hung
    // up whatever the interest, are out of the epoll set while the host is
    // not reading (they kept the loop busy for the whole stall once).
    let spent = init.cpu_time() - cpu;
    assert!(spent < Duration::from_secs(2), "the init used {spent:?} of CPU in a 10 s stall");

    let out = init.agent.wait_job(sleeper, &mut |_, _| {}).unwrap();
    assert!(out.timed_out);
    // Its end is when its leader died, not a drain grace (500 ms) later
    // while its pipes wait for the host.
    assert!(out.duration < Duration::from_millis(2400), "the timeout fired after {:?}", out.duration);
    let out = init.agent.wait_job(reaped, &mut |_, _| {}).unwrap();
    assert_eq!(text(&out.stdout), "SPAWNED:10\nzombies 0\n", "{:?} {}", out.exit, text(&out.stderr));
    for burst in bursts {
        let out = init.agent.wait_job(burst, &mut |_, _| {}).unwrap();
        assert!(out.stdout == vec![b'x'; 60_000] && !out.stdout_truncated, "{} bytes", out.stdout.len());
    }
    let out = init.agent.wait_job(flood, &mut |_, _| {}).unwrap();
    assert!(
        !out.stdout_truncated && out.exit == Exit::Code(0),
        "{:?}, truncated {}, timed out {}: {}",
        out.exit,
        out.stdout_truncated,
        out.timed_out,
        text(&out.stderr)
    );
    let want: String = (0..lines).map(|i| format!("{i}\n")).collect();
    assert!(
        out.stdout == want.as_bytes(),
        "{} bytes came back, {} were written",
        out.stdout.len(),
        want.len()
    );
    for seq in 0..PINGS {
        let pong = init.agent.next_event_for(|e| matches!(e, GuestEvent::Pong { .. })).unwrap();
        assert!(matches!(pong, GuestEvent::Pong { seq: s, .. } if s == seq), "{pong:?} for {seq}");
    }
}

/// Pings sent during the stall: their frames fit the socket's buffer (so
/// the test's own write does not block), their answers overflow the
/// init's send queue.
const PINGS: u32 = 20_000;

both_paths!(a_host_that_stops_reading_stalls_only_itself);
