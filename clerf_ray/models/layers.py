"""Small building blocks shared by the encoder and the head."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def check_int(name: str, value, low: int) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is an integer >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
