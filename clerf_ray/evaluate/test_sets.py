"""Test sets: labelled Parquet sets, renders of held-out identities, the SA / FA variants (labels
transformed exactly) and the AFLW2000 protocol filter."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from clerf_ray import geometry
from clerf_ray.config import Config
from clerf_ray.images import resize_all

VARIANTS = ("standard", "sa", "fa")
# Salt that keeps the variant draws apart from every other random stream of a seed.
_VARIANT_SALT = 17
AFLW_LIMIT_DEG = 99.0
# The config's held-out identities and renderer (``eval.identities``, ``data.renderer``): the
# defaults of the synthetic test set when neither the command line nor a training run says.
DEFAULT_IDENTITIES = Config().eval.identities
DEFAULT_RENDERER = Config().data.renderer


def heldout_renders(pair_cfg, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Labelled renders of the identities in ``pair_cfg.identities`` over all of SO(3) (FA
    augmentation on top of the renderer's own range): (images, R)."""
    from clerf_ray.data.labelled_images import build_labelled_image_dataset

    cfg = replace(pair_cfg, num_pairs=max(1, (num_samples + 1) // 2), source="synthetic")
    rows = build_labelled_image_dataset(cfg).take_all()
    # Ray returns rows in the order its tasks finish; a fixed order keeps the set (for an odd
    # num_samples) and the per-index draws of the SA/FA variants the same from run to run.
    rows.sort(key=lambda r: (np.asarray(r["R"]).tobytes(), np.asarray(r["image"]).tobytes()))
    rows = rows[:num_samples]
    images = np.stack([r["image"] for r in rows])
    R = np.stack([np.asarray(r["R"], dtype=np.float64).reshape(3, 3) for r in rows])
    return images, R


@dataclass
class EvalSet:
    """A labelled evaluation set held in memory.

    Attributes:
        name: where it came from (a path or ``"synthetic"``), plus the variant.
        images: (N, S, S, 3) uint8 crops, all resized to one side S.
        R: (N, 3, 3) float64 labels (dataset convention).
        euler: (N, 3) the dataset's own (pitch, yaw, roll) in radians, or None when the angles
            of ``R`` are the reference (renders, and every transformed variant).
        files: N identifiers.
    """

    name: str
    images: np.ndarray
    R: np.ndarray
    euler: np.ndarray | None = None
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.R)

    def subset(self, mask: np.ndarray) -> EvalSet:
        idx = np.flatnonzero(mask)
        return EvalSet(
            self.name,
            self.images[idx],
            self.R[idx],
            None if self.euler is None else self.euler[idx],
            [self.files[i] for i in idx],
        )

    def reference_euler_deg(self) -> np.ndarray:
        """(N, 3) (pitch, yaw, roll) in degrees: the dataset's own, else those of ``R``."""
        if self.euler is not None:
            return np.degrees(self.euler)
        return np.degrees(np.stack(geometry.matrix_to_euler(self.R), -1))


def load_parquet_set(path: str, image_size: int, num_samples: int | None = None) -> EvalSet:
    """A labelled Parquet set (``clerf_ray.data.schema``, local or s3://) as an :class:`EvalSet`,
    crops resized to ``image_size`` pixels; the first ``num_samples`` rows when given."""
    from clerf_ray.data.schema import decode_image, labelled_R, load_labelled

    table = load_labelled(path)
    if num_samples is not None:
        table = table.slice(0, num_samples)
    if table.num_rows == 0:
        raise ValueError(f"--data {path!r} holds no rows")
    images = resize_all([decode_image(b) for b in table.column("image").to_pylist()], image_size)
    euler = np.radians(np.asarray(table.column("euler_deg").to_pylist(), dtype=np.float64))
    return EvalSet(
        name=path,
        images=images,
        R=labelled_R(table),
        euler=euler,
        files=[str(f) for f in table.column("file").to_pylist()],
    )


def synthetic_set(
    num_samples: int,
    image_size: int,
    seed: int = 0,
    identities: tuple[int, int] = DEFAULT_IDENTITIES,
    renderer: str = DEFAULT_RENDERER,
    renderer_options: dict[str, Any] | None = None,
) -> EvalSet:
    """Renders of held-out identities at poses uniform over the renderer's range (all of SO(3)
    for the procedural renderer), without augmentation: the full-range benchmark. Uses Ray."""
    from clerf_ray.config import PairDataConfig

    cfg = PairDataConfig.from_defaults(
        source="synthetic",
        renderer=renderer,
        renderer_options={**(renderer_options or {}), "image_size": image_size},
        num_pairs=max(1, (num_samples + 1) // 2),
        identities=identities,
        augment="none",
        seed=seed,
        render_batch_size=min(64, max(1, num_samples)),
    )
    images, R = heldout_renders(cfg, num_samples)
    return EvalSet("synthetic", images, R, None, [f"render-{i:05d}" for i in range(len(R))])


@dataclass
class RenderSettings:
    """How ``--data synthetic`` is rendered, and the turn of the embedding plot.

    Attributes:
        renderer: registered renderer name.
        renderer_options: its keyword options (``image_size`` excluded: see ``image_size``).
        image_size: side of the renders in pixels.
        identities: half-open range [low, high) of identity seeds drawn.
        origin: for each of the fields above, where its value came from: ``"command line"``,
            ``"training run of REF"`` (the parameters the model's training run logged: its
            ``data.renderer``, ``data.renderer_options`` and, for the identities, the held-out
            ``eval.identities``), ``"model config"`` (the input size of the models) or
            ``"default"``.
    """

    renderer: str = DEFAULT_RENDERER
    renderer_options: dict[str, Any] = field(default_factory=dict)
    image_size: int = 64
    identities: tuple[int, int] = DEFAULT_IDENTITIES
    origin: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the report, e.g. ``renderer procedural, 64 px, identities [2000000,
        2100000)`` followed by where each came from."""
        opts = f" {self.renderer_options}" if self.renderer_options else ""
        lo, hi = self.identities
        origins: dict[str, list[str]] = {}
        for k in ("renderer", "renderer_options", "image_size", "identities"):
            origins.setdefault(self.origin.get(k, "default"), []).append(k)
        whence = "; ".join(f"{', '.join(ks)} from {o}" for o, ks in origins.items())
        return (
            f"renderer {self.renderer}{opts}, {self.image_size} px, identities [{lo}, {hi}) "
            f"({whence})"
        )


def recorded_render_settings(ref: str) -> dict[str, Any]:
    """What the training run of the registered model ``ref`` logged about its renders:
    ``renderer`` (``data.renderer``), ``renderer_options`` (``data.renderer_options``) and
    ``identities`` (``eval.identities``, the held-out identities it was evaluated on). Keys that
    the run did not log are absent; a model without a readable run gives ``{}``."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from clerf_ray import registry

    mv = registry.model_version(ref)
    if not mv.run_id:
        return {}
    try:
        params = MlflowClient().get_run(mv.run_id).data.params
    except MlflowException:
        return {}
    out: dict[str, Any] = {}
    try:
        if "data.renderer" in params:
            out["renderer"] = str(params["data.renderer"])
        if "data.renderer_options" in params:
            opts = json.loads(params["data.renderer_options"])
            if isinstance(opts, dict):
                out["renderer_options"] = opts
        if "eval.identities" in params:
            lo, hi = json.loads(params["eval.identities"])
            out["identities"] = (int(lo), int(hi))
    except (ValueError, TypeError):
        pass  # a run logged by something else: keep what was readable
    return out


def resolve_render_settings(
    refs: list[str],
    model_sizes: list[int],
    *,
    recorded: dict[str, dict[str, Any]] | None = None,
    renderer: str | None = None,
    renderer_options: dict[str, Any] | None = None,
    image_size: int | None = None,
    identities: tuple[int, int] | None = None,
) -> RenderSettings:
    """The :class:`RenderSettings` of an evaluation: each value from the command line when given,
    else from the training run of the first model that recorded it (``recorded``: ref ->
    :func:`recorded_render_settings`), else the largest input size of the models
    (``model_sizes``, for ``image_size``), else the defaults. Recorded renderer options are used
    only with the renderer they were recorded for.

    Raises:
        ValueError: an unknown renderer, or identities that are not a range of >= 2 seeds.
    """
    from clerf_ray.render import renderer_class

    recorded = recorded or {}
    origin: dict[str, str] = {}

    def pick(key, given, default):
        if given is not None:
            origin[key] = "command line"
            return given
        for ref in refs:
            if key in recorded.get(ref, {}):
                origin[key] = f"training run of {ref}"
                return recorded[ref][key]
        origin[key] = "default"
        return default

    name = pick("renderer", renderer, DEFAULT_RENDERER)
    try:
        renderer_class(name)
    except ValueError as e:
        raise ValueError(f"--renderer (from {origin['renderer']}): {e}") from None
    if renderer_options is not None:
        opts, origin["renderer_options"] = dict(renderer_options), "command line"
    else:
        opts, origin["renderer_options"] = {}, "default"
        for ref in refs:
            rec = recorded.get(ref, {})
            if "renderer_options" in rec and rec.get("renderer", DEFAULT_RENDERER) == name:
                opts = dict(rec["renderer_options"])
                origin["renderer_options"] = f"training run of {ref}"
                break
    opts.pop("image_size", None)  # the render size is image_size below
    if image_size is not None:
        size, origin["image_size"] = int(image_size), "command line"
    else:
        size, origin["image_size"] = int(max(model_sizes, default=64)), "model config"
    if size < 8:
        raise ValueError(f"--image-size must be >= 8 pixels, got {size}")
    lo, hi = (int(v) for v in pick("identities", identities, DEFAULT_IDENTITIES))
    if lo < 0 or hi - lo < 2:
        raise ValueError(
            f"--identities must be LOW HIGH with 0 <= LOW and HIGH - LOW >= 2, got {lo} {hi}"
        )
    return RenderSettings(name, opts, size, (lo, hi), origin)


def aflw_protocol_mask(euler_deg: np.ndarray, limit_deg: float = AFLW_LIMIT_DEG) -> np.ndarray:
    """AFLW2000 protocol: keep samples whose three Euler angles (degrees, (N, 3)) all lie within
    +-``limit_deg`` (99 deg: 1969 of the 2000 images)."""
    return np.all(np.abs(np.asarray(euler_deg)) <= limit_deg, axis=-1)


def make_variant(base: EvalSet, preset: str, seed: int = 0) -> EvalSet:
    """The SA or FA variant of a set: each image gets its own seeded draw of the
    ``GeometricAugment`` preset (``"sa"``: in-plane rotation within +-15 deg; ``"fa"``: any
    rotation and flips) and its label the exact matching transform.

    The draw of sample i depends only on ``(seed, i)``, so a variant is reproducible and the
    same for every model compared. The result's ``euler`` is None: the transformed labels'
    own angles are the reference.
    """
    from clerf_ray.augment import GeometricAugment

    if preset == "standard":
        return base
    aug = GeometricAugment.preset(preset)
    images, labels = [], []
    for i in range(len(base)):
        rng = np.random.default_rng([seed, _VARIANT_SALT, i])
        (im,), r = aug([base.images[i]], base.R[i], rng)
        images.append(im)
        labels.append(r)
    return EvalSet(
        f"{base.name}:{preset}",
        np.stack(images) if images else base.images[:0],
        np.asarray(labels, dtype=np.float64).reshape(-1, 3, 3),
        None,
        list(base.files),
    )
