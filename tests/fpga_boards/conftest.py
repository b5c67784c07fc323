"""The board tests: saved tool outputs in ``data/``; real builds marked."""

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "boards: a real board build of a shipped config (make test-boards; minutes)")


@pytest.fixture
def data_dir() -> Path:
    return DATA
