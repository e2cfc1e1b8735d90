//! Stateful sessions in a VM: steps that share one interpreter, each with
//! its own output and status; timeouts that interrupt a step, not the
//! session.

use std::time::Duration;

use common::{restored_vm, text};
use vmhost::{Lang, SessionError, Step};

fn out(step: &Step) -> (String, String, i32) {
    (text(&step.stdout), text(&step.stderr), step.exit)
}

#[test]
fn a_python_session_keeps_its_state() {
    let mut vm = restored_vm();
    let mut session = vm.session(Lang::Python).unwrap();
    let step = session.exec("import json\nrows = [{'n': i} for i in range(3)]\nprint('loaded')").unwrap();
    assert_eq!(out(&step), ("loaded\n".into(), String::new(), 0));
    // Globals and imports from the step before; a last bare expression is
    // shown, as in a notebook.
    let step = session.exec("total = sum(r['n'] for r in rows)\njson.dumps({'total': total})").unwrap();
    assert_eq!(out(&step), ("'{\"total\": 3}'\n".into(), String::new(), 0));
    // A step that raises: exit 1, its traceback, and the session lives on.
    let step = session.exec("print('before')\nrows[10]").unwrap();
    let (stdout, stderr, exit) = out(&step);
    assert_eq!((stdout.as_str(), exit), ("before\n", 1));
    assert!(stderr.contains("IndexError: list index out of range") && stderr.contains("line 2"), "{stderr}");
    assert!(!stderr.contains("session.py"), "no driver frames: {stderr}");
    let step = session.exec("import sys\nprint(total, file=sys.stderr)\nsys.exit(4)").unwrap();
    assert_eq!(out(&step), (String::new(), "3\n".into(), 4));
    // Output without a final newline stays as it was written.
    assert_eq!(out(&session.exec("print('a', end='')").unwrap()), ("a".into(), String::new(), 0));

    // A step past its timeout gets KeyboardInterrupt; the session lives on.
    let step = session
        .exec_with_timeout("import time\nstate = 'set'\ntime.sleep(60)", Duration::from_secs(2))
        .unwrap();
    assert!(step.timed_out);
    assert_eq!(step.exit, 1);
    assert!(text(&step.stderr).contains("KeyboardInterrupt"), "{}", text(&step.stderr));
    assert_eq!(out(&session.exec("print(state, total)").unwrap()).0, "set 3\n");

    // A step that will not stop is killed, and the session with it.
    let stubborn = "import time\nwhile True:\n    try:\n        time.sleep(60)\n    except KeyboardInterrupt:\n        pass";
    let err = session.exec_with_timeout(stubborn, Duration::from_secs(1)).unwrap_err();
    assert!(matches!(err, SessionError::Ended(_)), "{err}");
    assert!(matches!(session.exec("1").unwrap_err(), SessionError::Ended(None)));
    drop(session);
    // The VM goes on (its connection is shared since the session began).
    let shared = vm.shared();
    let after = shared.run(&vmhost::Job::python("print('next')"), &mut |_, _| {}).unwrap();
    assert_eq!(text(&after.stdout), "next\n");
    assert_eq!(shared.ping(Duration::from_secs(10)).unwrap().jobs_active, 0);
    vm.shutdown();
}

#[test]
fn a_shell_session_keeps_cwd_env_and_functions() {
    let mut vm = restored_vm();
    let mut session = vm.session(Lang::Shell).unwrap();
    assert_eq!(
        out(&session.exec("cd /tmp && export A=7 && B=8").unwrap()),
        (String::new(), String::new(), 0)
    );
    let step = session.exec("greet() { echo \"hi $1\"; }\necho $A $B $(pwd)").unwrap();
    assert_eq!(out(&step), ("7 8 /tmp\n".into(), String::new(), 0));
    let step = session.exec("greet there; echo oops >&2; false").unwrap();
    assert_eq!(out(&step), ("hi there\n".into(), "oops\n".into(), 1));
    // A step's stdin is /dev/null, not the session's channel.
    assert_eq!(out(&session.exec("cat; echo read-nothing").unwrap()).0, "read-nothing\n");
    // Interrupted: the step's command dies, the shell lives on.
    let step = session.exec_with_timeout("sleep 60; echo after", Duration::from_secs(1)).unwrap();
    assert!(step.timed_out);
    assert_eq!(out(&session.exec("echo $A; sleep 1000 & echo started").unwrap()).0, "7\nstarted\n");
    // Closing ends what the session started.
    session.close().unwrap();
    let ps = vmhost::Job::shell("ps -o args | grep -c '^sleep 1000'");
    let left = vm.shared().run(&ps, &mut |_, _| {}).unwrap();
    assert_eq!(text(&left.stdout), "0\n");
    vm.shutdown();
}
