"""The package's shape: no import cycle among radfm/ and flows/ (every import, module level or inside a function,
absolute and relative), no module over 500 lines, and a small LightningModule.

The cycle search is ../shared/tools/importcycles.py's algorithm (Tarjan's strongly connected components over
the import graph), copied here so the test runs where ../shared is absent.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("radfm", "flows")
MAX_LINES = 500
MODULE_MAX_LINES = 200


def module_name(path: Path) -> str:
    """``radfm/train/module.py`` → ``radfm.train.module``; a package's ``__init__.py`` → the package."""
    parts = list(path.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The known modules that module ``name`` (at ``path``) imports, anywhere in its code."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                base = ".".join(pkg + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:  # the longest known module that the target names
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph(root: Path, dirs: tuple[str, ...]) -> dict[str, set[str]]:
    files = [p.relative_to(root) for d in dirs for p in (root / d).rglob("*.py")]
    names = {module_name(p): p for p in files}
    known = set(names)
    graph = {n: imports_of(root / p, n, known) for n, p in names.items()}
    # A package's __init__ importing its own submodules is not a cycle worth reporting.
    for n in graph:
        graph[n] = {m for m in graph[n] if not (m.startswith(n + ".") and names[n].name == "__init__.py")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    sccs: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, edges = work[-1]
            for w in edges:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        sccs.append(sorted(comp))
    return sorted(sccs)


def test_the_cycle_search_finds_cycles(tmp_path):
    """On a made-up package: a relative import cycle through a function body is found; __init__ importing its
    own submodule is not a cycle; a plain chain is none."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg import a\n")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("import pkg.a as a\n")
    (pkg / "d.py").write_text("from pkg.sub.b import f\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"} and graph["pkg"] == set()
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    (pkg / "c.py").write_text("import os\n")
    assert cycles(import_graph(tmp_path, ("pkg",))) == []


def test_no_import_cycles():
    graph = import_graph(ROOT, PACKAGES)
    assert len(graph) > 50 and "radfm.train.module" in graph and "flows.pipeline" in graph
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_module_is_over_500_lines_and_the_lightning_module_stays_small():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "radfm").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
    n = len((ROOT / "radfm" / "train" / "module.py").read_text().splitlines())
    assert n < MODULE_MAX_LINES, f"radfm/train/module.py has {n} lines (the objectives hold the losses)"
