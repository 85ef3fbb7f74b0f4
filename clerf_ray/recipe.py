"""The whole CLERF recipe as one call: contrastive pretraining, the head on the frozen encoder, a
quick evaluation on held-out identities over all of SO(3), MLflow logging and registration.

``jobs/pretrain.py`` parses the config and calls :func:`run_recipe`; the same code runs on a
laptop (local Ray) and under ``ray job submit`` on a cluster.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clerf_ray.config import Config, dump_config


@dataclass
class RecipeResult:
    run_id: str
    tracking_uri: str
    metrics: dict[str, float]
    encoder_version: str | None = None
    head_version: str | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def log(msg: str) -> None:
    print(f"[clerf] {msg}", file=sys.stderr, flush=True)


def init_ray() -> None:
    """Connect to the cluster this process runs in (``ray job submit``, ``RAY_ADDRESS``) or start
    a local one; quiet Ray Data's progress bars (our own progress lines say more)."""
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(log_to_driver=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def _git_sha() -> str | None:
    import subprocess

    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except Exception:
        return None


def log_history(stage: str, history: list[dict[str, Any]]) -> None:
    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{stage}/step_loss", float(loss), now, step)
        for step, loss in enumerate((x for h in history for x in h.get("step_losses", [])), 1)
    ]
    for h in history:
        metrics += [
            Metric(f"{stage}/{k}", float(h[k]), now, int(h["epoch"]))
            for k in ("loss", "lr", "samples_per_s", "elapsed_s")
        ]
    # One request per 1000 values (MLflow's batch limit) instead of one per step.
    client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def log_run_config(cfg: Config) -> None:
    """Log the resolved config as MLflow parameters and ``config.yaml``, plus the git SHA."""
    import mlflow

    mlflow.log_params(
        {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in cfg.flat().items()}
    )
    sha = _git_sha()
    if sha:
        mlflow.set_tag("git_sha", sha)
    with tempfile.TemporaryDirectory() as d:
        dump_config(cfg, Path(d) / "config.yaml")
        mlflow.log_artifact(str(Path(d) / "config.yaml"))


def train_head_stage(cfg: Config, encoder, name: str, pool=None):
    """Fit the pose head on the frozen ``encoder`` (Ray Train) and log its history.

    The labelled images (``clerf_ray.train.head.head_images``; from the pretraining ``pool``
    when given and ``head.reuse_pool``) are embedded once per augmentation draw by encoder
    actors (Ray Data); the head trains on the cached embeddings (``clerf_ray.train.head``).

    Returns:
        ``(PoseModel, StageResult)``.
    """
    from clerf_ray.models import PoseModel, create_head_for, input_stats
    from clerf_ray.train.head import build_head_embeddings, head_loop
    from clerf_ray.train.runner import run_stage

    if cfg.head.labelled_path:
        source = cfg.head.labelled_path
    elif pool is not None and cfg.head.reuse_pool:
        source = f"{cfg.head.num_samples} images of the pretraining pool"
    else:
        source = f"{cfg.head.num_samples} new renders"
    log(
        f"embedding the head's labelled images ({source}, {cfg.head.draws} augmentation "
        "draws each) with the frozen encoder"
    )
    t0 = time.monotonic()
    embeddings = build_head_embeddings(cfg, encoder.state_dict(), pool=pool)
    n = embeddings.count()
    log(f"embedded {n} images in {time.monotonic() - t0:.0f}s")
    head = create_head_for(encoder, cfg.model)
    loop_config = {"cfg": cfg.model_dump(mode="json"), "num_samples": n}
    loop_config["in_dim"] = head.config.in_dim
    if head.config.standardize:
        mean, std = input_stats(
            b["z"] for b in embeddings.iter_batches(batch_size=4096, batch_format="numpy")
        )
        loop_config.update(input_mean=mean.tolist(), input_std=std.tolist())
    log(
        f"training the pose head for {cfg.head.epochs} epochs of {cfg.head.passes} passes "
        "on the cached embeddings"
    )
    stage = run_stage(
        stage="head",
        loop=head_loop,
        loop_config=loop_config,
        section=cfg.head,
        # One materialised dataset; each epoch reads its blocks in a new order.
        datasets={
            f"epoch_{e}": embeddings.randomize_block_order(seed=cfg.seed + e)
            for e in range(cfg.head.epochs)
        },
        storage_path=cfg.storage_path,
        name=f"{name}-head",
    )
    log_history("head", stage.history)
    head.load_state_dict(stage.state["model"])
    return PoseModel(encoder, head, freeze_encoder=True, views=cfg.head.views).eval(), stage


def evaluate_heldout(cfg: Config, model) -> dict[str, float]:
    """Evaluate on renders of held-out identities over all of SO(3); log to MLflow."""
    import mlflow

    from clerf_ray.evaluate import evaluate_model, heldout_renders

    eval_data = cfg.data.pair_config(
        seed=cfg.seed + 2, identities=cfg.eval.identities, augment="fa", source="synthetic"
    )
    images, R = heldout_renders(eval_data, cfg.eval.num_samples)
    metrics = evaluate_model(model, images, R)
    mlflow.log_metrics({f"eval/{k}": float(v) for k, v in metrics.items()})
    return metrics


def pretrain_pool(cfg: Config, pair_cfg):
    """With ``data.pool``, render the epoch's pairs once (Ray Data, materialised) for every
    epoch to reuse with fresh augmentation; else None (new renders every epoch)."""
    from clerf_ray.data.pairs import render_pool

    if not cfg.data.pool or cfg.data.source == "shards":
        return None
    t0 = time.monotonic()
    log(
        f"rendering a pool of {cfg.data.num_pairs} pairs, reused every epoch with new augmentations"
    )
    pool = render_pool(pair_cfg)
    log(f"rendered {pool.count()} pairs in {time.monotonic() - t0:.0f}s")
    return pool


def run_recipe(cfg: Config) -> RecipeResult:
    """Run everything in ``cfg`` and return where the results are."""
    import mlflow

    from clerf_ray import registry
    from clerf_ray.data.pairs import build_pair_dataset, pairs_per_epoch
    from clerf_ray.models import create_encoder
    from clerf_ray.train.pretrain import pretrain_loop
    from clerf_ray.train.runner import epoch_datasets, run_stage

    t_start = time.monotonic()
    timings: dict[str, float] = {}
    init_ray()
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
        pre = run_stage(
            stage="pretrain",
            loop=pretrain_loop,
            loop_config={"cfg": cfg_dict, "num_pairs": num_pairs},
            section=cfg.pretrain,
            datasets=epoch_datasets(
                build_pair_dataset, cfg.pretrain.epochs, cfg=pair_cfg, pool=pool
            ),
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
