"""The layers of docs/architecture.md, read from the code: every import (at the top of a module or inside a
function) goes down the table, no two project modules import each other at module level (directly or round a
loop), and no module imports another's private (``_x``) name.

The table below is the one in docs/architecture.md ("Allowed imports"); change both together.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP_FOLDERS = ("skewless", "batch_jobs", "streaming_jobs", "feature_defs", "bench", "tests")

# layer -> the module prefixes it holds (the longest matching prefix decides)
LAYERS: dict[str, tuple[str, ...]] = {
    "config": ("skewless.config", "skewless.profile"),
    "core": ("skewless.core",),
    "engines": ("skewless.engines",),
    "offline": ("skewless.offline",),
    "archive": ("skewless.archive",),
    "streaming_jobs": ("streaming_jobs",),
    "batch_jobs": ("batch_jobs",),
    "training": ("skewless.training",),
    "monitoring": ("skewless.monitoring",),
    "producer": ("skewless.producer",),
    "serving": ("skewless.serving",),
    "sdk": ("skewless", "skewless.store"),  # the package's public face: `from skewless import ...`, FeatureStore
    "stack": ("skewless.stack",),
    "e2e": ("skewless.e2e",),
    "commands": ("skewless.commands", "skewless.cli"),
    "feature_defs": ("feature_defs",),
    "bench": ("bench",),
    "tests": ("tests",),
}

_BASE = {"config", "core", "engines"}
_APP = _BASE | {"offline", "archive", "streaming_jobs", "batch_jobs", "training", "monitoring", "producer", "serving",
                "sdk", "stack"}
# layer -> the other layers it may import
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "core": {"config"},
    "engines": {"config", "core"},
    "offline": _BASE,
    "archive": _BASE | {"offline"},
    "streaming_jobs": _BASE,
    "batch_jobs": _BASE | {"offline"},
    "training": _BASE | {"offline"},
    "monitoring": _BASE,
    "producer": _BASE,
    "serving": _BASE | {"monitoring"},
    "sdk": _BASE | {"training", "serving"},
    "stack": _BASE | {"offline", "archive"},
    "e2e": _APP,
    "commands": _APP | {"e2e"},
    "feature_defs": {"sdk", "core"},
    "bench": _APP | {"e2e", "tests"},
    "tests": _APP | {"e2e", "commands", "feature_defs"},
}


@dataclass(frozen=True)
class Import:
    importer: str  # module name
    target: str  # the project module imported (a module, not a name inside it)
    names: tuple[str, ...]  # names taken from it (``from target import a, b``)
    line: int
    local: bool  # inside a function
    type_only: bool  # under ``if TYPE_CHECKING:``


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    out = {}
    for top in TOP_FOLDERS:
        for path in sorted((ROOT / top).rglob("*.py")):
            out[module_name(path)] = path
        for path in sorted((ROOT / top).rglob("*.c")):  # a C extension module (setup.py): it imports nothing of ours
            out[module_name(path)] = path
    return out


MODULES = project_modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer):
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _project_module(name: str) -> str | None:
    """The project module ``name`` is, or lives in (its longest prefix that is a module)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def imports_of(name: str) -> list[Import]:
    if MODULES[name].suffix == ".c":
        return []
    tree = ast.parse(MODULES[name].read_text(), str(MODULES[name]))
    out: list[Import] = []

    def visit(node: ast.AST, local: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True, type_only)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, local, True)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    target = _project_module(alias.name)
                    if target is not None:
                        out.append(Import(name, target, (), child.lineno, local, type_only))
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(name, child)
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    if sub in MODULES:  # `from package import module`
                        out.append(Import(name, sub, (), child.lineno, local, type_only))
                        continue
                    target = _project_module(base)
                    if target is not None:
                        out.append(Import(name, target, (alias.name,), child.lineno, local, type_only))
            else:
                visit(child, local, type_only)

    visit(tree, False, False)
    return out


ALL_IMPORTS = [i for name in MODULES for i in imports_of(name)]


def layer_of(module: str) -> str:
    best, length = None, -1
    for layer, prefixes in LAYERS.items():
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > length:
                best, length = layer, len(p)
    if best is None:
        raise AssertionError(f"module {module} is in no layer of the table: add it to LAYERS and docs/architecture.md")
    return best


def test_every_layer_is_in_the_doc() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = [layer for layer in LAYERS if f"| {layer} " not in doc]
    assert not missing, f"layers without a row in docs/architecture.md: {missing}"


def test_imports_go_down_the_table() -> None:
    bad = []
    for i in ALL_IMPORTS:
        src, dst = layer_of(i.importer), layer_of(i.target)
        if src != dst and dst not in ALLOWED[src]:
            where = "in a function" if i.local else "at the top"
            bad.append(f"{MODULES[i.importer].relative_to(ROOT)}:{i.line}: {src} imports {dst} ({i.target}, {where})")
    assert not bad, "imports the layer table (docs/architecture.md) forbids:\n" + "\n".join(bad)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
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
            if len(comp) > 1 or v in edges.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles_at_module_level() -> None:
    edges: dict[str, set[str]] = {}
    for i in ALL_IMPORTS:
        if not i.local and not i.type_only and i.target != i.importer:
            edges.setdefault(i.importer, set()).add(i.target)
    cycles = _cycles(edges)
    assert not cycles, "modules that import each other at module level: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_function_local_import_closes_a_loop() -> None:
    """A project import inside a function is fine for start-up cost, never to dodge a loop: with every import
    counted (top-level and in functions) the project's modules still form no cycle."""
    edges: dict[str, set[str]] = {}
    for i in ALL_IMPORTS:
        if not i.type_only and i.target != i.importer:
            edges.setdefault(i.importer, set()).add(i.target)
    cycles = _cycles(edges)
    assert not cycles, "modules that import each other (counting imports in functions): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_no_private_name_is_imported_across_modules() -> None:
    bad = []
    for i in ALL_IMPORTS:
        private = [n for n in i.names if n.startswith("_") and not n.startswith("__")]
        private_module = [p for p in i.target.split(".") if p.startswith("_") and not p.startswith("__")]
        same_package = i.importer.rpartition(".")[0] == i.target.rpartition(".")[0]
        if private or (private_module and not same_package):
            bad.append(f"{MODULES[i.importer].relative_to(ROOT)}:{i.line}: {i.target} {private or ''}".rstrip())
    assert not bad, "private names imported from another module:\n" + "\n".join(bad)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_the_table_is_a_ladder(layer: str) -> None:
    """The allowed edges themselves form no loop between layers (else the table would allow a cycle)."""
    seen: set[str] = set()
    todo = list(ALLOWED[layer])
    while todo:
        other = todo.pop()
        assert other != layer, f"layer {layer} can reach itself through the table"
        if other not in seen:
            seen.add(other)
            todo.extend(ALLOWED[other])
