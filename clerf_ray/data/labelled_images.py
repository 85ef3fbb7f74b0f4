"""Labelled images for the pose head and the baseline: columns ``image`` (H, W, 3) uint8, ``R``
(3, 3) float32 after augmentation, ``source``; from a labelled Parquet set or from both images
of each pair of the pair stream."""

from __future__ import annotations

import numpy as np

from clerf_ray.augment import GeometricAugment
from clerf_ray.config import PairDataConfig
from clerf_ray.data.pairs import build_pair_dataset
from clerf_ray.data.render_stage import image_size_of
from clerf_ray.data.sampling import AUGMENT, rngs
from clerf_ray.images import decode_images, resize_all


def _pairs_to_images(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Both images of a pair carry the pair's label: two labelled samples per render pass.
    return {
        "image": np.concatenate([batch["anchor"], batch["positive"]]),
        "R": np.concatenate([batch["R"], batch["R"]]).astype(np.float32),
        "source": np.concatenate([batch["source"], batch["source"]]),
    }


def _augment_labelled(batch, preset: str, seed: int, epoch: int, image_size: int):
    aug = GeometricAugment.preset(preset)
    n = len(batch["R"])
    images = resize_all(decode_images(batch["image"]), image_size)
    R = np.asarray(np.stack(list(batch["R"])), dtype=np.float64).reshape(n, 3, 3)
    out_images, out_R = [], []
    for i, rng in enumerate(rngs(seed, epoch, AUGMENT, batch["pair_id"].astype(np.int64))):
        (im,), r = aug([images[i]], R[i], rng)
        out_images.append(im)
        out_R.append(r)
    return {
        "image": np.stack(out_images),
        "R": np.asarray(out_R, dtype=np.float32),
        "source": np.asarray(batch["dataset"]).astype(str),
    }


def build_labelled_image_dataset(
    cfg: PairDataConfig, epoch: int = 0, labelled_path: str | None = None, pool=None
):
    """Labelled images for the pose head and for evaluation: columns ``image`` (H, W, 3) uint8,
    ``R`` (3, 3) float32 after augmentation, ``source``.

    From ``labelled_path`` (the shared labelled schema; images resized to the renderer's
    ``image_size``) when given, else from synthetic pairs (``cfg``; both images of each pair, so
    ``2 * cfg.num_pairs`` rows; with ``pool`` from :func:`render_pool`, the pooled renders with
    this epoch's augmentation draws).
    """
    if labelled_path is None:
        return build_pair_dataset(cfg, epoch, pool=pool).map_batches(
            _pairs_to_images, batch_format="numpy", num_cpus=cfg.stage_num_cpus
        )
    from clerf_ray.data.schema import read_labelled_numbered

    return read_labelled_numbered(labelled_path, num_cpus=cfg.stage_num_cpus).map_batches(
        _augment_labelled,
        fn_kwargs={
            "preset": cfg.augment,
            "seed": cfg.seed,
            "epoch": epoch,
            "image_size": image_size_of(cfg),
        },
        batch_format="numpy",
        num_cpus=cfg.stage_num_cpus,
    )
