"""Steps the whole runs share: run logging (config, git SHA, per-step history), the render pool,
the head stage on a frozen encoder, and the held-out evaluation.

Ray itself is started by :func:`clerf_ray.ray_init.init_ray`, below this layer.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from clerf_ray.config import Config, dump_config


def log(msg: str) -> None:
    print(f"[clerf] {msg}", file=sys.stderr, flush=True)


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


# Per-epoch values of a stage's history logged to MLflow (clerf_ray.train.common.fit).
EPOCH_METRICS = (
    "loss",
    "lr",
    "samples_per_s",
    "elapsed_s",
    "epoch_s",
    "first_batch_s",
    "data_wait_s",
    "compute_s",
    "augment_s",
    "allreduce_ms_per_step",
)


def log_history(stage: str, history: list[dict[str, Any]], epochs: bool = True) -> None:
    """Log a stage's per-step losses and (with ``epochs``) its per-epoch metrics to the active
    MLflow run; a search trial logs its epochs as they come instead (``runs.search``)."""
    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{stage}/step_loss", float(loss), now, step)
        for step, loss in enumerate((x for h in history for x in h["step_losses"]), 1)
    ]
    for h in history if epochs else []:
        metrics += [
            Metric(f"{stage}/{k}", float(h[k]), now, int(h["epoch"]))
            for k in EPOCH_METRICS
            if k in h  # the time split is absent from checkpoints of older runs
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
    from ray.data import RandomSeedConfig

    from clerf_ray.models import PoseModel, create_head_for, input_stats
    from clerf_ray.train.common import parameter_checksum
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
    loop_config = {"cfg": cfg.model_dump(mode="json"), "num_samples": n, "dataset": "embeddings"}
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
        # One materialised dataset for the run (one Ray Data split coordinator, however many
        # epochs); each read of it draws a new block order. In memory (head.in_memory, the
        # default) the workers read it once and permute the rows at every pass.
        datasets={
            "embeddings": embeddings.randomize_block_order(
                seed=RandomSeedConfig(seed=cfg.seed, reseed_after_execution=True)
            )
        },
        storage_path=cfg.storage_path,
        # Named by the encoder it trains on: a rerun of the same run name resumes an interrupted
        # head on the same encoder, but a rerun whose pretraining went on (more epochs) trains a
        # new head instead of resuming the finished one fitted to the old encoder's features.
        name=f"{name}-head-{parameter_checksum(encoder)[:12]}",
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


def renders_a_pool(cfg: Config) -> bool:
    """Whether the run renders its pairs once into a pool (``data.pool``; shards are already
    rendered)."""
    return cfg.data.pool and cfg.data.source != "shards"


def _render_stage_cpus(cfg: Config) -> dict[str, float]:
    """The renderer actors' CPUs and the light-stage task that feeds them (sampling, decoding)."""
    d = cfg.data
    return {
        "data.num_render_actors x data.render_num_cpus": d.num_render_actors * d.render_num_cpus,
        "data.stage_num_cpus": d.stage_num_cpus,
    }


def pretraining_cpus(cfg: Config, *, live_renders: bool | None = None) -> dict[str, float]:
    """The CPU budgets that must all be granted at once for pretraining to move, by option:
    the Train workers, and with live renders (``data.pool`` off, or ``live_renders``) the
    renderer actors and one light-stage task that feeds them; from shards, that task alone."""
    p = cfg.pretrain
    need = {"pretrain.num_workers x pretrain.cpus_per_worker": p.num_workers * p.cpus_per_worker}
    if live_renders is None:
        live_renders = not renders_a_pool(cfg) and cfg.data.source != "shards"
    if live_renders:
        need.update(_render_stage_cpus(cfg))
    elif cfg.data.source == "shards":
        need["data.stage_num_cpus"] = cfg.data.stage_num_cpus
    return need


def pool_cpus(cfg: Config) -> dict[str, float]:
    """The CPU budgets the render pool needs at once: its renderer actors (at least
    ``num_render_actors``; it grows to ``pool_render_actors`` only where they fit) and the
    light-stage task that samples their poses. Empty without a pool."""
    return _render_stage_cpus(cfg) if renders_a_pool(cfg) else {}


def check_cpus_fit(cfg: Config) -> None:
    """Refuse, with the options to change, a render pool or a pretraining whose parts cannot all
    have their CPUs at once on a one-node cluster of CPUs only (a laptop, or ``ray start --head``
    alone).

    Ray schedules an actor or task only when its whole request fits, and Ray Data waits for
    its renderer actors' CPUs as long as it takes: such a run hangs with no error (for example
    ``data.num_render_actors=2`` with live renders on 2 cores: 1 + 2 x 0.5 + 0.25 = 2.25 CPUs;
    or a pool of ``data.num_render_actors=4``: 4 x 0.5 + 0.25). Where the config asks for GPUs
    or custom resources, or the cluster has several nodes, more nodes may come (an autoscaler):
    then it only warns.
    """
    import ray

    have = float(ray.cluster_resources().get("CPU", 0.0))
    d, p = cfg.data, cfg.pretrain
    may_grow = (
        len(ray.nodes()) > 1
        or bool(p.worker_resources or d.render_resources)
        or d.render_num_gpus > 0
        or p.use_gpu is True
    )
    for what, need in (("the render pool", pool_cpus(cfg)), ("pretraining", pretraining_cpus(cfg))):
        total = sum(need.values())
        if total <= have + 1e-9:
            continue
        parts = " + ".join(f"{k} {v:g}" for k, v in need.items())
        msg = (
            f"{what} needs {total:g} CPUs at once ({parts}) but the Ray cluster has {have:g}: "
            "Ray would wait for CPUs that never come, with no error. Lower data.render_num_cpus, "
            "data.num_render_actors or pretrain.cpus_per_worker (fractions are fine), or give "
            "Ray more CPUs"
        )
        if not may_grow:
            raise ValueError(msg)
        log(f"warning: {msg}, unless the cluster grows")


def pretrain_pool(cfg: Config, pair_cfg):
    """With ``data.pool``, render the epoch's pairs once (Ray Data, materialised) for every
    epoch to reuse with fresh augmentation; else None (new renders every epoch)."""
    from clerf_ray.data.pairs import render_pool

    if not renders_a_pool(cfg):
        return None
    t0 = time.monotonic()
    log(
        f"rendering a pool of {cfg.data.num_pairs} pairs, reused every epoch with new augmentations"
    )
    pool = render_pool(pair_cfg)
    log(f"rendered {pool.count()} pairs in {time.monotonic() - t0:.0f}s")
    return pool
