//! Jobs in a VM under QEMU: one VM serves many jobs, restored from the
//! snapshot template as VMs are by default, and booted cold; and the sandbox
//! the init sets up there.

use std::time::Duration;

use common::{cold_vm, restored_vm, run, text};
use proto::{Exit, Stream};
use vmhost::{Job, Vm};

/// One VM, many jobs: what a notebook or an agent session does.
#[test]
fn one_restored_vm_serves_many_jobs() {
    let vm = restored_vm();
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
    let mut vm = restored_vm();
    let out = run(
        &mut vm,
        &Job::shell(
            "test $(id -u) -ge 1000 && test $(id -u) -lt 1032 && echo job-user; echo $HOME; pwd; \
             ls /dev/mem /dev/kmem /dev/port 2>&1 | wc -l; ls /dev/mem 2>/dev/null | wc -l; \
             stat -c '%a %U' /tmp /home/user; \
             touch /tmp/t /home/user/t /dev/shm/t && echo writable; \
             touch /etc/t 2>/dev/null || echo root-is-read-only; \
             ls /proc | grep -cx 1; cat /proc/self/oom_score_adj",
        ),
    );
    assert_eq!(
        text(&out.stdout),
        "job-user\n/home/user\n/home/user\n3\n0\n700 user\n700 user\nwritable\nroot-is-read-only\n0\n0\n",
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
