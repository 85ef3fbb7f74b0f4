"""The render stage of the pair stream: renderer actors (``map_batches`` with a callable class and
an ``ActorPoolStrategy``, GPUs and custom resources per actor), and real anchors decoded and
filtered by the renderer's pose range before their positives are rendered."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import numpy as np

from clerf_ray.config import PairDataConfig
from clerf_ray.data.sampling import IDENTITY, rngs
from clerf_ray.images import decode_images, resize_all

log = logging.getLogger(__name__)


class RendererFactory:
    """A renderer class as the render actors receive it: by name when it can be imported by name
    (the built-in backends, a plugin's module), by value otherwise (a class defined in a function
    or in a script's ``__main__``, which cloudpickle sends whole). By name, the processes that
    only plan or route the stream (Ray Data's split coordinator, Ray Train's dataset manager)
    unpickle it without importing the backend and torch with it (2-4 s of CPU each); the actor
    imports it when it builds one. Written here because cloudpickle, which sends an importable
    class by reference too, imports that reference as soon as it unpickles it.
    """

    def __init__(self, cls):
        module, name = cls.__module__, cls.__qualname__
        # A script's own classes live in its __main__, which is another module in the actors.
        named = (
            module != "__main__"
            and "<locals>" not in name
            and getattr(sys.modules.get(module), name, None) is cls
        )
        self.ref = (module, name) if named else None
        self.cls = None if named else cls

    def resolve(self):
        if self.cls is None:
            module, name = self.ref
            self.cls = getattr(importlib.import_module(module), name)
        return self.cls

    def __call__(self, **options):
        return self.resolve()(**options)

    def __getstate__(self):
        return {"ref": self.ref, "cls": None if self.ref else self.cls}


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


def image_size_of(cfg: PairDataConfig) -> int:
    # Real anchors are resized to the renderer's output size so both images of a pair match.
    return int(cfg.renderer_options["image_size"])


def render_stage_options(cfg: PairDataConfig, max_actors: int | None = None) -> dict[str, Any]:
    """The ``map_batches`` options of a renderer stage (pair or labelled renders): an actor pool
    of ``num_render_actors``, each asking for ``render_num_cpus``, ``render_num_gpus`` and the
    custom ``render_resources`` (which is how cluster.yaml's renderer nodes get the actors).

    With ``max_actors`` above ``num_render_actors`` the pool may grow to that many actors where
    the cluster has the resources for them (Ray Data's actor autoscaling): for a stage that runs
    alone, such as the render pool before pretraining, when nothing else needs the CPUs."""
    import ray.data

    from clerf_ray.render import renderer_class

    n = cfg.num_render_actors
    if max_actors is not None and max_actors > n:
        compute = ray.data.ActorPoolStrategy(min_size=n, max_size=max_actors)
    else:
        compute = ray.data.ActorPoolStrategy(size=n)
    return dict(
        compute=compute,
        fn_constructor_kwargs={
            "factory": RendererFactory(renderer_class(cfg.renderer)),
            "renderer_options": dict(cfg.renderer_options),
        },
        batch_size=cfg.render_batch_size,
        batch_format="numpy",
        num_cpus=cfg.render_num_cpus,
        num_gpus=cfg.render_num_gpus or None,
        resources=cfg.render_resources,
    )


def decode_labelled(
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
        "anchor": resize_all(decode_images(batch["image"]), image_size)
        if len(ids)
        else np.zeros((0, image_size, image_size, 3), np.uint8),
        "R": R,
        "identity_b": np.asarray(
            [int(r.integers(lo, hi)) for r in rngs(cfg.seed, epoch, IDENTITY, ids)],
            dtype=np.int64,
        ),
        "source": np.asarray(batch["dataset"]).astype(str),
    }


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


def anchor_pose_range(cfg: PairDataConfig):
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
