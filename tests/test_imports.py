"""Imports point one way and never in a circle.

Every import statement in the project's packages counts, wherever it is: module level, inside a function (the
deferred imports that keep start-up light) and under ``if TYPE_CHECKING``. Layers, lowest first: indexer,
retrieval, answerer, ui; a module may import its own layer and the layers below. Inside retrieval the
sub-packages have their own order (``RETRIEVAL``); retrieval's top-level modules (scoring, outcomes, visibility)
sit below all of them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("indexer", "retrieval", "answerer", "ui")
# retrieval sub-package -> the retrieval sub-packages it may import (its own is always allowed)
RETRIEVAL = {"index": set(), "classify": set(), "moderation": {"classify"}, "search": {"index"},
             "evaluation": {"classify", "index"}}


def project_modules(root: Path, packages: Iterable[str]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every ``.py`` under ``packages``."""
    found: dict[str, tuple[Path, bool]] = {}
    for top in packages:
        for path in sorted((root / top).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return found


def imported(module: str, path: Path, is_pkg: bool, known: Mapping[str, object],
             tops: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """(project modules that ``path`` imports, imports naming no project module) — every statement counts."""
    package = module if is_pkg else module.rpartition(".")[0]
    found: set[str] = set()
    unresolved: set[str] = set()

    def add(name: str) -> None:
        if name in known:
            found.add(name)
        else:
            unresolved.add(name)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in tops:
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] not in tops:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                add(sub if sub in known else target)
    return found, unresolved


def import_graph(root: Path, packages: tuple[str, ...]) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> project modules it imports, and every import that names no module of the project."""
    known = project_modules(root, packages)
    graph: dict[str, set[str]] = {}
    broken: list[str] = []
    for module, (path, is_pkg) in known.items():
        graph[module], unresolved = imported(module, path, is_pkg, known, packages)
        graph[module].discard(module)
        broken += [f"{module} imports {name}, which is no module here" for name in sorted(unresolved)]
    return graph, broken


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def upward(graph: Mapping[str, set[str]], layers: tuple[str, ...],
           inner: Mapping[str, Mapping[str, set[str]]]) -> list[str]:
    """Imports against the layer order, and against an ``inner`` order of one layer's sub-packages."""
    rank = {name: i for i, name in enumerate(layers)}
    bad = []
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            s, d = src.split("."), dst.split(".")
            if rank[d[0]] > rank[s[0]]:
                bad.append(f"{src} -> {dst}: {d[0]} is above {s[0]}")
                continue
            order = inner.get(s[0])
            if order is None or d[0] != s[0] or len(d) < 3 or d[1] not in order:
                continue  # another layer, or a top-level module of this one (below all its sub-packages)
            if len(s) < 3 or s[1] not in order:
                bad.append(f"{src} -> {dst}: a top-level module of {s[0]} imports its sub-package {d[1]}")
            elif d[1] != s[1] and d[1] not in order[s[1]]:
                bad.append(f"{src} -> {dst}: {s[0]}.{s[1]} may not import {s[0]}.{d[1]}")
    return bad


def test_the_project_imports_one_way_without_cycles():
    graph, broken = import_graph(ROOT, LAYERS)
    assert len(graph) > 100 and "indexer.sync.plan" in graph  # the walk found the project
    assert "indexer.sync.write" in graph["indexer.sync.plan"]  # deferred (function-level) imports are seen
    assert broken == []
    assert cycles(graph) == []
    assert upward(graph, LAYERS, {"retrieval": RETRIEVAL}) == []


def test_every_package_docstring_lists_its_modules():
    """A newcomer finds a concept from the package's docstring: each module and sub-package on a line of its own."""
    missing = []
    for module, (path, is_pkg) in project_modules(ROOT, LAYERS).items():
        if not is_pkg:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        children = [p.stem for p in path.parent.glob("*.py") if p.stem not in ("__init__", "__main__")]
        children += [d.name for d in path.parent.iterdir() if (d / "__init__.py").exists()]
        missing += [f"{module}.{name}" for name in sorted(children)
                    if not any(line.split()[:1] == [name] or line.split()[:1] == [name + "/"]
                               for line in doc.splitlines())]
    assert missing == []


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_a_planted_cycle_upward_import_and_broken_import(tmp_path):
    _write(tmp_path, {
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from low import b  # deferred\n    return b\n",
        "low/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n",
        "low/c.py": "import json\nfrom low.gone import x\n",
        "low/sub/__init__.py": "",
        "low/sub/one.py": "from ..sub import two\n",
        "low/sub/two.py": "X = 1\n",
        "low/sub/three.py": "from low.inner import y\n",
        "low/inner/__init__.py": "",
        "low/inner/y.py": "",
        "low/top.py": "from .inner import y\n",
        "high/__init__.py": "",
        "high/h.py": "from low.a import f\n",
        "low/d.py": "def g():\n    import high.h\n",
    })
    graph, broken = import_graph(tmp_path, ("low", "high"))
    assert graph["low.a"] == {"low.b"} and graph["low.b"] == {"low.a"} and graph["low.sub.one"] == {"low.sub.two"}
    assert cycles(graph) == [["low.a", "low.b"]]
    assert broken == ["low.c imports low.gone, which is no module here"]
    order = {"low": {"sub": set(), "inner": set()}}
    assert upward(graph, ("low", "high"), order) == [
        "low.d -> high.h: high is above low",
        "low.sub.three -> low.inner.y: low.sub may not import low.inner",
        "low.top -> low.inner.y: a top-level module of low imports its sub-package inner",
    ]
    assert upward(graph, ("low", "high"), {"low": {"sub": {"inner"}, "inner": set()}}) == [
        "low.d -> high.h: high is above low",
        "low.top -> low.inner.y: a top-level module of low imports its sub-package inner",
    ]
    # the same package with the cycle removed passes
    (tmp_path / "low/b.py").write_text("X = 2\n")
    assert cycles(import_graph(tmp_path, ("low", "high"))[0]) == []


def test_bench_and_scripts_import_nothing_from_tests():
    """The benchmarks and the demo scripts stand on the product alone (the synthetic world is ``ui.demo``)."""
    bad = []
    for path in sorted((ROOT / "bench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{path.relative_to(ROOT)} imports {n}" for n in names if n.split(".")[0] == "tests"]
    for path in sorted((ROOT / "scripts").glob("*.sh")):
        bad += [f"{path.relative_to(ROOT)}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                if "from tests" in line or "import tests" in line or "-m tests." in line]
    assert len(list((ROOT / "bench").glob("*.py"))) > 5  # the walk found the benchmarks
    assert bad == []
