"""The CLERF run as one call: contrastive pretraining, the head on the frozen encoder, a quick
evaluation on held-out identities over all of SO(3), MLflow logging and registration.

``jobs/pretrain.py`` parses the config and calls :func:`run_recipe`; the same code runs on a
laptop (local Ray) and under ``ray job submit`` on a cluster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from clerf_ray.config import Config
from clerf_ray.ray_init import init_ray
from clerf_ray.runs.common import (
    check_cpus_fit,
    evaluate_heldout,
    log,
    log_history,
    log_run_config,
    pretrain_pool,
    train_head_stage,
)


@dataclass
class RecipeResult:
    run_id: str
    tracking_uri: str
    metrics: dict[str, float]
    encoder_version: str | None = None
    head_version: str | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def run_recipe(cfg: Config) -> RecipeResult:
    """Run everything in ``cfg`` and return where the results are."""
    import mlflow

    from clerf_ray import registry
    from clerf_ray.data.pairs import pairs_per_epoch, pretrain_inputs
    from clerf_ray.models import create_encoder
    from clerf_ray.train.pretrain import pretrain_loop
    from clerf_ray.train.runner import run_stage

    t_start = time.monotonic()
    timings: dict[str, float] = {}
    init_ray()
    check_cpus_fit(cfg)
    uri = registry.setup(cfg.tracking.tracking_uri, cfg.tracking.experiment)
    name = cfg.run_name or time.strftime("clerf-%Y%m%d-%H%M%S")
    log(f"run {name}: tracking at {uri}, checkpoints under {cfg.storage_path}/{name}-*")
    cfg_dict = cfg.model_dump(mode="json")

    with mlflow.start_run(run_name=name) as run:
        log_run_config(cfg)

        # Stage 1: contrastive pretraining on pairs.
        t0 = time.monotonic()
        pair_cfg = cfg.data.pair_config(seed=cfg.seed)
        pool = pretrain_pool(cfg, pair_cfg)
        num_pairs = pool.count() if pool is not None else pairs_per_epoch(pair_cfg)
        log(
            f"pretraining {cfg.model.backbone} for {cfg.pretrain.epochs} epochs of "
            f"{num_pairs} pairs"
        )
        datasets, reading = pretrain_inputs(pair_cfg, cfg.pretrain.epochs, pool=pool)
        pre = run_stage(
            stage="pretrain",
            loop=pretrain_loop,
            loop_config={"cfg": cfg_dict, "num_pairs": num_pairs, **reading},
            section=cfg.pretrain,
            datasets=datasets,
            storage_path=cfg.storage_path,
            name=f"{name}-pretrain",
        )
        timings["pretrain_s"] = time.monotonic() - t0
        log_history("pretrain", pre.history)
        encoder = create_encoder(cfg.model, image_size=cfg.data.image_size, pretrained=None)
        encoder.load_state_dict(pre.state["model"])

        # Stage 2: the pose head on the frozen encoder.
        t0 = time.monotonic()
        model, head = train_head_stage(cfg, encoder, name, pool=pool)
        timings["head_s"] = time.monotonic() - t0

        # Quick evaluation on identities never seen in training, over all of SO(3).
        t0 = time.monotonic()
        metrics = evaluate_heldout(cfg, model)
        timings["eval_s"] = time.monotonic() - t0

        # Registration.
        enc_uri = registry.log_model(encoder, "encoder")
        head_uri = registry.log_model(model, "pose_model")
        result = RecipeResult(
            run_id=run.info.run_id,
            tracking_uri=uri,
            metrics=metrics,
            checkpoints={"pretrain": pre.checkpoint_path, "head": head.checkpoint_path},
            timings=timings,
        )
        if cfg.tracking.register_models:
            result.encoder_version = registry.register(
                cfg.tracking.encoder_name,
                enc_uri,
                run.info.run_id,
                tags={"backbone": cfg.model.backbone},
            )
            result.head_version = registry.register(
                cfg.tracking.head_name,
                head_uri,
                run.info.run_id,
                tags={
                    "encoder_name": cfg.tracking.encoder_name,
                    "encoder_version": result.encoder_version,
                    "geodesic_median": f"{metrics['geodesic_median']:.3f}",
                },
            )
        timings["total_s"] = time.monotonic() - t_start
        mlflow.log_metrics({f"time/{k}": v for k, v in timings.items()})
    return result


def summary_table(cfg: Config, result: RecipeResult) -> str:
    """The closing table of ``jobs/pretrain.py``."""
    m, t = result.metrics, result.timings
    rows = [
        ("held-out geodesic error, median", f"{m['geodesic_median']:.2f} deg"),
        ("held-out geodesic error, mean", f"{m['geodesic_mean']:.2f} deg"),
        (
            "within 10 / 20 / 30 deg",
            f"{m['within_10']:.1%} / {m['within_20']:.1%} / {m['within_30']:.1%}",
        ),
        (
            "MAE (pitch, yaw, roll, mean)",
            f"{m['mae_pitch']:.2f}, {m['mae_yaw']:.2f}, {m['mae_roll']:.2f}, {m['mae_mean']:.2f} deg",
        ),
        ("evaluated on", f"{m['n']} renders of held-out identities, all of SO(3)"),
        (
            "time: pretrain / head / eval / total",
            " / ".join(
                f"{t.get(k, 0):.0f}s" for k in ("pretrain_s", "head_s", "eval_s", "total_s")
            ),
        ),
        ("MLflow run", f"{result.run_id} at {result.tracking_uri}"),
    ]
    if result.encoder_version:
        rows.append(
            (
                "encoder",
                f"models:/{cfg.tracking.encoder_name}/{result.encoder_version} (alias candidate)",
            )
        )
        rows.append(
            (
                "head (encoder + head)",
                f"models:/{cfg.tracking.head_name}/{result.head_version} (alias candidate)",
            )
        )
    rows.append(("checkpoints", ", ".join(f"{k}: {v}" for k, v in result.checkpoints.items())))
    width = max(len(k) for k, _ in rows)
    lines = ["", "CLERF run summary", "-" * (width + 40)]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)
