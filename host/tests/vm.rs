//! The real thing: the init in a QEMU microVM (TCG here), restored from a
//! snapshot template as VMs are by default, and booted cold; jobs run
//! through the host library and the `vmexec` CLI. Needs the guest image
//! (`just image`).

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{ZOMBIE_SCAN, cold_vm, double_forks, restored_vm, template_ready, text};

use proto::{Exit, Stream};
use vmhost::{Job, Vm};

fn boot() -> Vm {
    restored_vm()
}

fn run(vm: &mut Vm, job: &Job) -> vmhost::Outcome {
    vm.agent().run(job, |_, _| {}).unwrap_or_else(|e| panic!("{job:?}: {e}"))
}

/// One VM, many jobs: what a notebook or an agent session does.
#[test]
fn one_restored_vm_serves_many_jobs() {
    let vm = boot();
    assert!(vm.times().boot_ms > 0.0, "{:?}", vm.times());
    serves_many_jobs(vm);
}

#[test]
fn one_cold_vm_serves_many_jobs() {
    let vm = cold_vm();
    let times = vm.times();
    assert!(times.kernel_ms > 0.0 && times.init_ms >= 0.0 && times.boot_ms > times.kernel_ms, "{times:?}");
    serves_many_jobs(vm);
}

fn serves_many_jobs(mut vm: Vm) {
    let before = vm.agent().ping().unwrap();

    let out = run(&mut vm, &Job::python("print('hello from the guest')"));
    assert_eq!((text(&out.stdout), out.exit), ("hello from the guest\n".into(), Exit::Code(0)));
    let out = run(&mut vm, &Job::shell("echo sh; echo err >&2; exit 5"));
    assert_eq!((text(&out.stdout), text(&out.stderr), out.code()), ("sh\n".into(), "err\n".into(), 5));
    let out = run(&mut vm, &Job::python("import os; os.kill(os.getpid(), 9)"));
    assert_eq!(out.code(), 137);

    // Large output, byte for byte.
    let out = run(&mut vm, &Job::python("import sys; sys.stdout.buffer.write(bytes(range(256)) * 4096)"));
    let want: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    assert!(out.stdout == want && !out.stdout_truncated, "1 MiB came back unchanged");

    // A timeout kills the tree and keeps what was printed.
    let mut job = Job::shell("echo partial; sleep 100 & sleep 100");
    job.timeout = Some(Duration::from_millis(3000));
    let out = run(&mut vm, &job);
    assert!(out.timed_out);
    assert_eq!(text(&out.stdout), "partial\n");

    // Streaming: the first chunk arrives before the job ends.
    let mut first = None;
    let job = Job::python("import time\nprint('early', flush=True)\ntime.sleep(1)\nprint('late')");
    let out = vm.agent().run(&job, |stream, data| {
        first.get_or_insert((stream, text(data)));
    });
    // "early" and its newline are two writes: one chunk or two, as the
    // init's reads fall between them.
    let (stream, first) = first.unwrap();
    assert!(stream == Stream::Stdout && first.starts_with("early") && !first.contains("late"), "{first:?}");
    assert_eq!(text(&out.unwrap().stdout), "early\nlate\n");

    // A job that eats all memory is what the OOM killer takes, not the init.
    let out = run(&mut vm, &Job::python("x = []\nwhile True:\n    x.append(b'x' * (16 << 20))"));
    assert!(out.code() == 137 || out.code() == 1, "killed or MemoryError: {}", out.code());
    assert_eq!(text(&run(&mut vm, &Job::shell("echo survived")).stdout), "survived\n");

    let stats = vm.agent().ping().unwrap();
    assert_eq!(stats.jobs_active, 0);
    assert_eq!(stats.jobs_started - before.jobs_started, 8);
    vm.shutdown();
}

/// The sandbox the init sets up: mounts, users, devices, stdlib.
#[test]
fn guest_environment() {
    let mut vm = boot();
    let out = run(
        &mut vm,
        &Job::shell(
            "id -u; echo $HOME; pwd; \
             ls /dev/mem /dev/kmem /dev/port 2>&1 | wc -l; ls /dev/mem 2>/dev/null | wc -l; \
             stat -c '%a %U' /tmp /home/user; \
             touch /tmp/t /home/user/t /dev/shm/t && echo writable; \
             touch /etc/t 2>/dev/null || echo root-is-read-only; \
             ls /proc | grep -cx 1; cat /proc/self/oom_score_adj",
        ),
    );
    assert_eq!(
        text(&out.stdout),
        "1000\n/home/user\n/home/user\n3\n0\n1777 root\n700 user\nwritable\nroot-is-read-only\n0\n0\n",
        "stderr: {}",
        text(&out.stderr)
    );

    // The standard library imports and works: sockets on loopback, shared
    // memory, processes, entropy.
    let code = r#"
import asyncio, bz2, ctypes, decimal, hashlib, json, lzma, multiprocessing, os, socket, sqlite3, ssl, subprocess, uuid, zlib
from multiprocessing import shared_memory
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()
c = socket.create_connection(s.getsockname()); a, _ = s.accept(); c.sendall(b'ping'); print(a.recv(4).decode())
m = shared_memory.SharedMemory(create=True, size=16); m.buf[0] = 7; print(m.buf[0]); m.close(); m.unlink()
with multiprocessing.Pool(2) as p: print(sum(p.map(abs, [-1, -2, 3])))
print(subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout.strip())
print(len(os.urandom(16)), sqlite3.connect(':memory:').execute('select 6*7').fetchone()[0])
"#;
    let out = run(&mut vm, &Job::python(code));
    assert_eq!(text(&out.stdout), "ping\n7\n6\nchild\n16 42\n", "stderr: {}", text(&out.stderr));
    vm.shutdown();
}

fn vmexec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmexec")).args(args).output().expect("run vmexec")
}

fn vmexec_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmexec"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn vmexec");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

/// `vmexec run` restores by default; `--cold` boots the kernel.
const MODES: [(&str, &[&str]); 2] = [("restored", &["run"]), ("cold", &["run", "--cold"])];

/// `vmexec` with `run` (and `--cold` in cold mode) before `args`; the
/// template exists, so that a restore is what runs without `--cold`.
fn vmexec_in(mode: &[&str], args: &[&str]) -> Output {
    template_ready();
    vmexec(&[mode, args].concat())
}

#[test]
fn cli_runs_code_and_exits_with_its_code() {
    for (_, mode) in MODES {
        let out = vmexec_in(mode, &["-c", "print(1+1)"]);
        assert_eq!((text(&out.stdout), out.status.code()), ("2\n".into(), Some(0)), "{}", text(&out.stderr));
        template_ready();
        let out = vmexec_stdin(&[mode, &["-l", "sh", "-"]].concat(), "echo from stdin; echo e >&2; exit 7");
        assert_eq!(
            (text(&out.stdout), text(&out.stderr), out.status.code()),
            ("from stdin\n".into(), "e\n".into(), Some(7))
        );
    }
}

#[test]
fn cli_json_reports_output_status_and_timings() {
    for (name, mode) in MODES {
        let out = vmexec_in(mode, &["--json", "-l", "sh", "-c", "echo out; echo err >&2; kill -9 $$"]);
        json_reports_output_status_and_timings(name, &out);
    }
}

fn json_reports_output_status_and_timings(start: &str, out: &Output) {
    assert_eq!(out.status.code(), Some(137));
    let v = json(out);
    assert_eq!(v["start"].as_str(), Some(start), "{v}");
    assert_eq!((v["stdout"].as_str(), v["stderr"].as_str()), (Some("out\n"), Some("err\n")));
    assert_eq!((v["exit_code"].as_i64(), v["timed_out"].as_bool()), (Some(137), Some(false)));
    assert_eq!(
        (v["stdout_truncated"].as_bool(), v["stderr_truncated"].as_bool()),
        (Some(false), Some(false))
    );
    for key in ["boot_ms", "exec_ms", "total_ms", "kernel_ms", "init_ms"] {
        assert!(v[key].as_f64().is_some_and(|ms| ms >= 0.0), "{key} in {v}");
    }
    assert!(v["total_ms"].as_f64() >= v["boot_ms"].as_f64());
}

#[test]
fn cli_timeout_and_refusal() {
    template_ready();
    // A shell prints within milliseconds of its start; a cold Python under
    // TCG on a loaded machine might not within the timeout.
    let out = vmexec(&["run", "--json", "--timeout", "3", "-l", "sh", "-c", "echo t; sleep 60"]);
    assert_eq!(out.status.code(), Some(124));
    let v = json(&out);
    assert_eq!(
        (v["exit_code"].as_i64(), v["timed_out"].as_bool(), v["stdout"].as_str()),
        (Some(-1), Some(true), Some("t\n"))
    );

    let out = vmexec(&["run", "--json", "--env", "=x", "-c", "print(1)"]);
    assert_eq!(out.status.code(), Some(2));
    let v = json(&out);
    assert_eq!(v["error"]["kind"].as_str(), Some("InvalidJob"));
    assert_eq!(v["error"]["message"].as_str(), Some("env[0].name: empty"));
    let out = vmexec(&["run", "-c", "   "]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("code: only whitespace"), "{}", text(&out.stderr));
}

#[test]
fn cli_says_what_is_missing() {
    // vmexec's own input, not the job: no VM is started, and the exit code
    // is not the one for a refused job.
    let out = vmexec(&["run", "/nonexistent/job.py"]);
    assert_eq!(out.status.code(), Some(66), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("cannot read the code file /nonexistent/job.py: No such file"), "{err}");
    let out = vmexec(&["run", "--json", "/nonexistent/job.py"]);
    assert_eq!((out.status.code(), json(&out)["error"]["kind"].as_str()), (Some(66), Some("Input")));

    let out = vmexec(&["run", "--kernel", "/nonexistent/vmlinux", "-c", "print(1)"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no guest kernel at /nonexistent/vmlinux; build it with `just kernel`")
    );
    let out = vmexec(&["run", "--rootfs", "/nonexistent/rootfs", "-c", "print(1)"]);
    assert!(text(&out.stderr).contains("`just rootfs`"), "{}", text(&out.stderr));
    // A disk that is not erofs: the kernel cannot mount its root.
    let bogus = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bogus.path(), vec![0u8; 1 << 20]).unwrap();
    let out = vmexec(&["run", "--rootfs", bogus.path().to_str().unwrap(), "-c", "print(1)"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("panicked during boot") && err.contains("Unable to mount root fs"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_vmexec"))
        .args(["run", "-c", "print(1)"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("apt-get install qemu-system-x86"), "{}", text(&out.stderr));
}

#[test]
fn cli_ctrl_c_leaves_nothing_behind() {
    template_ready();
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmexec"))
        .args(["run", "-l", "sh", "-c", "echo running; sleep 100"])
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the job runs, so that QEMU and the VM directory exist.
    let mut first = [0u8; 8];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    assert_eq!(&first, b"running\n");
    let qemu_of_this_run = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|cmdline| String::from_utf8_lossy(cmdline).contains(&*tmp.path().to_string_lossy()))
            .count()
    };
    assert_eq!(qemu_of_this_run(), 1, "QEMU runs with its socket under TMPDIR");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    // QEMU is SIGKILLed; give the kernel a moment to tear it down.
    for _ in 0..100 {
        if qemu_of_this_run() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(qemu_of_this_run(), 0, "no QEMU left");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "no socket or temp file left");
}

#[test]
fn cli_guesses_the_language_from_the_file() {
    template_ready();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("job.sh");
    std::fs::write(&script, "echo \"shell $((6 * 7))\"").unwrap();
    let out = vmexec(&["run", script.to_str().unwrap()]);
    assert_eq!(text(&out.stdout), "shell 42\n", "{}", text(&out.stderr));
}

// The PID-1 suite, exactly as a user would run it with vmexec.

/// The double forks, then the zombie scan, in one job.
fn orphans(n: usize) -> String {
    format!("{}{ZOMBIE_SCAN}", double_forks(n))
}

#[test]
fn pid1_double_forked_orphan_reports_ppid_1() {
    let code = "import os, time\nr, w = os.pipe()\nif os.fork() == 0:\n    if os.fork() == 0:\n        os.read(r, 1)\n        print(f'ORPHAN_PPID:{os.getppid()}', flush=True)\n        os._exit(0)\n    os._exit(0)\nos.wait()\ntime.sleep(0.1)\nos.write(w, b'x')\ntime.sleep(1)";
    for (_, mode) in MODES {
        let out = vmexec_in(mode, &["-c", code]);
        assert_eq!(text(&out.stdout), "ORPHAN_PPID:1\n", "{}", text(&out.stderr));
    }
}

#[test]
fn pid1_orphans_leave_no_zombies() {
    for (_, mode) in MODES {
        for n in [1, 20, 50] {
            let out = vmexec_in(mode, &["-c", &orphans(n)]);
            assert_eq!(text(&out.stdout), format!("SPAWNED:{n}\nZOMBIE_COUNT:0\n"), "{}", text(&out.stderr));
        }
    }
}

#[test]
fn pid1_shell_orphans_leave_no_zombies() {
    for (_, mode) in MODES {
        shell_orphans_leave_no_zombies(mode);
    }
}

fn shell_orphans_leave_no_zombies(mode: &[&str]) {
    let out = vmexec_in(
        mode,
        &["-l", "sh", "-c", "for i in 1 2 3; do sh -c 'sh -c \"sleep 0.1\" &'; done; sleep 0.5"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = vmexec_in(
        mode,
        &[
            "-c",
            &format!(
                "import subprocess\nsubprocess.run(['sh', '-c', '''for i in 1 2 3; do sh -c 'sh -c \"sleep 0.1\" &'; done; sleep 0.5'''])\n{ZOMBIE_SCAN}"
            ),
        ],
    );
    assert_eq!(text(&out.stdout), "ZOMBIE_COUNT:0\n", "{}", text(&out.stderr));
}
