"""The import graph keeps the layers of ARCHITECTURE.md (issue 14): front end -> passes ->
artifact -> runtime, with the hardware description (isa/) below both the lowering passes
and the runtime.

Read from the source with `ast` (lazy imports inside functions count: a dependency is a
dependency wherever it is written):
- runtime/ imports no pass, and passes/ nothing of runtime/;
- isa/ imports neither passes/ nor runtime/ (it is what both build on);
- no import cycle among spikec's modules;
- no module imports another module's private name (`from m import _x`).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"spikec": "spikec", "passes": "spikec.passes", "isa": "spikec.isa", "runtime": "spikec.runtime"}


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, pkg in PACKAGES.items():
        for f in (ROOT / folder).rglob("*.py"):
            parts = [p for p in f.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = f
    return mods


def _imports(mods: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    edges, private = {}, []
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("spikec"))
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spikec"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    deps.add(full if full in mods else node.module)
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        private.append(f"{name}: from {node.module} import {a.name}")
        edges[name] = {d for d in deps if d in mods and d != name}
    return edges, private


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ("passes", "isa", "runtime") else "other"


def test_layers_point_one_way():
    edges, _ = _imports(_modules())
    forbidden = {("runtime", "passes"), ("passes", "runtime"), ("isa", "passes"), ("isa", "runtime")}
    bad = sorted(f"{a} -> {b}" for a, bs in edges.items() for b in bs if (_layer(a), _layer(b)) in forbidden)
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_cycles():
    edges, _ = _imports(_modules())
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_names_across_modules():
    _, private = _imports(_modules())
    assert not private, "\n".join(private)
