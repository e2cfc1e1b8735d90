//! `vmexec` as a user runs it: code in, output and status out, restored
//! and cold; the PID-1 suite; stdin and files; the REPL; a host that dies, a
//! QEMU that is killed, Ctrl-C; templates made by two runs at once or
//! interrupted. Needs `vmexec` (`just build`) and the guest image
//! (`just image`).

use std::io::Read;
use std::path::Path;
use std::process::{Child, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::{
    ZOMBIE_SCAN, accel, double_forks, ensure_template, fresh_config, output_with_stdin, template_ready, text,
    vmexec,
};
use rustix::process::{Pid, Signal, kill_process};
use sha2::{Digest, Sha256};
use vmhost::VmConfig;
use vmhost::template::Template;

// ---- code in, output and status out ----------------------------------------

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

/// `vmexec run` restores by default; `--cold` boots the kernel.
const MODES: [(&str, &[&str]); 2] = [("restored", &["run"]), ("cold", &["run", "--cold"])];

/// `vmexec` with `run` (and `--cold` in cold mode) before `args`; the
/// template exists, so that a restore is what runs without `--cold`.
fn run_in(mode: &[&str], args: &[&str]) -> Output {
    template_ready();
    vmexec().args(mode).args(args).output().expect("run vmexec")
}

#[test]
fn cli_runs_code_and_exits_with_its_code() {
    for (_, mode) in MODES {
        let out = run_in(mode, &["-c", "print(1+1)"]);
        assert_eq!((text(&out.stdout), out.status.code()), ("2\n".into(), Some(0)), "{}", text(&out.stderr));
        template_ready();
        let out = output_with_stdin(
            vmexec().args(mode).args(["-l", "sh", "-"]),
            b"echo from stdin; echo e >&2; exit 7",
        );
        assert_eq!(
            (text(&out.stdout), text(&out.stderr), out.status.code()),
            ("from stdin\n".into(), "e\n".into(), Some(7))
        );
    }
}

#[test]
fn cli_json_reports_output_status_and_timings() {
    for (name, mode) in MODES {
        let out = run_in(mode, &["--json", "-l", "sh", "-c", "echo out; echo err >&2; kill -9 $$"]);
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
    let out = vmexec()
        .args(["run", "--json", "--timeout", "3", "-l", "sh", "-c", "echo t; sleep 60"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(124));
    let v = json(&out);
    assert_eq!(
        (v["exit_code"].as_i64(), v["timed_out"].as_bool(), v["stdout"].as_str()),
        (Some(-1), Some(true), Some("t\n"))
    );

    let out = vmexec().args(["run", "--json", "--env", "=x", "-c", "print(1)"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v = json(&out);
    assert_eq!(v["error"]["kind"].as_str(), Some("InvalidJob"));
    assert_eq!(v["error"]["message"].as_str(), Some("env[0].name: empty"));
    let out = vmexec().args(["run", "-c", "   "]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("code: only whitespace"), "{}", text(&out.stderr));
}

#[test]
fn cli_says_what_is_missing() {
    // vmexec's own input, not the job: no VM is started, and the exit code
    // is not the one for a refused job.
    let out = vmexec().args(["run", "/nonexistent/job.py"]).output().unwrap();
    assert_eq!(out.status.code(), Some(66), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("cannot read the code file /nonexistent/job.py: No such file"), "{err}");
    let out = vmexec().args(["run", "--json", "/nonexistent/job.py"]).output().unwrap();
    assert_eq!((out.status.code(), json(&out)["error"]["kind"].as_str()), (Some(66), Some("Input")));

    let out = vmexec().args(["run", "--kernel", "/nonexistent/vmlinux", "-c", "print(1)"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no guest kernel at /nonexistent/vmlinux; build it with `just kernel`")
    );
    let out = vmexec().args(["run", "--rootfs", "/nonexistent/rootfs", "-c", "print(1)"]).output().unwrap();
    assert!(text(&out.stderr).contains("`just rootfs`"), "{}", text(&out.stderr));
    // A disk that is not erofs: the kernel cannot mount its root.
    let bogus = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bogus.path(), vec![0u8; 1 << 20]).unwrap();
    let out = vmexec()
        .args(["run", "--rootfs", bogus.path().to_str().unwrap(), "-c", "print(1)"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("panicked during boot") && err.contains("Unable to mount root fs"), "{err}");
    let out = vmexec().args(["run", "-c", "print(1)"]).env("PATH", "/nonexistent").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("apt-get install qemu-system-x86"), "{}", text(&out.stderr));
}

#[test]
fn cli_guesses_the_language_from_the_file() {
    template_ready();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("job.sh");
    std::fs::write(&script, "echo \"shell $((6 * 7))\"").unwrap();
    let out = vmexec().args(["run", script.to_str().unwrap()]).output().unwrap();
    assert_eq!(text(&out.stdout), "shell 42\n", "{}", text(&out.stderr));
}

#[test]
fn vmexec_runs_a_script_file_by_its_shebang() {
    template_ready();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("count");
    std::fs::write(
        &script,
        "#!/usr/bin/awk -f\nBEGIN { for (i = 1; i <= 3; i++) printf \"%d \", i; print \"\" }\n",
    )
    .unwrap();
    let out = vmexec().args(["run", script.to_str().unwrap()]).output().unwrap();
    assert_eq!(text(&out.stdout), "1 2 3 \n", "{}", text(&out.stderr));
    assert!(out.status.success());
}

fn repl(args: &[&str], input: &str) -> (String, String, Option<i32>) {
    let out = output_with_stdin(vmexec().arg("repl").args(args), input.as_bytes());
    (text(&out.stdout), text(&out.stderr), out.status.code())
}

#[test]
fn vmexec_repl_from_a_pipe() {
    template_ready();
    let (stdout, stderr, code) = repl(&[], "x = 41\nprint(x + 1)\n");
    assert_eq!((stdout.as_str(), code), ("42\n", Some(0)), "{stderr}");
    // A block runs once complete; expressions echo as in `python3 -i`;
    // an error does not end the session; the status is the last step's.
    let input =
        "for i in range(2):\n    print(i)\n\nx = 6\nx * 7\n1/0\nprint('alive')\nraise SystemExit(3)\n";
    let (stdout, stderr, code) = repl(&["-l", "python"], input);
    assert_eq!((stdout.as_str(), code), ("0\n1\n42\nalive\n", Some(3)), "{stderr}");
    assert!(stderr.contains("ZeroDivisionError"), "{stderr}");

    let input = "cd /tmp\nexport A=7\necho $A $(pwd)\nif true; then\n  echo inside\nfi\n";
    let (stdout, stderr, code) = repl(&["-l", "sh"], input);
    assert_eq!((stdout.as_str(), code), ("7 /tmp\ninside\n", Some(0)), "{stderr}");
}

// ---- the PID-1 suite, exactly as a user would run it -----------------------

/// The double forks, then the zombie scan, in one job.
fn orphans(n: usize) -> String {
    format!("{}{ZOMBIE_SCAN}", double_forks(n))
}

#[test]
fn pid1_double_forked_orphan_reports_ppid_1() {
    let code = "import os, time\nr, w = os.pipe()\nif os.fork() == 0:\n    if os.fork() == 0:\n        os.read(r, 1)\n        print(f'ORPHAN_PPID:{os.getppid()}', flush=True)\n        os._exit(0)\n    os._exit(0)\nos.wait()\ntime.sleep(0.1)\nos.write(w, b'x')\ntime.sleep(1)";
    for (_, mode) in MODES {
        let out = run_in(mode, &["-c", code]);
        assert_eq!(text(&out.stdout), "ORPHAN_PPID:1\n", "{}", text(&out.stderr));
    }
}

#[test]
fn pid1_orphans_leave_no_zombies() {
    for (_, mode) in MODES {
        for n in [1, 20, 50] {
            let out = run_in(mode, &["-c", &orphans(n)]);
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
    let out = run_in(
        mode,
        &["-l", "sh", "-c", "for i in 1 2 3; do sh -c 'sh -c \"sleep 0.1\" &'; done; sleep 0.5"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run_in(
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

// ---- stdin and files -------------------------------------------------------

const SHA256_OF_STDIN: &str = "import sys, hashlib\nh = hashlib.sha256()\nn = 0\n\
                               while b := sys.stdin.buffer.read(1 << 20):\n    h.update(b)\n    n += len(b)\n\
                               print(n, h.hexdigest())";

#[test]
fn sixty_four_mib_of_stdin_arrive_byte_exact() {
    template_ready();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.bin");
    // Not compressible, every byte value.
    let mut data = vec![0u8; 64 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for byte in &mut data {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x.to_le_bytes()[4];
    }
    std::fs::write(&path, &data).unwrap();
    let out = vmexec()
        .args(["run", "--timeout", "600", "--stdin", path.to_str().unwrap(), "-c", SHA256_OF_STDIN])
        .output()
        .unwrap();
    let want = format!("{} {:x}\n", data.len(), Sha256::digest(&data));
    assert_eq!(text(&out.stdout), want, "{}", text(&out.stderr));
    assert!(out.status.success());
}

#[test]
fn stdin_from_a_pipe_and_its_misuse() {
    template_ready();
    // `--stdin -`: vmexec's own stdin, here a pipe, read as the job reads.
    let job = ["run", "-l", "sh", "--stdin", "-", "-c", "while read -r line; do echo \"got $line\"; done"];
    let out = output_with_stdin(vmexec().args(job), b"a\nb c\n");
    assert_eq!(text(&out.stdout), "got a\ngot b c\n");

    // The code is already what vmexec's stdin holds.
    let out = vmexec().args(["run", "--stdin", "-", "-"]).stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("stdin already holds the code"), "{}", text(&out.stderr));
    // A missing file: a clear error before any VM starts.
    let out = vmexec().args(["run", "--stdin", "/nonexistent/in", "-c", "print(1)"]).output().unwrap();
    assert_eq!(out.status.code(), Some(66));
    assert!(
        text(&out.stderr).contains("cannot open the stdin file /nonexistent/in"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn vmexec_uploads_and_downloads() {
    template_ready();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "abc\n").unwrap();
    let out = vmexec()
        .current_dir(dir.path())
        .args(["run", "--upload", "in.txt:in.txt", "--download", "out.txt", "--download", "in.txt:copy.txt"])
        .args(["--cwd", "/home/user/sub", "-l", "sh", "-c", "tr a-z A-Z < in.txt > out.txt && pwd"])
        .output()
        .unwrap();
    // Relative paths are the job's: in its working directory, made for it.
    assert_eq!(text(&out.stdout), "/home/user/sub\n", "{}", text(&out.stderr));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(dir.path().join("out.txt")).unwrap(), "ABC\n");
    assert_eq!(std::fs::read_to_string(dir.path().join("copy.txt")).unwrap(), "abc\n");

    let out = vmexec()
        .current_dir(dir.path())
        .args(["run", "--download", "nothere", "-c", "pass"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot download nothere: no such file or directory"),
        "{}",
        text(&out.stderr)
    );
}

// ---- a host that dies, a QEMU that is killed, Ctrl-C -----------------------

/// A `vmexec` with a running job, and the QEMU of its VM (found by the
/// private TMPDIR on its command line).
fn vmexec_with_a_job(tmp: &Path) -> (Child, Pid) {
    let mut child = vmexec()
        .args(["run", "-l", "sh", "-c", "echo running; sleep 100"])
        .env("TMPDIR", tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the job runs, so that QEMU and the VM directory exist.
    let mut first = [0u8; 8];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    assert_eq!(&first, b"running\n");
    let qemu = qemu_naming(tmp);
    assert_eq!(qemu.len(), 1, "QEMU runs with its socket under TMPDIR");
    (child, qemu[0])
}

/// QEMU processes whose command line names `path`.
fn qemu_naming(path: &Path) -> Vec<Pid> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let named = cmdline.windows(4).any(|w| w == b"qemu")
                && String::from_utf8_lossy(&cmdline).contains(&*path.to_string_lossy());
            named.then_some(())?;
            Pid::from_raw(e.file_name().to_str()?.parse().ok()?)
        })
        .collect()
}

/// Waits until `ready` holds (or panics after a minute).
fn wait_for(what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "never saw {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Ctrl-C: SIGINT to `child`, then its exit.
fn interrupt(child: &mut Child) -> ExitStatus {
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    kill_process(pid, Signal::INT).unwrap();
    child.wait().unwrap()
}

#[test]
fn a_host_that_dies_takes_its_vm_along() {
    template_ready();
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, _) = vmexec_with_a_job(tmp.path());
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for("QEMU end with its host", || qemu_naming(tmp.path()).is_empty());
    // Its VM's directory went once QEMU had connected: nothing is left.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// A child that a failing test must not leave running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The threads of process `pid`.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |tasks| tasks.count())
}

#[test]
fn a_killed_owner_takes_along_vms_that_retired_threads_started() {
    // `vmexec serve` starts its pool's VMs from tokio's blocking threads,
    // which retire after 10 s idle. A QEMU whose death signal was tied to
    // the thread that asked for it would die with that thread; one forked
    // by the process-long spawner dies only with the process.
    template_ready();
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("serve.sock");
    let mut service = KillOnDrop(
        vmexec()
            .args(["serve", "--pool", "2", "--listen", &format!("unix:{}", socket.display())])
            .env("TMPDIR", tmp.path())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the pool's two VMs", || qemu_naming(tmp.path()).len() == 2);
    let busy = threads(service.0.id());
    let qemus = qemu_naming(tmp.path());
    let retired = Instant::now() + Duration::from_secs(60);
    while threads(service.0.id()) >= busy {
        assert!(Instant::now() < retired, "the threads that started the VMs never retired");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(qemu_naming(tmp.path()), qemus, "a VM died with the thread that started it");
    service.0.kill().unwrap();
    service.0.wait().unwrap();
    wait_for("QEMU end with its owner", || qemu_naming(tmp.path()).is_empty());
}

#[test]
fn vmexec_says_when_qemu_is_killed() {
    template_ready();
    let tmp = tempfile::tempdir().unwrap();
    let (child, qemu) = vmexec_with_a_job(tmp.path());
    kill_process(qemu, Signal::KILL).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("QEMU exited") || stderr.contains("closed the agent connection"), "{stderr}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "no socket or temp file left");
}

#[test]
fn cli_ctrl_c_leaves_nothing_behind() {
    template_ready();
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, _) = vmexec_with_a_job(tmp.path());
    assert_eq!(interrupt(&mut child).code(), Some(130));
    // QEMU is SIGKILLed; give the kernel a moment to tear it down.
    wait_for("QEMU to go", || qemu_naming(tmp.path()).is_empty());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "no socket or temp file left");
}

// ---- templates -------------------------------------------------------------

fn accel_flag() -> [&'static str; 2] {
    ["--accel", accel().name()]
}

/// What is in `dir`, lock files aside.
fn entries(dir: &Path) -> Vec<String> {
    let Ok(read) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = read
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".lock"))
        .collect();
    names.sort();
    names
}

#[test]
fn two_concurrent_first_runs_leave_one_good_template() {
    let cache = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let args = [&["run", "--json"][..], &accel_flag(), &["-c", "print(1)"]].concat();
    let children: Vec<_> = (0..2)
        .map(|_| {
            vmexec()
                .args(&args)
                .env("XDG_CACHE_HOME", cache.path())
                .env("TMPDIR", tmp.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["stdout"].as_str(), Some("1\n"));
    }
    let templates = cache.path().join("pid1/templates");
    assert_eq!(entries(&templates).len(), 1, "one template, no build leftovers: {:?}", entries(&templates));
    let out =
        vmexec().args(&args).env("XDG_CACHE_HOME", cache.path()).env("TMPDIR", tmp.path()).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["start"].as_str(), Some("restored"), "{}", text(&out.stderr));
}

#[test]
fn interrupting_a_template_build_or_a_restore_leaves_nothing_behind() {
    let cache = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let templates = cache.path().join("pid1/templates");

    // During the build: once its VM runs.
    let build = [&["template", "build"][..], &accel_flag()].concat();
    let mut child = vmexec()
        .args(&build)
        .env("XDG_CACHE_HOME", cache.path())
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the template VM", || qemu_naming(cache.path()).len() == 1);
    assert_eq!(interrupt(&mut child).code(), Some(130));
    wait_for("QEMU to go", || qemu_naming(cache.path()).is_empty());
    assert_eq!(entries(&templates), Vec::<String>::new(), "no template, whole or half");
    assert_eq!(entries(tmp.path()), Vec::<String>::new(), "no socket or temp file");

    // During a restore: as soon as its QEMU exists.
    let config = VmConfig { cache_dir: cache.path().join("pid1"), ..fresh_config(cache.path()) };
    ensure_template(&config);
    let run = [&["run"][..], &accel_flag(), &["-l", "sh", "-c", "sleep 100"]].concat();
    let mut child =
        vmexec().args(&run).env("XDG_CACHE_HOME", cache.path()).env("TMPDIR", tmp.path()).spawn().unwrap();
    wait_for("the restoring QEMU", || qemu_naming(tmp.path()).len() == 1);
    assert_eq!(interrupt(&mut child).code(), Some(130));
    wait_for("QEMU to go", || qemu_naming(tmp.path()).is_empty());
    assert_eq!(entries(tmp.path()), Vec::<String>::new(), "no socket or temp file");
    let template = Template::locate(&config, config.accel).unwrap();
    assert_eq!(template.check(&config), Ok(()), "the template is untouched");
}
