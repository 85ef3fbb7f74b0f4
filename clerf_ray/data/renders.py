"""Rendered labelled sets: one render per row, written in the labelled schema of
:mod:`clerf_ray.data.schema`, so every consumer of labelled sets (``load_labelled``, coverage,
evaluation's Parquet sets, ``head.labelled_path``, ``data.poses``, real anchors) reads a render set
exactly as it reads a prepared 300W-LP or AFLW2000.

    cfg = PairDataConfig.from_defaults(renderer="procedural", poses="so3", identities=(2_000_000, 2_100_000))
    report = write_labelled_renders(cfg, "data/renders", num_images=2048)

Row ``i`` uses the draws of pair ``i`` of the synthetic pair stream at epoch 0 with the same
config (``clerf_ray.data.pairs``): its pose (``cfg.poses``: all of SO(3), Euler ranges, or the
poses of a labelled set, kept inside the renderer's ``pose_range``) and its first identity
(from ``cfg.identities``). No augmentation is applied: the label is the pose rendered, and
consumers draw their own augmentations. Columns:

* ``image``: the render, JPEG (default) or PNG; ``width`` / ``height``: its size.
* ``R``: the pose rendered; ``euler_deg``: ``geometry.matrix_to_euler(R)`` in degrees.
* ``box``: the whole image; ``file``: ``render-<row:08d>-id<identity>`` (a stable id);
  ``dataset``: ``render:<renderer>``.

Shards are written in row order (Ray Data's ``preserve_order`` on this pipeline only), so the same
seed gives the same shards, and so the same real-anchor numbering when the set is read back.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from clerf_ray.config import PairDataConfig
from clerf_ray.data.render_stage import render_stage_options
from clerf_ray.data.sampling import pair_ids, pose_pool, sample_synthetic
from clerf_ray.data.schema import IMAGE_FORMATS, make_table
from clerf_ray.data.shards import DEFAULT_SHARD_ROWS, ShardWriter


class RenderImages:
    """Renderer actor: renders ``identity_a`` at ``R`` for each row into an ``image`` column.

    Args:
        factory: the renderer class (``renderer_class(name)``), resolved on the driver.
        renderer_options: keyword options for the factory.
    """

    def __init__(self, factory, renderer_options: dict[str, Any]):
        self.renderer = factory(**renderer_options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        R = np.asarray(batch["R"], dtype=np.float64).reshape(-1, 3, 3)
        return {
            "row": batch["pair_id"].astype(np.int64),
            "identity": batch["identity_a"].astype(np.int64),
            "R": R,
            "image": self.renderer.render(batch["identity_a"], R),
        }


def render_file_id(row: int, identity: int) -> str:
    """The ``file`` value of render ``row`` of identity ``identity``."""
    return f"render-{int(row):08d}-id{int(identity)}"


def _to_labelled(batch: dict[str, np.ndarray], dataset: str, image_format: str) -> pa.Table:
    table = make_table(
        batch["image"],
        batch["R"],
        files=[render_file_id(r, i) for r, i in zip(batch["row"], batch["identity"], strict=True)],
        dataset=dataset,
        image_format=image_format,
    )
    return table.append_column("row", pa.array(batch["row"].astype(np.int64)))


def labelled_render_dataset(cfg: PairDataConfig, num_images: int, image_format: str = "jpeg"):
    """Renders as a lazy ``ray.data.Dataset`` of labelled-schema rows plus ``row`` (int64, the
    row's index), in row order.

    Args:
        cfg: a synthetic config (poses, renderer, identities, seed, stage budgets).
        num_images: rows to render.
        image_format: ``"jpeg"`` or ``"png"`` (lossless).
    """
    from clerf_ray.render import renderer_class

    if cfg.source != "synthetic":
        raise ValueError(
            f"data.source must be 'synthetic' for a labelled render set (poses from data.poses), "
            f"got {cfg.source!r}"
        )
    if isinstance(num_images, bool) or int(num_images) != num_images or num_images < 1:
        raise ValueError(f"num_images must be an integer >= 1, got {num_images!r}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    pool = None if cfg.poses in ("so3", "ranges") else pose_pool(cfg.poses)
    blocks = max(1, min(num_images // cfg.render_batch_size, 64))
    ds = pair_ids(int(num_images), blocks=blocks)
    # Shards in row order make a rerun with the same seed byte-identical; this dataset's context
    # is its own copy (ray.data.from_arrow copies the global one), so nothing else is slowed.
    ds.context.execution_options.preserve_order = True
    ds = ds.map_batches(
        sample_synthetic,
        fn_kwargs={
            "cfg": cfg,
            "epoch": 0,
            "pose_range": renderer_class(cfg.renderer).pose_range,
            "pool": pool,
        },
        batch_format="numpy",
        num_cpus=cfg.stage_num_cpus,
    )
    ds = ds.map_batches(RenderImages, **render_stage_options(cfg))
    return ds.map_batches(
        _to_labelled,
        fn_kwargs={"dataset": f"render:{cfg.renderer}", "image_format": image_format},
        batch_format="numpy",
        num_cpus=cfg.stage_num_cpus,
    )


def write_labelled_renders(
    cfg: PairDataConfig,
    output: str,
    *,
    num_images: int,
    image_format: str = "jpeg",
    shard_rows: int = DEFAULT_SHARD_ROWS,
    endpoint_url: str | None = None,
    log=print,
) -> dict[str, Any]:
    """Render ``num_images`` labelled images into Parquet shards of the labelled schema.

    Written with :class:`~clerf_ray.data.shards.ShardWriter` as ``prepare_data`` writes: staged,
    published whole, a rerun replacing the previous shards (no duplicates, no stale shard), a
    ``_report.json`` beside them.

    Args:
        cfg: synthetic config (module docstring).
        output: local folder or ``s3://bucket/prefix``.
        num_images: rows to render.
        image_format: ``"jpeg"`` or ``"png"``.
        shard_rows: rows per shard.
        endpoint_url: S3 endpoint override (default ``AWS_ENDPOINT_URL``).
        log: progress callback taking one line of text, or None.

    Returns:
        The report written to ``_report.json``: ``kind`` ``"labelled"``, ``dataset``,
        ``counts`` (``seen``, ``written``, ``filtered``, ``skipped`` as prepare_data's; renders
        skip nothing), the settings that made the renders, ``shards``, ``rows``, ``elapsed_s``.

    Raises:
        RuntimeError: rows came out of order, twice, or not all of them (nothing is published).
    """
    from clerf_ray.data.shards import read_report

    say = log or (lambda _msg: None)
    ds = labelled_render_dataset(cfg, num_images, image_format)
    t0 = time.monotonic()
    written = 0
    next_report = 0.0
    with ShardWriter(output, shard_rows=shard_rows, endpoint_url=endpoint_url) as writer:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = table.column("row").to_numpy()
            if not np.array_equal(rows, np.arange(written, written + len(rows))):
                raise RuntimeError(
                    f"renders came out of order (rows {rows[:5].tolist()}... after {written}); "
                    "nothing written"
                )
            writer.write(table.drop_columns(["row"]))
            written += len(rows)
            elapsed = time.monotonic() - t0
            if elapsed >= next_report:
                say(f"render: {written}/{num_images} images, {written / max(elapsed, 1e-9):.1f}/s")
                next_report = elapsed + 10.0
        if written != num_images:
            raise RuntimeError(f"rendered {written} images, expected {num_images}; nothing written")
        elapsed = time.monotonic() - t0
        report = {
            "kind": "labelled",
            "dataset": f"render:{cfg.renderer}",
            "output": str(output),
            "renderer": cfg.renderer,
            "renderer_options": dict(cfg.renderer_options),
            "poses": cfg.poses,
            "ranges_deg": {
                "yaw": list(cfg.yaw_range),
                "pitch": list(cfg.pitch_range),
                "roll": list(cfg.roll_range),
            }
            if cfg.poses == "ranges"
            else None,
            "identities": list(cfg.identities),
            "seed": cfg.seed,
            "image_format": image_format,
            "counts": {
                "seen": int(num_images),
                "written": written,
                "filtered": 0,
                "skipped": 0,
                "skipped_by_reason": {},
            },
            "skipped": [],
            "filtered": [],
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "elapsed_s": round(elapsed, 3),
        }
        writer.commit(report)
    say(f"render: wrote {written} labelled images to {output} in {elapsed:.1f} s")
    return read_report(output, endpoint_url=endpoint_url)
