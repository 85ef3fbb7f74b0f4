"""The package's layers only look down, and no import goes round in a circle.

Every ``import`` of a project module is read from the source (module level and inside
functions alike: a lazy import is still a dependency), and each module is given the layer of its
longest listed prefix. From the bottom up:

0. geometry
1. augment, render, images
2. config
3. data, models, losses, registry, ray_init, plots
4. evaluate, predict, preflight, train (worker loops and the stage runner)
5. runs (whole runs: CLERF, the baseline, the head on a registered encoder)
6. entry points: cli, jobs/, benchmarks/

A module may import its own layer or any below it, never one above; the import graph between
files has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = {
    "clerf_ray.geometry": 0,
    "clerf_ray.augment": 1,
    "clerf_ray.render": 1,
    "clerf_ray.images": 1,
    "clerf_ray.config": 2,
    "clerf_ray.data": 3,
    "clerf_ray.models": 3,
    "clerf_ray.losses": 3,
    "clerf_ray.registry": 3,
    "clerf_ray.ray_init": 3,
    "clerf_ray.plots": 3,
    "clerf_ray.evaluate": 4,
    "clerf_ray.predict": 4,
    "clerf_ray.preflight": 4,
    "clerf_ray.train": 4,
    "clerf_ray.runs": 5,
    "clerf_ray.cli": 6,
    "jobs": 6,
    "benchmarks": 6,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def source_files() -> list[Path]:
    files = [p for d in ("clerf_ray", "jobs", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    return sorted(p for p in files if "__pycache__" not in p.parts)


MODULES = {module_name(p): p for p in source_files()}


def resolve(name: str) -> str | None:
    """The project module a dotted import name refers to (the longest known prefix)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in MODULES:
            return candidate
    return None


def imports_of(path: Path) -> set[str]:
    """Project modules imported anywhere in ``path`` (``from pkg import mod`` counts as ``mod``
    when ``pkg.mod`` is a module, else as ``pkg``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            names = [n for n in names[:-1] if n in MODULES] or [node.module]
        else:
            continue
        for n in names:
            target = resolve(n)
            if target is not None and target != "clerf_ray":
                found.add(target)
    return found


GRAPH = {m: imports_of(p) - {m} for m, p in MODULES.items()}


def layer(module: str) -> int:
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)
    return LAYERS[best]


def test_every_module_has_a_layer():
    unlisted = [
        m
        for m in MODULES
        if m != "clerf_ray" and not any(m == k or m.startswith(k + ".") for k in LAYERS)
    ]
    assert not unlisted, f"give these modules a layer in LAYERS: {unlisted}"


def test_no_import_runs_back_up_a_layer():
    upward = [
        f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
        for m, targets in GRAPH.items()
        if m != "clerf_ray"
        for t in sorted(targets)
        if layer(t) > layer(m)
    ]
    assert not upward, "imports that run back up:\n" + "\n".join(upward)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or with a self edge (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert find_cycles(GRAPH) == []


def test_runs_are_imported_only_by_entry_points():
    users = sorted(
        m
        for m, targets in GRAPH.items()
        if any(t.startswith("clerf_ray.runs") for t in targets)
        and not m.startswith("clerf_ray.runs")
    )
    assert users and all(layer(m) == 6 for m in users), users


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set()}, []),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert find_cycles(graph) == expected


def test_the_import_reader_sees_lazy_and_from_imports(tmp_path, monkeypatch):
    # A file of the project's own shape: a module-level import, a lazy one inside a function,
    # and a `from package import module`.
    f = ROOT / "clerf_ray" / "runs" / "clerf.py"
    found = imports_of(f)
    assert "clerf_ray.runs.common" in found and "clerf_ray.ray_init" in found
    assert "clerf_ray.train.pretrain" in found  # imported inside run_recipe
