"""Sampling of the pair stream: one pose and two distinct identities per pair, every draw keyed by
``(seed, epoch, stage salt, pair_id)`` so it depends neither on how Ray splits the work into
blocks nor on the number of actors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from clerf_ray import geometry
from clerf_ray.config import PairDataConfig

# Salts that keep the random streams of the sampling, identity and augmentation stages apart.
POSE, IDENTITY, AUGMENT = 1, 2, 3


def rngs(seed: int, epoch: int, salt: int, ids: np.ndarray) -> list[np.random.Generator]:
    """One generator per row, keyed by (seed, epoch, salt, row id): independent of batching."""
    return [np.random.default_rng([seed, epoch, salt, int(i)]) for i in ids]


class _SampleSynthetic:
    """Row ids -> pose and two distinct identities per pair."""

    def __init__(self, cfg: PairDataConfig, epoch: int, pose_range, pool: np.ndarray | None):
        self.cfg, self.epoch, self.pose_range, self.pool = cfg, epoch, pose_range, pool

    def _pose(self, rng: np.random.Generator) -> np.ndarray:
        cfg = self.cfg
        # Rejection keeps every pose inside what the renderer can draw (a GAN's limited yaw); the
        # augmentation then carries the pairs over the rest of SO(3).
        for _ in range(1000):
            if self.pool is not None:
                R = self.pool[rng.integers(len(self.pool))]
            elif cfg.poses == "so3":
                R = geometry.sample_rotations(1, rng)[0]
            else:
                R = geometry.sample_rotations(
                    1,
                    rng,
                    yaw_range=cfg.yaw_range,
                    pitch_range=cfg.pitch_range,
                    roll_range=cfg.roll_range,
                )[0]
            if self.pose_range.contains(R):
                return R
        raise ValueError(
            f"data.poses={cfg.poses!r} gives almost no poses inside renderer "
            f"{cfg.renderer!r}'s range {self.pose_range}; narrow the pose ranges"
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = batch["id"].astype(np.int64)
        lo, hi = self.cfg.identities
        R, ida, idb = [], [], []
        for pose_rng, id_rng in zip(
            rngs(self.cfg.seed, self.epoch, POSE, ids),
            rngs(self.cfg.seed, self.epoch, IDENTITY, ids),
            strict=True,
        ):
            R.append(self._pose(pose_rng))
            a, b = two_distinct(id_rng, lo, hi)
            ida.append(a)
            idb.append(b)
        return {
            "pair_id": ids,
            "R": np.asarray(R, dtype=np.float64),
            "identity_a": np.asarray(ida, dtype=np.int64),
            "identity_b": np.asarray(idb, dtype=np.int64),
            "source": np.full(len(ids), f"render:{self.cfg.renderer}"),
        }


def sample_synthetic(batch, cfg: PairDataConfig, epoch: int, pose_range, pool):
    return _SampleSynthetic(cfg, epoch, pose_range, pool)(batch)


def two_distinct(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int]:
    a = int(rng.integers(lo, hi))
    b = int(rng.integers(lo, hi - 1))
    return a, b + (b >= a)


def pair_ids(n: int, blocks: int):
    """A dataset of ``id`` 0..n-1 in ``blocks`` blocks, made without read tasks.

    ``ray.data.range`` reads with one whole CPU per task and offers no way to lower it; next to a
    1-CPU trainer on a 2-core machine that starves the renderer actors and the run hangs.
    """
    import ray.data

    chunks = np.array_split(np.arange(n, dtype=np.int64), blocks)
    return ray.data.from_arrow([pa.table({"id": c}) for c in chunks if len(c)])


def pose_pool(path: str) -> np.ndarray:
    from clerf_ray.data.schema import labelled_R, load_labelled

    R = labelled_R(load_labelled(path, columns=["R"]))
    if len(R) == 0:
        raise ValueError(f"data.poses={path!r} holds no labelled rows")
    return R
