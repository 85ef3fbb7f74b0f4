"""Anchor-positive pair streams on Ray Data: one pose, two identities, one augmentation per pair.

``build_pair_dataset(cfg, epoch)`` returns a lazy ``ray.data.Dataset`` with columns

* ``anchor``, ``positive``: (H, W, 3) uint8 images showing the same pose;
* ``R``: (3, 3) float32 label after augmentation (dataset convention, ``clerf_ray.geometry``);
* ``source``: where the anchor came from (``"render:<renderer>"`` or the labelled set's name);
* ``pair_id``: int64, the pair's index within the epoch;
* ``identity_a``, ``identity_b``: int64 identity seeds of the anchor and the positive (-1 for a
  real anchor).

Three sources:

* ``synthetic``: poses sampled by config (all of SO(3), Euler ranges, or the poses of a labelled
  Parquet set); anchor and positive are two identities rendered at that pose by renderer actors.
* ``real_anchor``: anchors are the images of a labelled Parquet set; positives are rendered at the
  anchor's pose with a random identity. Anchors are numbered by their place in the set (shards in
  name order, rows in shard order), so ``pair_id`` and every draw keyed by it do not depend on
  how Ray schedules the reads. Anchors whose pose the renderer cannot draw (a GAN's limited yaw
  and pitch, ``Renderer.pose_range``) are skipped before rendering, counted and logged
  (:func:`real_anchor_counts`); their ``pair_id`` is left unused.
* ``shards``: pairs rendered earlier and written by ``write_pair_shards`` (``jobs/render.py``), so
  GAN render cost is paid once across epochs and trials; augmentation is still fresh.

The stream is assembled here from its parts: :mod:`~clerf_ray.data.sampling` (poses and
identities), :mod:`~clerf_ray.data.render_stage` (renderer actors, real anchors),
:mod:`~clerf_ray.data.pair_shards` (rendered pairs on disk or S3);
:mod:`~clerf_ray.data.labelled_images` turns it into labelled images.

Rendering runs in actors (``map_batches`` with a callable class and ``ActorPoolStrategy``), with
``num_gpus`` for GAN backends and an optional custom resource for placement. Every random choice is
drawn from ``np.random.default_rng([seed, epoch, stage, pair_id])`` (one stream per pair and
stage: pose, identities, augmentation), so a run is reproducible, each epoch sees new draws, and
neither depends on how Ray splits the work into blocks or on the number of actors. Shards keep
their ``pair_id``, so their augmentation follows the same rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clerf_ray.augment import GeometricAugment
from clerf_ray.config import PairDataConfig
from clerf_ray.data.pair_shards import (
    PairShardWriter,
    decode_shards,
    pair_shard_rows,
    pair_table,
    read_pair_shards,
    to_shard_rows,
)
from clerf_ray.data.render_stage import (
    RenderPairs,
    anchor_pose_range,
    decode_labelled,
    image_size_of,
    real_anchor_counts,
    render_stage_options,
)
from clerf_ray.data.sampling import AUGMENT, pair_ids, pose_pool, rngs, sample_synthetic
from clerf_ray.data.shards import DEFAULT_SHARD_ROWS, read_report

__all__ = [
    "PairDataConfig",
    "augment_batch",
    "build_pair_dataset",
    "pairs_per_epoch",
    "pretrain_inputs",
    "render_pool",
]


def augment_batch(
    batch: dict[str, np.ndarray], preset: str, seed: int, epoch: int
) -> dict[str, np.ndarray]:
    """Epoch ``epoch``'s augmentation of a batch of rendered pairs: each pair's draw comes from
    its ``pair_id`` (``rngs(seed, epoch, AUGMENT, ids)``), so it does not depend on the batch it
    arrives in, on the order of the rows, or on where it runs."""
    aug = GeometricAugment.preset(preset)
    anchors, positives, labels = [], [], []
    ids = batch["pair_id"].astype(np.int64)
    R = np.asarray(batch["R"], dtype=np.float64).reshape(-1, 3, 3)
    for i, rng in enumerate(rngs(seed, epoch, AUGMENT, ids)):
        (a, p), r = aug([batch["anchor"][i], batch["positive"][i]], R[i], rng)
        anchors.append(a)
        positives.append(p)
        labels.append(r)
    empty = len(ids) == 0  # every anchor of the batch was skipped for its pose
    return {
        "anchor": np.asarray(batch["anchor"]) if empty else np.stack(anchors),
        "positive": np.asarray(batch["positive"]) if empty else np.stack(positives),
        "R": np.asarray(labels, dtype=np.float32).reshape(-1, 3, 3),
        "source": batch["source"],
        "pair_id": ids,
        "identity_a": np.asarray(batch["identity_a"], dtype=np.int64),
        "identity_b": np.asarray(batch["identity_b"], dtype=np.int64),
    }


def _rendered(cfg: PairDataConfig, epoch: int, max_actors: int | None = None):
    """Pairs before augmentation: ``pair_id``, ``anchor``, ``positive``, ``R`` (N, 3, 3) float64,
    ``source`` and, where known, ``identity_a`` / ``identity_b``."""
    from clerf_ray.render import renderer_class

    if cfg.source == "synthetic":
        # The pose range is a class attribute: GAN backends are only ever built inside actors.
        pose_range = renderer_class(cfg.renderer).pose_range
        pool = None if cfg.poses in ("so3", "ranges") else pose_pool(cfg.poses)
        ds = pair_ids(cfg.num_pairs, blocks=max(1, min(cfg.num_pairs // cfg.render_batch_size, 64)))
        ds = ds.map_batches(
            sample_synthetic,
            # Tasks, not an actor: sampling holds no state worth keeping, and each actor costs a
            # fresh worker process (imports included) per pipeline, where tasks reuse pooled ones.
            fn_kwargs={"cfg": cfg, "epoch": epoch, "pose_range": pose_range, "pool": pool},
            batch_format="numpy",
            num_cpus=cfg.stage_num_cpus,
        )
        return ds.map_batches(RenderPairs, **render_stage_options(cfg, max_actors))
    if cfg.source == "real_anchor":
        from clerf_ray.data.schema import read_labelled_numbered

        pose_range = anchor_pose_range(cfg)
        ds = read_labelled_numbered(cfg.labelled_path, num_cpus=cfg.stage_num_cpus)
        ds = ds.map_batches(
            decode_labelled,
            fn_kwargs={
                "cfg": cfg,
                "epoch": epoch,
                "image_size": image_size_of(cfg),
                "pose_range": pose_range,
            },
            batch_format="numpy",
            num_cpus=cfg.stage_num_cpus,
        )
        return ds.map_batches(RenderPairs, **render_stage_options(cfg, max_actors))
    return read_pair_shards(cfg.shards_path, num_cpus=cfg.stage_num_cpus).map_batches(
        decode_shards, batch_format="numpy", num_cpus=cfg.stage_num_cpus
    )


def render_pool(cfg: PairDataConfig):
    """Render the pairs of ``cfg`` once (epoch 0 draws, before augmentation) and keep them in
    Ray's object store: a ``MaterializedDataset`` to pass to :func:`build_pair_dataset` as
    ``pool``. The in-memory counterpart of ``source="shards"``: render cost is paid once, and
    every epoch still draws fresh augmentations (new labels over all of SO(3))."""
    return _rendered(cfg, epoch=0, max_actors=cfg.pool_render_actors).materialize()


def build_pair_dataset(cfg: PairDataConfig, epoch: int = 0, pool=None):
    """The pretraining pairs of one epoch as a lazy ``ray.data.Dataset`` (module docstring).

    With ``pool`` (from :func:`render_pool`) the epoch is one pass over the pooled pairs, in a
    new block order, with this epoch's augmentation draws.
    """
    if pool is not None:
        rendered = pool.randomize_block_order(seed=cfg.seed + 7919 * (epoch + 1))
    else:
        rendered = _rendered(cfg, epoch)
    return rendered.map_batches(
        augment_batch,
        fn_kwargs={"preset": cfg.augment, "seed": cfg.seed, "epoch": epoch},
        batch_format="numpy",
        num_cpus=cfg.stage_num_cpus,
    )


def pretrain_inputs(
    cfg: PairDataConfig, epochs: int, pool=None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pretraining stage's Ray Train datasets and what its loop needs to read them:
    ``(datasets, loop_config)``, ``loop_config`` to merge into the stage's loop config.

    Pairs arrive unaugmented; each worker applies epoch ``e``'s :func:`augment_batch` to its
    batches (``loop_config["augment"]``), in Ray Data's collate threads, beside the steps.

    * From a render ``pool`` or from ``shards`` the content is the same every epoch: one dataset,
      ``"pairs"``, read once per epoch, its block order drawn anew at each read
      (``RandomSeedConfig(reseed_after_execution=True)``). Ray Data's split coordinator and
      executor start once per run, and one coordinator lives for the run, however many epochs.
    * Live renders draw new poses and identities every epoch: one lazy dataset per epoch
      (``epoch_0``, ``epoch_1``, ...), so a resumed run renders exactly the epochs left.
    """
    from functools import partial

    from ray.data import RandomSeedConfig

    from clerf_ray.ray_init import quiet_ray_data

    extra = {"augment": {"preset": cfg.augment, "seed": cfg.seed}}
    if pool is not None or cfg.source == "shards":
        order = RandomSeedConfig(seed=cfg.seed + 7919, reseed_after_execution=True)

        def pairs():
            quiet_ray_data()  # built in Ray Train's dataset manager, whose DataContext is its own
            base = pool if pool is not None else _rendered(cfg, epoch=0)
            return base.randomize_block_order(seed=order)

        return {"pairs": pairs}, {**extra, "dataset": "pairs"}

    def one_epoch(epoch: int):
        quiet_ray_data()
        return _rendered(cfg, epoch)

    return {f"epoch_{e}": partial(one_epoch, e) for e in range(epochs)}, extra


def render_pair_dataset(cfg: PairDataConfig):
    """Rendered pairs before augmentation as Parquet-ready rows (PNG bytes, ``R`` as 9 floats).

    Written to shards by :func:`write_pair_shards` (``jobs/render.py``); read back with
    ``source="shards"``. Uses the draws of epoch 0.
    """
    if cfg.source == "shards":
        raise ValueError("data.source must be 'synthetic' or 'real_anchor' to render shards")
    return _rendered(cfg, epoch=0).map_batches(
        to_shard_rows, batch_format="numpy", num_cpus=cfg.stage_num_cpus
    )


def write_pair_shards(
    cfg: PairDataConfig,
    output: str,
    *,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    endpoint_url: str | None = None,
    log=print,
) -> dict[str, Any]:
    """Render the pairs of ``cfg`` (epoch 0 draws, no augmentation) into Parquet shards.

    Rendering runs on Ray (:func:`render_pair_dataset`); the driver gathers the encoded rows and
    writes them with the shard machinery of :mod:`clerf_ray.data.shards`: staged, then published
    whole, a rerun replacing the previous shards (no duplicates), ``_report.json`` beside them.

    Args:
        cfg: ``source`` ``"synthetic"`` or ``"real_anchor"``.
        output: local folder or ``s3://bucket/prefix``.
        shard_rows: pairs per shard.
        endpoint_url: S3 endpoint override (default ``AWS_ENDPOINT_URL``).
        log: progress callback taking one line of text, or None.

    Returns:
        The report written to ``_report.json``: ``counts`` (``pairs``, ``by_source``; for real
        anchors also ``anchors`` and ``out_of_range``, the anchors skipped because the renderer
        cannot draw their pose), the settings that made the pairs, ``shards``, ``rows``,
        ``elapsed_s``.

    Raises:
        RuntimeError: the pipeline produced a different number of pairs than expected, or a
            pair twice (nothing is published then).
    """
    import time

    say = log or (lambda _msg: None)
    anchors = None
    if cfg.source == "real_anchor":
        anchors = real_anchor_counts(cfg)
        if anchors["out_of_range"]:
            say(
                f"render: skipping {anchors['out_of_range']} of {anchors['anchors']} anchors "
                f"outside renderer {cfg.renderer!r}'s pose range"
            )
    expected = cfg.num_pairs if anchors is None else anchors["pairs"]
    ds = render_pair_dataset(cfg)
    t0 = time.monotonic()
    seen: set[int] = set()
    by_source: dict[str, int] = {}
    next_report = 0.0
    with PairShardWriter(output, shard_rows=shard_rows, endpoint_url=endpoint_url) as writer:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            table = pair_table(batch)
            ids = table.column("pair_id").to_pylist()
            dup = seen.intersection(ids)
            if dup or len(set(ids)) != len(ids):
                raise RuntimeError(f"pair ids rendered twice: {sorted(dup)[:5]}; nothing written")
            seen.update(ids)
            for name in table.column("source").to_pylist():
                by_source[name] = by_source.get(name, 0) + 1
            writer.write(table)
            elapsed = time.monotonic() - t0
            if elapsed >= next_report:
                total = f"/{expected}" if expected else ""
                say(f"render: {len(seen)}{total} pairs, {len(seen) / max(elapsed, 1e-9):.1f}/s")
                next_report = elapsed + 10.0
        if len(seen) != expected:
            raise RuntimeError(f"rendered {len(seen)} pairs, expected {expected}; nothing written")
        elapsed = time.monotonic() - t0
        report = {
            "kind": "pairs",
            "source": cfg.source,
            "renderer": cfg.renderer,
            "renderer_options": dict(cfg.renderer_options),
            "poses": cfg.poses if cfg.source == "synthetic" else None,
            "labelled_path": cfg.labelled_path if cfg.source == "real_anchor" else None,
            "identities": list(cfg.identities),
            "seed": cfg.seed,
            "counts": {
                "pairs": len(seen),
                "by_source": by_source,
                **({} if anchors is None else {k: anchors[k] for k in ("anchors", "out_of_range")}),
            },
            "elapsed_s": round(elapsed, 3),
        }
        writer.commit(report)
    say(f"render: wrote {len(seen)} pairs to {output} in {elapsed:.1f} s")
    return read_report(output, endpoint_url=endpoint_url)


def pairs_per_epoch(cfg: PairDataConfig) -> int:
    """How many pairs one epoch of :func:`build_pair_dataset` yields: ``num_pairs`` for
    synthetic pairs, the anchors the renderer can pair for ``real_anchor``
    (:func:`real_anchor_counts`), the rows of the pair shards for ``shards`` (from their Parquet
    footers; no row is read). Training stages size their steps and schedules with it."""

    if cfg.source == "real_anchor":
        return real_anchor_counts(cfg)["pairs"]
    if cfg.source != "shards":
        return cfg.num_pairs
    return pair_shard_rows(cfg.shards_path)
