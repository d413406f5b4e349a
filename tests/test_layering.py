"""The import rule of docs/design.md holds for every module under src/qcert.

The layers are read from the design page itself (its "Layers" block), so the map and the code cannot
drift apart: every package and top-level module is on a layer, imports only from its own layer or
below, packages on one layer import each other without cycles, ``quant`` imports nothing of qcert
but ``errors``, and nothing imports ``cli``.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "qcert"
DESIGN = ROOT / "docs" / "design.md"


def _unit(module: str) -> str:
    """The package (or top-level module) a dotted ``qcert...`` name belongs to; ``qcert`` for the
    package's own ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "qcert"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every qcert module ``path`` imports, at module level or inside a function."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            # ``from qcert import quant`` imports a module; ``from qcert import QNetwork`` a name
            out.update(f"{name}.{a.name}" for a in node.names if _is_module(f"{name}.{a.name}"))
    return {m for m in out if m == "qcert" or m.startswith("qcert.")}


def _is_module(name: str) -> bool:
    path = SRC.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _graph() -> dict[str, dict[str, set[str]]]:
    """unit → imported unit → the importing modules (self-imports left out)."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        graph[_unit(module)]  # every unit appears, even one that imports nothing of qcert
        for target in _imports(path):
            if _unit(target) != _unit(module):
                graph[_unit(module)][_unit(target)].add(module)
    return graph


def _layers() -> dict[str, int]:
    """unit → layer, from the fenced block after the design page's "Layers" heading."""
    text = DESIGN.read_text(encoding="utf-8")
    section = re.search(r"^## Layers.*?```text\n(.*?)```", text, re.S | re.M)
    assert section, "docs/design.md has no '## Layers' section with a ```text block"
    layers: dict[str, int] = {}
    for line in section.group(1).splitlines():
        m = re.match(r"\s*(\d+)\s+(.*)", line)
        if m:
            for name in re.findall(r"[A-Za-z_]+", m.group(2).split("#")[0]):
                layers[name] = int(m.group(1))
    return layers


def test_every_unit_is_on_a_layer() -> None:
    layers = _layers()
    missing = sorted(set(_graph()) - set(layers))
    assert not missing, f"add these to the Layers block of docs/design.md: {missing}"


def test_no_import_runs_up_a_layer() -> None:
    layers = _layers()
    bad = [
        f"{src} (layer {layers[src]}) imports {dst} (layer {layers[dst]}) in {sorted(mods)}"
        for src, targets in _graph().items()
        for dst, mods in targets.items()
        if src in layers and dst in layers and layers[dst] > layers[src]
    ]
    assert not bad, "\n".join(bad)


def test_no_cycles_between_packages() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        path.append(u)
        for v in sorted(graph.get(u, {})):
            if state.get(v) == 1:
                return path[path.index(v) :] + [v]
            if v not in state:
                cycle = visit(v)
                if cycle:
                    return cycle
        path.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state:
            cycle = visit(u)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_quant_imports_nothing_of_qcert_but_errors() -> None:
    assert set(_graph()["quant"]) <= {"errors"}, dict(_graph()["quant"])


def test_nothing_imports_cli() -> None:
    users = {u: sorted(t["cli"]) for u, t in _graph().items() if "cli" in t and u != "__main__"}
    assert not users, users
