"""docs/architecture.md stays true: every registered unit has its row in the one-hop table, each
row's RTL file is the file its registry entry builds the component from, every path the page
names exists, and each folder's "may import" is what tests/test_import_rule.py enforces."""

import ast
import re
from pathlib import Path

from test_import_rule import MAY_IMPORT, MAY_IMPORT_MODULES

from moeforge.rtl.units import UNITS

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"


def _table(heading: str) -> list[list[str]]:
    """The cells of the rows of the first table under `heading` (header and rule left out)."""
    text = DOC.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _component_files() -> dict[str, str]:
    """Unit name -> the file of the class its builder in rtl/units.py returns, read off the
    builder's own ``from .group.file import Class``."""
    tree = ast.parse((ROOT / "rtl" / "units.py").read_text())
    builders = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    files = {}
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Unit"):
            continue
        name, build = call.args[0].value, call.args[1]
        function = builders[build.func.id if isinstance(build, ast.Call) else build.id]
        imported = {alias.asname or alias.name: node for node in ast.walk(function)
                    if isinstance(node, ast.ImportFrom) for alias in node.names}
        for ret in ast.walk(function):
            if isinstance(ret, ast.Return) and isinstance(ret.value, ast.Call):
                func = ret.value.func
                cls = func.id if isinstance(func, ast.Name) else getattr(func.value, "id", None)
                if cls in imported and imported[cls].level == 1:
                    files[name] = "rtl/" + imported[cls].module.replace(".", "/") + ".py"
    return files


def test_every_registered_unit_has_one_row():
    units = [_ticked(row[0])[0] for row in _table("One hop from each unit")]
    assert sorted(units) == sorted(UNITS), (
        f"rows missing: {sorted(set(UNITS) - set(units))}; "
        f"rows of no unit: {sorted(set(units) - set(UNITS))}")
    assert len(units) == len(set(units)), "a unit has two rows"


def test_each_rows_rtl_file_is_where_the_registry_builds_the_unit_from():
    files = _component_files()
    assert set(files) == set(UNITS), f"builders not read: {sorted(set(UNITS) - set(files))}"
    rows = {_ticked(row[0])[0]: _ticked(row[1]) for row in _table("One hop from each unit")}
    wrong = {u: (rows[u], files[u]) for u in rows if rows[u] != [files[u]]}
    assert not wrong, f"unit: (the table's RTL file, the registry's): {wrong}"


def test_every_path_the_page_names_exists():
    prose = re.sub(r"```.*?```", "", DOC.read_text(), flags=re.S)      # the diagram's fence
    paths = [p for p in _ticked(prose)
             if "/" in p and " " not in p and "(" not in p and "://" not in p]
    assert len(paths) > 60, paths                      # the one-hop table alone names ~80
    missing = sorted({p for p in paths if not any(ROOT.glob(p.rstrip("/")))})
    assert not missing, f"named in docs/architecture.md but not in the tree: {missing}"


def test_each_folders_imports_are_the_rule_the_test_enforces():
    checked = 0
    for row in _table("Folders"):
        layers = _ticked(row[1])
        if len(layers) != 1:                            # moeforge/ holds several layers
            continue
        layer, = layers
        expected = MAY_IMPORT[layer] | MAY_IMPORT_MODULES.get(layer, set())
        assert set(_ticked(row[3])) == expected, (row[0], _ticked(row[3]), sorted(expected))
        checked += 1
    assert checked == 6
