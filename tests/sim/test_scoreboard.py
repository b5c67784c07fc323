"""The in-order bit-exact scoreboard, without a simulator."""

import pytest
import torch

from moeforge.sim.scoreboard import Scoreboard


def test_matching_stream_passes():
    sb = Scoreboard("unit")
    sb.compare(torch.tensor([[1, -2], [3, 4]]), [[1, -2], [3, 4]], cycles=[5, 6])
    assert sb.matched == 2 and sb.pending == 0


def test_first_mismatch_names_token_element_values_and_cycle():
    sb = Scoreboard("unit")
    sb.add_expected_many([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    sb.add_received([1, 2, 3], cycle=10)
    with pytest.raises(AssertionError) as info:
        sb.add_received([4, 6, 7], cycle=11)
    message = str(info.value)
    assert message.startswith("unit: mismatch at token 1, element 1 (cycle 11): expected 5, got 6")
    assert "2 of 3 elements differ" in message


def test_missing_outputs_fail():
    sb = Scoreboard("unit")
    sb.add_expected_many([[1], [2], [3]])
    sb.add_received([1])
    with pytest.raises(AssertionError, match=r"unit: received 1 of 3 expected tokens; token 1 "
                                             r"\(expected \[2\]\) never arrived"):
        sb.finish()


def test_extra_and_malformed_outputs_fail():
    sb = Scoreboard("unit")
    sb.add_expected(7)
    sb.add_received(7)
    with pytest.raises(AssertionError, match="unexpected token 1"):
        sb.add_received(8)
    sb = Scoreboard("unit")
    sb.add_expected([1, 2])
    with pytest.raises(AssertionError, match="token 0 has 1 elements, expected 2"):
        sb.add_received([1])
    with pytest.raises(TypeError, match="bit-exact comparison needs integers"):
        Scoreboard("unit").add_expected([1.0])
