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


def pairs_to_images(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch of (augmented) pairs -> labelled images: the anchors, then the positives, each
    with its pair's label ``R`` (they show the same pose): two labelled samples per pair."""
    return {
        "image": np.concatenate([batch["anchor"], batch["positive"]]),
        "R": np.concatenate([batch["R"], batch["R"]]).astype(np.float32),
        "source": np.concatenate([batch["source"], batch["source"]]),
    }


def decode_labelled_rows(batch, image_size: int) -> dict[str, np.ndarray]:
    """Rows of a labelled set (:func:`clerf_ray.data.schema.read_labelled_numbered`) decoded
    before augmentation: ``image`` (N, S, S, 3) uint8 at ``image_size``, ``R`` (N, 3, 3)
    float64 (augmentation composes it at full precision), ``source`` (the row's dataset name)
    and ``pair_id`` (the row's stable index, which seeds its augmentation draws)."""
    n = len(batch["R"])
    return {
        "image": resize_all(decode_images(batch["image"]), image_size),
        "R": np.asarray(np.stack(list(batch["R"])), dtype=np.float64).reshape(n, 3, 3),
        "source": np.asarray(batch["dataset"]).astype(str),
        "pair_id": np.asarray(batch["pair_id"], dtype=np.int64),
    }


def augment_labelled_rows(batch, preset: str, seed: int, epoch: int) -> dict[str, np.ndarray]:
    """Epoch ``epoch``'s augmentation of decoded labelled rows (:func:`decode_labelled_rows`):
    each row's draw comes from its ``pair_id``, so it does not depend on the batch it arrives
    in or on where it runs. Returns ``image``, ``R`` (N, 3, 3) float32, ``source``."""
    aug = GeometricAugment.preset(preset)
    R = np.asarray(batch["R"], dtype=np.float64).reshape(-1, 3, 3)
    out_images, out_R = [], []
    for i, rng in enumerate(rngs(seed, epoch, AUGMENT, batch["pair_id"].astype(np.int64))):
        (im,), r = aug([batch["image"][i]], R[i], rng)
        out_images.append(im)
        out_R.append(r)
    return {
        "image": np.stack(out_images) if out_images else np.asarray(batch["image"]),
        "R": np.asarray(out_R, dtype=np.float32).reshape(-1, 3, 3),
        "source": np.asarray(batch["source"]).astype(str),
    }


def _augment_labelled(batch, preset: str, seed: int, epoch: int, image_size: int):
    return augment_labelled_rows(decode_labelled_rows(batch, image_size), preset, seed, epoch)


def labelled_inputs(cfg: PairDataConfig, labelled_path: str):
    """A labelled set as one Ray Train dataset for a whole run: ``(datasets, loop_config)``
    as :func:`clerf_ray.data.pairs.pretrain_inputs` gives them for pairs. ``datasets`` is
    ``{"labelled": build}``, ``build`` making the decoded, unaugmented rows
    (:func:`decode_labelled_rows`) in a new block order at every read
    (``RandomSeedConfig(reseed_after_execution=True)``); ``loop_config`` is ``{"dataset":
    "labelled", "augment": {"preset": cfg.augment, "seed": cfg.seed}}``. The training loop
    augments each batch on its worker with :func:`augment_labelled_rows` at the epoch's draws,
    so the split coordinator and executor start once per run, not once per epoch."""
    from ray.data import RandomSeedConfig

    from clerf_ray.data.schema import read_labelled_numbered
    from clerf_ray.ray_init import quiet_ray_data

    order = RandomSeedConfig(seed=cfg.seed + 7919, reseed_after_execution=True)
    image_size = image_size_of(cfg)

    def labelled():
        quiet_ray_data()  # built in Ray Train's dataset manager, whose DataContext is its own
        ds = read_labelled_numbered(labelled_path, num_cpus=cfg.stage_num_cpus)
        ds = ds.map_batches(
            decode_labelled_rows,
            fn_kwargs={"image_size": image_size},
            batch_format="numpy",
            num_cpus=cfg.stage_num_cpus,
        )
        return ds.randomize_block_order(seed=order)

    augment = {"preset": cfg.augment, "seed": cfg.seed}
    return {"labelled": labelled}, {"dataset": "labelled", "augment": augment}


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
            pairs_to_images, batch_format="numpy", num_cpus=cfg.stage_num_cpus
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
