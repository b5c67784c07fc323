"""A non-editable install (`pip install .`, what a wheel holds) has every module and data file of
the source tree, and its `moeforge` runs from outside the checkout.

The project venv is an editable install that reads the checkout, so it would hide a package left
out of pyproject.toml. Here a throwaway venv gets the project installed for real, from a copy of
the sources (the build writes ``build/`` and ``*.egg-info`` beside them), without downloads: the
dependencies come from the running environment's site-packages through a ``.pth`` path line
(``venv --system-site-packages`` would give the base interpreter's, not this venv's; a path line
does not run this venv's editable-install hook, so the checkout stays off ``sys.path``).
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def _tree_files() -> dict[str, Path]:
    """Every file of the mapped source folders, by its path inside the installed ``moeforge``."""
    files = {}
    for pkg, folder in SETUPTOOLS["package-dir"].items():
        prefix = Path(*pkg.split(".")[1:])
        for p in (ROOT / folder).rglob("*"):
            rel = p.relative_to(ROOT / folder)
            if p.is_file() and "__pycache__" not in rel.parts and p.suffix != ".pyc":
                files.setdefault((prefix / rel).as_posix(), p)
    return files


def _module_name(rel: str) -> str:
    parts = ["moeforge", *Path(rel).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _run(argv, *, cwd, timeout=120, **kw):
    """Run `argv` with no PYTHONPATH and the given cwd; fail the test with its output if it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, (argv, r.stdout[-2000:], r.stderr[-2000:])
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(python, site_packages, scripts, cwd)`` of a throwaway venv with the project installed."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for folder in set(SETUPTOOLS["package-dir"].values()):
        shutil.copytree(ROOT / folder, src / folder, ignore=IGNORE)
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp).stdout.strip())
    (site / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
          "--no-build-isolation", "--no-index", str(src)], cwd=tmp, timeout=300)
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    return python, site, venv / "bin", cwd


def test_every_top_level_package_folder_is_mapped():
    """A new top-level subpackage must be in pyproject's package-dir, or no install has it."""
    folders = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert folders <= set(SETUPTOOLS["package-dir"].values()), folders
    assert set(SETUPTOOLS["packages"]) == {_module_name(r) for r in _tree_files() if r.endswith("__init__.py")}


def test_install_holds_every_module_and_data_file(installed):
    python, site, _, _ = installed
    tree = set(_tree_files())
    got = {p.relative_to(site / "moeforge").as_posix() for p in (site / "moeforge").rglob("*")
           if p.is_file() and "__pycache__" not in p.parts}
    assert sorted(tree - got) == [], "left out of the install"
    assert sorted(got - tree) == [], "installed but not in the source tree"
    assert "sim/device_server.cpp" in got and "sim/benches/layer.py" in got


def test_every_module_imports_from_the_install(installed):
    """Each module of the tree imports from the throwaway venv's files, none from the checkout."""
    python, site, _, cwd = installed
    names = sorted({_module_name(r) for r in _tree_files() if r.endswith(".py")})
    code = ("import importlib, json, sys; from moeforge.sim.sim_device import HARNESS; "
            "print(json.dumps({'files': {n: importlib.import_module(n).__file__ for n in sys.argv[1:]}, "
            "'harness': str(HARNESS) if HARNESS.is_file() else None}))")
    r = json.loads(_run([str(python), "-I", "-c", code, *names], cwd=cwd).stdout)
    outside = {n: f for n, f in r["files"].items() if not Path(f).is_relative_to(site / "moeforge")}
    assert outside == {}
    assert r["harness"] is not None and Path(r["harness"]).is_relative_to(site)


def test_installed_command_runs_outside_the_checkout(installed):
    _, site, scripts, cwd = installed
    out = _run([str(scripts / "moeforge"), "--help"], cwd=cwd).stdout
    assert out.startswith("usage: moeforge") and "sim" in out
    assert "usage: moeforge sim" in _run([str(scripts / "moeforge"), "sim", "--help"], cwd=cwd).stdout


@pytest.mark.verilator
def test_installed_sim_runs_a_unit_bench(installed):
    """`moeforge sim` from the install: its cocotb bench and build come from the installed package."""
    _, _, scripts, cwd = installed
    shutil.copy2(ROOT / "configs" / "tiny.toml", cwd / "tiny.toml")
    out = _run([str(scripts / "moeforge"), "sim", "--config", "tiny.toml", "--unit", "requantiser",
                "--tokens", "8", "--seed", "1"], cwd=cwd, timeout=900).stdout
    assert "bit-exact" in out, out
