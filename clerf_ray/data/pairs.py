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

Rendering runs in actors (``map_batches`` with a callable class and ``ActorPoolStrategy``), with
``num_gpus`` for GAN backends and an optional custom resource for placement. Every random choice is
drawn from ``np.random.default_rng([seed, epoch, stage, pair_id])`` (one stream per pair and
stage: pose, identities, augmentation), so a run is reproducible, each epoch sees new draws, and
neither depends on how Ray splits the work into blocks or on the number of actors. Shards keep
their ``pair_id``, so their augmentation follows the same rule.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from clerf_ray import geometry
from clerf_ray.augment import GeometricAugment
from clerf_ray.data.shards import ShardWriter, read_report

log = logging.getLogger(__name__)

# Salts that keep the random streams of the sampling, identity and augmentation stages apart.
_POSE, _IDENTITY, _AUGMENT = 1, 2, 3


@dataclass
class PairDataConfig:
    """How pairs are made. Every default is the laptop setting.

    Attributes:
        source: ``"synthetic"``, ``"real_anchor"`` or ``"shards"``.
        renderer: registered renderer name (``clerf_ray.render.list_renderers()``).
        renderer_options: keyword options for ``make_renderer`` (``image_size`` among them).
        num_pairs: pairs per epoch (synthetic); real_anchor and shards use every row once.
        poses: ``"so3"`` (uniform), ``"ranges"`` (Euler ranges below, degrees) or the path of a
            labelled Parquet set whose poses are resampled.
        yaw_range, pitch_range, roll_range: Euler ranges in degrees for ``poses="ranges"``.
        labelled_path: labelled Parquet set (local or s3://) for ``real_anchor``.
        shards_path: rendered pair shards (local or s3://) for ``source="shards"``.
        identities: half-open range of identity seeds to draw from (keep evaluation identities
            outside it).
        augment: augmentation preset (``"none"``, ``"sa"``, ``"fa"``).
        seed: base seed of every random draw.
        render_batch_size: images per renderer call.
        num_render_actors: renderer actor pool size.
        render_num_cpus, render_num_gpus: per-actor budget. Keep CPU fractional on small machines.
        render_resources: custom Ray resources per actor, e.g. ``{"renderer": 1}`` to pin actors
            to renderer nodes.
        stage_num_cpus: CPU budget of the light stages (sampling, decoding, augmentation).
    """

    source: str = "synthetic"
    renderer: str = "procedural"
    renderer_options: dict[str, Any] = field(default_factory=lambda: {"image_size": 64})
    num_pairs: int = 4096
    poses: str = "so3"
    yaw_range: tuple[float, float] = (-90.0, 90.0)
    pitch_range: tuple[float, float] = (-90.0, 90.0)
    roll_range: tuple[float, float] = (-180.0, 180.0)
    labelled_path: str | None = None
    shards_path: str | None = None
    identities: tuple[int, int] = (0, 1_000_000)
    augment: str = "fa"
    seed: int = 0
    render_batch_size: int = 64
    num_render_actors: int = 1
    render_num_cpus: float = 0.5
    render_num_gpus: float = 0.0
    render_resources: dict[str, float] | None = None
    stage_num_cpus: float = 0.25

    def __post_init__(self):
        if self.source not in ("synthetic", "real_anchor", "shards"):
            raise ValueError(
                f"data.source must be 'synthetic', 'real_anchor' or 'shards', got {self.source!r}"
            )
        if self.source == "real_anchor" and not self.labelled_path:
            raise ValueError("data.labelled_path is required when data.source is 'real_anchor'")
        if self.source == "shards" and not self.shards_path:
            raise ValueError("data.shards_path is required when data.source is 'shards'")
        if isinstance(self.num_pairs, bool) or int(self.num_pairs) != self.num_pairs:
            raise ValueError(f"data.num_pairs must be an integer, got {self.num_pairs!r}")
        if self.num_pairs <= 0:
            raise ValueError(f"data.num_pairs must be positive, got {self.num_pairs}")
        if not isinstance(self.renderer, str):
            raise ValueError(f"data.renderer must be a renderer name, got {self.renderer!r}")
        try:
            from clerf_ray.render import renderer_class

            renderer_class(self.renderer)
        except ValueError as e:
            raise ValueError(f"data.renderer: {e}") from None
        size = self.renderer_options.get("image_size", 64)
        if isinstance(size, bool) or int(size) != size or size < 8:
            raise ValueError(
                f"data.renderer_options.image_size must be an integer >= 8, got {size!r}"
            )
        if not self.poses:
            raise ValueError("data.poses must be 'so3', 'ranges' or a labelled set's path, got ''")
        for name in ("yaw_range", "pitch_range", "roll_range"):
            r = getattr(self, name)
            if len(r) != 2 or not all(np.isfinite(r)) or r[0] > r[1]:
                raise ValueError(
                    f"data.{name} must be (low, high) degrees with low <= high, got {r}"
                )
        lo, hi = self.identities
        if not (0 <= lo and hi - lo >= 2):
            raise ValueError(
                f"data.identities must be a range [low, high) of at least 2 seeds, got {self.identities}"
            )
        for name in ("render_batch_size", "num_render_actors"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"data.{name} must be an integer >= 1, got {v!r}")
        for name in ("render_num_cpus", "render_num_gpus", "stage_num_cpus"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"data.{name} must be a number >= 0, got {v!r}")
        try:
            GeometricAugment.preset(self.augment)
        except ValueError as e:
            raise ValueError(f"data.augment: {e}") from None


def _rngs(seed: int, epoch: int, salt: int, ids: np.ndarray) -> list[np.random.Generator]:
    """One generator per row, keyed by (seed, epoch, salt, row id): independent of batching."""
    return [np.random.default_rng([seed, epoch, salt, int(i)]) for i in ids]


# --------------------------------------------------------------------------- stages


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
            _rngs(self.cfg.seed, self.epoch, _POSE, ids),
            _rngs(self.cfg.seed, self.epoch, _IDENTITY, ids),
            strict=True,
        ):
            R.append(self._pose(pose_rng))
            a, b = _two_distinct(id_rng, lo, hi)
            ida.append(a)
            idb.append(b)
        return {
            "pair_id": ids,
            "R": np.asarray(R, dtype=np.float64),
            "identity_a": np.asarray(ida, dtype=np.int64),
            "identity_b": np.asarray(idb, dtype=np.int64),
            "source": np.full(len(ids), f"render:{self.cfg.renderer}"),
        }


def _sample_synthetic(batch, cfg: PairDataConfig, epoch: int, pose_range, pool):
    return _SampleSynthetic(cfg, epoch, pose_range, pool)(batch)


def _two_distinct(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int]:
    a = int(rng.integers(lo, hi))
    b = int(rng.integers(lo, hi - 1))
    return a, b + (b >= a)


class RenderPairs:
    """Renderer actor: renders ``identity_a`` and ``identity_b`` (or only the positive, when the
    batch already holds an ``anchor`` image) at each row's pose.

    Args:
        factory: the renderer class or factory (``renderer_class(name)``), resolved on the driver
            so that a backend registered only in the driver process (a plugin, a test) reaches
            the actors too.
        renderer_options: keyword options for the factory.
    """

    def __init__(self, factory, renderer_options: dict[str, Any]):
        self.renderer = factory(**renderer_options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        R = np.asarray(batch["R"], dtype=np.float64).reshape(-1, 3, 3)
        out = dict(batch)
        if len(R) == 0:
            # Every anchor of the batch lay outside the renderer's range: nothing to render.
            size = self.renderer.image_size
            out["anchor"] = out["positive"] = np.zeros((0, size, size, 3), np.uint8)
            out["identity_a"] = np.zeros(0, dtype=np.int64)
            return out
        if "anchor" not in batch:
            out["anchor"] = self.renderer.render(batch["identity_a"], R)
        else:
            out["identity_a"] = np.full(len(R), -1, dtype=np.int64)
        out["positive"] = self.renderer.render(batch["identity_b"], R)
        return out


def _augment_batch(
    batch: dict[str, np.ndarray], preset: str, seed: int, epoch: int
) -> dict[str, np.ndarray]:
    aug = GeometricAugment.preset(preset)
    anchors, positives, labels = [], [], []
    ids = batch["pair_id"].astype(np.int64)
    R = np.asarray(batch["R"], dtype=np.float64).reshape(-1, 3, 3)
    for i, rng in enumerate(_rngs(seed, epoch, _AUGMENT, ids)):
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


def _decode_images(column) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(bytes(b))).convert("RGB")) for b in column])


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if images.shape[1] == size and images.shape[2] == size:
        return images
    return np.stack(
        [np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images]
    )


def _decode_labelled(
    batch, cfg: PairDataConfig, epoch: int, image_size: int, pose_range=None
) -> dict[str, np.ndarray]:
    """Labelled rows (shared schema: ``image`` bytes, ``R`` 9 floats) -> anchor + pose + identity.

    With ``pose_range`` (a limited-range renderer's), rows whose pose lies outside it are dropped
    here, before their image is decoded or a positive rendered (:func:`real_anchor_counts` counts
    them with the same test on the same stored values).
    """
    n = len(batch["R"])
    R = np.asarray(np.stack(list(batch["R"])), dtype=np.float64).reshape(n, 3, 3)
    if pose_range is not None:
        keep = pose_range.contains(R)
        batch = {k: np.asarray(v)[keep] for k, v in batch.items()}
        R = R[keep]
    ids = batch["pair_id"].astype(np.int64)
    lo, hi = cfg.identities
    return {
        "pair_id": ids,
        "anchor": _resize(_decode_images(batch["image"]), image_size)
        if len(ids)
        else np.zeros((0, image_size, image_size, 3), np.uint8),
        "R": R,
        "identity_b": np.asarray(
            [int(r.integers(lo, hi)) for r in _rngs(cfg.seed, epoch, _IDENTITY, ids)],
            dtype=np.int64,
        ),
        "source": np.asarray(batch["dataset"]).astype(str),
    }


def _decode_shards(batch) -> dict[str, np.ndarray]:
    n = len(batch["R"])
    return {
        "pair_id": batch["pair_id"].astype(np.int64),
        "anchor": _decode_images(batch["anchor"]),
        "positive": _decode_images(batch["positive"]),
        "R": np.asarray(np.stack(list(batch["R"])), dtype=np.float64).reshape(n, 3, 3),
        "identity_a": batch["identity_a"].astype(np.int64),
        "identity_b": batch["identity_b"].astype(np.int64),
        "source": np.asarray(batch["source"]).astype(str),
    }


# --------------------------------------------------------------------------- builder


def _pair_ids(n: int, blocks: int):
    """A dataset of ``id`` 0..n-1 in ``blocks`` blocks, made without read tasks.

    ``ray.data.range`` reads with one whole CPU per task and offers no way to lower it; next to a
    1-CPU trainer on a 2-core machine that starves the renderer actors and the run hangs.
    """
    import ray.data

    chunks = np.array_split(np.arange(n, dtype=np.int64), blocks)
    return ray.data.from_arrow([pa.table({"id": c}) for c in chunks if len(c)])


def _pose_pool(path: str) -> np.ndarray:
    from clerf_ray.data.schema import labelled_R, load_labelled

    R = labelled_R(load_labelled(path, columns=["R"]))
    if len(R) == 0:
        raise ValueError(f"data.poses={path!r} holds no labelled rows")
    return R


def _image_size(cfg: PairDataConfig) -> int:
    # Real anchors are resized to the renderer's output size so both images of a pair match.
    return int(cfg.renderer_options.get("image_size", 64))


def render_stage_options(cfg: PairDataConfig) -> dict[str, Any]:
    """The ``map_batches`` options of a renderer stage (pair or labelled renders): an actor pool
    of ``num_render_actors``, each asking for ``render_num_cpus``, ``render_num_gpus`` and the
    custom ``render_resources`` (which is how cluster.yaml's renderer nodes get the actors)."""
    import ray.data

    from clerf_ray.render import renderer_class

    return dict(
        compute=ray.data.ActorPoolStrategy(size=cfg.num_render_actors),
        fn_constructor_kwargs={
            "factory": renderer_class(cfg.renderer),
            "renderer_options": dict(cfg.renderer_options),
        },
        batch_size=cfg.render_batch_size,
        batch_format="numpy",
        num_cpus=cfg.render_num_cpus,
        num_gpus=cfg.render_num_gpus or None,
        resources=cfg.render_resources,
    )


def real_anchor_counts(cfg: PairDataConfig) -> dict[str, int]:
    """How many anchors of ``cfg.labelled_path`` the renderer can pair.

    Returns:
        ``anchors`` (rows of the set), ``out_of_range`` (rows whose pose lies outside the
        renderer's ``pose_range``; skipped by the pipeline) and ``pairs`` (the rest). A
        full-range renderer needs only the shards' footers; a limited one reads the ``R`` column.
    """
    from clerf_ray.data.schema import labelled_R, labelled_shard_rows, load_labelled
    from clerf_ray.data.shards import list_shards, resolve
    from clerf_ray.render import renderer_class

    pose_range = renderer_class(cfg.renderer).pose_range
    if pose_range.full:
        fs, root = resolve(cfg.labelled_path)
        shards = list_shards(fs, root)
        if not shards:
            raise FileNotFoundError(
                f"data.labelled_path: no part-*.parquet shards under {cfg.labelled_path!r}"
            )
        n = sum(labelled_shard_rows(fs, shards, cfg.labelled_path))
        return {"anchors": n, "out_of_range": 0, "pairs": n}
    R = labelled_R(load_labelled(cfg.labelled_path, columns=["R"]))
    inside = int(pose_range.contains(R).sum())
    return {"anchors": len(R), "out_of_range": len(R) - inside, "pairs": inside}


def _anchor_pose_range(cfg: PairDataConfig):
    """The renderer's pose range when anchors must be filtered by it (None for a full-range
    renderer); counts and logs the anchors it drops, and fails when none remains."""
    from clerf_ray.render import renderer_class

    pose_range = renderer_class(cfg.renderer).pose_range
    if pose_range.full:
        return None
    counts = real_anchor_counts(cfg)
    if counts["pairs"] == 0:
        raise ValueError(
            f"data.labelled_path: none of the {counts['anchors']} anchors of "
            f"{cfg.labelled_path!r} lies inside renderer {cfg.renderer!r}'s pose range "
            f"{pose_range}; nothing to render"
        )
    if counts["out_of_range"]:
        log.warning(
            "real_anchor: skipping %d of %d anchors of %s: their pose lies outside renderer "
            "%r's pose range %s",
            counts["out_of_range"],
            counts["anchors"],
            cfg.labelled_path,
            cfg.renderer,
            pose_range,
        )
    return pose_range


def _rendered(cfg: PairDataConfig, epoch: int):
    """Pairs before augmentation: ``pair_id``, ``anchor``, ``positive``, ``R`` (N, 3, 3) float64,
    ``source`` and, where known, ``identity_a`` / ``identity_b``."""
    from clerf_ray.render import renderer_class

    if cfg.source == "synthetic":
        # The pose range is a class attribute: GAN backends are only ever built inside actors.
        pose_range = renderer_class(cfg.renderer).pose_range
        pool = None if cfg.poses in ("so3", "ranges") else _pose_pool(cfg.poses)
        ds = _pair_ids(
            cfg.num_pairs, blocks=max(1, min(cfg.num_pairs // cfg.render_batch_size, 64))
        )
        ds = ds.map_batches(
            _sample_synthetic,
            # Tasks, not an actor: sampling holds no state worth keeping, and each actor costs a
            # fresh worker process (imports included) per pipeline, where tasks reuse pooled ones.
            fn_kwargs={"cfg": cfg, "epoch": epoch, "pose_range": pose_range, "pool": pool},
            batch_format="numpy",
            num_cpus=cfg.stage_num_cpus,
        )
        return ds.map_batches(RenderPairs, **render_stage_options(cfg))
    if cfg.source == "real_anchor":
        from clerf_ray.data.schema import read_labelled_numbered

        pose_range = _anchor_pose_range(cfg)
        ds = read_labelled_numbered(cfg.labelled_path, num_cpus=cfg.stage_num_cpus)
        ds = ds.map_batches(
            _decode_labelled,
            fn_kwargs={
                "cfg": cfg,
                "epoch": epoch,
                "image_size": _image_size(cfg),
                "pose_range": pose_range,
            },
            batch_format="numpy",
            num_cpus=cfg.stage_num_cpus,
        )
        return ds.map_batches(RenderPairs, **render_stage_options(cfg))
    return read_pair_shards(cfg.shards_path, num_cpus=cfg.stage_num_cpus).map_batches(
        _decode_shards, batch_format="numpy", num_cpus=cfg.stage_num_cpus
    )


def render_pool(cfg: PairDataConfig):
    """Render the pairs of ``cfg`` once (epoch 0 draws, before augmentation) and keep them in
    Ray's object store: a ``MaterializedDataset`` to pass to :func:`build_pair_dataset` as
    ``pool``. The in-memory counterpart of ``source="shards"``: render cost is paid once, and
    every epoch still draws fresh augmentations (new labels over all of SO(3))."""
    return _rendered(cfg, epoch=0).materialize()


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
        _augment_batch,
        fn_kwargs={"preset": cfg.augment, "seed": cfg.seed, "epoch": epoch},
        batch_format="numpy",
        num_cpus=cfg.stage_num_cpus,
    )


# --------------------------------------------------------------------------- render reuse

# Rendered pairs before augmentation, one row per pair, written by ``write_pair_shards``
# (``jobs/render.py``) in the shard layout of ``clerf_ray.data.shards``, read back with
# ``source="shards"``:
# * pair_id (int64): the pair's index; seeds its augmentation when read back.
# * anchor, positive (binary): PNG-encoded (H, W, 3) RGB images, before augmentation.
# * R (fixed_size_list<float32>[9]): the pair's label, row-major, dataset convention.
# * identity_a, identity_b (int64): identity seeds (-1 for a real anchor).
# * source (string): "render:<renderer>" or the labelled set's name.
PAIR_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.int64(), nullable=False),
        pa.field("anchor", pa.binary(), nullable=False),
        pa.field("positive", pa.binary(), nullable=False),
        pa.field("R", pa.list_(pa.float32(), 9), nullable=False),
        pa.field("identity_a", pa.int64(), nullable=False),
        pa.field("identity_b", pa.int64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ],
    metadata={"clerf_ray.schema": "pairs/1"},
)


def _encode_png(images: np.ndarray) -> list[bytes]:
    from PIL import Image

    out = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _to_shard_rows(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    n = len(batch["R"])
    missing = np.full(n, -1, dtype=np.int64)
    return {
        "pair_id": batch["pair_id"].astype(np.int64),
        "anchor": np.asarray(_encode_png(batch["anchor"]), dtype=object),
        "positive": np.asarray(_encode_png(batch["positive"]), dtype=object),
        "R": np.asarray(batch["R"], dtype=np.float32).reshape(n, 9),
        "identity_a": np.asarray(batch.get("identity_a", missing), dtype=np.int64),
        "identity_b": np.asarray(batch.get("identity_b", missing), dtype=np.int64),
        "source": np.asarray(batch["source"]).astype(str),
    }


def render_pair_dataset(cfg: PairDataConfig):
    """Rendered pairs before augmentation as Parquet-ready rows (PNG bytes, ``R`` as 9 floats).

    Written to shards by :func:`write_pair_shards` (``jobs/render.py``); read back with
    ``source="shards"``. Uses the draws of epoch 0.
    """
    if cfg.source == "shards":
        raise ValueError("data.source must be 'synthetic' or 'real_anchor' to render shards")
    return _rendered(cfg, epoch=0).map_batches(
        _to_shard_rows, batch_format="numpy", num_cpus=cfg.stage_num_cpus
    )


def pair_table(batch: dict[str, Any]):
    """A numpy batch of :func:`render_pair_dataset` as a ``pyarrow.Table`` of :data:`PAIR_SCHEMA`."""
    R = np.asarray(np.stack(list(batch["R"])), dtype=np.float32).reshape(-1, 9)
    columns = {
        "pair_id": pa.array(np.asarray(batch["pair_id"], dtype=np.int64)),
        "anchor": pa.array([bytes(b) for b in batch["anchor"]], pa.binary()),
        "positive": pa.array([bytes(b) for b in batch["positive"]], pa.binary()),
        "R": pa.FixedSizeListArray.from_arrays(pa.array(R.ravel(), pa.float32()), 9),
        "identity_a": pa.array(np.asarray(batch["identity_a"], dtype=np.int64)),
        "identity_b": pa.array(np.asarray(batch["identity_b"], dtype=np.int64)),
        "source": pa.array([str(x) for x in batch["source"]], pa.string()),
    }
    return pa.table(columns, schema=PAIR_SCHEMA)


class PairShardWriter(ShardWriter):
    """:class:`~clerf_ray.data.shards.ShardWriter` for pair tables (:data:`PAIR_SCHEMA`): the same
    staging, atomic publication and stale-shard cleanup, another schema. Accepts Tables and
    RecordBatches only."""

    def write(self, rows) -> None:
        if self._closed:
            raise RuntimeError("ShardWriter already committed or aborted")
        table = pa.Table.from_batches([rows]) if isinstance(rows, pa.RecordBatch) else rows
        missing = [c for c in PAIR_SCHEMA.names if c not in table.column_names]
        if missing:
            raise ValueError(f"pair table lacks columns {missing}; schema is {PAIR_SCHEMA.names}")
        self._tables.append(table.select(PAIR_SCHEMA.names).cast(PAIR_SCHEMA))
        self._buffered += table.num_rows
        if self._buffered >= self.shard_rows:
            self._flush(final=False)


def write_pair_shards(
    cfg: PairDataConfig,
    output: str,
    *,
    shard_rows: int = 1000,
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


def read_pair_shards(path: str, *, endpoint_url: str | None = None, **read_options):
    """Rendered pair shards (local folder or ``s3://``) as a lazy ``ray.data.Dataset`` of
    :data:`PAIR_SCHEMA` rows. The filesystem is resolved on the driver, as
    :func:`clerf_ray.data.schema.read_labelled` does."""
    import ray.data

    fs, shards = _pair_shards(path, endpoint_url=endpoint_url)
    return ray.data.read_parquet(shards, filesystem=fs, **read_options)


def _pair_shards(path: str, endpoint_url: str | None = None):
    """(filesystem, shard paths) of a pair-shard set, its first shard's schema checked."""
    from clerf_ray.data.shards import list_shards, resolve

    fs, root = resolve(path, endpoint_url=endpoint_url)
    shards = list_shards(fs, root)
    if not shards:
        raise FileNotFoundError(f"data.shards_path: no part-*.parquet shards under {path!r}")
    _check_pair_shard(fs, shards[0], path)
    return fs, shards


def pairs_per_epoch(cfg: PairDataConfig) -> int:
    """How many pairs one epoch of :func:`build_pair_dataset` yields: ``num_pairs`` for
    synthetic pairs, the anchors the renderer can pair for ``real_anchor``
    (:func:`real_anchor_counts`), the rows of the pair shards for ``shards`` (from their Parquet
    footers; no row is read). Training stages size their steps and schedules with it."""
    import pyarrow.parquet as pq

    if cfg.source == "real_anchor":
        return real_anchor_counts(cfg)["pairs"]
    if cfg.source != "shards":
        return cfg.num_pairs
    fs, shards = _pair_shards(cfg.shards_path)
    rows = 0
    for shard in shards:
        with fs.open_input_file(shard) as f:
            rows += pq.read_metadata(f).num_rows
    return rows


def _check_pair_shard(fs, shard: str, path: str) -> None:
    import pyarrow.parquet as pq

    with fs.open_input_file(shard) as f:
        schema = pq.read_metadata(f).schema.to_arrow_schema()
    missing = [c for c in PAIR_SCHEMA.names if c not in schema.names]
    if missing:
        what = (
            "a labelled set (prepare_data.py or render.py --labelled): use it with "
            "data.source=real_anchor, data.poses or head.labelled_path"
            if "image" in schema.names
            else f"columns {schema.names}"
        )
        raise ValueError(
            f"data.shards_path: {path!r} holds no pair shards ({shard.rsplit('/', 1)[-1]} lacks "
            f"{missing}); it is {what}"
        )


# --------------------------------------------------------------------------- labelled images


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
    images = _resize(_decode_images(batch["image"]), image_size)
    R = np.asarray(np.stack(list(batch["R"])), dtype=np.float64).reshape(n, 3, 3)
    out_images, out_R = [], []
    for i, rng in enumerate(_rngs(seed, epoch, _AUGMENT, batch["pair_id"].astype(np.int64))):
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
            "image_size": _image_size(cfg),
        },
        batch_format="numpy",
        num_cpus=cfg.stage_num_cpus,
    )
