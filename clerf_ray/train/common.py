"""Pieces shared by the training loops: optimiser and schedule, checkpoints, finite-loss checks,
batch conversion, progress output. Everything here runs inside Ray Train workers."""

from __future__ import annotations

import hashlib
import math
import os
import sys
import tempfile
import threading
import time
from functools import partial
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILE = "state.pt"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float):
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to zero."""
    warmup = max(1, int(round(total_steps * warmup_fraction)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def steps_in_time(
    done: int, configured_total: int, time_left_s: float, seconds_per_step: float
) -> int:
    """The step to stop at when ``time_left_s`` remains at step ``done``, each step taking
    ``seconds_per_step``: the configured total if it fits, else the last step that fits."""
    if seconds_per_step <= 0:
        return configured_total
    fit_steps = math.floor(max(0.0, time_left_s) / seconds_per_step)
    return min(configured_total, done + fit_steps)


def use_gpu(setting: bool | str) -> bool:
    """Resolve ``use_gpu: auto`` on the driver: GPUs in the Ray cluster, else CPU."""
    if setting != "auto":
        return bool(setting)
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX tiles).

    On such CPUs oneDNN runs bfloat16 convolutions and matmuls faster than float32 (resnet10t at
    64 px on the 2-core Xeon VM: a plain training step 58-75 pairs/s in float32, 100-144 in
    bfloat16 with channels-last weights; the default job's pretraining only 1.1x; inference
    2x: README, "Mixed precision on the CPU"); elsewhere bfloat16 is emulated and slower than float32, so
    mixed precision stays off there. torch has no public query for this; the private ones are
    guarded so that a torch without them means "no".
    """
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except Exception:
        return False


def amp_enabled(device: torch.device, enabled: bool) -> bool:
    """Mixed precision runs when asked for on a GPU, or on a CPU with native bfloat16."""
    return bool(enabled) and (device.type == "cuda" or (device.type == "cpu" and native_cpu_bf16()))


def autocast(device: torch.device, enabled: bool):
    """float16 autocast on CUDA, bfloat16 on a CPU with native bfloat16 (see
    :func:`amp_enabled`); a no-op context otherwise. Losses run in float32 under
    :func:`full_precision`."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(
        device_type=device.type, dtype=dtype, enabled=amp_enabled(device, enabled)
    )


def full_precision(device: torch.device):
    """Leave autocast for a loss: Circle Loss scales cosine similarities by gamma (64), and
    the geodesic loss takes an arccos near 0 and pi; both want float32 inputs and ops.
    ``device``: a ``torch.device`` or its name."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """The model's 4-D weights in channels-last layout. The images arrive as (B, H, W, 3) and
    are permuted, so they already are channels-last; convolutions then run without layout
    conversions (faster under oneDNN and cuDNN), and DDP's gradient buckets match the weights'
    strides. A no-op for weights with no 4-D tensors."""
    return model.to(memory_format=torch.channels_last)


def images_to_tensor(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1] on ``device`` (the model normalises)."""
    return images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


def report_state(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    """``ray.train.report`` with, when ``state`` is given (rank 0), a checkpoint holding it.

    The state holds tensors, numbers, strings, lists and dicts only, so it loads with
    ``weights_only=True``.
    """
    import ray.train

    if state is None:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="clerf-ckpt-") as path:
        torch.save(state, os.path.join(path, CHECKPOINT_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(path))


def load_state(checkpoint) -> dict[str, Any]:
    """Read a state written by :func:`report_state` from a ``ray.train.Checkpoint``, without
    unpickling arbitrary objects (``weights_only=True``)."""
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper."""
    return model.module if hasattr(model, "module") else model


def say(line: str) -> None:
    """Write one progress line to the worker's stderr, which Ray forwards to the driver once.

    Not ``print``: Ray Train V2 patches ``print`` inside workers to log through Train's logger
    *and*, when ``sys.stderr`` is not the process's original stream (as in a Ray worker), to
    print the line as well, so each line reached the driver's terminal twice."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class Progress:
    """Rank-0 progress lines: epoch, step, loss, throughput."""

    def __init__(self, stage: str, epochs: int, steps_per_epoch: int, every_s: float = 10.0):
        self.stage, self.epochs, self.steps, self.every_s = stage, epochs, steps_per_epoch, every_s
        self.t0 = self.last = time.monotonic()
        self.samples = 0

    def step(self, epoch: int, step: int, loss: float, samples: int, lr: float) -> None:
        self.samples += samples
        now = time.monotonic()
        if now - self.last >= self.every_s or step == self.steps:
            rate = self.samples / max(now - self.t0, 1e-9)
            say(
                f"[{self.stage}] epoch {epoch + 1}/{self.epochs} step {step}/{self.steps} "
                f"loss {loss:.4f} lr {lr:.2e} {rate:.0f} samples/s {now - self.t0:.0f}s"
            )
            self.last = now


def global_batches(num_items: int, global_batch: int, world_size: int) -> tuple[int, int]:
    """(per-worker batch, steps per epoch) for ``num_items`` split over ``world_size`` workers."""
    per_worker = max(1, global_batch // world_size)
    steps = max(1, num_items // (per_worker * world_size))
    return per_worker, steps


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def fit(
    *,
    stage: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    section,
    steps: int,
    per_worker: int,
    loss_step,
    trainable: torch.nn.Module | None = None,
    dataset_prefix: str = "epoch_",
    passes: int = 1,
    shuffle_buffer: int | None = None,
    in_memory: bool = False,
    epoch_metrics=None,
    dataset: str | None = None,
    transform=None,
) -> dict[str, Any]:
    """The epoch loop shared by both stages, inside a Ray Train worker.

    Resumes from ``ray.train.get_checkpoint()``; reads ``{dataset_prefix}{epoch}`` shards; calls
    ``loss_step(batch) -> (loss, n_samples)``; stops cleanly on a non-finite loss (every rank,
    no retry, last good checkpoint kept); reports metrics and a checkpoint every epoch; honours
    ``section.time_limit_s``: from the second epoch on, the run stops at the step where the
    time runs out (see below). ``trainable`` (default ``model``) is what is checkpointed.
    An epoch makes ``passes`` passes over its shard (``steps`` counts the steps of all passes);
    ``shuffle_buffer`` rows are shuffled locally as batches are drawn (None: stream order). With
    ``in_memory`` the epoch's shard is read once into tensors and every pass is a full random
    permutation of it (for small rows such as cached embeddings; ``shuffle_buffer`` is unused).
    ``epoch_metrics(model) -> dict`` (rank 0 only) adds measures of the model to every epoch's
    report (for example the retrieval probe a search stops trials on).
    ``dataset`` names one dataset that every epoch reads (a new pass over the same Ray Train
    shard, so Ray Data starts once per run; with ``in_memory`` it is read once per run) instead
    of ``{dataset_prefix}{epoch}``. ``transform(numpy_batch, epoch) -> numpy_batch`` (for example
    the epoch's augmentation) runs on each batch before it becomes tensors.

    With a time limit, before each epoch after the first the loop plans the step to stop at:
    the configured total if it fits in the time left at the last epoch's seconds per step, else
    the last step that fits (:func:`steps_in_time`; the slowest rank's figures, so all ranks
    agree). The run then ends at the limit, inside an epoch if need be, instead of running on to
    the end of the epoch that crosses it. The learning-rate schedule is not changed: a cosine
    shortened to fit the time was tried and lost 0.43 deg held-out median against a cut-off
    cosine, on the mean of three seeds at equal time (README, "A fitted schedule lost"). The
    epoch that crosses the limit still stops the run (a first epoch longer than the limit, or a
    machine that slows down mid-epoch).

    Returns:
        ``{"status": "ok" | "nonfinite" | "time_limit", "message": str, "history": [...],
        "param_checksum": str}``, the history holding one metrics dict per finished epoch (across
        resumes); ``param_checksum`` is :func:`parameter_checksum` of this rank's trainable module
        at the end (equal on every rank when DDP kept the replicas in step).
    """
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if section.torch_threads:
        # Ray pins OMP to the reserved CPUs; on a laptop the renderer leaves spare cycles that
        # a second thread can use.
        torch.set_num_threads(section.torch_threads)
    device = next(model.parameters()).device
    trainable = trainable if trainable is not None else model
    scheduler = warmup_cosine(optimizer, steps * section.epochs, section.warmup_fraction)
    amp = amp_enabled(device, section.amp)
    # bfloat16 keeps float32's exponent range: only float16 on a GPU needs loss scaling.
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    params = [q for q in trainable.parameters() if q.requires_grad]

    start_epoch, elapsed, history = 0, 0.0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = load_state(checkpoint)
        unwrap(trainable).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, elapsed = int(state["epoch"]) + 1, float(state["elapsed_s"])
        history = list(state["history"])
        if rank == 0:
            say(f"[{stage}] resuming from the checkpoint of epoch {start_epoch}")

    progress = Progress(stage, section.epochs, steps)
    status, message = "ok", ""
    held = None  # the in-memory rows of a run-wide ``dataset``, read at the first epoch
    # Written here: Ray Train and PyTorch stop only between epochs or on a step count; stopping
    # at the step where a wall-time limit runs out is this loop's own.
    configured_total = steps * section.epochs
    stop_at = configured_total
    for epoch in range(start_epoch, section.epochs):
        if section.time_limit_s is not None and history:
            last = history[-1]
            spent, per_step = max_over_ranks(
                [
                    elapsed,
                    (last["epoch_s"] - last["first_batch_s"]) / max(1, len(last["step_losses"])),
                ],
                world,
                device,
            )
            done = scheduler.last_epoch
            stop_at = steps_in_time(done, configured_total, section.time_limit_s - spent, per_step)
            if stop_at <= done:
                status = "time_limit"
                message = (
                    f"{stage}: time limit {section.time_limit_s:.0f}s: no step fits after epoch "
                    f"{epoch}; stopped after {done} of {configured_total} steps"
                )
                if rank == 0:
                    say(f"[{stage}] {message}")
                break
            if stop_at < configured_total and rank == 0:
                say(
                    f"[{stage}] time limit {section.time_limit_s:.0f}s: stopping at step "
                    f"{stop_at} of {configured_total} ({per_step * 1000:.0f} ms/step, "
                    f"{section.time_limit_s - spent:.0f}s left)"
                )
        t0 = time.monotonic()
        trainable.train()
        shard = ray.train.get_dataset_shard(dataset or f"{dataset_prefix}{epoch}")
        step_losses: list[float] = []
        seen = 0
        clock = EpochClock(t0)
        collate = (
            numeric_tensors if transform is None else partial(_transformed, transform, epoch, clock)
        )
        if in_memory:
            if held is None or dataset is None:
                held = _read_columns(shard, collate)
            batches = clock.waits(_memory_passes(held, passes, per_worker))
        elif transform is not None and section.augment_in == "loop":
            batches = _loop_passes(shard, passes, per_worker, shuffle_buffer, clock, collate)
        else:
            batches = clock.waits(_passes(shard, passes, per_worker, shuffle_buffer, collate))
        for step, batch in enumerate(batches, start=1):
            clock.step_started()
            with autocast(device, amp):
                loss, n = loss_step(batch)
            if not finite_everywhere(loss, world):
                status = "nonfinite"
                # Every rank stops here; the value may be finite on this rank and not on another.
                message = (
                    f"{stage}: non-finite loss at epoch {epoch + 1} step {step} (rank {rank}: "
                    f"{loss.item()}); stopped. The last good checkpoint is kept; lower the "
                    "learning rate or check the data."
                )
                break
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step_losses.append(float(loss.detach()))  # waits for the step: ends its time
            clock.step_ended()
            seen += n * world
            if rank == 0:
                progress.step(epoch, step, step_losses[-1], n * world, scheduler.get_last_lr()[0])
            if step >= steps or scheduler.last_epoch >= stop_at:
                break
        if status == "nonfinite":
            break
        if not step_losses:
            raise RuntimeError(
                f"{stage}: epoch {epoch + 1} gave no full batch of {per_worker} per worker; "
                "make the dataset larger or the batch smaller"
            )
        took = time.monotonic() - t0
        elapsed += took
        metrics = {
            "epoch": epoch + 1,
            "loss": sum(step_losses) / len(step_losses),
            "lr": scheduler.get_last_lr()[0],
            "samples_per_s": seen / max(took, 1e-9),
            "elapsed_s": elapsed,
            "epoch_s": took,
            **clock.metrics(model),
            "step_losses": step_losses,
        }
        if epoch_metrics is not None and rank == 0:
            metrics.update(epoch_metrics(model))
        history.append(metrics)
        state = None
        if rank == 0:
            state = {
                "model": unwrap(trainable).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "elapsed_s": elapsed,
                "history": history,
            }
        report_state({k: v for k, v in metrics.items() if k != "step_losses"}, state)
        if scheduler.last_epoch >= stop_at and stop_at < configured_total:
            status = "time_limit"
            message = (
                f"{stage}: time limit {section.time_limit_s:.0f}s: stopped at step {stop_at} of "
                f"{configured_total}, in epoch {epoch + 1} ({elapsed:.0f}s)"
            )
            if rank == 0:
                say(f"[{stage}] {message}")
            break
        if (
            section.time_limit_s is not None
            and any_rank(elapsed >= section.time_limit_s, world, device)
            and epoch + 1 < section.epochs
        ):
            status = "time_limit"
            message = (
                f"{stage}: time limit {section.time_limit_s:.0f}s reached after epoch {epoch + 1}"
            )
            if rank == 0:
                say(f"[{stage}] {message}")
            break
    return {
        "status": status,
        "message": message,
        "history": history,
        "param_checksum": parameter_checksum(trainable),
    }


class EpochClock:
    """Where an epoch's time goes, on this rank (seconds, reported with each epoch's metrics):

    * ``first_batch_s``: from the epoch's start to its first batch (the dataset's start-up);
    * ``data_wait_s``: the training loop blocked waiting for batches (the first one included);
    * ``compute_s``: forward, backward (with DDP's all-reduce inside it) and optimiser steps;
    * ``augment_s``: the epoch's transform (augmentation): in Ray Data's collate threads with
      ``augment_in="prefetch"``, where it overlaps the steps and costs the loop time only
      through ``data_wait_s`` (and the cores it takes from the step); in the training thread
      between steps with ``augment_in="loop"``;
    * ``allreduce_ms_per_step``, ``allreduce_overlap_ms_per_step``: DDP's own measure of the
      gradient all-reduce per backward and how much of it overlapped the backward's compute
      (only with more than one worker), from PyTorch's DDP logging data, which samples the
      first iterations and every 100th: an average over those, not over this epoch.

    Written here because Ray Train reports no such split of a worker's time (its metrics are per
    run and per controller); the clock is a few calls per step.
    """

    def __init__(self, t0: float):
        self.t0 = t0
        self.first_batch_s: float | None = None
        self.data_wait_s = self.compute_s = self.augment_s = 0.0
        self._step_t = 0.0
        self._lock = threading.Lock()

    def waits(self, batches):
        it = iter(batches)
        while True:
            t = time.monotonic()
            try:
                batch = next(it)
            except StopIteration:
                return
            now = time.monotonic()
            self.data_wait_s += now - t
            if self.first_batch_s is None:
                self.first_batch_s = now - self.t0
            yield batch

    def step_started(self) -> None:
        self._step_t = time.monotonic()

    def step_ended(self) -> None:
        self.compute_s += time.monotonic() - self._step_t

    def add_augment(self, seconds: float) -> None:
        with self._lock:  # collate threads may run side by side
            self.augment_s += seconds

    def metrics(self, model: torch.nn.Module) -> dict[str, float]:
        out = {
            "first_batch_s": self.first_batch_s or 0.0,
            "data_wait_s": self.data_wait_s,
            "compute_s": self.compute_s,
            "augment_s": self.augment_s,
        }
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            try:
                ddp = model._get_ddp_logging_data()  # PyTorch's own timers, in ns (private API)
                out["allreduce_ms_per_step"] = ddp["avg_backward_comm_time"] / 1e6
                out["allreduce_overlap_ms_per_step"] = (
                    ddp["avg_backward_compute_comm_overlap_time"] / 1e6
                )
            except (AttributeError, KeyError, RuntimeError):
                pass  # another PyTorch: the split is simply not reported
        return out


def _transformed(
    transform, epoch: int, clock: EpochClock, batch: dict[str, np.ndarray]
) -> dict[str, torch.Tensor]:
    t = time.monotonic()
    out = transform(batch, epoch)
    clock.add_augment(time.monotonic() - t)
    return numeric_tensors(out)


def _passes(shard, passes: int, per_worker: int, shuffle_buffer: int | None, collate):
    # Iterating a Ray Train shard again is a new pass over it (the supported multi-epoch
    # pattern); every rank makes the same number of passes, as streaming splits require.
    # ``collate`` runs in Ray Data's format threads, beside the training step.
    for _ in range(passes):
        yield from shard.iter_torch_batches(
            batch_size=per_worker,
            drop_last=True,
            collate_fn=collate,
            local_shuffle_buffer_size=shuffle_buffer,
        )


def _loop_passes(shard, passes, per_worker, shuffle_buffer, clock: EpochClock, collate):
    # The transform in the training thread, between steps (``augment_in="loop"``): Ray Data's
    # threads fetch numpy batches ahead, and only the wait for them counts as data_wait_s. On
    # 2 cores a collate thread augmenting beside the step's two intra-op threads slowed every
    # step more than the augmentation costs on its own (bench_train's (b) against (a)).
    for _ in range(passes):
        numpy_batches = shard.iter_batches(
            batch_size=per_worker,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=shuffle_buffer,
        )
        for batch in clock.waits(numpy_batches):
            yield collate(batch)


def _read_columns(shard, collate) -> dict[str, torch.Tensor]:
    """A whole shard read into tensors, one per column."""
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in shard.iter_torch_batches(batch_size=8192, collate_fn=collate):
        for k, v in batch.items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


def _memory_passes(columns: dict[str, torch.Tensor], passes: int, per_worker: int):
    # Written here, not with Ray Data's shuffles: for a shard that fits in memory (the head's
    # cached embeddings: rows x a few hundred floats), one read and torch.randperm per pass
    # cost a fraction of re-streaming every pass through a local shuffle buffer, which took
    # longer than the head's own steps. Each rank draws from torch's seeded generator.
    n = len(next(iter(columns.values()))) if columns else 0
    for _ in range(passes):
        order = torch.randperm(n)
        for i in range(0, n - per_worker + 1, per_worker):
            idx = order[i : i + per_worker]
            yield {k: v[idx] for k, v in columns.items()}


def parameter_checksum(module: torch.nn.Module) -> str:
    """SHA-256 (hex) of a module's parameters: names and exact bytes, in registration order.

    Buffers (BatchNorm running statistics) are left out: DDP broadcasts them from rank 0 at the
    start of each forward, so after the last forward they legitimately differ between ranks.
    """
    h = hashlib.sha256()
    for name, p in unwrap(module).named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def numeric_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Collate a numpy batch into CPU tensors, leaving out text columns (``source``)."""
    out = {}
    for k, v in batch.items():
        if v.dtype.kind in "biuf":
            v = np.ascontiguousarray(v)
            # Ray hands out read-only views of object-store blocks; torch wants writable memory.
            out[k] = torch.from_numpy(v if v.flags.writeable else v.copy())
    return out


def max_over_ranks(values: list[float], world_size: int, device: torch.device) -> list[float]:
    """Each value's maximum over the ranks (every rank gets the same list)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world_size > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t.tolist()


def any_rank(flag: bool, world_size: int, device: torch.device) -> bool:
    """Whether ``flag`` holds on at least one rank (every rank gets the same answer, so they
    take the same branch; a rank stopping alone would leave the others waiting in a collective)."""
    return max_over_ranks([1.0 if flag else 0.0], world_size, device)[0] > 0


def finite_everywhere(loss: torch.Tensor, world_size: int) -> bool:
    """Whether the loss is finite on every rank (all ranks agree, so they stop together)."""
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=loss.device)
    if world_size > 1:
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    return bad.item() == 0
