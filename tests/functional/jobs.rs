//! What a job does, end to end through the real init binary on this host:
//! output, exit codes, limits, timeouts, big code, concurrency, stdin.

use std::time::Duration;

use common::{Init, LEFTOVERS, Mode, Options, Python, both_paths, text};
use proto::{Exit, Stream};
use vmhost::{GuestEvent, Job};

fn python_and_shell_hello(py: Python) {
    let mut init = Init::start(Options { python: py, ..Options::default() });
    let out = init.python("print('hello from python')");
    assert_eq!(text(&out.stdout), "hello from python\n");
    assert_eq!((out.exit, out.stderr.len()), (Exit::Code(0), 0));
    let out = init.shell("echo hello from sh; echo oops >&2");
    assert_eq!(text(&out.stdout), "hello from sh\n");
    assert_eq!(text(&out.stderr), "oops\n");
    assert_eq!(out.exit, Exit::Code(0));
    assert!(out.pid > 1);
}

fn exit_codes_and_signals(py: Python) {
    let mut init = Init::start(Options { python: py, ..Options::default() });
    assert_eq!(init.shell("exit 3").code(), 3);
    assert_eq!(init.python("import sys; sys.exit(42)").code(), 42);
    let out = init.python("raise SystemExit('bad')");
    assert_eq!((out.code(), text(&out.stderr)), (1, "bad\n".to_owned()));
    let out = init.shell("kill -TERM $$");
    assert_eq!((out.exit, out.code()), (Exit::Signal(15), 143));
    let out = init.python("import os; os.kill(os.getpid(), 11)");
    assert_eq!((out.exit, out.code()), (Exit::Signal(11), 139));
    let out = init.python("import ctypes; ctypes.string_at(0)");
    assert_eq!(out.code(), 139, "a real SIGSEGV: {}", text(&out.stderr));
}

fn output_streams_in_order_as_produced(py: Python) {
    let mut init = Init::start(Options { python: py, ..Options::default() });
    // The job writes its next line only once the host has seen the previous
    // one: output must reach the host while the job still runs, in order.
    let acks = init.home.path().to_owned();
    let code = format!(
        "import os, sys, time\n\
         def wait(n):\n    while not os.path.exists('{0}/ack-%d' % n): time.sleep(0.01)\n\
         print('one'); wait(1)\n\
         print('two', file=sys.stderr); wait(2)\n\
         print('three')",
        acks.display()
    );
    // Unbuffered print() writes the text and the newline separately: a line
    // is complete (and acknowledged) at its newline.
    let (mut seen, mut partial) = (Vec::new(), String::new());
    let out = init
        .agent
        .run(&Job::python(code), |stream, data| {
            partial.push_str(&text(data));
            if partial.ends_with('\n') {
                seen.push((stream, std::mem::take(&mut partial)));
                std::fs::write(acks.join(format!("ack-{}", seen.len())), "").unwrap();
            }
        })
        .unwrap();
    assert_eq!(
        seen,
        vec![
            (Stream::Stdout, "one\n".into()),
            (Stream::Stderr, "two\n".into()),
            (Stream::Stdout, "three\n".into())
        ]
    );
    assert_eq!(text(&out.stdout), "one\nthree\n");
}

fn output_is_byte_exact_up_to_one_mib(py: Python) {
    let mut init = Init::start(Options { python: py, ..Options::default() });
    let out = init.python("import sys; sys.stdout.buffer.write(bytes(range(256)) * 4096)");
    let want: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    assert_eq!(out.stdout.len(), 1 << 20);
    assert!(out.stdout == want, "1 MiB of every byte value comes back unchanged");
    assert!(!out.stdout_truncated);
    let out = init.shell("printf 'a\\0b\\r\\nc'");
    assert_eq!(out.stdout, b"a\0b\r\nc");
}

fn output_past_the_limit_is_dropped_and_flagged(py: Python) {
    let mut init = Init::start(Options { python: py, ..Options::default() });
    let mut job = Job::python("import sys; sys.stdout.write('x' * 5000); sys.stderr.write('y' * 10)");
    job.stdout_limit = 1000;
    job.stderr_limit = 5;
    let out = init.run(&job);
    assert_eq!(out.stdout, vec![b'x'; 1000]);
    assert_eq!(out.stderr, b"yyyyy");
    assert!(out.stdout_truncated && out.stderr_truncated);
    assert_eq!(out.exit, Exit::Code(0), "the job kept writing and was not blocked");
    let out = init.shell("echo next");
    assert_eq!(text(&out.stdout), "next\n");
    assert!(!out.stdout_truncated);
}

fn timeout_kills_the_whole_tree_and_keeps_partial_output(py: Python) {
    let mut init = Init::start(Options { mode: Mode::Pid1, python: py, ..Options::default() });
    let mut job = Job::shell(
        "echo started; sh -c 'sleep 100; echo never' & sleep 100 & \
         python3 -c 'import subprocess; subprocess.Popen([\"sleep\", \"100\"]); subprocess.run([\"sleep\", \"100\"])' & \
         wait",
    );
    job.timeout = Some(Duration::from_millis(1500));
    let out = init.run(&job);
    assert!(out.timed_out);
    assert_eq!(text(&out.stdout), "started\n");
    assert_eq!(out.exit, Exit::Signal(15), "the leader died of the SIGTERM");
    // Nothing of the job survives: no process of the job user but the
    // scanning job.
    let out = init.python(LEFTOVERS);
    assert_eq!(text(&out.stdout), "[]\n");
}

fn sigterm_ignoring_job_is_killed_after_the_grace(py: Python) {
    let mut init = Init::start(Options { python: py, ..Options::default() });
    let mut job = Job::python(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(100)",
    );
    job.timeout = Some(Duration::from_millis(2000));
    let out = init.run(&job);
    assert!(out.timed_out);
    assert_eq!((text(&out.stdout), out.exit), ("up\n".into(), Exit::Signal(9)));
}

fn background_process_holding_stdout_does_not_hang_the_job(py: Python) {
    let mut init = Init::start(Options { mode: Mode::Pid1, python: py, ..Options::default() });
    let out = init.shell("sleep 100 & echo done");
    assert_eq!((text(&out.stdout), out.exit, out.timed_out), ("done\n".into(), Exit::Code(0), false));
    // The holder was killed with the job's group: no process of the job
    // user is left but the scanning job, once the kill has landed (a job
    // forked from the zygote may start before the killed one is reaped).
    let out = init.python(LEFTOVERS);
    assert_eq!(text(&out.stdout), "[]\n");
}

fn code_of_one_mib_runs(py: Python) {
    let mut init = Init::start(Options { python: py, ..Options::default() });
    let line = "x = 'a fairly long line of python that assigns a string'\n";
    let mut code = line.repeat((proto::MAX_CODE as usize - 100) / line.len());
    code.push_str("print(len(open('/proc/self/fd/3').read()))\n");
    assert!(code.len() <= proto::MAX_CODE as usize && code.len() > (1 << 20) - 200);
    let out = init.python(&code);
    assert_eq!(text(&out.stdout).trim(), code.len().to_string(), "{}", text(&out.stderr));
    let script = format!("{}echo $((1 + 1))\n", ": padding line for a large shell script\n".repeat(20_000));
    assert!(script.len() > 128 * 1024, "larger than one argv string may be");
    assert_eq!(text(&init.shell(&script).stdout), "2\n");
}

fn jobs_run_concurrently(py: Python) {
    let mut init = Init::start(Options { python: py, ..Options::default() });
    let dir = init.home.path().to_owned();
    // The first job can only finish if the second runs at the same time.
    let waiter = Job::python(format!(
        "import os, time\nfor _ in range(300):\n    if os.path.exists('{0}/flag'): break\n    time.sleep(0.05)\nprint('saw flag' if os.path.exists('{0}/flag') else 'alone')",
        dir.display()
    ));
    let setter = Job::shell(format!("sleep 0.3; touch {}/flag; echo set", dir.display()));
    let a = init.agent.submit(&waiter).unwrap();
    let b = init.agent.submit(&setter).unwrap();
    let extra: Vec<u32> =
        (0..4).map(|i| init.agent.submit(&Job::shell(format!("echo {i}"))).unwrap()).collect();
    let out_a = init.agent.wait_job(a, &mut |_, _| {}).unwrap();
    let out_b = init.agent.wait_job(b, &mut |_, _| {}).unwrap();
    assert_eq!(text(&out_a.stdout), "saw flag\n");
    assert_eq!(text(&out_b.stdout), "set\n");
    for (i, id) in extra.into_iter().enumerate() {
        assert_eq!(text(&init.agent.wait_job(id, &mut |_, _| {}).unwrap().stdout), format!("{i}\n"));
    }
    let stats = init.agent.ping().unwrap();
    assert_eq!((stats.jobs_started, stats.jobs_active), (6, 0));
}

fn signal_request_reaches_the_job(py: Python) {
    let mut init = Init::start(Options { python: py, ..Options::default() });
    let id = init.agent.submit(&Job::shell("echo ready; sleep 100")).unwrap();
    // Wait until it runs, then kill it.
    loop {
        match init.agent.next_event().unwrap() {
            GuestEvent::Output { .. } => break,
            GuestEvent::Started { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    init.agent.signal(id, vmhost::Signal::Kill).unwrap();
    let out = init.agent.wait_job(id, &mut |_, _| {}).unwrap();
    assert_eq!((out.exit, out.timed_out), (Exit::Signal(9), false));
}

/// What `python3 file.py` does: `__main__`, `sys.argv`, tracebacks with
/// the code's lines and no frame of the machinery, exit codes, atexit,
/// KeyboardInterrupt on SIGINT.
fn python_runs_code_as_python3_file_does(py: Python) {
    let mut init = Init::start(Options { python: py, ..Options::default() });
    let out = init.python(
        "import sys, atexit\n\
         atexit.register(lambda: print('atexit ran'))\n\
         print(__name__, sys.argv)\n\
         raise ValueError('boom')",
    );
    assert_eq!(text(&out.stdout), "__main__ ['/proc/self/fd/3']\natexit ran\n");
    assert_eq!(out.exit, Exit::Code(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(
            "Traceback (most recent call last):\n  File \"/proc/self/fd/3\", line 4, in <module>\n"
        ),
        "{err}"
    );
    assert!(err.contains("raise ValueError('boom')") && err.ends_with("ValueError: boom\n"), "{err}");
    assert_eq!(init.python("import sys; sys.exit(3)").exit, Exit::Code(3));
    let out = init.python("print('partial', end=''); exit('bye')");
    assert_eq!(
        (text(&out.stdout), text(&out.stderr), out.exit),
        ("partial".into(), "bye\n".into(), Exit::Code(1))
    );

    let id = init
        .agent
        .submit(&Job::python("import time\ntry:\n    print('up', flush=True)\n    time.sleep(100)\nexcept KeyboardInterrupt:\n    print('interrupted')\n    raise"))
        .unwrap();
    loop {
        if let GuestEvent::Output { .. } = init.agent.next_event().unwrap() {
            break;
        }
    }
    init.agent.signal(id, vmhost::Signal::Interrupt).unwrap();
    let out = init.agent.wait_job(id, &mut |_, _| {}).unwrap();
    // What follows the first chunk of "up\n" (print may write it in two).
    assert_eq!(text(&out.stdout).trim_start(), "interrupted\n");
    assert!(text(&out.stderr).ends_with("KeyboardInterrupt\n"), "{}", text(&out.stderr));
    assert_eq!(out.exit, Exit::Signal(2), "an uncaught KeyboardInterrupt ends Python by SIGINT");
}

fn env_cwd_home_and_stdin(py: Python) {
    let mut init = Init::start(Options { python: py, ..Options::default() });
    let mut job = Job::shell("echo \"$GREETING|$HOME|$(pwd)|$PATH\"; cat; echo end");
    job.env = vec![("GREETING".into(), "hi there".into()), ("PATH".into(), "/bin:/usr/bin".into())];
    job.cwd = Some("/tmp".into());
    let out = init.run(&job);
    let home = init.home.path().display().to_string();
    assert_eq!(text(&out.stdout), format!("hi there|{home}|/tmp|/bin:/usr/bin\nend\n"));
    let out = init.shell("pwd");
    assert_eq!(text(&out.stdout), format!("{home}\n"), "home is the default working directory");
}

/// stdin from the host: bytes exact and in order, end of file after them,
/// on both Python paths and in shell; a job that never reads its stdin
/// holds up no other job; stdin misuse is refused with a reason.
fn stdin_streams_to_the_job(py: Python) {
    let mut init = Init::start(Options { python: py, ..Options::default() });
    // 1 MiB plus a bit: many windows' worth, a partial last chunk.
    let data: Vec<u8> = (0..(1 << 20) + 12_345).map(|i: u32| (i * 7 % 251).to_le_bytes()[0]).collect();
    let digest = |bytes: &[u8]| {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(bytes))
    };
    let python =
        "import sys, hashlib\nb = sys.stdin.buffer.read()\nprint(len(b), hashlib.sha256(b).hexdigest())";
    let out = init.run(&Job { stdin: Some(data.clone()), ..Job::python(python) });
    assert_eq!(text(&out.stdout), format!("{} {}\n", data.len(), digest(&data)), "{}", text(&out.stderr));

    let out =
        init.run(&Job { stdin: Some(b"one\ntwo\n".to_vec()), ..Job::shell("read a; cat; echo \"[$a]\"") });
    assert_eq!(text(&out.stdout), "two\n[one]\n");
    // Streamed from a reader (a thread reads it), empty: end of file at once.
    let out = init.agent.run_with_input(&Job::shell("wc -c"), std::io::empty(), |_, _| {}).unwrap();
    assert_eq!(text(&out.stdout).trim(), "0");

    // A job that reads nothing, given a whole window: the others go on.
    let sleeper = init.agent.submit(&Job { stdin: Some(Vec::new()), ..Job::shell("sleep 30") }).unwrap();
    // Its pipe takes 64 KiB (and says so), its window 64 KiB more.
    let chunk = vec![b'x'; proto::MAX_CHUNK];
    for _ in 0..2 * proto::STDIN_WINDOW as usize / proto::MAX_CHUNK {
        init.agent.send(&proto::Request::Stdin { job: sleeper, data: &chunk, end: false }).unwrap();
    }
    assert_eq!(text(&init.shell("echo unblocked").stdout), "unblocked\n");
    // One byte past the window (a host that ignored StdinTaken) is refused.
    init.agent.send(&proto::Request::Stdin { job: sleeper, data: b"x", end: false }).unwrap();
    let refused = init.agent.next_event_for(|e| matches!(e, GuestEvent::Error { .. })).unwrap();
    assert!(
        matches!(&refused, GuestEvent::Error { job: Some(j), message, .. } if *j == sleeper && message.contains("STDIN_WINDOW")),
        "{refused:?}"
    );
    init.agent.signal(sleeper, vmhost::Signal::Kill).unwrap();
    let out = init.agent.wait_job(sleeper, &mut |_, _| {}).unwrap();
    assert_eq!(out.code(), 137);

    // stdin for a job started without it.
    let job = init.agent.submit(&Job::shell("sleep 5")).unwrap();
    init.agent.send(&proto::Request::Stdin { job, data: b"x", end: true }).unwrap();
    let refused = init.agent.wait_job(job, &mut |_, _| {}).unwrap_err().to_string();
    assert!(refused.contains("not started with stdin"), "{refused}");
    init.agent.signal(job, vmhost::Signal::Kill).unwrap();
    init.agent.wait_job(job, &mut |_, _| {}).unwrap();
    assert_eq!(init.agent.ping().unwrap().jobs_active, 0);
}

// No python3, no zygote: the exec path only.
#[test]
fn missing_interpreter_exits_127_with_a_message() {
    let options =
        Options { python: Python::Exec, flags: &["--python", "/nonexistent/python3"], ..Options::default() };
    let mut init = Init::start(options);
    let out = init.python("print(1)");
    assert_eq!(out.code(), 127);
    assert!(text(&out.stderr).contains("cannot execute \"/nonexistent/python3\""), "{}", text(&out.stderr));
    assert_eq!(text(&init.shell("echo still fine").stdout), "still fine\n");
}

fn end_of_the_port_shuts_the_init_down(py: Python) {
    let init = Init::start(Options { python: py, ..Options::default() });
    let status = init.shutdown();
    assert!(status.success(), "{status}");
}

/// The paths are what they say: a forked job finds the zygote's modules
/// loaded, an exec'd one (or one that asks for `fresh`) does not.
fn python_jobs_take_the_path_asked_for(py: Python) {
    let mut init = Init::start(Options { python: py, ..Options::default() });
    let probe = "import sys; print('json' in sys.modules)";
    let forked = if py == Python::Zygote { "True\n" } else { "False\n" };
    assert_eq!(text(&init.python(probe).stdout), forked);
    let fresh = Job { fresh: true, ..Job::python(probe) };
    assert_eq!(text(&init.run(&fresh).stdout), "False\n");
    let mut hashseed = Job::python(probe);
    hashseed.env = vec![("PYTHONHASHSEED".into(), "0".into())];
    assert_eq!(text(&init.run(&hashseed).stdout), "False\n", "PYTHON* variables take the exec path");
}

both_paths!(
    python_jobs_take_the_path_asked_for,
    python_runs_code_as_python3_file_does,
    python_and_shell_hello,
    exit_codes_and_signals,
    output_streams_in_order_as_produced,
    output_is_byte_exact_up_to_one_mib,
    output_past_the_limit_is_dropped_and_flagged,
    timeout_kills_the_whole_tree_and_keeps_partial_output,
    sigterm_ignoring_job_is_killed_after_the_grace,
    background_process_holding_stdout_does_not_hang_the_job,
    code_of_one_mib_runs,
    jobs_run_concurrently,
    signal_request_reaches_the_job,
    env_cwd_home_and_stdin,
    stdin_streams_to_the_job,
    end_of_the_port_shuts_the_init_down,
);
