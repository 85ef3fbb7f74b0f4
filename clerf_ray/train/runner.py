"""Driver side of a training stage: build the ``TorchTrainer``, run it, turn its outcome into a
result or a clear error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from clerf_ray.train import common


@dataclass
class StageResult:
    """What a finished stage leaves: the trained weights and the per-epoch history."""

    state: dict[str, Any]
    history: list[dict[str, Any]]
    checkpoint_path: str
    status: str
    message: str


def epoch_datasets(
    build: Callable[..., Any], epochs: int, **kwargs
) -> dict[str, Callable[[], Any]]:
    """``{"epoch_0": lambda: build(epoch=0, **kwargs), ...}``: lazy, one per epoch (Ray Train
    creates each dataset when the run starts and splits it across workers)."""
    return {f"epoch_{e}": partial(_quiet_build, build, epoch=e, **kwargs) for e in range(epochs)}


def _quiet_build(build, **kwargs):
    # Datasets are created in Ray Train's dataset manager, whose DataContext is its own: turn
    # Ray Data's progress bars off there (the training loop prints progress that means more).
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return build(**kwargs)


def run_stage(
    *,
    stage: str,
    loop: Callable[[dict[str, Any]], dict[str, Any]],
    loop_config: dict[str, Any],
    section,
    datasets: dict[str, Any],
    storage_path: str,
    name: str,
) -> StageResult:
    """Run ``loop`` on ``section.num_workers`` Ray Train workers and return its outcome.

    A run with the same ``name`` under ``storage_path`` resumes from its latest checkpoint; a
    worker that dies is restarted from the last checkpoint up to ``section.max_failures`` times.

    Raises:
        common.NonFiniteLossError: the loss became NaN/inf (the message names the checkpoint kept).
        ray.train.TrainingFailedError: the workers failed more than ``max_failures`` times.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    gpu = common.use_gpu(section.use_gpu)
    resources = {"CPU": section.cpus_per_worker}
    if gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=section.num_workers, use_gpu=gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=section.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets=datasets,
    )
    result = trainer.fit()
    out = result.return_value or {}
    kept = result.checkpoint.path if result.checkpoint is not None else None
    if out.get("status") == "nonfinite":
        raise common.NonFiniteLossError(f"{out['message']} Last good checkpoint: {kept or 'none'}")
    if result.checkpoint is None:
        raise RuntimeError(f"{stage}: the run {name!r} finished without a checkpoint")
    return StageResult(
        state=common.load_state(result.checkpoint),
        history=list(out.get("history", [])),
        checkpoint_path=kept,
        status=out.get("status", "ok"),
        message=out.get("message", ""),
    )
