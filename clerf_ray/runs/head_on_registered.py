"""Fit a pose head on a registered encoder version (``jobs/train_head.py``).

The encoder is loaded from the MLflow registry (``clerf-encoder@candidate``, ``clerf-encoder/3``),
frozen, and a new head is trained on labelled images with the head stage of
:mod:`clerf_ray.train.head`; the result is evaluated on renders of held-out identities over all of
SO(3) and registered as a new version of ``tracking.head_name`` (alias ``candidate``), tagged with
the encoder version it was trained on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from clerf_ray.config import Config


@dataclass
class HeadOnEncoderResult:
    """Where a :func:`train_head_on` run left its results.

    Attributes:
        cfg: the config the run used (model and image size taken from the registered encoder).
        encoder_ref: ``name/version`` of the encoder, resolved from the reference given.
        run_id, tracking_uri: the MLflow run and its store.
        metrics: held-out evaluation (``clerf_ray.evaluate.summarize``; errors in degrees).
        head_version: the registered version of ``tracking.head_name`` (None when registration
            is off).
        checkpoint: the head stage's last checkpoint.
        timings: seconds per phase.
    """

    cfg: Config
    encoder_ref: str
    run_id: str
    tracking_uri: str
    metrics: dict[str, Any]
    head_version: str | None
    checkpoint: str
    timings: dict[str, float] = field(default_factory=dict)


def config_for_encoder(cfg: Config, encoder) -> Config:
    """``cfg`` with ``model`` and ``data.image_size`` set from a loaded encoder's own config (the
    registered weights define the architecture; other values of ``cfg`` are kept)."""
    ec = encoder.config
    data = cfg.model_dump(mode="json")
    data["model"].update(
        backbone=ec.backbone,
        embedding_dim=ec.embedding_dim,
        projection_hidden=ec.projection_hidden,
        pretrained=None,
    )
    data["data"]["image_size"] = ec.image_size
    return Config.model_validate(data)


def train_head_on(encoder_ref: str, cfg: Config) -> HeadOnEncoderResult:
    """Train, evaluate and register a pose head on the registered encoder ``encoder_ref``.

    Args:
        encoder_ref: ``name@alias``, ``name/version`` or ``models:/...`` of a registered encoder.
        cfg: the run's config (``head``, ``data``, ``eval``, ``tracking`` sections are used;
            ``model`` and ``data.image_size`` come from the encoder).

    Raises:
        LookupError: ``encoder_ref`` is not in the registry (the message names it).
        TypeError: the registered model is not an encoder.
    """
    import mlflow

    from clerf_ray import registry
    from clerf_ray.models import Encoder
    from clerf_ray.ray_init import init_ray
    from clerf_ray.runs.common import evaluate_heldout, log, log_run_config, train_head_stage

    t_start = time.monotonic()
    uri = registry.setup(cfg.tracking.tracking_uri, cfg.tracking.experiment)
    mv = registry.model_version(encoder_ref)  # fails fast, before Ray starts
    resolved = f"{mv.name}/{mv.version}"
    encoder = registry.load_registered(resolved)
    if not isinstance(encoder, Encoder):
        raise TypeError(
            f"{encoder_ref!r} ({resolved}) is a {type(encoder).__name__}, not an encoder"
        )
    cfg = config_for_encoder(cfg, encoder)
    init_ray()
    name = cfg.run_name or time.strftime("clerf-head-%Y%m%d-%H%M%S")
    log(f"head {name} on encoder {resolved}: tracking at {uri}")
    timings: dict[str, float] = {}

    with mlflow.start_run(run_name=name) as run:
        log_run_config(cfg)
        mlflow.set_tags({"encoder_name": mv.name, "encoder_version": str(mv.version)})

        t0 = time.monotonic()
        model, stage = train_head_stage(cfg, encoder, name)
        timings["head_s"] = time.monotonic() - t0

        t0 = time.monotonic()
        metrics = evaluate_heldout(cfg, model)
        timings["eval_s"] = time.monotonic() - t0

        head_uri = registry.log_model(model, "pose_model")
        version = None
        if cfg.tracking.register_models:
            version = registry.register(
                cfg.tracking.head_name,
                head_uri,
                run.info.run_id,
                tags={
                    "encoder_name": mv.name,
                    "encoder_version": str(mv.version),
                    "geodesic_median": f"{metrics['geodesic_median']:.3f}",
                },
            )
        timings["total_s"] = time.monotonic() - t_start
        mlflow.log_metrics({f"time/{k}": v for k, v in timings.items()})
    return HeadOnEncoderResult(
        cfg=cfg,
        encoder_ref=resolved,
        run_id=run.info.run_id,
        tracking_uri=uri,
        metrics=metrics,
        head_version=version,
        checkpoint=stage.checkpoint_path,
        timings=timings,
    )


def summary_table(result: HeadOnEncoderResult) -> str:
    """The closing table of ``jobs/train_head.py``."""
    m, t, cfg = result.metrics, result.timings, result.cfg
    rows = [
        ("encoder", f"models:/{result.encoder_ref}"),
        ("held-out geodesic error, median", f"{m['geodesic_median']:.2f} deg"),
        ("held-out geodesic error, mean", f"{m['geodesic_mean']:.2f} deg"),
        (
            "within 10 / 20 / 30 deg",
            f"{m['within_10']:.1%} / {m['within_20']:.1%} / {m['within_30']:.1%}",
        ),
        ("evaluated on", f"{m['n']} renders of held-out identities, all of SO(3)"),
        (
            "time: head / eval / total",
            " / ".join(f"{t.get(k, 0):.0f}s" for k in ("head_s", "eval_s", "total_s")),
        ),
        ("MLflow run", f"{result.run_id} at {result.tracking_uri}"),
    ]
    if result.head_version:
        rows.append(
            (
                "head (encoder + head)",
                f"models:/{cfg.tracking.head_name}/{result.head_version} (alias candidate)",
            )
        )
    rows.append(("checkpoint", result.checkpoint))
    width = max(len(k) for k, _ in rows)
    lines = ["", "CLERF head summary", "-" * (width + 40)]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)
