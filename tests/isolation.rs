//! What a job cannot do, reach, or do to the others.
//!
//! On this host: a job may not keep root, gain privileges, read its input
//! from the host or keep the init's descriptors; the Python zygote is out of
//! its reach, nothing it does reaches the next job, and a zygote that dies
//! is replaced while jobs go on. The zygote tests run the init as PID 1 of
//! a namespace whose /proc shows the zygote (a VM's hides it: `hidepid=2`),
//! so that every attack has a target.
//!
//! In a VM (`just image`): a cgroup per job, and jobs that try to hurt each
//! other (a memory hog, a fork bomb, a leftover `setsid` daemon, a full job
//! table) or to reach beyond themselves. After each, the next job runs
//! normally.

use std::time::Duration;

use common::{Init, Mode, Options, Python, both_paths, is_root, restored_vm, run, still_serving, text};
use vmhost::{ErrorKind, GuestEvent, Job, Outcome, Vm};

// ---- privileges and descriptors --------------------------------------------

fn jobs_run_unprivileged_with_no_new_privs(py: Python) {
    assert!(is_root(), "run as root: the init drops to uid 1000 only when it has root to drop");
    let mut init = Init::start(Options { python: py, ..Options::default() });
    let out = init.python(
        "import os, resource\n\
         print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())\n\
         print([l for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0].split())\n\
         print(resource.getrlimit(resource.RLIMIT_NPROC), resource.getrlimit(resource.RLIMIT_CORE))",
    );
    assert_eq!(text(&out.stdout), "1000 1000 1000 []\n['NoNewPrivs:', '1']\n(1024, 1024) (0, 0)\n");
    // Root's files stay root's.
    let out = init.shell("echo x > /etc/pid1-test");
    assert_ne!(out.code(), 0);
    assert!(!std::path::Path::new("/etc/pid1-test").exists());
}

fn jobs_see_only_their_standard_descriptors_and_the_code(py: Python) {
    let mut init = Init::start(Options { python: py, ..Options::default() });
    let out = init.python("import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))");
    // 0-2, the code on 3, and the descriptor listdir itself opened.
    assert_eq!(text(&out.stdout), "[0, 1, 2, 3, 4]\n");
    let out = init.shell("readlink /proc/self/fd/0");
    assert_eq!(text(&out.stdout), "/dev/null\n");
}

fn jobs_get_default_signal_handling(py: Python) {
    let mut init = Init::start(Options { python: py, ..Options::default() });
    // Neither the init's blocked mask nor an ignored disposition leaks in.
    let out = init.shell("grep -E '^Sig(Blk|Ign)' /proc/self/status");
    assert_eq!(text(&out.stdout), "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n");
}

fn each_job_is_its_own_session(py: Python) {
    let mut init = Init::start(Options { python: py, ..Options::default() });
    let out = init.python("import os; print(os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid())");
    assert_eq!(text(&out.stdout), "True True\n");
}

both_paths!(
    jobs_run_unprivileged_with_no_new_privs,
    jobs_see_only_their_standard_descriptors_and_the_code,
    jobs_get_default_signal_handling,
    each_job_is_its_own_session,
);

// ---- the zygote ------------------------------------------------------------

/// A Python prologue that finds the zygote (`python3 .../zygote.py UID`,
/// not the init, whose flags name the script too) as `zygote`.
const FIND_ZYGOTE: &str = "import os\n\
    argv = lambda p: open(f'/proc/{p}/cmdline', 'rb').read().split(b'\\0')\n\
    zygote = next(int(p) for p in os.listdir('/proc') if p.isdigit() and argv(p)[1].endswith(b'zygote.py'))\n\
    assert b'python' in argv(zygote)[0] and zygote != 1\n";

fn forked(init: &mut Init) -> bool {
    text(&init.python("import sys; print('json' in sys.modules)").stdout) == "True\n"
}

#[test]
fn jobs_cannot_signal_trace_or_write_into_the_zygote() {
    let mut init = Init::start(Options { mode: Mode::Pid1, python: Python::Zygote, ..Options::default() });
    let attacks = [
        ("signal", "os.kill(zygote, 9)"),
        (
            "ptrace",
            "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n\
                    assert libc.ptrace(16, zygote, 0, 0) == -1\nraise PermissionError(ctypes.get_errno(), 'ptrace')",
        ),
        ("its memory", "open(f'/proc/{zygote}/mem', 'wb')"),
        ("its channel to the init", "open(f'/proc/{zygote}/fd/4', 'wb')"),
        ("its requests", "open(f'/proc/{zygote}/fd/3', 'rb')"),
    ];
    for (what, attack) in attacks {
        let code = format!(
            "{FIND_ZYGOTE}try:\n    {}\nexcept PermissionError:\n    print('refused')\n",
            attack.replace('\n', "\n    ")
        );
        let out = init.python(&code);
        assert_eq!(text(&out.stdout), "refused\n", "{what}: {}", text(&out.stderr));
        assert!(forked(&mut init), "after the {what} attack, jobs still fork from the zygote");
    }
}

#[test]
fn nothing_a_job_changes_reaches_the_next_job() {
    let mut init = Init::start(Options { mode: Mode::Pid1, python: Python::Zygote, ..Options::default() });
    let first = init.python(
        "import sys, os, builtins, signal, random, json\n\
         sys.modules['json'] = None\n\
         os.environ['LEAKED'] = '1'\n\
         builtins.LEAKED = 1\n\
         os.chdir('/tmp')\n\
         signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
         kept = open('/proc/self/status')\n\
         print(random.random())",
    );
    let second = init.python(
        "import sys, os, builtins, signal, random, json\n\
         print(json.dumps([os.environ.get('LEAKED'), hasattr(builtins, 'LEAKED'), os.getcwd() == os.environ['HOME'],\n\
                           signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, sorted(os.listdir('/proc/self/fd'))]))\n\
         print(random.random())",
    );
    let second = text(&second.stdout);
    let lines: Vec<&str> = second.lines().collect();
    // 0-2, the code on 3, and the directory listdir opened.
    assert_eq!(lines[0], r#"[null, false, true, true, ["0", "1", "2", "3", "4"]]"#, "{second}");
    assert_ne!(lines[1], text(&first.stdout).trim(), "random starts anew");
    assert!(forked(&mut init));
}

#[test]
fn a_dead_zygote_is_replaced_and_jobs_go_on_meanwhile() {
    let mut init = Init::start(Options { mode: Mode::Pid1, python: Python::Zygote, ..Options::default() });
    let out = init.python(&format!("{FIND_ZYGOTE}print(zygote)"));
    let zygote: i32 = text(&out.stdout).trim().parse().unwrap();
    // A shell job may not kill it either.
    let out = init.run(&Job::shell(format!("kill -9 {zygote} 2>/dev/null || echo refused")));
    assert_eq!(text(&out.stdout), "refused\n");
    assert!(forked(&mut init), "a job could not kill it");
    // The test, root on the host, may: the zygote of this test's init (its
    // parent's parent is the `unshare` the test started), seen from outside
    // the namespace.
    let parent = |pid: &str| -> Option<String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Some(status.lines().find(|l| l.starts_with("PPid:"))?.split_whitespace().last()?.to_owned())
    };
    let unshare = init.process_id().to_string();
    let host_pid = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|pid| pid.parse::<u32>().is_ok())
        .find(|pid| {
            let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            argv.split(|&b| b == 0).nth(1) == Some(common::ZYGOTE.as_bytes())
                && parent(pid).and_then(|init| parent(&init)) == Some(unshare.clone())
        })
        .and_then(|pid| pid.parse::<i32>().ok())
        .expect("this test's zygote, seen from the host");
    let pid = rustix::process::Pid::from_raw(host_pid).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    // Every job runs meanwhile (exec'd), and the zygote comes back.
    let mut back = false;
    for _ in 0..100 {
        assert_eq!(text(&init.python("print('ran')").stdout), "ran\n");
        if init.agent.ping().unwrap().zygote && forked(&mut init) {
            back = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(back, "the zygote was not replaced");
}

// ---- cgroups and neighbours in a VM ----------------------------------------

fn wait(vm: &mut Vm, id: u32) -> Outcome {
    vm.agent().wait_job(id, &mut |_, _| {}).unwrap()
}

#[test]
fn each_job_has_a_cgroup_and_reports_its_usage() {
    let mut vm = restored_vm();
    let cgroup =
        "print(open('/proc/self/cgroup').read().strip())\nx = bytearray(32 << 20)\nsum(range(3_000_000))";
    let first = run(&mut vm, &Job::python(cgroup));
    let second = run(&mut vm, &Job::shell("cat /proc/self/cgroup"));
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
    let out = run(&mut vm, &job);
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
    let out = run(&mut vm, &hog);
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
    let out = run(
        &mut vm,
        &Job::shell("for i in 1 2 3; do (echo $i); done; python3 -c 'print(sum(range(10**5)))'"),
    );
    assert_eq!((text(&out.stdout), out.code()), ("1\n2\n3\n4999950000\n".into(), 0), "{}", text(&out.stderr));
    let out = wait(&mut vm, bomb);
    // Stopped at its deadline, or by its memory limit (its page tables).
    assert!(out.timed_out || out.code() == 137, "{:?}", out.exit);
    // Nothing of it is left.
    let left = run(&mut vm, &Job::shell("ps -o user,args | grep -c '^user.*[p]ython'"));
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
    let out = run(&mut vm, &Job::shell("setsid sleep 1000 & echo started"));
    assert_eq!(text(&out.stdout), "started\n");
    let left = run(&mut vm, &Job::shell("ps -o args | grep -c '^sleep 1000'"));
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
    let out = run(&mut vm, &Job::python(probe));
    assert_eq!(
        text(&out.stdout),
        "kill 1 EPERM\n/proc/1 ENOENT\nport EACCES\nvda EACCES\nptrace EPERM\nmount EPERM\nclock EPERM\n",
        "{}",
        text(&out.stderr)
    );
    vm.agent().signal(neighbour, vmhost::Signal::Kill).unwrap();
    let _ = vm.agent().wait_job(neighbour, &mut |_, _| {});
    still_serving(&mut vm);
    vm.shutdown();
}

// ---- a user per job --------------------------------------------------------

/// What a job of another user may try on `pid` (a neighbour that wrote
/// `secret` to its home, /tmp and /dev/shm and holds it in its
/// environment): each line is `what result`.
fn attacks(pid: &str) -> String {
    format!(
        r#"import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def errname(f):
    try:
        r = f()
        return 'allowed' if r is None or r is True or r == 0 else 'refused'
    except OSError as e:
        return errno.errorcode[e.errno]
def call(r):
    if r != 0:
        raise OSError(ctypes.get_errno(), '')
print('proc', 'visible' if os.path.exists('/proc/{pid}') else 'hidden')
print('environ', errname(lambda: open('/proc/{pid}/environ', 'rb').read()))
print('kill', errname(lambda: os.kill({pid}, 0)))
print('ptrace', errname(lambda: call(libc.ptrace(16, {pid}, None, None))))
for path in ['/home/user/secret', '/tmp/secret', '/dev/shm/secret']:
    print(path, 'absent' if not os.path.exists(path) else 'present')
print('users', errname(lambda: os.listdir('/usr/lib/pid1/users')))
with open('/tmp/fill', 'wb') as f:
    f.write(b'x' * (32 << 20))
"#
    )
}

const NEIGHBOUR: &str = "echo secret > ~/secret; echo secret > /tmp/secret; echo secret > /dev/shm/secret; \
                         export SECRET=1; echo $$; exec sleep 60";

#[test]
fn concurrent_jobs_of_other_users_cannot_reach_each_other() {
    let mut vm = restored_vm();
    let neighbour = vm.agent().submit(&Job::shell(NEIGHBOUR)).unwrap();
    let event =
        vm.agent().next_event_for(|e| matches!(e, GuestEvent::Output { job, .. } if *job == neighbour));
    let GuestEvent::Output { data, .. } = event.unwrap() else { unreachable!("filtered on Output") };
    let pid = text(&data).trim().to_owned();
    let out = run(&mut vm, &Job::python(attacks(&pid)));
    assert_eq!(
        text(&out.stdout),
        "proc hidden\nenviron ENOENT\nkill EPERM\nptrace EPERM\n/home/user/secret absent\n/tmp/secret absent\n\
         /dev/shm/secret absent\nusers EACCES\n",
        "{}",
        text(&out.stderr)
    );
    // The neighbour's /tmp is not the one the attacker filled, and a job
    // put in its user on purpose sees its files and its process.
    let mut same = Job::shell(format!(
        "cat ~/secret /tmp/secret; test -e /tmp/fill || echo unfilled; test -e /proc/{pid} && echo seen; id -u"
    ));
    same.user = Some(neighbour);
    let out = run(&mut vm, &same);
    let uid = text(&run(&mut vm, &Job::shell("id -u")).stdout);
    let said = text(&out.stdout);
    assert!(said.starts_with("secret\nsecret\nunfilled\nseen\n"), "{said} {}", text(&out.stderr));
    assert_ne!(said.lines().last(), Some(uid.trim()), "a job of its own has another uid");
    vm.agent().signal(neighbour, vmhost::Signal::Kill).unwrap();
    let _ = vm.agent().wait_job(neighbour, &mut |_, _| {});
    // A fresh job finds an empty home and /tmp.
    let out = run(&mut vm, &Job::shell("echo $(ls -A ~) $(ls -A /tmp) $(ls -A /dev/shm)x"));
    assert_eq!(text(&out.stdout), "x\n", "{}", text(&out.stderr));
    still_serving(&mut vm);
    vm.shutdown();
}

#[test]
fn files_put_in_for_a_job_are_its_users_and_a_session_is_apart() {
    let mut vm = restored_vm();
    vm.write_file("in.txt", b"data", 0o600).unwrap();
    let out = run(
        &mut vm,
        &Job::python(
            "import os; s = os.stat('in.txt'); print(s.st_uid == os.getuid(), open('in.txt').read())",
        ),
    );
    assert_eq!(text(&out.stdout), "True data\n", "{}", text(&out.stderr));
    // A session and a run beside it.
    let mut session = vm.session(vmhost::Lang::Python).unwrap();
    session.write_file("notes.txt", b"mine", 0o600).unwrap();
    let step = session.exec("print(open('notes.txt').read())").unwrap();
    assert_eq!(text(&step.stdout), "mine\n");
    let shared = vm.shared();
    let out = shared
        .run(
            &Job::shell("cat /home/user/notes.txt 2>/dev/null || echo unseen; ls /home/user | wc -l"),
            &mut |_, _| {},
        )
        .unwrap();
    assert_eq!(text(&out.stdout), "unseen\n0\n");
    session.close().unwrap();
    vm.shutdown();
}
