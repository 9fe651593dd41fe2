"""The package's shape, enforced: no import cycles, no oversized files, one owner of the weight state."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "transformer_squared"
MAX_LINES = 520  # "about 500": a file past this has more than one idea in it


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Package modules imported by ``path`` (module level only, or everywhere)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:  # `if TYPE_CHECKING:` blocks are not run
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("transformer_squared"):
                out.add(target)
                out.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("transformer_squared"))
    return out


def test_no_import_cycles_at_module_level():
    files = {_module(p): p for p in PKG.rglob("*.py") if "sandbox" not in p.parts or p.name == "__init__.py"}
    graph = {m: {t for t in _imports(p, True) if t in files and t != m} for m, p in files.items()}
    # a package's __init__ importing its own submodules is its face, not a cycle
    for m in graph:
        graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t) :] + [t]))
            if t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_no_file_in_src_is_oversized():
    big = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"files over {MAX_LINES} lines: {big}"


def test_only_svf_writes_the_weight_state():
    pattern = re.compile(r"\blayer\.z\s*=|\.z\.(copy_|data\b|fill_|add_)|\blayer\.weight\s*=|\.weight\.copy_")
    offenders = []
    for p in PKG.rglob("*.py"):
        if "svf" in p.relative_to(PKG).parts[:1]:
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{p.relative_to(PKG)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
