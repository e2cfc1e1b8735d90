"""A file operation in the guest, run as a Python job by `vmhost::guest::files`.

It runs as the job user, so the kernel enforces what that user may touch;
on top of that, a path must stay inside the user's home: no `..`, an
absolute path only under $HOME, and no symbolic link anywhere on the way
(each component is opened with O_NOFOLLOW relative to the one before, so a
link cannot be swapped in between a check and the open).

PID1_OP is write (stdin into the file, PID1_MODE its mode), read (the file
to stdout), delete (a file, a link or an empty directory) or list (a record
per entry: kind, size, mode, name, separated by tabs and ended by a NUL,
which no name contains).
Failures: one line on stderr, exit 2.
"""
import errno, os, stat, sys  # noqa: E401

HOME = os.environ["HOME"]
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def fail(message):
    sys.stderr.write(message + "\n")
    sys.exit(2)


def components(path):
    """The path's parts below HOME."""
    if path.startswith("/"):
        if path != HOME and not path.startswith(HOME + "/"):
            fail(f"outside {HOME}")
        path = path[len(HOME):]
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        fail("'..' is not allowed")
    return parts


def open_dir(parts, create):
    """A descriptor of the directory `parts` names, made if `create`."""
    fd = os.open(HOME, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
    for name in parts:
        if create:
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
        try:
            next_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW, dir_fd=fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(os.lstat(name, dir_fd=fd).st_mode):
                fail(f"{name} is a symbolic link")
            raise
        os.close(fd)
        fd = next_fd
    return fd


def main():
    op, path = os.environ["PID1_OP"], os.environ["PID1_PATH"]
    parts = components(path)
    try:
        if op == "list":
            fd = open_dir(parts, create=False)
            for entry in sorted(os.scandir(fd), key=lambda e: e.name):
                st = entry.stat(follow_symlinks=False)
                kind = "dir" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else \
                    "file" if stat.S_ISREG(st.st_mode) else "other"
                sys.stdout.buffer.write(f"{kind}\t{st.st_size}\t{stat.S_IMODE(st.st_mode)}\t".encode()
                                        + os.fsencode(entry.name) + b"\0")
            return
        if not parts:
            fail("not a file")
        dir_fd = open_dir(parts[:-1], create=op == "write")
        name = parts[-1]
        if op == "delete":
            # A file or link goes; a directory only when empty, so one call
            # never removes a tree by surprise.
            if stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode):
                os.rmdir(name, dir_fd=dir_fd)
            else:
                os.unlink(name, dir_fd=dir_fd)
            return
        if op == "write":
            # Into a new file, renamed over the old one once whole: a
            # failed upload (a full filesystem) leaves the old file as it was.
            mode = int(os.environ["PID1_MODE"]) & 0o777
            temporary = f".{name}.upload-{os.getpid()}"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, mode, dir_fd=dir_fd)
            try:
                os.fchmod(fd, mode)
                with open(fd, "wb", closefd=True) as out:
                    while chunk := sys.stdin.buffer.read(1 << 20):
                        out.write(chunk)
                os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                os.unlink(temporary, dir_fd=dir_fd)
                raise
        elif op == "read":
            fd = os.open(name, os.O_RDONLY | NOFOLLOW, dir_fd=dir_fd)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                fail("not a regular file")
            with open(fd, "rb", closefd=True) as f:
                while chunk := f.read(1 << 20):
                    sys.stdout.buffer.write(chunk)
        else:
            fail(f"unknown operation {op}")
    except OSError as e:
        if e.errno == errno.ELOOP:
            fail("a symbolic link")
        fail(os.strerror(e.errno).lower())


main()
