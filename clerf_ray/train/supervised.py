"""The supervised baseline in the style of 6DRepNet: the same backbone and pose head as CLERF,
trained end to end by direct 6D regression with the geodesic loss, on Ray Train.

It answers the question the paper raises: does contrastive pretraining help on SA, FA and
full-range poses, compared with plain supervised training on the same images? So the budget is
CLERF's own: the baseline reads the ``pretrain`` section's optimiser settings (epochs, global
batch, learning rate, workers, time limit) and sees per epoch the images the contrastive stage
sees, both images of ``data.num_pairs`` rendered pairs (``2 * num_pairs`` labelled images), or a
labelled Parquet set when one is given. ``data.augment`` sets the geometric augmentation
(``fa`` as CLERF, ``none`` without; ``sa`` slight rotations only).

    python jobs/train_baseline.py data.augment=none           # registers clerf-baseline@candidate
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from clerf_ray.train import common


def build_baseline_model(cfg):
    """A ``PoseModel`` (encoder + head, ``freeze_encoder=False``) built from ``cfg.model`` for
    ``cfg.data.image_size`` pixels: every parameter trains."""
    from clerf_ray.models import PoseModel, create_encoder, create_head

    encoder = create_encoder(cfg.model, image_size=cfg.data.image_size)
    # The same test-time views as CLERF's registered head, so evaluations compare like with like.
    return PoseModel(encoder, create_head(cfg.model), freeze_encoder=False, views=cfg.head.views)


def num_baseline_samples(cfg, labelled_path: str | None) -> int:
    """Labelled images per epoch: the labelled set's rows, else two per rendered pair."""
    if labelled_path:
        from clerf_ray.data.schema import load_labelled

        return load_labelled(labelled_path).num_rows
    return 2 * cfg.data.num_pairs


def supervised_loop(config: dict[str, Any]) -> dict[str, Any]:
    """``train_loop_per_worker`` of the baseline.

    ``config``: ``{"cfg": Config dict, "num_samples": labelled images per epoch}``. Reads the
    ``epoch_{e}`` datasets (``build_labelled_image_dataset``: ``image`` uint8 (B, H, W, 3), ``R``
    (B, 3, 3) labels).
    """
    import ray.train
    import ray.train.torch

    from clerf_ray.config import Config
    from clerf_ray.losses import geodesic_loss

    cfg = Config.model_validate(config["cfg"])
    section = cfg.pretrain
    ctx = ray.train.get_context()
    world = ctx.get_world_size()
    common.seed_everything(cfg.seed + 2000 + ctx.get_world_rank())
    device = ray.train.torch.get_device()

    model = ray.train.torch.prepare_model(build_baseline_model(cfg))
    preprocess = common.unwrap(model).preprocess
    per_worker, steps = common.global_batches(int(config["num_samples"]), section.batch_size, world)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=section.lr, weight_decay=section.weight_decay
    )

    def loss_step(batch):
        R = batch["R"].to(device)
        return geodesic_loss(model(preprocess(batch["image"].to(device))).float(), R), len(R)

    return common.fit(
        stage="baseline",
        model=model,
        optimizer=optimizer,
        section=section,
        steps=steps,
        per_worker=per_worker,
        loss_step=loss_step,
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
    """Train the baseline on Ray Train, evaluate it like CLERF's quick evaluation (held-out
    identities over all of SO(3)), log it to MLflow and register it as ``model_name`` with alias
    ``candidate`` (tags ``kind=supervised-baseline``, ``augment``).

    Args:
        cfg: a ``clerf_ray.config.Config`` (sections used: data, model, pretrain, eval, tracking).
        model_name: registered model name.
        labelled_path: a labelled Parquet set (local or s3://) to train on instead of renders.
        register: register the model (else only log it).
    """
    import mlflow

    from clerf_ray import registry
    from clerf_ray.data.pairs import build_labelled_image_dataset
    from clerf_ray.evaluate import evaluate_model, heldout_renders
    from clerf_ray.recipe import init_ray
    from clerf_ray.train.runner import epoch_datasets, run_stage

    t0 = time.monotonic()
    init_ray()
    uri = registry.setup(cfg.tracking.tracking_uri, cfg.tracking.experiment)
    name = cfg.run_name or time.strftime("baseline-%Y%m%d-%H%M%S")
    data_cfg = cfg.data.pair_config(seed=cfg.seed + 3)
    n = num_baseline_samples(cfg, labelled_path)
    _log(
        f"run {name}: {cfg.model.backbone} end to end, {cfg.pretrain.epochs} epochs of {n} "
        f"labelled images, augment={cfg.data.augment}; tracking at {uri}"
    )
    with mlflow.start_run(run_name=name) as run:
        mlflow.set_tags({"kind": "supervised-baseline", "augment": cfg.data.augment})
        mlflow.log_params(
            {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in cfg.flat().items()}
        )
        mlflow.log_param("baseline.labelled_path", labelled_path)
        stage = run_stage(
            stage="baseline",
            loop=supervised_loop,
            loop_config={"cfg": cfg.model_dump(mode="json"), "num_samples": n},
            section=cfg.pretrain,
            datasets=epoch_datasets(
                build_labelled_image_dataset,
                cfg.pretrain.epochs,
                cfg=data_cfg,
                labelled_path=labelled_path,
            ),
            storage_path=cfg.storage_path,
            name=f"{name}-baseline",
        )
        for h in stage.history:
            mlflow.log_metrics(
                {
                    f"baseline/{k}": float(h[k])
                    for k in ("loss", "lr", "samples_per_s", "elapsed_s")
                },
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
