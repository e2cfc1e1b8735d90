"""A Python session in the guest, run as one long job by `vmhost::session`.

Steps arrive on stdin as `<kind> <length>\n` and that many bytes of code:
`exec` runs a whole cell (the value of a last bare expression is printed,
as a notebook shows it), `push` adds one line as Python's interactive
console does (it runs once the statement is complete). Every step shares
one namespace. After each, both streams get the marker `\0<nonce>:<status>\0`
(status 0, the code of a SystemExit, 1 for an exception, `more` for an
incomplete `push`). SIGINT interrupts the running step only.
"""
import ast, codeop, os, sys, traceback  # noqa: E401

NONCE = os.environ.pop("PID1_SESSION")
# The steps come on descriptor 0; the code running in them reads /dev/null.
steps = os.fdopen(os.dup(0), "rb", buffering=0)
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
sys.stdin = open(os.devnull)
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
compiler = codeop.CommandCompiler()
pending = []


def read_exact(n):
    data = b""
    while len(data) < n:
        chunk = steps.read(n - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data


def read_line():
    line = b""
    while not line.endswith(b"\n"):
        byte = steps.read(1)
        if not byte:
            sys.exit(0)  # the session was closed
        line += byte
    return line


def run_cell(source):
    tree = ast.parse(source, "<step>", "exec")
    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    if last is not None:
        tree.body.pop()
    exec(compile(tree, "<step>", "exec"), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), "<step>", "eval"), namespace)
        if value is not None:
            print(repr(value))


def run_line(line):
    """The interactive console's push: True while more lines are needed."""
    pending.append(line)
    source = "\n".join(pending)
    code = compiler(source, "<stdin>", "single")
    if code is None:
        return True
    pending.clear()
    exec(code, namespace)
    return False


def step(kind, source):
    try:
        if kind == b"exec":
            run_cell(source)
        elif run_line(source):
            return "more"
        return 0
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code & 0xFF
        print(code, file=sys.stderr)
        return 1
    except BaseException:
        pending.clear()
        # Without the driver's own frames, as python3 shows a traceback.
        kind, value, tb = sys.exc_info()
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        traceback.print_exception(kind, value, tb)
        return 1


def main():
    while True:
        try:
            kind, length = read_line().split()
            source = read_exact(int(length)).decode()
            status = step(kind, source)
        except KeyboardInterrupt:
            # Between steps: nothing to interrupt.
            continue
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
                stream.buffer.write(f"\0{NONCE}:{status}\0".encode())
                stream.flush()
            except (OSError, ValueError):
                pass


main()
