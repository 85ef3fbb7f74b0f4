"""The ``clerf evaluate`` report: registered models on a test set and its variants, a markdown
table, a CSV, plots and MLflow runs.

    report = run_evaluation(["clerf-head@candidate", "clerf-baseline@candidate"], "synthetic",
                            out="eval_out")
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clerf_ray import geometry
from clerf_ray.evaluate.metrics import predict, summarize
from clerf_ray.evaluate.test_sets import (
    VARIANTS,
    RenderSettings,
    aflw_protocol_mask,
    load_parquet_set,
    make_variant,
    recorded_render_settings,
    resolve_render_settings,
    synthetic_set,
)

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
    model trained end to end whose head reads the backbone's features (the supervised
    baseline), where the projection to the embedding never trained and the features are what
    it learnt."""
    if not model.freeze_encoder and model.head.config.input != "embedding":
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
    views: int | None = None,
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
        views: test-time views every model predicts with (``PoseModel.views``: 1, 2, 8 or 16)
            instead of the ones it was registered with; None keeps each model's own.

    Returns:
        An :class:`EvaluationReport`.
    """
    from clerf_ray import registry

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    if not models:
        raise ValueError("--model: give at least one registered model")
    from clerf_ray.models.pose_model import VIEWS

    if views is not None and views not in VIEWS:
        raise ValueError(f"--views: {views!r} is not one of {list(VIEWS)}")
    registry.setup(tracking_uri, experiment if log_mlflow else None)
    # The first GPU when there is one: evaluation is one process, not a Ray job.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = {}
    for ref in models:
        _log(f"loading {ref} on {device}")
        loaded[ref] = registry.load_registered(ref).to(device)
        if views is not None:
            loaded[ref].views = int(views)
        _log(f"{ref}: {loaded[ref].views} test-time view(s)")
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
        + f", {len(base)} samples; angles in degrees; test-time views: "
        + ", ".join(f"{ref} {m.views}" for ref, m in loaded.items())
        + ".\n\n"
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
