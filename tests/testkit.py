"""Helpers the test files share (tests/ is on the path through tests/conftest.py; pytest
rewrites the asserts here as in a test file).

One copy of what several unit tests did alike: the quantised layer their golden side draws
from, the check that a perturbed expectation fails the run where it should, a command line's
usage error, and the design that proves a lint check still reports an unread register.
"""

import functools

import torch

from moeforge.hls_models import QuantizedMoELayer
from moeforge.hls_models.hf_random import make_hf_block, make_hf_input

__all__ = ["hf_layer", "device_tokens", "assert_one_off", "usage_error", "unread_register"]


@functools.cache
def hf_layer(cfg):
    """The quantised layer of `cfg` (transformers block, seed 1, calibrated on 256 tokens),
    built once per config and session: treat it as read-only."""
    return QuantizedMoELayer.from_hf(make_hf_block(cfg, 1), cfg, calib=make_hf_input(cfg, 256, 1))


def token_range(cfg) -> tuple[torch.dtype, int, int]:
    """The device token's dtype and its two's-complement bounds: int8, or int16 with
    ``input_bits = 16`` (the one place the tests map the width to a dtype)."""
    top = 1 << (cfg.input_bits - 1)
    return (torch.int16 if cfg.input_bits == 16 else torch.int8), -top, top - 1


def device_tokens(cfg, n: int, seed: int) -> torch.Tensor:
    """[n, d_model] tokens uniform over the device's input range (`token_range`), deterministic
    in `seed`."""
    dtype, lo, hi = token_range(cfg)
    return torch.randint(lo, hi + 1, (n, cfg.d_model), generator=torch.Generator().manual_seed(seed),
                         dtype=dtype)


def assert_one_off(results, unit: str, token: int, element: int) -> str:
    """`results` (one cocotb test, run with ``check=False``) failed on its scoreboard's first
    mismatch, at `token` and `element` (beats counted over the run), where the expected value
    is the actual one plus one; returns the failure message."""
    assert not results.ok
    assert (results.tests, results.failed) == (1, 1), results.summary()
    message = results.failures[0].message
    assert f"{unit}: mismatch at token {token}, element {element} (cycle " in message, message
    expected, actual = message.split("expected ", 1)[1].split(" (", 1)[0].split(", got ")
    assert int(expected) == int(actual) + 1, message
    return message


def usage_error(argv, capsys) -> str:
    """``moeforge argv`` ends with exit status 2 and one line on stderr, no traceback (an
    argparse usage error or a `MoeforgeError` before any work); returns that stderr."""
    from moeforge.cli import main
    try:
        code = main(argv)
    except SystemExit as exc:            # argparse's usage error
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def unread_register():
    """A component with a register nobody reads (``forgotten``): what no lint waiver may
    excuse."""
    from amaranth.hdl import Module, Signal
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class Careless(wiring.Component):
        a: In(8)
        y: Out(8)

        def elaborate(self, platform):
            m = Module()
            forgotten = Signal(8)
            m.d.sync += forgotten.eq(self.a)
            m.d.sync += self.y.eq(self.a + 1)
            return m

    return Careless()
