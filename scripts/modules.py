#!/usr/bin/env python3
"""A crate's module graph: which module names which, and whether the graph
has a cycle (exit 1 if it has, naming the modules in it; 2 if a declared
module has no file).

Each SRC_DIR is a crate's src/. Its roots (lib.rs, main.rs, bin/*.rs,
bin/*/main.rs) are separate crates, each with its own graph; their modules
are the ones declared with `mod x;` from the root down, found where rustc
looks (x.rs, x/mod.rs, `#[path]`). A .rs file nothing declares is not
compiled, and is only reported.

A module names another by a path in its code: `crate::a::b`, `super::x`
(`super::super::x`), `self::x`, `$crate::x` in a macro, a child module's
own name, and every leaf of a `use` tree (`use crate::{a::{b, c}, d::*}`).
Each path stands for the longest prefix that is a module file (an inline
`mod x { ... }` belongs to its file). The crate root is left out: it
declares every module and is named by the entry point, so it would close
every loop; a name the root imports (`pub use vm::Vm`) stands for the
module it came from, so a re-export cannot hide an edge. A parent names
its children (`mod child;`), so a child that names its parent closes a
loop: what both need belongs in a module of its own. Comments and
string literals are not code, and neither is what is compiled only for
tests or fuzzing (`#[cfg(test)]`, `#[cfg(any(test, fuzzing))]`): unit tests
and harnesses around the crate, whose `super` is the module they test.

    python3 scripts/modules.py [SRC_DIR...]     (default: src)
"""
import re
import sys
from pathlib import Path

IDENT = r"(?:r#)?[A-Za-z_][A-Za-z0-9_]*"
# A cfg that holds only in test or fuzzing builds.
TEST_CFG = re.compile(r"#\[\s*cfg\s*\(\s*(?:test|fuzzing|any\s*\(\s*(?:test|fuzzing)(?:\s*,\s*(?:test|fuzzing))*\s*,?\s*\))\s*\)\s*\]")
MOD_DECL = re.compile(rf"((?:#\[[^\]]*\]\s*)*)(?:\bpub\s*(?:\([^)]*\)\s*)?)?\bmod\s+({IDENT})\s*;")
INLINE_MOD = re.compile(rf"\bmod\s+({IDENT})\s*\{{")
USE = re.compile(r"(?<![\w$])use\b([^;]*);")
# A path from a keyword, and a path from a plain name (a child module's).
KEYWORD_PATH = re.compile(rf"(?<![\w:$])(\$crate|crate|super|self)((?:\s*::\s*{IDENT})*)")
NAME_PATH = re.compile(rf"(?<![\w:$])({IDENT})\s*::")
CHAR = re.compile(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]{1,6}\}|.)|[^\\'\n])'")
RAW_STRING = re.compile(r'b?r(#*)"')


class Code:
    """A file's text without comments, with each string literal replaced by
    `"<n>"`, its contents kept in `strings[n]` (a `#[path]` needs one)."""

    def __init__(self, text: str):
        self.strings: list[str] = []
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            if text.startswith("//", i):
                end = text.find("\n", i)
                i = n if end < 0 else end
            elif text.startswith("/*", i):
                depth = 0
                while i < n:
                    if text.startswith("/*", i):
                        depth, i = depth + 1, i + 2
                    elif text.startswith("*/", i):
                        depth, i = depth - 1, i + 2
                        if depth == 0:
                            break
                    else:
                        i += 1
                out.append(" ")
            elif (m := RAW_STRING.match(text, i)) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
                close = '"' + m.group(1)
                end = text.find(close, m.end())
                end = n if end < 0 else end
                i = self.literal(out, text[m.end():end], end + len(close))
            elif text[i] == '"':
                j = i + 1
                while j < n and text[j] != '"':
                    j += 2 if text[j] == "\\" else 1
                i = self.literal(out, text[i + 1:j], j + 1)
            elif text[i] == "'" and (m := CHAR.match(text, i)):
                out.append("' '")
                i = m.end()
            else:
                out.append(text[i])
                i += 1
        # `pub(super)` and `pub(crate)` say who may name an item, not whom
        # it names.
        self.all_text = re.sub(r"\bpub\s*\([^)]*\)", "pub", "".join(out))
        self.text = drop_test_items(self.all_text)

    def literal(self, out: list[str], contents: str, resume: int) -> int:
        out.append(f'"{len(self.strings)}"')
        self.strings.append(contents)
        return resume


def matching(text: str, open_at: int) -> int:
    """The index just past the bracket that closes the one at `open_at`."""
    pairs = {"{": "}", "(": ")", "[": "]"}
    stack = []
    for i in range(open_at, len(text)):
        c = text[i]
        if c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
    return len(text)


def blank(text: str) -> str:
    """Spaces for everything but newlines: offsets stay where they were."""
    return re.sub(r"[^\n]", " ", text)


def drop_test_items(text: str) -> str:
    """Blanks every item under a test- or fuzzing-only cfg: to its `;`, or
    through its `{ ... }` body."""
    while m := TEST_CFG.search(text):
        i = m.end()
        while i < len(text):
            c = text[i]
            if c in "([" or text.startswith("#[", i):
                i = matching(text, i + (c == "#"))
            elif c == "{":
                i = matching(text, i)
                break
            elif c == ";":
                i += 1
                break
            else:
                i += 1
        text = text[:m.start()] + blank(text[m.start():i]) + text[i:]
    return text


def scopes(text: str, context: tuple[str, ...]):
    """(module path, code) for the file's own level and for each inline
    module in it, each without the inline modules inside it."""
    own, inner, i = text, [], 0
    while m := INLINE_MOD.search(text, i):
        end = matching(text, m.end() - 1)
        inner.append((bare(m.group(1)), text[m.end():end - 1]))
        own = own[:m.start()] + blank(text[m.start():end]) + own[end:]
        i = end
    yield context, own
    for name, body in inner:
        yield from scopes(body, context + (name,))


def bare(name: str) -> str:
    return name[2:] if name.startswith("r#") else name


def use_paths(tree: str) -> list[list[str]]:
    """Every leaf of a `use` tree as its segments: `a::{self, b::*}` is
    [a] and [a, b, *]."""
    tokens = re.findall(rf"::|[{{}},*]|\$crate|{IDENT}", tree)
    pos = 0

    def subtree(prefix: list[str]) -> list[list[str]]:
        nonlocal pos
        path = list(prefix)
        while pos < len(tokens) and tokens[pos] not in (",", "}"):
            t = tokens[pos]
            pos += 1
            if t == "{":
                leaves = []
                while pos < len(tokens) and tokens[pos] != "}":
                    if tokens[pos] == ",":
                        pos += 1
                    else:
                        leaves += subtree(path)
                pos += 1
                return leaves
            if t == "as":
                pos += 1
            elif t == "self" and path:
                pass
            elif t != "::":
                path.append(bare(t))
        return [path] if path else []

    leaves = []
    while pos < len(tokens):
        if tokens[pos] in (",", "}"):
            pos += 1
        else:
            leaves += subtree([])
    return leaves


class Crate:
    """The modules reached from one crate root, each with its code."""

    def __init__(self, root: Path):
        # Module path -> its file's code; the root is ().
        self.modules: dict[tuple[str, ...], Code] = {}
        self.files: dict[tuple[str, ...], Path] = {}
        # Files declared only in test or fuzzing builds: not in the graph,
        # but compiled.
        self.test_only: set[Path] = set()
        self.missing: list[str] = []
        self.load((), root, root.parent)

    def load(self, module: tuple[str, ...], file: Path, children_dir: Path):
        code = Code(file.read_text())
        self.modules[module], self.files[module] = code, file
        every = {c: self.declared(code, file, children_dir, module, c, t) for c, t in scopes(code.all_text, module)}
        for context, text in scopes(code.text, module):
            for child, (target, children) in self.declared(code, file, children_dir, module, context, text).items():
                every.get(context, {}).pop(child, None)
                if target is None:
                    self.missing.append(f"{file}: mod {child[-1]}: neither {child[-1]}.rs nor {child[-1]}/mod.rs")
                else:
                    self.load(child, target, children)
        self.test_only |= {target for found in every.values() for target, _ in found.values() if target}

    @staticmethod
    def declared(code: Code, file: Path, children_dir: Path, module, context, text):
        """Each `mod x;` in a scope: its module path -> (its file or None,
        the directory of its own children)."""
        found = {}
        inline_dir = children_dir.joinpath(*context[len(module):])
        for m in MOD_DECL.finditer(text):
            name = bare(m.group(2))
            path = re.search(r'\bpath\s*=\s*"(\d+)"', m.group(1))
            if path:
                target = file.parent / code.strings[int(path.group(1))]
                # As rustc does: a file named mod.rs keeps its children
                # beside it, any other in a directory of its own name.
                children = target.parent if target.name == "mod.rs" else target.parent / target.stem
                found[context + (name,)] = (target if target.is_file() else None, children)
                continue
            for target in (inline_dir / f"{name}.rs", inline_dir / name / "mod.rs"):
                if target.is_file():
                    found[context + (name,)] = (target, inline_dir / name)
                    break
            else:
                found[context + (name,)] = (None, inline_dir / name)
        return found

    def locate(self, path: list[str], depth: int = 0) -> tuple[str, ...] | None:
        """The module file a path from the crate root lies in; through the
        root's imports when it names one."""
        for k in range(len(path), -1, -1):
            if tuple(path[:k]) in self.modules:
                break
        module, rest = tuple(path[:k]), path[k:]
        if module or not rest or depth > 8:
            return module
        for imported in use_paths_of(self.modules[()].text):
            if imported and imported[-1] in (rest[0], "*"):
                base = resolve(imported[:-1] if imported[-1] == "*" else imported, (), self)
                if base is None:
                    continue
                if imported[-1] == "*":
                    target = self.locate(list(base), depth + 1)
                    if target and defines(self.modules[target].text, rest[0]):
                        return target
                else:
                    return self.locate(list(base) + rest[1:], depth + 1)
        return module

    def edges(self) -> dict[str, set[str]]:
        graph = {name(m): set() for m in self.modules if m}
        for module, code in self.modules.items():
            if not module:
                continue
            found: set[tuple[str, ...]] = set()
            for context, text in scopes(code.text, module):
                paths = []
                for m in USE.finditer(text):
                    paths += use_paths(m.group(1))
                for m in KEYWORD_PATH.finditer(text):
                    paths.append([m.group(1)] + [bare(s) for s in re.findall(IDENT, m.group(2))])
                for m in NAME_PATH.finditer(text):
                    if context + (bare(m.group(1)),) in self.modules:
                        paths.append([bare(m.group(1))])
                for m in MOD_DECL.finditer(text):
                    paths.append([bare(m.group(2))])
                for path in paths:
                    absolute = resolve(path, context, self)
                    if absolute is not None and (target := self.locate(list(absolute))) is not None:
                        found.add(target)
            graph[name(module)] = {name(t) for t in found if t and t != module}
        return graph


def use_paths_of(text: str) -> list[list[str]]:
    return [p for m in USE.finditer(text) for p in use_paths(m.group(1))]


def defines(text: str, item: str) -> bool:
    return re.search(rf"\b(?:fn|struct|enum|union|trait|type|const|static|mod|macro_rules!)\s+{re.escape(item)}\b", text) is not None


def resolve(path: list[str], context: tuple[str, ...], crate: Crate) -> tuple[str, ...] | None:
    """A path as seen from `context`, made absolute (a glob's `*` dropped);
    None when it does not start in this crate (std, another crate, an
    imported name)."""
    if not path:
        return None
    if path[0] in ("crate", "$crate"):
        return tuple(p for p in path[1:] if p != "*")
    if path[0] in ("self", "super"):
        base = list(context)
        i = 0
        while i < len(path) and path[i] in ("self", "super"):
            if path[i] == "super":
                if not base:
                    return None
                base.pop()
            i += 1
        return tuple(base + [p for p in path[i:] if p != "*"])
    if context + (path[0],) in crate.modules:
        return context + tuple(p for p in path if p != "*")
    return None


def name(module: tuple[str, ...]) -> str:
    return "::".join(module)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one
    module (Tarjan's algorithm, then a path around the component)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(v: str):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)

    found = []
    for component in components:
        members = set(component)
        start = component[0]
        # Breadth-first from start back to start, inside the component.
        previous = {start: None}
        queue = [start]
        end = None
        while queue and end is None:
            v = queue.pop(0)
            for w in sorted(graph[v] & members):
                if w == start:
                    end = v
                    break
                if w not in previous:
                    previous[w] = v
                    queue.append(w)
        cycle = [start]
        while end is not None and end != start:
            cycle.insert(1, end)
            end = previous[end]
        found.append(cycle + [start])
    return found


def crate_roots(src: Path) -> list[Path]:
    roots = [src / f for f in ("lib.rs", "main.rs") if (src / f).is_file()]
    roots += sorted((src / "bin").glob("*.rs")) + sorted((src / "bin").glob("*/main.rs"))
    return roots


def main() -> int:
    dirs = [Path(d) for d in sys.argv[1:]] or [Path("src")]
    failed = 0
    for src in dirs:
        roots = crate_roots(src)
        if not roots:
            print(f"modules: {src} has no crate root (lib.rs, main.rs, bin/)", file=sys.stderr)
            failed = 2
            continue
        declared: set[Path] = set()
        for root in roots:
            crate = Crate(root)
            declared |= {f.resolve() for f in crate.files.values()} | {f.resolve() for f in crate.test_only}
            for line in crate.missing:
                print(f"modules: {line}", file=sys.stderr)
                failed = 2
            graph = crate.edges()
            print(f"{root}:")
            for module in sorted(graph):
                print(f"  {module} -> {', '.join(sorted(graph[module])) or '(nothing)'}")
            found = cycles(graph)
            for cycle in found:
                print(f"modules: {root}: cycle: {' -> '.join(cycle)}", file=sys.stderr)
                failed = failed or 1
            if not found:
                print(f"  {len(graph)} modules, no cycle")
        for file in sorted(src.rglob("*.rs")):
            if file.resolve() not in declared:
                print(f"modules: {file} is declared by no module (not compiled, not checked)", file=sys.stderr)
    return failed


if __name__ == "__main__":
    sys.exit(main())
