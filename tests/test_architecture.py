"""The package's shape: no import cycle between its modules, and ``--help`` stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vstain_dask

PACKAGE = Path(vstain_dask.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, modules: dict[str, Path], *, top_level: bool) -> set[str]:
    """The package's modules that ``name`` imports: at its top level only, or anywhere (inside
    functions too). ``from pkg import sub`` counts as importing the submodule ``pkg.sub``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = name.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            for a in node.names:
                sub = f"{module}.{a.name}"
                found.add(sub if sub in modules else module)
    return {m for m in found if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_at_module_top_level():
    modules = _modules()
    graph = {n: _imports(n, p, modules, top_level=True) for n, p in modules.items()}
    assert "vstain_dask.errors" in graph["vstain_dask.stain.job"]  # the parser sees imports
    assert _cycles(graph) == []


def test_no_import_cycle_even_through_imports_inside_functions():
    """A cycle hidden in function bodies still ties two modules together: neither can be
    understood, tested or moved without the other."""
    modules = _modules()
    graph = {n: _imports(n, p, modules, top_level=False) for n, p in modules.items()}
    assert "vstain_dask.train.split" in graph["vstain_dask.train.trainer"]
    assert _cycles(graph) == []


def test_help_does_not_import_torch():
    """``--help`` of the group and of every command answers without importing torch."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from vstain_dask.cli import _COMMANDS, main\n"
        "for args in [['--help'], *([c, '--help'] for c in _COMMANDS)]:\n"
        "    r = CliRunner().invoke(main, args)\n"
        "    assert r.exit_code == 0, (args, r.output)\n"
        "    assert 'torch' not in sys.modules, args\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
