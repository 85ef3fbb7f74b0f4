"""The supervised baseline in the style of 6DRepNet: the same backbone and pose head as CLERF,
trained end to end by direct 6D regression with the geodesic loss, on Ray Train.

It answers the question the paper raises: does contrastive pretraining help on SA, FA and
full-range poses, compared with plain supervised training on the same images? So the budget is
CLERF's pretraining budget, measured in images and optimiser steps:

* Images: the pairs pretraining reads, through pretraining's own input pipeline
  (``clerf_ray.data.pairs.pretrain_inputs`` with the same seed: the same renders, one Ray Data
  stream per run from the pool, and on the worker the same augmentation draws), both images of
  each pair as two labelled samples (anchor and positive show the same pose, so both carry the
  pair's label): ``2 * num_pairs`` images per epoch. With ``data.pool`` (the default) the pairs
  are rendered once and every epoch reuses them with a fresh augmentation draw, exactly as
  pretraining does; without it every epoch renders new pairs. A labelled Parquet set
  (``labelled_path``) replaces the renders, read the same way
  (``clerf_ray.data.labelled_images.labelled_inputs``: one stream per run, augmented on the
  worker).
* Steps: ``pretrain.batch_size`` counts *pairs* (CLERF's unit); a CLERF step with 64 pairs
  embeds 128 images. The baseline's global batch is therefore ``2 * pretrain.batch_size``
  *images*, so it takes the same number of steps per epoch as pretraining, each on as many
  images, with the same optimiser settings (``pretrain``: epochs, learning rate and schedule,
  weight decay, workers, time limit).

Not included: CLERF's head stage then fits its head on ``head.draws`` further augmentation
draws of ``head.num_samples`` images (by default from the same pool) through the frozen
encoder, about two more minutes on the laptop default; the baseline has no second stage.
``data.augment`` sets the geometric augmentation (``fa`` as CLERF, ``none`` without; ``sa``
slight rotations only).

    python jobs/train_baseline.py data.augment=none           # registers clerf-baseline@candidate
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from clerf_ray.ray_init import init_ray
from clerf_ray.runs.common import EPOCH_METRICS, pretrain_pool
from clerf_ray.train.supervised import (
    baseline_batch_size,
    build_baseline_model,
    num_baseline_samples,
    supervised_loop,
)


@dataclass
class BaselineResult:
    run_id: str
    tracking_uri: str
    metrics: dict[str, float]
    model_name: str
    version: str | None
    checkpoint: str
    history: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _log(msg: str) -> None:
    print(f"[baseline] {msg}", file=sys.stderr, flush=True)


def train_baseline(
    cfg,
    *,
    model_name: str = "clerf-baseline",
    labelled_path: str | None = None,
    register: bool = True,
) -> BaselineResult:
    """Train the baseline on Ray Train with CLERF's pretraining budget (module docstring),
    evaluate it like CLERF's quick evaluation (held-out identities over all of SO(3)), log it to
    MLflow and register it as ``model_name`` with alias ``candidate`` (tags
    ``kind=supervised-baseline``, ``augment``).

    Args:
        cfg: a ``clerf_ray.config.Config`` (sections used: data, model, pretrain, head.views,
            eval, tracking). ``pretrain.batch_size`` counts pairs: the baseline's steps hold
            twice as many images (:func:`baseline_batch_size`).
        model_name: registered model name.
        labelled_path: a labelled Parquet set (local or s3://) to train on instead of renders.
        register: register the model (else only log it).
    """
    import mlflow

    from clerf_ray import registry
    from clerf_ray.data.labelled_images import labelled_inputs
    from clerf_ray.data.pairs import pretrain_inputs
    from clerf_ray.evaluate import evaluate_model, heldout_renders
    from clerf_ray.train.runner import run_stage

    t0 = time.monotonic()
    init_ray()
    uri = registry.setup(cfg.tracking.tracking_uri, cfg.tracking.experiment)
    name = cfg.run_name or time.strftime("baseline-%Y%m%d-%H%M%S")
    # CLERF's own pair stream (same seed as pretraining): the same renders and draws.
    pair_cfg = cfg.data.pair_config(seed=cfg.seed)
    n = num_baseline_samples(cfg, labelled_path)
    batch = baseline_batch_size(cfg)
    _log(
        f"run {name}: {cfg.model.backbone} end to end, {cfg.pretrain.epochs} epochs of {n} "
        f"labelled images in steps of {batch} images (pretrain.batch_size "
        f"{cfg.pretrain.batch_size} pairs x 2), augment={cfg.data.augment}, "
        f"pool={cfg.data.pool and labelled_path is None}; tracking at {uri}"
    )
    with mlflow.start_run(run_name=name) as run:
        mlflow.set_tags({"kind": "supervised-baseline", "augment": cfg.data.augment})
        mlflow.log_params(
            {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in cfg.flat().items()}
        )
        mlflow.log_params({"baseline.labelled_path": labelled_path, "baseline.batch_images": batch})
        loop_config = {"cfg": cfg.model_dump(mode="json"), "num_samples": n}
        # The input pipeline of pretraining: one dataset per run (per epoch only for live
        # renders), augmented on the worker (supervised_loop).
        if labelled_path:
            datasets, reading = labelled_inputs(pair_cfg, labelled_path)
            loop_config.update(reading, rows="images")
        else:
            pool = pretrain_pool(cfg, pair_cfg)
            datasets, reading = pretrain_inputs(pair_cfg, cfg.pretrain.epochs, pool=pool)
            loop_config.update(reading, rows="pairs")
        stage = run_stage(
            stage="baseline",
            loop=supervised_loop,
            loop_config=loop_config,
            section=cfg.pretrain,
            datasets=datasets,
            storage_path=cfg.storage_path,
            name=f"{name}-baseline",
        )
        for h in stage.history:
            mlflow.log_metrics(
                {f"baseline/{k}": float(h[k]) for k in EPOCH_METRICS if k in h},
                step=int(h["epoch"]),
            )
        model = build_baseline_model(cfg)
        model.load_state_dict(stage.state["model"])
        model.eval()
        train_s = time.monotonic() - t0

        eval_cfg = cfg.data.pair_config(
            seed=cfg.seed + 2, identities=cfg.eval.identities, augment="fa", source="synthetic"
        )
        images, R = heldout_renders(eval_cfg, cfg.eval.num_samples)
        metrics = evaluate_model(model, images, R)
        mlflow.log_metrics({f"eval/{k}": float(v) for k, v in metrics.items()})
        source = registry.log_model(model, "pose_model")
        version = None
        if register:
            version = registry.register(
                model_name,
                source,
                run.info.run_id,
                tags={
                    "kind": "supervised-baseline",
                    "augment": cfg.data.augment,
                    "backbone": cfg.model.backbone,
                    "geodesic_median": f"{metrics['geodesic_median']:.3f}",
                },
            )
        timings = {"train_s": train_s, "total_s": time.monotonic() - t0}
        mlflow.log_metrics({f"time/{k}": v for k, v in timings.items()})
    return BaselineResult(
        run_id=run.info.run_id,
        tracking_uri=uri,
        metrics=metrics,
        model_name=model_name,
        version=version,
        checkpoint=stage.checkpoint_path,
        history=stage.history,
        timings=timings,
    )
