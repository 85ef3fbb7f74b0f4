"""The training loop's clock (clerf_ray.train.common.EpochClock), without Ray: on a scripted
monotonic clock, each batch costs 2 s to produce, each step 3 s and each augmentation 5 s, so
every figure has one right value."""

from __future__ import annotations

import numpy as np

from clerf_ray.train import common


class ScriptedClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_waits_steps_and_augmentation_are_attributed_exactly(monkeypatch):
    clock_fn = ScriptedClock()
    monkeypatch.setattr(common.time, "monotonic", clock_fn)
    clock = common.EpochClock(t0=clock_fn.now - 7.0)  # the epoch began 7 s before the first ask

    def augment(batch, epoch):
        clock_fn.now += 5.0
        return {"x": batch["x"] + epoch}

    def batches():
        for i in range(4):
            clock_fn.now += 2.0  # producing the batch (the loop waits for it)
            yield common._transformed(augment, 10, clock, {"x": np.full(2, i, np.float32)})

    seen = []
    for batch in clock.waits(batches()):
        clock.step_started()
        clock_fn.now += 3.0
        clock.step_ended()
        seen.append(batch["x"].tolist())

    assert seen == [[10.0, 10.0], [11.0, 11.0], [12.0, 12.0], [13.0, 13.0]]
    m = clock.metrics(torch_module())
    # Waiting covers producing and augmenting each batch (here done in the loop's own thread).
    assert m["data_wait_s"] == 4 * (2.0 + 5.0)
    assert m["compute_s"] == 4 * 3.0
    assert m["augment_s"] == 4 * 5.0
    # The first batch came 7 s (before asking) + 2 s + 5 s after the epoch's start.
    assert m["first_batch_s"] == 14.0
    assert "allreduce_ms_per_step" not in m  # one process, no DDP


class FakeShard:
    """Stands in for a Ray Train dataset shard (``iter_batches`` only): each numpy batch
    costs 2 s to produce on the scripted clock."""

    def __init__(self, clock_fn, n):
        self.clock_fn, self.n, self.asked = clock_fn, n, []

    def iter_batches(self, *, batch_size, batch_format, drop_last, local_shuffle_buffer_size):
        self.asked.append((batch_size, batch_format, drop_last, local_shuffle_buffer_size))
        for i in range(self.n):
            self.clock_fn.now += 2.0
            yield {"x": np.full(batch_size, i, np.float32)}


def test_augmentation_in_the_loop_is_not_counted_as_waiting(monkeypatch):
    """``augment_in="loop"``: the loop waits only for Ray Data's numpy batches, then augments
    each in its own thread; every pass asks the shard for full numpy batches."""
    clock_fn = ScriptedClock()
    monkeypatch.setattr(common.time, "monotonic", clock_fn)
    clock = common.EpochClock(t0=clock_fn.now)

    def augment(batch, epoch):
        clock_fn.now += 5.0
        return {"x": batch["x"] * 10 + epoch}

    shard = FakeShard(clock_fn, 3)
    collate = lambda b: common._transformed(augment, 1, clock, b)  # noqa: E731
    seen = []
    for batch in common._loop_passes(shard, 2, 4, None, clock, collate):
        clock.step_started()
        clock_fn.now += 3.0
        clock.step_ended()
        seen.append(batch["x"].tolist())
    assert seen == [[1.0] * 4, [11.0] * 4, [21.0] * 4] * 2
    assert shard.asked == [(4, "numpy", True, None)] * 2
    m = clock.metrics(torch_module())
    assert m["data_wait_s"] == 6 * 2.0
    assert m["augment_s"] == 6 * 5.0
    assert m["compute_s"] == 6 * 3.0
    assert m["first_batch_s"] == 2.0


def torch_module():
    import torch

    return torch.nn.Linear(2, 2)
