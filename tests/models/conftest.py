"""Fixtures of the model tests."""

import numpy as np
import pytest


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
