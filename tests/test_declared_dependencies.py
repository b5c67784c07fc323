"""A declared dependency that is missing fails the tests, it never skips them.

pyproject.toml declares what the project and its tests need (``dependencies`` and the ``test``
extra): a test that skips when one of those, or a module of moeforge itself, cannot be imported
turns a broken environment or a missing module into a green run. Skips stay for tools that are
genuinely optional (a machine without the lz4 headers, say).
"""

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared_imports() -> set[str]:
    """Top-level import names of the declared distributions (and of moeforge itself)."""
    reqs = [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["test"]]
    dists = {_norm(re.match(r"[A-Za-z0-9_.-]+", r).group()) for r in reqs} | {_norm(PROJECT["name"])}
    names = {imp for imp, ds in importlib.metadata.packages_distributions().items()
             if any(_norm(d) in dists for d in ds)}
    return names | {PROJECT["name"]}


def _import_skips(path: Path):
    """``(line, module)`` of each ``importorskip("module")`` call in the file at `path`."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "importorskip"
                and node.args and isinstance(node.args[0], ast.Constant)):
            yield node.lineno, node.args[0].value


def test_declared_imports_are_known():
    """The name table below sees the declared packages (else the next test would check nothing)."""
    assert {"torch", "amaranth", "cocotb", "transformers", "pytest", "moeforge"} <= _declared_imports()


def test_no_test_skips_on_a_declared_dependency():
    declared = _declared_imports()
    found = [f"{p.relative_to(ROOT)}:{line}: importorskip({mod!r})"
             for p in sorted((ROOT / "tests").rglob("*.py"))
             for line, mod in _import_skips(p) if mod.split(".")[0] in declared]
    assert found == [], "a declared dependency (or moeforge's own module) must fail, not skip"


def test_reference_tests_fail_without_transformers():
    """With `transformers` hidden, tests/hls_models/test_reference.py errors (naming it) instead of skipping."""
    code = ("import sys; sys.modules['transformers'] = None; import pytest; "
            "sys.exit(pytest.main(['-q', '-rs', '-p', 'no:cacheprovider', '-p', 'no:xdist', "
            "'tests/hls_models/test_reference.py']))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode not in (0, 5), out[-2000:]
    assert "transformers" in out and "skipped" not in out, out[-2000:]
