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


def torch_module():
    import torch

    return torch.nn.Linear(2, 2)
