//! The Python zygote is out of reach of jobs, nothing a job does reaches
//! the next one, and a zygote that dies is replaced while jobs go on. The
//! init runs as PID 1 of a namespace whose /proc shows the zygote (a VM's
//! hides it: `hidepid=2`), so that every attack has a target.

mod common;

use common::{Init, Mode, Python, text};
use vmhost::Job;

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
    let mut init = Init::start_on(Python::Zygote, Mode::Pid1);
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
    let mut init = Init::start_on(Python::Zygote, Mode::Pid1);
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
    let mut init = Init::start_on(Python::Zygote, Mode::Pid1);
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
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(back, "the zygote was not replaced");
}
