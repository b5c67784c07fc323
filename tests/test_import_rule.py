"""The layer rule of docs/architecture.md, read off the source with `ast` (no module is imported):
every import of a project module follows the arrows, nothing imports the tests, no two modules
import each other in a circle, and no module takes a private name (``_x``) of another.

Every ``.py`` of the folders pyproject.toml maps in ``package-dir`` is read; relative imports are
resolved, and imports inside functions count as much as those at the top (an import deferred
into a function is still a dependency, only a later one).
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Layer of a module: the first prefix that matches (a module no prefix matches is a problem, so a
# new top-level module gets a place here, and in docs/architecture.md, on purpose).
LAYERS = [
    ("moeforge.checks", "leaf"),
    ("moeforge.child_process", "leaf"),   # children that never outlive the process (sim, builds)
    ("moeforge.errors", "leaf"),
    ("moeforge.config", "config"),
    ("moeforge.hf_config", "config"),      # reads a transformers config object for AccelConfig
    ("moeforge.outputs", "config"),        # atomic writes of output files
    ("moeforge.spec", "spec"),
    ("moeforge.hls_models", "hls_models"),
    ("moeforge.rtl", "rtl"),
    ("moeforge.sim", "sim"),
    ("moeforge.host_runtime", "host_runtime"),
    ("moeforge.fpga_boards", "fpga_boards"),
    ("moeforge.cli", "cli"),               # moeforge.cli and moeforge.cli_*
]
PACKAGE_LAYER = {"moeforge": "config"}     # moeforge/__init__.py: AccelConfig and the errors

# The layers each layer may import (its own always). `config` and `spec` together are the bottom
# box of the diagram: the config reads the device's precisions from spec.arith, the spec reads
# the config; a cycle between them would still fail (b).
BOTTOM = {"leaf", "config"}
MAY_IMPORT = {
    "leaf": set(),
    "config": {"leaf", "spec"},
    "spec": {"leaf"},
    "hls_models": BOTTOM | {"spec"},
    "rtl": BOTTOM | {"spec", "hls_models"},
    "sim": BOTTOM | {"spec", "hls_models", "rtl"},
    "host_runtime": BOTTOM | {"spec", "hls_models"},
    "fpga_boards": BOTTOM | {"spec", "rtl"},
    "cli": {"leaf", "config", "spec", "hls_models", "rtl", "sim", "host_runtime", "fpga_boards"},
}
# Single modules a layer may import beyond its layers: the spec takes AccelConfig and nothing
# else of the config layer.
MAY_IMPORT_MODULES = {"spec": {"moeforge.config"}}
# The one place the host runtime starts the simulated device, for ``open_device("sim")``.
EXCEPTIONS = {("moeforge.host_runtime.device", "moeforge.sim.sim_device")}


@dataclass(frozen=True)
class Source:
    """One module: its dotted name, the path shown in problems, its text, and whether it is a
    package's ``__init__`` (relative imports resolve from the package itself then)."""

    name: str
    path: str
    text: str
    is_package: bool = False


@dataclass(frozen=True)
class Edge:
    target: str
    line: int


def package_sources(root: Path = ROOT) -> list[Source]:
    """Every module of the folders pyproject.toml's ``package-dir`` maps."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    sources = {}
    for package, folder in setuptools["package-dir"].items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder)
            if "__pycache__" in rel.parts:
                continue
            parts = [*package.split("."), *rel.with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            sources.setdefault(name, Source(name, path.relative_to(root).as_posix(),
                                            path.read_text(), is_package))
    return list(sources.values())


def layer_of(module: str) -> str | None:
    if module in PACKAGE_LAYER:
        return PACKAGE_LAYER[module]
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + ".") or (
                prefix == "moeforge.cli" and module.startswith("moeforge.cli_")):
            return layer
    return None


def _absolute(src: Source, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from ... import`` statement."""
    if not node.level:
        return node.module or ""
    package = src.name.split(".") if src.is_package else src.name.split(".")[:-1]
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _project(name: str) -> bool:
    return name == "moeforge" or name.startswith("moeforge.")


TESTS = {"tests", "testkit", "conftest"}      # what nothing of the package may import


class _Reader(ast.NodeVisitor):
    """The project imports of one module and its uses of other modules' private names."""

    def __init__(self, src: Source, modules: set[str]):
        self.src, self.modules = src, modules
        self.edges: list[Edge] = []
        self.problems: list[str] = []
        self.bound: dict[str, str] = {}     # local name -> project module it names
        self.defined: set[str] = set()      # private names this module defines or assigns
        self.used: list[tuple[str, int]] = []   # ``obj._x`` on an object other than self/cls

    def _where(self, node) -> str:
        return f"{self.src.path}:{node.lineno}"

    def _module(self, name: str, node) -> str | None:
        """`name` if it is a project module, else a problem."""
        if name in self.modules:
            return name
        self.problems.append(f"{self._where(node)}: imports {name}, which is no module of the project")
        return None

    def _tests(self, name: str, node) -> None:
        if name.split(".")[0] in TESTS:
            self.problems.append(f"{self._where(node)}: imports {name}: nothing imports the tests")

    def visit_Import(self, node: ast.Import):
        for alias in node.names:
            self._tests(alias.name, node)
            if not _project(alias.name):
                continue
            target = self._module(alias.name, node)
            if target is None:
                continue
            self.edges.append(Edge(target, node.lineno))
            if alias.asname:
                self.bound[alias.asname] = target
            else:
                self.bound[alias.name.split(".")[0]] = alias.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom):
        module = _absolute(self.src, node)
        self._tests(module, node)
        if not _project(module):
            return
        if self._module(module, node) is None:
            return
        for alias in node.names:
            sub = f"{module}.{alias.name}"
            if sub in self.modules:                 # from package import submodule
                self.edges.append(Edge(sub, node.lineno))
                self.bound[alias.asname or alias.name] = sub
            else:
                self.edges.append(Edge(module, node.lineno))
            if _private(alias.name) and module != self.src.name:
                self.problems.append(f"{self._where(node)}: imports the private name "
                                     f"{alias.name} from {module}")

    def visit_Attribute(self, node: ast.Attribute):
        if _private(node.attr):
            owner = self._dotted(node.value)
            if owner is not None:
                if owner != self.src.name:
                    self.problems.append(f"{self._where(node)}: uses the private name "
                                         f"{node.attr} of {owner}")
            elif not isinstance(node.ctx, ast.Load):
                self.defined.add(node.attr)
            elif not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                self.used.append((node.attr, node.lineno))
        self.generic_visit(node)

    def visit_FunctionDef(self, node):
        if _private(node.name):
            self.defined.add(node.name)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

    def visit_Name(self, node: ast.Name):
        if _private(node.id) and not isinstance(node.ctx, ast.Load):
            self.defined.add(node.id)

    def _dotted(self, node) -> str | None:
        """The project module an expression like ``m`` or ``moeforge.rtl.units`` names, if any."""
        if isinstance(node, ast.Name):
            return self.bound.get(node.id)
        if isinstance(node, ast.Attribute):
            owner = self._dotted(node.value)
            if owner is not None and f"{owner}.{node.attr}" in self.modules:
                return f"{owner}.{node.attr}"
        return None


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (first module repeated at the end) for each strongly connected group of modules
    (Tarjan's algorithm, iteratively)."""
    index, low, on_stack, stack, groups = {}, {}, set(), [], []
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
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1 or node in graph[node]:
                        groups.append(set(group))
    cycles = []
    for group in groups:                 # a shortest path back to the group's first module
        first = min(group)
        paths, seen = [[first]], {first}
        while paths:
            path = paths.pop(0)
            nxt = sorted(t for t in graph[path[-1]] if t in group)
            if first in nxt:
                cycles.append(path + [first])
                break
            for t in nxt:
                if t not in seen:
                    seen.add(t)
                    paths.append(path + [t])
    return sorted(cycles)


def check(sources: list[Source]) -> list[str]:
    """Every problem of `sources` with the layer rule, one line each, naming file:line."""
    modules = {s.name for s in sources}
    by_name = {s.name: s for s in sources}
    problems = []
    graph: dict[str, dict[str, int]] = {}
    readers = []
    for src in sources:
        reader = _Reader(src, modules)
        reader.visit(ast.parse(src.text, src.path))
        readers.append(reader)
        problems += reader.problems
        graph[src.name] = {}
        for edge in reader.edges:
            graph[src.name].setdefault(edge.target, edge.line)
        layer = layer_of(src.name)
        if layer is None:
            problems.append(f"{src.path}:1: {src.name} belongs to no layer")
            continue
        for target, line in sorted(graph[src.name].items(), key=lambda e: e[1]):
            to = layer_of(target)
            if (to == layer or to in MAY_IMPORT[layer] or (src.name, target) in EXCEPTIONS
                    or target in MAY_IMPORT_MODULES.get(layer, ())):
                continue
            problems.append(f"{src.path}:{line}: {src.name} ({layer}) imports {target} ({to}), "
                            "against the layer rule")
    definers: dict[str, set[str]] = {}
    for reader in readers:
        for name in reader.defined:
            definers.setdefault(name, set()).add(reader.src.name)
    for reader in readers:          # obj._x where only other modules define _x
        for name, line in sorted(set(reader.used), key=lambda u: (u[1], u[0])):
            others = definers.get(name, set()) - {reader.src.name}
            if others and name not in reader.defined:
                problems.append(f"{reader.src.path}:{line}: uses the private name {name} of "
                                f"{', '.join(sorted(others))}")
    for cycle in _cycles(graph):
        hops = ", ".join(f"{by_name[a].path}:{graph[a][b]}" for a, b in zip(cycle, cycle[1:]))
        problems.append(f"import cycle: {' -> '.join(cycle)} ({hops})")
    return problems


def test_the_package_follows_the_layer_rule():
    sources = package_sources()
    names = {s.name for s in sources}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert set(packages) <= names, f"packages not read: {sorted(set(packages) - names)}"
    problems = check(sources)
    assert not problems, "\n".join(problems)


def test_the_one_exception_is_still_needed():
    """The host runtime's one import of the simulator is where it says: an exception nobody uses
    would let a second one in unseen."""
    sources = {s.name: s for s in package_sources()}
    for source, target in EXCEPTIONS:
        reader = _Reader(sources[source], set(sources))
        reader.visit(ast.parse(sources[source].text))
        assert target in {e.target for e in reader.edges}, (source, target)


SYNTHETIC = {
    "moeforge.errors": "",
    "moeforge.spec.arith": "X_BITS = 8\n_SECRET = 1\n",
    "moeforge.hls_models.golden": "from moeforge.spec.arith import X_BITS\n"
                                  "from ..spec import arith\nY = arith.X_BITS\n",
    # one bad arrow: the golden model's layer reaching up into rtl, from inside a function
    "moeforge.hls_models.quantize": "def f():\n    from moeforge.rtl.units import UNITS\n"
                                    "    return UNITS\n",
    "moeforge.rtl.units": "from ..spec.arith import X_BITS\nUNITS = {}\n",
    # one cycle inside rtl
    "moeforge.rtl.a": "from . import b\n",
    "moeforge.rtl.b": "import moeforge.rtl.a\n",
    # one private import
    "moeforge.sim.sim_device": "from moeforge.rtl.units import UNITS\n"
                          "from moeforge.spec.arith import _SECRET\n",
    # the allowed exception and a private name of the module itself
    "moeforge.host_runtime.device": "_OWN = 1\n\ndef sim():\n    from moeforge.sim import sim_device\n"
                                    "    return sim_device.UNITS, _OWN\n",
}


def _synthetic(**changes) -> list[Source]:
    """The synthetic modules with `changes`, and an empty ``__init__`` for each package."""
    texts = {**SYNTHETIC, **changes}
    packages = {".".join(n.split(".")[:i]) for n in texts for i in range(1, n.count(".") + 1)}
    return ([Source(p, p.replace(".", "/") + "/__init__.py", "", True) for p in sorted(packages)]
            + [Source(n, n.replace(".", "/") + ".py", text) for n, text in texts.items()])


def test_the_checker_reports_exactly_the_planted_problems():
    assert check(_synthetic()) == [
        "moeforge/hls_models/quantize.py:2: moeforge.hls_models.quantize (hls_models) imports "
        "moeforge.rtl.units (rtl), against the layer rule",
        "moeforge/sim/sim_device.py:2: imports the private name _SECRET from moeforge.spec.arith",
        "import cycle: moeforge.rtl.a -> moeforge.rtl.b -> moeforge.rtl.a "
        "(moeforge/rtl/a.py:1, moeforge/rtl/b.py:1)",
    ]


def test_the_checker_sees_private_attributes_an_unplaced_module_and_the_tests():
    """A module's private name used through the module, or through an object when only another
    module defines that name (a name no project module defines is a third party's business)."""
    planted = check(_synthetic())
    problems = check(_synthetic(**{
        "moeforge.rtl.units": "import moeforge.spec.arith\nfrom moeforge.spec import arith as a\n"
                              "UNITS = {}\nZ = moeforge.spec.arith._SECRET + a._SECRET\n",
        "moeforge.extra": "from moeforge.nothing import x\nimport testkit\n",
        "moeforge.sim.stream": "class Monitor:\n    def __init__(self):\n        self._task = None\n",
        "moeforge.sim.bench": "def wait(sink, other):\n    return sink._task, other._unknown\n",
    }))
    assert [p for p in problems if p not in planted] == [
        "moeforge/rtl/units.py:4: uses the private name _SECRET of moeforge.spec.arith",
        "moeforge/rtl/units.py:4: uses the private name _SECRET of moeforge.spec.arith",
        "moeforge/extra.py:1: imports moeforge.nothing, which is no module of the project",
        "moeforge/extra.py:2: imports testkit: nothing imports the tests",
        "moeforge/extra.py:1: moeforge.extra belongs to no layer",
        "moeforge/sim/bench.py:2: uses the private name _task of moeforge.sim.stream",
    ]
