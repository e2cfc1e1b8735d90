"""pid1's Python zygote: an interpreter, initialised and with the common
modules imported, that the init asks to fork for each Python job.

The init starts it as root, as `python3 zygote.py JOB_PROCESSES` (the
process limit of a job, which a leader outside a cgroup gets as its
RLIMIT_NPROC), with two pipes: requests on descriptor 3, replies on 4. For
a request it opens the job's descriptors through /proc/<init>/fd/N and forks
once, with CLONE_PARENT (and into the job's cgroup when it has one): the
leader is the init's child from birth, so the init reaps it and reads its
exit status itself. The zygote replies with the leader's pid. The leader
moves its descriptors into place, enters a mount namespace with its user's
own home and /tmp, drops to the job user exactly as an exec'd job does, and
runs the code as `python3 /proc/self/fd/3` would.

The records (proto/ZYGOTE.md; native byte order, u32 words):
Request: length, job, code fd, stdout fd, stderr fd, has_cwd, uid, stdin fd
(0: /dev/null), cgroup fd (0: none); then `length` bytes of NUL-terminated
`NAME=value` strings (and the cwd last, if has_cwd).
Reply: kind (READY, SPAWNED, FAILED), job, pid.
"""

import os
import sys

# What most jobs import, so that a job finds it loaded (see the README for
# what this costs). Unused names are the point: they stay in sys.modules.
import base64, collections, csv, dataclasses, datetime, decimal, fractions  # noqa: E401,F401
import functools, hashlib, io, itertools, json, math, pathlib, random, re  # noqa: E401,F401
import secrets, statistics, string, struct, subprocess, textwrap, time  # noqa: E401,F401
import traceback, typing, uuid, ctypes, resource, signal, types, builtins  # noqa: E401,F401
import atexit, linecache, tokenize  # noqa: E401,F401

import gc

REQUESTS, REPLIES = 3, 4
# A reply's kind: initialised (job and pid 0); forked the job's leader;
# could not open its descriptors or fork (pid 0).
READY, SPAWNED, FAILED = 0, 1, 2
HEADER = struct.Struct("=9I")
Request = collections.namedtuple("Request", "length job code stdout stderr has_cwd uid stdin cgroup")
REPLY = struct.Struct("=3I")
SCRIPT = "/proc/self/fd/3"
PR_SET_NO_NEW_PRIVS = 38
INIT = os.getppid()
LIBC = ctypes.CDLL(None, use_errno=True)
# The raw clone runs with the GIL held, as os.fork does.
LIBC_WITH_GIL = ctypes.PyDLL(None)
LIBC_WITH_GIL.syscall.restype = ctypes.c_long
pythonapi = ctypes.pythonapi
SYS_CLONE = 56
SYS_CLONE3 = 435
CLONE_PARENT = 0x8000
CLONE_INTO_CGROUP = 0x200000000
CLONE_NEWNS = 0x20000
MS_BIND = 0x1000
# Each job user's mounts, as the init lays them out (src/job/users.rs):
# USERS/<uid><path> is bound over <path> in the job's own mount namespace.
USERS = "/usr/lib/pid1/users"
PRIVATE = ("/home/user", "/tmp", "/dev/shm")


class CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls",
        "set_tid", "set_tid_size", "cgroup")]


def decode_request(header):
    """A request's header, `HEADER.size` bytes."""
    return Request._make(HEADER.unpack(header))


def decode_environment(block, has_cwd):
    """A request's block: its `NAME=value` strings, and the cwd (or None)."""
    strings = [s.decode("utf-8", "surrogateescape") for s in block.split(b"\0")[:-1]]
    cwd = strings.pop() if has_cwd else None
    return strings, cwd


def encode_reply(kind, job, pid):
    return REPLY.pack(kind, job, pid)


def reply(kind, job, pid):
    try:
        os.write(REPLIES, encode_reply(kind, job, pid))
    except OSError:
        os._exit(0)  # the init is gone


def read_exact(n):
    data = b""
    while len(data) < n:
        chunk = os.read(REQUESTS, n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def fork_for_the_init(cgroup):
    """`fork`, but the child's parent is the init (`CLONE_PARENT`): the init
    reaps the job's leader and reads its exit status itself. Given the
    job's cgroup directory (else -1), the child starts in it
    (`clone3` with `CLONE_INTO_CGROUP`): nothing it does escapes it. Python's own
    before- and after-fork work is done as `os.fork` does it; glibc keeps
    no per-process state that a raw clone would leave stale (its `raise`
    asks the kernel for the thread id)."""
    pythonapi.PyOS_BeforeFork()
    if cgroup < 0:
        pid = LIBC_WITH_GIL.syscall(SYS_CLONE, CLONE_PARENT | signal.SIGCHLD, 0, 0, 0, 0)
    else:
        # No exit_signal: with CLONE_PARENT the child's is the zygote's own
        # (SIGCHLD, to the init), and clone3 refuses one.
        args = CloneArgs(flags=CLONE_PARENT | CLONE_INTO_CGROUP, cgroup=cgroup)
        pid = LIBC_WITH_GIL.syscall(SYS_CLONE3, ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
    if pid == 0:
        pythonapi.PyOS_AfterFork_Child()
    else:
        pythonapi.PyOS_AfterFork_Parent()
    return pid


def serve():
    """Forks a leader per request; returns only in a leader, with its job."""
    reply(READY, 0, 0)
    while True:
        header = read_exact(HEADER.size)
        if header is None:
            os._exit(0)  # the init is gone
        length, job, code, out, err, has_cwd, uid, stdin, cgroup = decode_request(header)
        block = read_exact(length) if length else b""
        if block is None:
            os._exit(0)
        try:
            # Opened before the reply: the init closes its copies then.
            fds = [os.open(f"/proc/{INIT}/fd/{code}", os.O_RDONLY | os.O_CLOEXEC),
                   os.open(f"/proc/{INIT}/fd/{out}", os.O_WRONLY | os.O_CLOEXEC),
                   os.open(f"/proc/{INIT}/fd/{err}", os.O_WRONLY | os.O_CLOEXEC),
                   os.open(f"/proc/{INIT}/fd/{stdin}" if stdin else "/dev/null",
                           os.O_RDONLY | os.O_CLOEXEC)]
            if cgroup:
                fds.append(os.open(f"/proc/{INIT}/fd/{cgroup}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError:
            reply(FAILED, job, 0)
            continue
        leader = fork_for_the_init(fds[4] if cgroup else -1)
        if leader == 0:
            return job, fds[:4], has_cwd, uid, block, bool(cgroup)
        for fd in fds:
            os.close(fd)
        if leader < 0:
            reply(FAILED, job, 0)
        else:
            reply(SPAWNED, job, leader)


def enter_own_mounts(uid):
    """As the init does for an exec'd job in a VM (where the image has the
    job users' directories): a mount namespace of the leader's own, in
    which user `uid`'s home, /tmp and /dev/shm are bound over those paths."""
    root = f"{USERS}/{uid}"
    if not os.path.isdir(root):
        return
    if LIBC.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "cannot unshare the mount namespace")
    for path in PRIVATE:
        if LIBC.mount((root + path).encode(), path.encode(), None, MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), f"cannot bind {root + path} over {path}")


def become_the_job(fds, has_cwd, uid, block, in_cgroup, job_processes):
    """What the init does between fork and exec for a job, less what the
    zygote set for all its children once (see `settle`)."""
    os.setsid()
    enter_own_mounts(uid)
    # As the init sets it: with a cgroup, its pids.max is the job's limit
    # and the per-user one goes; without (outside a VM), the per-user one.
    nproc = resource.RLIM_INFINITY if in_cgroup else job_processes
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    for fd, target in zip(fds, (3, 1, 2, 0)):
        os.dup2(fd, target)
    os.closerange(4, os.sysconf("SC_OPEN_MAX"))
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    strings, cwd = decode_environment(block, has_cwd)
    os.environ.clear()
    os.environ.update(s.split("=", 1) for s in strings)
    os.chdir(cwd or os.environ.get("HOME", "/"))
    random.seed()
    sys.argv[:] = [SCRIPT]
    sys.path[0] = os.path.dirname(SCRIPT)


def exit_as_python_does(code):
    """The end of `python3 file.py`, without tearing down every module the
    zygote imported (the slow part of an interpreter's exit): wait for
    threads, run atexit handlers, flush, exit."""
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            code = 120
    os._exit(code)


def exit_code(e):
    """What the interpreter exits with for `SystemExit(e.code)`."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    print(e.code, file=sys.stderr)
    return 1


def run_as_main():
    """`python3 /proc/self/fd/3`: the code as `__main__`, tracebacks that
    show only its frames, exit status as the interpreter gives it."""
    main = types.ModuleType("__main__")
    main.__file__ = SCRIPT
    main.__builtins__ = builtins
    main.__spec__ = None
    sys.modules["__main__"] = main
    try:
        with open(SCRIPT, "rb") as f:
            source = f.read()
        exec(compile(source, SCRIPT, "exec"), main.__dict__)
    except SystemExit as e:
        exit_as_python_does(exit_code(e))
    except BaseException as e:
        # Without this function's frame, as `python3 file.py` shows it.
        tb = e.__traceback__.tb_next if e.__traceback__ else None
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        if isinstance(e, KeyboardInterrupt):
            # As Python ends on an uncaught KeyboardInterrupt: killed by
            # SIGINT, after its atexit handlers.
            atexit._run_exitfuncs()
            sys.stdout.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        exit_as_python_does(1)
    exit_as_python_does(0)


# A package layer's list of what to import (host/src/packages/layer.rs).
PRELOAD = "/opt/pid1/packages/.pid1-preload"


def preload(skipped):
    """Imports the package layer's modules, after the settings it names
    (`NAME=VALUE` lines, such as OPENBLAS_NUM_THREADS=1). A module whose
    import leaves a thread running would make every fork unsafe (a child
    inherits the thread's locks, not the thread): the zygote starts again
    without it, its name added to `skipped` (the arguments after the first)."""
    try:
        with open(PRELOAD) as f:
            lines = f.read().split()
    except OSError:
        return
    for line in lines:
        name, sep, value = line.partition("=")
        if sep:
            os.environ.setdefault(name, value)
    for name in lines:
        if "=" in name or name in skipped:
            continue
        try:
            __import__(name)
        except BaseException:
            continue
        if len(os.listdir("/proc/self/task")) > 1:
            os.execv(sys.executable, [sys.executable, *sys.argv, name])


def settle():
    """What every job inherits and the zygote may share: the OOM killer may
    pick it (the init is exempt, and children inherit that), no core
    dumps, no_new_privs (the zygote execs nothing; it still drops to the
    job user in each child). Its signal dispositions are the defaults and
    its mask is empty, as the init started it, except what Python's start
    sets and an exec'd job gets too: KeyboardInterrupt on SIGINT, SIGPIPE
    and SIGXFSZ ignored."""
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("0")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot set no_new_privs")


if __name__ == "__main__":
    # Read before anything is forked: a zygote started wrongly ends here.
    job_processes = int(sys.argv[1])
    preload(set(sys.argv[2:]))
    settle()
    # The zygote's objects are never collected in a job: the collector then
    # neither walks them nor writes to their pages (which a fork shares).
    gc.collect()
    gc.freeze()
    job = serve()
    del serve
    try:
        become_the_job(*job[1:], job_processes)
    except BaseException as e:
        # The job's stderr, when it got that far; the console otherwise.
        print(f"cannot start the job in the zygote: {e}", file=sys.stderr)
        os._exit(126)
    del job
    run_as_main()
