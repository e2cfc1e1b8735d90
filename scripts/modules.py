#!/usr/bin/env python3
"""The init's module graph: which module of src/ names which, and whether
the graph has a cycle (exit 1 if it has, naming the modules in it).

A module names another by a path `crate::a::b`, `super::x` or `self::x` in
its code. The crate root (lib.rs, main.rs) is left out: it declares every
module and is named by the entry point, so it would close every loop.

    python3 scripts/modules.py [SRC_DIR]
"""
import re
import sys
from pathlib import Path

PATH = re.compile(r"\b(crate|super|self)::((?:[a-z_][a-z0-9_]*::)*(?:\{[^}]*\}|[a-z_][a-z0-9_]*))")


def module_name(src: Path, file: Path) -> str:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return "::".join(parts)


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "src")
    files = {module_name(src, f): f for f in sorted(src.rglob("*.rs")) if f.name not in ("lib.rs", "main.rs")}
    # Modules built only for tests and fuzzing (`#[cfg(any(test, fuzzing))]
    # mod x;`) are harnesses around the init, not part of it: left out like
    # unit tests.
    for module, file in list(files.items()):
        for child in re.findall(r"^#\[cfg\(any\(test, fuzzing\)\)\]\s*\n\s*(?:pub\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;",
                                file.read_text(), re.M):
            files.pop(f"{module}::{child}", None)
    edges: dict[str, set[str]] = {m: set() for m in files}
    for module, file in files.items():
        parent = module.rsplit("::", 1)[0] if "::" in module else ""
        # Comments name modules too (in prose); only code counts. Unit tests
        # (the `mod tests` that ends a file) are left out: the graph is the
        # init's, and their `super` is the file itself.
        text = re.split(r"^#\[cfg\(test\)\]\s*\n\s*mod tests\b", file.read_text(), maxsplit=1, flags=re.M)[0]
        code = "\n".join(line.split("//")[0] for line in text.splitlines())
        for base, path in PATH.findall(code):
            prefix = {"crate": "", "super": parent, "self": module}[base]
            head, _, group = path.partition("{")
            # `a::b::{c, d}` names a::b::c and a::b::d; each resolves to the
            # longest prefix that is a module.
            for tail in re.findall(r"[a-z_][a-z0-9_]*", group) or [""]:
                parts = [p for p in (prefix + "::" + head + tail).split("::") if p]
                while parts and "::".join(parts) not in files:
                    parts.pop()
                target = "::".join(parts)
                if target and target != module:
                    edges[module].add(target)
        # A parent names its children by `mod child;`.
        for child in re.findall(r"^\s*(?:pub\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;", code, re.M):
            if f"{module}::{child}" in files:
                edges[module].add(f"{module}::{child}")

    for module in sorted(edges):
        print(f"{module} -> {', '.join(sorted(edges[module])) or '(nothing)'}")

    # Depth-first search for a back edge.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m)):
            print(f"cycle: {' -> '.join(cycle)}", file=sys.stderr)
            return 1
    print(f"{len(edges)} modules, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
