"""Evaluation: predictions on labelled images, the error summary reported everywhere, the SA/FA
test variants, the AFLW2000 protocol filter, and the ``clerf evaluate`` report.

Metrics follow the peers (DESIGN.md, "Metrics"): Euler MAE in degrees (wrapped; on real sets the
prediction's Euler angles are compared with the dataset's own ``euler_deg``), MAEV, geodesic error
(mean, median, 90th percentile) and the share of samples within 10/20/30 deg of geodesic error.

    report = run_evaluation(["clerf-head@candidate", "clerf-baseline@candidate"], "synthetic",
                            out="eval_out")
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clerf_ray import geometry

VARIANTS = ("standard", "sa", "fa")
# Salt that keeps the variant draws apart from every other random stream of a seed.
_VARIANT_SALT = 17
AFLW_LIMIT_DEG = 99.0
# Held-out identities of the quick evaluation (``clerf_ray.config.EvalSection.identities``).
DEFAULT_IDENTITIES = (2_000_000, 2_100_000)
DEFAULT_RENDERER = "procedural"


# --------------------------------------------------------------------------- metrics


def summarize(
    R_pred: np.ndarray, R_true: np.ndarray, euler_true: np.ndarray | None = None
) -> dict[str, float]:
    """Error summary over a set, all angles in degrees.

    Args:
        R_pred: (N, 3, 3) predicted labels (dataset convention, ``clerf_ray.geometry``).
        R_true: (N, 3, 3) true labels.
        euler_true: optional (N, 3) true Euler angles in radians, ordered (pitch, yaw, roll), used
            for the Euler MAE instead of the angles of ``R_true`` (real sets: the dataset's own
            angles, as the peers compare).

    Returns:
        ``geodesic_mean``, ``geodesic_median``, ``geodesic_p90``, ``within_10/20/30`` (shares in
        [0, 1] of samples with geodesic error <= 10/20/30 deg), ``maev``, ``mae_pitch``,
        ``mae_yaw``, ``mae_roll``, ``mae_mean`` and ``n``.
    """
    R_pred = np.asarray(R_pred, dtype=np.float64)
    R_true = np.asarray(R_true, dtype=np.float64)
    if len(R_true) == 0:
        raise ValueError("summarize: no samples to evaluate")
    err = geometry.geodesic_error(R_pred, R_true)
    out = {
        "geodesic_mean": float(err.mean()),
        "geodesic_median": float(np.median(err)),
        "geodesic_p90": float(np.percentile(err, 90)),
        "within_10": float((err <= 10).mean()),
        "within_20": float((err <= 20).mean()),
        "within_30": float((err <= 30).mean()),
        "maev": float(geometry.maev(R_pred, R_true).mean()),
        "n": int(len(err)),
    }
    if euler_true is None:
        mae = geometry.mae_euler(R_pred, R_true)
    else:
        # Euler triples as (N, 1, 3): an (N, 3) array with N == 3 would read as one matrix.
        pred = np.stack(geometry.matrix_to_euler(R_pred), -1)[:, None, :]
        true = np.asarray(euler_true, dtype=np.float64).reshape(-1, 1, 3)
        mae = geometry.mae_euler(pred, true)
    out.update({f"mae_{k}": v for k, v in mae.items()})
    return out


@torch.no_grad()
def predict(
    model, images: np.ndarray, batch_size: int = 256, device: str | None = None
) -> np.ndarray:
    """(N, H, W, 3) uint8 images -> (N, 3, 3) float64 labels with a ``PoseModel``."""
    device = device or next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = model.preprocess(images[i : i + batch_size]).to(device)
        out.append(model(x).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 3, 3))


def heldout_renders(pair_cfg, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Labelled renders of the identities in ``pair_cfg.identities`` over all of SO(3) (FA
    augmentation on top of the renderer's own range): (images, R)."""
    from clerf_ray.data.pairs import build_labelled_image_dataset

    cfg = replace(pair_cfg, num_pairs=max(1, (num_samples + 1) // 2), source="synthetic")
    rows = build_labelled_image_dataset(cfg).take_all()
    # Ray returns rows in the order its tasks finish; a fixed order keeps the set (for an odd
    # num_samples) and the per-index draws of the SA/FA variants the same from run to run.
    rows.sort(key=lambda r: (np.asarray(r["R"]).tobytes(), np.asarray(r["image"]).tobytes()))
    rows = rows[:num_samples]
    images = np.stack([r["image"] for r in rows])
    R = np.stack([np.asarray(r["R"], dtype=np.float64).reshape(3, 3) for r in rows])
    return images, R


def evaluate_model(model, images: np.ndarray, R: np.ndarray) -> dict[str, Any]:
    return summarize(predict(model, images), R)


# --------------------------------------------------------------------------- evaluation sets


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


def _resize_all(images: list[np.ndarray], size: int) -> np.ndarray:
    from PIL import Image

    out = []
    for im in images:
        if im.shape[0] != size or im.shape[1] != size:
            im = np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
        out.append(im)
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


def load_parquet_set(path: str, image_size: int, num_samples: int | None = None) -> EvalSet:
    """A labelled Parquet set (``clerf_ray.data.schema``, local or s3://) as an :class:`EvalSet`,
    crops resized to ``image_size`` pixels; the first ``num_samples`` rows when given."""
    from clerf_ray.data.schema import decode_image, labelled_R, load_labelled

    table = load_labelled(path)
    if num_samples is not None:
        table = table.slice(0, num_samples)
    if table.num_rows == 0:
        raise ValueError(f"--data {path!r} holds no rows")
    images = _resize_all([decode_image(b) for b in table.column("image").to_pylist()], image_size)
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
    from clerf_ray.data.pairs import PairDataConfig

    cfg = PairDataConfig(
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


# --------------------------------------------------------------------------- report

TABLE_COLUMNS = (
    ("model", "model", "{}"),
    ("variant", "variant", "{}"),
    ("n", "n", "{}"),
    ("mae_pitch", "MAE pitch", "{:.2f}"),
    ("mae_yaw", "MAE yaw", "{:.2f}"),
    ("mae_roll", "MAE roll", "{:.2f}"),
    ("mae_mean", "MAE", "{:.2f}"),
    ("maev", "MAEV", "{:.2f}"),
    ("geodesic_mean", "geodesic mean", "{:.2f}"),
    ("geodesic_median", "geodesic median", "{:.2f}"),
    ("geodesic_p90", "geodesic p90", "{:.2f}"),
    ("within_10", "<=10 deg", "{:.1%}"),
    ("within_20", "<=20 deg", "{:.1%}"),
    ("within_30", "<=30 deg", "{:.1%}"),
)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows of :func:`run_evaluation` as a markdown table (angles in degrees)."""
    head = "| " + " | ".join(t for _, t, _ in TABLE_COLUMNS) + " |"
    sep = "|" + "|".join(
        "---" if k in ("model", "variant") else "---:" for k, _, _ in TABLE_COLUMNS
    )
    lines = [head, sep + "|"]
    for r in rows:
        lines.append("| " + " | ".join(f.format(r[k]) for k, _, f in TABLE_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    keys = list(rows[0]) if rows else [k for k, _, _ in TABLE_COLUMNS]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def slug(text: str) -> str:
    """A file-name-safe form of a model reference (``clerf-head@candidate`` ->
    ``clerf-head_candidate``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


@dataclass
class EvaluationReport:
    """What :func:`run_evaluation` produced."""

    rows: list[dict[str, Any]]
    table: str
    out: Path
    files: list[Path]
    run_ids: dict[str, str]
    render: RenderSettings | None = None


def _log(msg: str) -> None:
    print(f"[evaluate] {msg}", file=sys.stderr, flush=True)


def turn_space(model) -> str:
    """What the turn plot shows for a ``PoseModel``: the contrastive embedding, except for a
    model trained end to end whose head reads the pooled features (the supervised baseline),
    where the projection to the embedding never trained and the features are what it learnt."""
    if not model.freeze_encoder and model.head.config.input == "features":
        return "features"
    return "embedding"


def run_evaluation(
    models: list[str],
    data: str,
    *,
    variants: list[str] | tuple[str, ...] = VARIANTS,
    aflw_protocol: bool = False,
    out: str | Path = "eval",
    num_samples: int | None = None,
    seed: int = 0,
    identities: tuple[int, int] | None = None,
    renderer: str | None = None,
    renderer_options: dict[str, Any] | None = None,
    image_size: int | None = None,
    tracking_uri: str | None = None,
    experiment: str = "clerf-eval",
    plots: bool = True,
    worst_k: int = 16,
    turn: str = "yaw",
    log_mlflow: bool = True,
) -> EvaluationReport:
    """Evaluate registered models on one set and its variants; write the table, plots, MLflow.

    Args:
        models: registry references (``name@alias``, ``name/version``); loaded with
            ``registry.load_registered`` from the store at ``tracking_uri``.
        data: a labelled Parquet set (local folder or s3:// prefix), or ``"synthetic"`` for
            renders of held-out identities (``identities``) over the renderer's whole range.
        identities, renderer, renderer_options, image_size: how ``"synthetic"`` is rendered
            (the turn plot uses the renderer and the first identity too); each None takes what
            the first model's training run logged, else the models' input size (image_size),
            else the defaults (:func:`resolve_render_settings`; the report says which).
        variants: any of ``"standard"``, ``"sa"``, ``"fa"``.
        aflw_protocol: keep only samples with all |Euler angles| <= 99 deg (the dataset's own
            angles), before the variants are made.
        out: folder for ``results.md``, ``results.csv`` and the plots.
        num_samples: at most this many samples (synthetic default: 512).
        seed: seed of the synthetic poses and of the variants' draws.
        tracking_uri, experiment: MLflow store and the experiment that gets one run per model
            (tag ``model_ref``), holding ``{variant}/{metric}`` metrics and the report files.
        plots: draw the figures (``clerf_ray.plots``).
        worst_k: worst cases shown per model and variant.
        turn: ``"yaw"`` or ``"roll"``, the 360 deg turn whose embedding is plotted.

    Returns:
        An :class:`EvaluationReport`.
    """
    from clerf_ray import registry

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    if not models:
        raise ValueError("--model: give at least one registered model")
    registry.setup(tracking_uri, experiment if log_mlflow else None)
    # The first GPU when there is one: evaluation is one process, not a Ray job.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = {}
    for ref in models:
        _log(f"loading {ref} on {device}")
        loaded[ref] = registry.load_registered(ref).to(device)
    sizes = [m.encoder.image_size for m in loaded.values()]
    render = resolve_render_settings(
        models,
        sizes,
        recorded={ref: recorded_render_settings(ref) for ref in models},
        renderer=renderer,
        renderer_options=renderer_options,
        image_size=image_size,
        identities=identities,
    )
    if data == "synthetic":
        _log(f"rendering {num_samples or 512} samples: {render.describe()}")
        base = synthetic_set(
            num_samples or 512,
            render.image_size,
            seed=seed,
            identities=render.identities,
            renderer=render.renderer,
            renderer_options=render.renderer_options,
        )
    else:
        base = load_parquet_set(data, max(sizes), num_samples)
    if aflw_protocol:
        keep = aflw_protocol_mask(base.reference_euler_deg())
        _log(f"AFLW2000 protocol: {int(keep.sum())} of {len(base)} samples have |angles| <= 99")
        base = base.subset(keep)
        if len(base) == 0:
            raise ValueError(f"--aflw-protocol left no samples of {data!r}")
    _log(f"evaluating {len(models)} model(s) on {len(base)} samples of {data!r}: {list(variants)}")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    files: list[Path] = []
    per_model_files: dict[str, list[Path]] = {ref: [] for ref in models}
    for variant in variants:
        vset = make_variant(base, variant, seed=seed)
        for ref, model in loaded.items():
            R_pred = predict(model, vset.images)
            metrics = summarize(R_pred, vset.R, vset.euler)
            rows.append({"model": ref, "variant": variant, **metrics})
            if plots:
                from clerf_ray import plots as P

                err = geometry.geodesic_error(R_pred, vset.R)
                stem = out / f"{slug(ref)}_{variant}"
                made = [
                    P.plot_error_by_angle(
                        vset.R, err, f"{stem}_error_by_angle.png", title=f"{ref} on {vset.name}"
                    ),
                    P.plot_worst_cases(
                        vset.images,
                        R_pred,
                        vset.R,
                        err,
                        f"{stem}_worst.png",
                        k=worst_k,
                        title=f"{ref}: worst cases on {vset.name}",
                        files=vset.files,
                    ),
                ]
                per_model_files[ref] += made
    if plots:
        from clerf_ray import plots as P

        for ref, model in loaded.items():
            path = out / f"{slug(ref)}_turn_embedding.png"
            space = turn_space(model)
            P.plot_turn_embedding(
                model.encoder,
                path,
                kind=turn,
                identity=render.identities[0],
                renderer=render.renderer,
                renderer_options=render.renderer_options,
                title=f"{ref}: {space} of a 360 deg {turn} turn (PCA)",
                space=space,
            )
            per_model_files[ref].append(path)
    table = markdown_table(rows)
    (out / "results.md").write_text(
        f"Evaluation on `{data}`"
        + (" (AFLW2000 protocol, |angles| <= 99 deg)" if aflw_protocol else "")
        + f", {len(base)} samples; angles in degrees.\n\n"
        + (f"Renders: {render.describe()}.\n\n" if data == "synthetic" else "")
        + table
    )
    write_csv(rows, out / "results.csv")
    files = [out / "results.md", out / "results.csv"] + [
        p for v in per_model_files.values() for p in v
    ]

    run_ids: dict[str, str] = {}
    if log_mlflow:
        run_ids = _log_runs(
            rows,
            models,
            data,
            aflw_protocol,
            out,
            per_model_files,
            render if data == "synthetic" else None,
        )
    return EvaluationReport(rows, table, out, files, run_ids, render)


def _log_runs(
    rows, models, data, aflw_protocol, out: Path, per_model_files, render=None
) -> dict[str, str]:
    import mlflow

    from clerf_ray import registry

    run_ids = {}
    for ref in models:
        mv = registry.model_version(ref)
        with mlflow.start_run(run_name=f"eval {ref}") as run:
            mlflow.set_tags(
                {
                    "model_ref": ref,
                    "model_name": mv.name,
                    "model_version": str(mv.version),
                    "eval_data": data,
                    "aflw_protocol": str(bool(aflw_protocol)),
                }
            )
            if render is not None:
                mlflow.set_tags(
                    {
                        "eval_renderer": render.renderer,
                        "eval_renderer_options": json.dumps(render.renderer_options),
                        "eval_image_size": str(render.image_size),
                        "eval_identities": json.dumps(list(render.identities)),
                    }
                )
            for r in rows:
                if r["model"] != ref:
                    continue
                mlflow.log_metrics(
                    {
                        f"{r['variant']}/{k}": float(v)
                        for k, v in r.items()
                        if k not in ("model", "variant") and math.isfinite(float(v))
                    }
                )
            mlflow.log_artifact(str(out / "results.md"))
            mlflow.log_artifact(str(out / "results.csv"))
            for p in per_model_files.get(ref, []):
                mlflow.log_artifact(str(p), artifact_path="plots")
            run_ids[ref] = run.info.run_id
    return run_ids
