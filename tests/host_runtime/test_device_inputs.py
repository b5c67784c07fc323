"""The Device refuses NaN and infinite tokens (naming the first) before anything is sent, and
stays usable afterwards."""

import pytest
import torch

from moeforge import AccelConfig, ShapeError
from moeforge.hls_models import QuantizedMoELayer, make_hf_block, make_hf_input
from moeforge.host_runtime import open_device

pytestmark = pytest.mark.verilator
TINY = "configs/tiny.toml"


def test_device_refuses_non_finite_tokens_and_keeps_working():
    cfg = AccelConfig.from_toml(TINY)
    q = QuantizedMoELayer.from_hf(make_hf_block(cfg, seed=1), cfg, calib=make_hf_input(cfg, 128, seed=2))
    x = make_hf_input(cfg, 40, seed=3)
    with open_device("sim", cfg) as dev:
        dev.load(q)
        before = dev.stats()["tokens"]
        for value in (float("nan"), float("inf"), float("-inf")):
            bad = x.clone()
            bad[33, 7] = value
            with pytest.raises(ShapeError, match=rf"^token 33, element 7 is {value}: the device takes finite"):
                dev.run(bad)
            with pytest.raises(ShapeError, match=rf"^token 25, element 7 is {value}"):
                list(dev.stream([bad[:8], bad[8:]]))      # token 25 of the second piece
            with pytest.raises(ShapeError, match=rf"^token \[4, 1\], element 7 is {value}"):
                dev.run(bad.reshape(5, 8, cfg.d_model))   # named in the caller's shape
        assert dev.stats()["tokens"] == before            # nothing was sent: 8 tokens wait for a batch
        assert torch.equal(dev.run(x), q(x))
