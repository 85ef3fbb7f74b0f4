"""Driver side of a training stage, in two parts: :func:`build_trainer` makes the
``TorchTrainer`` (scaling, run name and storage, datasets, callbacks passed in), :func:`fit_stage`
fits it and turns its outcome into a :class:`StageResult` or a clear error. :func:`run_stage` is
the two in a row. A search trial builds the same trainer with its own callbacks and run name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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


class WorkersFailedError(RuntimeError):
    """A stage's workers failed more often than ``max_failures`` allows. The message names the
    stage, the run, the limit, the last checkpoint (a rerun with the same run name resumes from
    it) and the workers' error; the Ray Train error is chained as ``__cause__``."""


def checkpoint_uri(checkpoint) -> str:
    """Where a ``ray.train.Checkpoint`` lies, as a user would write it: a local path, or the URI
    of its filesystem (``s3://bucket/...``; Ray keeps the path without its scheme)."""
    scheme = getattr(checkpoint.filesystem, "type_name", "local")
    return checkpoint.path if scheme == "local" else f"{scheme}://{checkpoint.path}"


def _last_checkpoint(run_path: str) -> str | None:
    """The latest checkpoint Ray Train registered for the run at ``run_path`` (None: none)."""
    import ray.train

    try:
        result = ray.train.Result.from_path(run_path)
    except (RuntimeError, OSError, ValueError):  # no run there, or no snapshot yet
        return None
    return checkpoint_uri(result.checkpoint) if result.checkpoint is not None else None


def build_trainer(
    *,
    loop: Callable[[dict[str, Any]], dict[str, Any]],
    loop_config: dict[str, Any],
    section,
    datasets: dict[str, Any],
    storage_path: str,
    name: str,
    callbacks: list | None = None,
):
    """The ``TorchTrainer`` of one stage: ``loop`` on ``section.num_workers`` workers of
    ``section.cpus_per_worker`` CPUs and ``section.worker_resources`` (and a GPU each when
    ``section.use_gpu`` resolves so), run
    ``name`` under ``storage_path``, ``section.max_failures`` restarts, the last two checkpoints
    kept, and ``callbacks`` (for example Tune's ``TuneReportCallback``).

    A run with the same ``name`` under ``storage_path`` resumes from its latest checkpoint.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    gpu = common.use_gpu(section.use_gpu)
    resources = {"CPU": section.cpus_per_worker, **(section.worker_resources or {})}
    if gpu:
        resources["GPU"] = 1
    return TorchTrainer(
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
            callbacks=list(callbacks or []),
        ),
        datasets=datasets,
    )


def fit_stage(trainer, *, stage: str, name: str) -> StageResult:
    """Fit ``trainer`` (from :func:`build_trainer`) and return the stage's outcome.

    Raises:
        common.NonFiniteLossError: the loss became NaN/inf (the message names the checkpoint kept).
        WorkersFailedError: the workers failed more than ``max_failures`` times.
        RuntimeError: the run ended without a checkpoint.
    """
    import ray.train

    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        rc = trainer.run_config
        run_path = f"{str(rc.storage_path).rstrip('/')}/{name}"
        kept = _last_checkpoint(run_path)
        cause = (str(e).strip().splitlines() or [type(e).__name__])[-1][:500]
        raise WorkersFailedError(
            f"{stage}: the workers of run {name!r} failed more often than "
            f"max_failures={rc.failure_config.max_failures} allows. Last checkpoint: "
            f"{kept or 'none'}; run the same command again to resume from it. "
            f"Last error: {cause}"
        ) from e
    out = result.return_value
    if not out:
        raise RuntimeError(f"{stage}: the run {name!r} returned no outcome from its workers")
    kept = checkpoint_uri(result.checkpoint) if result.checkpoint is not None else None
    if out.get("status") == "nonfinite":
        raise common.NonFiniteLossError(f"{out['message']} Last good checkpoint: {kept or 'none'}")
    if result.checkpoint is None:
        raise RuntimeError(f"{stage}: the run {name!r} finished without a checkpoint")
    # The loop's return value always holds these keys (common.fit); a resumed run that found
    # every epoch done returns them too.
    return StageResult(
        state=common.load_state(result.checkpoint),
        history=list(out["history"]),
        checkpoint_path=kept,
        status=out["status"],
        message=out["message"],
    )


def run_stage(
    *,
    stage: str,
    loop: Callable[[dict[str, Any]], dict[str, Any]],
    loop_config: dict[str, Any],
    section,
    datasets: dict[str, Any],
    storage_path: str,
    name: str,
    callbacks: list | None = None,
) -> StageResult:
    """Run ``loop`` on ``section.num_workers`` Ray Train workers and return its outcome:
    :func:`fit_stage` of :func:`build_trainer` (see both)."""
    trainer = build_trainer(
        loop=loop,
        loop_config=loop_config,
        section=section,
        datasets=datasets,
        storage_path=storage_path,
        name=name,
        callbacks=callbacks,
    )
    return fit_stage(trainer, stage=stage, name=name)
