//! Shell jobs behave like scripts run in a terminal of a Debian 12 machine:
//! `#!` lines run by the kernel, bash for code without one, a byte order
//! mark ignored, the paths scripts expect. One restored VM for all cases.

use common::{restored_vm, run, text};
use vmhost::{Job, Vm};

fn shell(vm: &mut Vm, code: &str) -> (String, String, i32) {
    let out = run(vm, &Job::shell(code));
    (text(&out.stdout), text(&out.stderr), out.code())
}

#[test]
fn shell_jobs_run_as_scripts_do() {
    let mut vm = restored_vm();

    // The kernel runs the interpreter the `#!` line names, with its
    // argument, on the code.
    let awk = "#!/usr/bin/awk -f\nBEGIN { n = split(\"a b c\", parts); print n, parts[3] }\n";
    assert_eq!(shell(&mut vm, awk), ("3 c\n".into(), String::new(), 0));

    // A multi-line Python script sent as shell code.
    let python = "#!/usr/bin/python3\nimport sys\ndef f(x):\n    return x * 2\nprint(f(21), sys.argv[0].startswith('/'))\nsys.exit(3)\n";
    assert_eq!(shell(&mut vm, python), ("42 True\n".into(), String::new(), 3));

    // As a job user (uid 1000 up: one of the init's 32).
    let env = "#!/usr/bin/env python3\nimport os\nprint(1000 <= os.getuid() < 1032)\n";
    assert_eq!(shell(&mut vm, env), ("True\n".into(), String::new(), 0));

    // A script for /bin/sh (busybox) still gets it.
    let sh = "#!/bin/sh\necho \"$0\" | grep -c /proc/self/fd/3\n";
    assert_eq!(shell(&mut vm, sh).0, "1\n");

    // A missing interpreter: 127, and stderr names it.
    let (out, err, code) = shell(&mut vm, "#!/usr/bin/no-such-interpreter -x\necho ran\n");
    assert_eq!((out.as_str(), code), ("", 127), "{err}");
    assert!(err.contains("#!/usr/bin/no-such-interpreter -x: bad interpreter: no such file"), "{err}");

    // A leading UTF-8 byte order mark is not part of the first command, nor
    // does it hide a `#!` line.
    assert_eq!(shell(&mut vm, "\u{feff}echo bom"), ("bom\n".into(), String::new(), 0));
    assert_eq!(shell(&mut vm, "\u{feff}#!/usr/bin/awk -f\nBEGIN { print 7 }").0, "7\n");

    // Code without `#!` runs in bash.
    let bash = r#"set -o pipefail
arr=(one two three)
[[ ${#arr[@]} -eq 3 && ${arr[1]} == t* ]] && echo "bash ${BASH_VERSINFO[0]} ${arr[@]:1}"
false | true; echo "pipefail $?"
declare -A m=([k]=v); echo "${m[k]}"
"#;
    assert_eq!(shell(&mut vm, bash), ("bash 5 two three\npipefail 1\nv\n".into(), String::new(), 0));

    // Python's own byte order mark handling is unchanged.
    let out = run(&mut vm, &Job::python("\u{feff}print('py bom')"));
    assert_eq!((text(&out.stdout), out.code()), ("py bom\n".into(), 0));
    vm.shutdown();
}

#[test]
fn the_image_has_the_paths_scripts_expect() {
    let mut vm = restored_vm();
    // A merged /usr as in Debian 12.
    let paths = r#"for p in /usr/bin/env /usr/bin/python3 /usr/bin/awk /usr/bin/bash /bin/bash /bin/sh \
         /usr/bin/sed /usr/bin/sort; do [ -x "$p" ] || echo "missing $p"; done
for d in bin sbin lib lib64; do [ "$(readlink /$d)" = "usr/$d" ] || echo "/$d is not merged"; done
[ -d /mnt ] || echo "no /mnt"
echo x > /var/tmp/probe && cat /var/tmp/probe
"#;
    assert_eq!(shell(&mut vm, paths), ("x\n".into(), String::new(), 0));

    // Scripts that probe their privileges by mounting see EPERM, not ENOENT.
    let mount = "import ctypes, os\n\
                 libc = ctypes.CDLL(None, use_errno=True)\n\
                 r = libc.mount(b'none', b'/mnt', b'tmpfs', 0, None)\n\
                 print(r, os.strerror(ctypes.get_errno()))";
    let out = run(&mut vm, &Job::python(mount));
    assert_eq!(text(&out.stdout), "-1 Operation not permitted\n", "{}", text(&out.stderr));
    vm.shutdown();
}
