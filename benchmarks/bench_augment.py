"""Pretraining's augmentation (:func:`clerf_ray.data.pairs.augment_batch`, preset ``fa``) in
milliseconds per pair, against the way ``augment.rotate`` used to work, side by side in one run.

Usage::

    python benchmarks/bench_augment.py                  # 64 pairs of 64 px renders, 5 rounds
    python benchmarks/bench_augment.py --size 128 --rounds 9

``augment.rotate`` pads the image by reflection and has PIL resample only the crop it keeps
(``Image.transform`` with the affine map ``Image.rotate`` builds, its origin moved to the crop).
The baseline, *padded*, is the earlier implementation: rotate the whole padded image with
``Image.rotate``, then crop. Both give the same pixels up to rounding at ties (at most one grey
level; ``tests/test_augment.py`` checks ``rotate`` against an independent resampler). Each round
times both on the same batch, one after the other, in one thread; the ratios are per round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from unittest import mock

import numpy as np
from PIL import Image


def _padded_rotate(image: np.ndarray, degrees: float, fill) -> np.ndarray:
    """The earlier image part of ``augment.rotate``: rotate the padded image, then crop."""
    if degrees % 360.0 == 0.0:
        return image.copy()
    h, w = image.shape[:2]
    pad = int(np.ceil((np.hypot(h, w) - min(h, w)) / 2)) + 2
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    out = np.asarray(Image.fromarray(padded).rotate(degrees, resample=Image.BILINEAR))
    return out[pad : pad + h, pad : pad + w].copy()


def _batch(n: int, size: int) -> dict[str, np.ndarray]:
    from clerf_ray import geometry
    from clerf_ray.render import make_renderer

    rng = np.random.default_rng(0)
    renderer = make_renderer("procedural", image_size=size)
    R = geometry.sample_rotations(n, rng)
    ids = np.arange(n)
    return {
        "anchor": renderer.render(ids, R),
        "positive": renderer.render(ids + n, R),
        "R": R,
        "pair_id": ids,
        "source": np.array(["synthetic"] * n),
        "identity_a": ids,
        "identity_b": ids + n,
    }


def _ms_per_pair(batch, repeats: int) -> float:
    from clerf_ray.data.pairs import augment_batch

    best = float("inf")
    for r in range(repeats):
        t = time.perf_counter()
        augment_batch(batch, "fa", 0, r)
        best = min(best, time.perf_counter() - t)
    return best / len(batch["pair_id"]) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=64, help="pairs per batch (pretraining's batch)")
    ap.add_argument("--size", type=int, default=64, help="image size (px)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per side and round")
    ap.add_argument("--json", help="write the figures here")
    ns = ap.parse_args()

    import torch

    from clerf_ray import augment

    torch.set_num_threads(1)
    batch = _batch(ns.pairs, ns.size)
    print(f"{ns.pairs} pairs of {ns.size} px, load average {os.getloadavg()}")
    rounds = []
    for i in range(ns.rounds):
        now = _ms_per_pair(batch, ns.repeats)
        with mock.patch.object(augment, "_rotate_image", _padded_rotate):
            before = _ms_per_pair(batch, ns.repeats)
        rounds.append({"crop_ms_per_pair": now, "padded_ms_per_pair": before})
        print(
            f"round {i + 1}: padded {before:.3f} ms/pair, crop {now:.3f} ms/pair, "
            f"x{before / now:.2f}"
        )
    ratio = statistics.median(r["padded_ms_per_pair"] / r["crop_ms_per_pair"] for r in rounds)
    print(f"median speed-up of augment_batch: x{ratio:.2f}")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"args": vars(ns), "rounds": rounds, "median_speedup": ratio}, f, indent=2)


if __name__ == "__main__":
    main()
