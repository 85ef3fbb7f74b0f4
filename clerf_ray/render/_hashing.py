"""Counter-based random numbers for renderers: per-sample streams without per-sample generators.

A sample's random numbers depend only on its own seed, never on the batch it is rendered in, and
are computed for a whole batch at once (numpy ``uint64`` arithmetic wraps modulo 2**64, which is
what SplitMix64 needs).
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser of ``x + golden``: a well-mixed uint64 per element."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def seeds_from_ints(values: np.ndarray, salt: int) -> np.ndarray:
    """uint64 seeds (N,) from int64 values (N,) and a salt naming the stream."""
    v = np.asarray(values, dtype=np.int64).view(np.uint64)
    return splitmix64(splitmix64(v) ^ splitmix64(np.full(v.shape, salt, dtype=np.uint64)))


def pose_hash(R: np.ndarray) -> np.ndarray:
    """uint64 hash (N,) of labels (N, 3, 3), quantised to 2**-20 so that tiny float noise rarely
    changes it (it only seeds backgrounds and lights, never geometry)."""
    q = np.round(np.asarray(R, dtype=np.float64).reshape(len(R), 9) * 2.0**20).astype(np.int64)
    h = np.full(len(R), 0x51ED270B, dtype=np.uint64)
    for j in range(9):
        h = splitmix64(h ^ q[:, j].view(np.uint64))
    return h


def combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mix two uint64 seed arrays into one."""
    return splitmix64(np.asarray(a, dtype=np.uint64) ^ (splitmix64(b) * np.uint64(3)))


def uniforms(seeds: np.ndarray, k: int) -> np.ndarray:
    """(N, k) float64 uniforms in [0, 1) from uint64 seeds (N,): element j is a hash of (seed, j)."""
    seeds = np.asarray(seeds, dtype=np.uint64)
    base = splitmix64(seeds)[:, None]
    z = splitmix64(base + np.arange(1, k + 1, dtype=np.uint64)[None, :] * _GOLDEN)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2.0**53)
