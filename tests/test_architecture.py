"""The package's shape: no import cycle, and no import from a lower layer to a higher one.

Every import of a fedcomp module is read from the source with ``ast``: at
module level, inside functions and under ``if TYPE_CHECKING:`` alike, so a
cycle cannot hide in a deferred import. ``from package import name`` counts
as an import of ``package.name`` when that is a module, else of the
package's ``__init__``. (Importing ``a.b.c`` also runs ``a/__init__`` and
``a/b/__init__``; those implicit imports are not edges here, as in every
import-graph checker.)

The layers, lowest first, are written down in :data:`LAYERS`; a module may
import from its own layer and those below it. A new module must be placed
in one (the test names any that is not).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import fedcomp

PACKAGE = Path(fedcomp.__file__).parent

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Know nothing of experiments: errors, typed parameters, names, seeds, the wire format, message keys.
    ("foundation", ("fedcomp.errors", "fedcomp.params", "fedcomp.suggest", "fedcomp.registry", "fedcomp.seeding",
                    "fedcomp.polling", "fedcomp.coding", "fedcomp.messages")),
    # The experiment schema (each section checks its own keys), user code by import path, packaged configs.
    ("schema", ("fedcomp.schema", "fedcomp.imports", "fedcomp.configs")),
    # Components, each family with its registry in its base module.
    ("models, data, strategies", ("fedcomp.models", "fedcomp.data", "fedcomp.strategies",
                                    "fedcomp.network")),
    ("compressors", ("fedcomp.compressors",)),
    # Checks that span families, and configs loaded with them.
    ("checks and loading", ("fedcomp.preflight", "fedcomp.config")),
    # The run directory: written by fedcomp's ServerApp and by AppRecorder for your own Flower app.
    ("run directory", ("fedcomp.servers.recorder",)),
    # The building blocks for any Flower app: client mod, strategy wrapper, one module per transmission.
    ("flower", ("fedcomp.flower",)),
    # fedcomp's own apps, built from those blocks.
    ("clients", ("fedcomp.clients",)),
    ("servers", ("fedcomp.servers",)),
    # Running experiments and reading their results.
    ("runs", ("fedcomp.engine", "fedcomp.simulation", "fedcomp.sweep", "fedcomp.compare", "fedcomp.reports")),
    # What people call: the command line, the package's own names, the app template.
    ("interface", ("fedcomp.cli", "fedcomp.catalogue", "fedcomp.submit", "fedcomp.templates", "fedcomp")),
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({module_path(self.source)}:{self.line})"


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def module_path(name: str) -> str:
    return str(module_names()[name].relative_to(PACKAGE.parent))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    """The fedcomp modules ``name`` imports, wherever in the file the import statement is."""
    is_package = path.name == "__init__.py"
    edges = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per extra dot
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.append(submodule if submodule in modules else source)
        for target in targets:
            while target and target not in modules:  # ``import a.b.c`` where c is a name: its module
                target = target.rpartition(".")[0]
            if target and target != name and Edge(name, target, node.lineno) not in edges:
                edges.append(Edge(name, target, node.lineno))
    return edges


def import_graph() -> dict[str, list[Edge]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int | None:
    """The index of ``module``'s layer: the entry that names it, or the longest that names a package above it."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "fedcomp" and module.startswith(prefix + "."))
            if matches and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def find_cycle(graph: dict[str, list[Edge]]) -> list[Edge] | None:
    """One import cycle as its edges, or None (depth-first, modules and imports in sorted order)."""
    done: set[str] = set()
    nodes: list[str] = []  # the current path: nodes[i] imports nodes[i + 1] through edges[i]
    edges: list[Edge] = []

    def visit(module: str) -> list[Edge] | None:
        nodes.append(module)
        for edge in sorted(graph.get(module, []), key=lambda e: (e.target, e.line)):
            if edge.target in nodes:
                return [*edges[nodes.index(edge.target) :], edge]
            if edge.target not in done:
                edges.append(edge)
                found = visit(edge.target)
                if found:
                    return found
                edges.pop()
        nodes.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            found = visit(module)
            if found:
                return found
    return None


def upward_imports(graph: dict[str, list[Edge]]) -> list[str]:
    found = []
    for edges in graph.values():
        for edge in edges:
            source, target = layer_of(edge.source), layer_of(edge.target)
            if source is not None and target is not None and target > source:
                found.append(f"{edge}: layer {LAYERS[source][0]!r} imports layer {LAYERS[target][0]!r}")
    return sorted(found)


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in module_names() if layer_of(m) is None)
    assert not unplaced, f"place these modules in a layer of tests/test_architecture.py's LAYERS: {unplaced}"


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " ; ".join(str(e) for e in cycle)


def test_no_module_imports_from_a_layer_above_its_own():
    upward = upward_imports(import_graph())
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_the_checks_find_a_cycle_and_an_upward_import():
    """The test's own machinery, on a made-up graph: a back-import is caught both ways."""
    graph = {
        "fedcomp.schema": [Edge("fedcomp.schema", "fedcomp.preflight", 1)],
        "fedcomp.preflight": [Edge("fedcomp.preflight", "fedcomp.schema", 2)],
    }
    cycle = find_cycle(graph)
    assert cycle is not None and {e.source for e in cycle} == {"fedcomp.schema", "fedcomp.preflight"}
    assert [u.split(" (")[0] for u in upward_imports(graph)] == ["fedcomp.schema -> fedcomp.preflight"]


def test_relative_and_submodule_imports_are_resolved(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from fedcomp import engine\nimport fedcomp.config\n"
        "def f():\n    from fedcomp.compressors.update.base import UPDATE_COMPRESSORS\n"
    )
    targets = [e.target for e in imports_of("fedcomp.x", source, module_names())]
    assert targets == ["fedcomp.engine", "fedcomp.config", "fedcomp.compressors.update.base"]


def test_the_schema_names_exactly_the_attacks_the_clients_make():
    """The schema declares the config's vocabulary without importing the clients; the clients make each attack."""
    from fedcomp.clients.faults import IMPLEMENTED
    from fedcomp.schema import ATTACKS

    assert list(ATTACKS) == IMPLEMENTED
