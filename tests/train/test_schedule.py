"""The learning-rate schedule and the step a time limit stops at (clerf_ray.train.common),
without Ray; the Ray run that stops two ranks at that step is in test_train_ray.py."""

from __future__ import annotations

import math

import pytest
import torch

from clerf_ray.train import common


def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_warmup_then_cosine_to_zero_at_the_schedules_end():
    # 5% of 100 steps: 5 warm-up steps, then half a cosine period over the other 95.
    opt = _optimizer(0.1)
    sched = common.warmup_cosine(opt, 100, 0.05)
    lrs = [sched.get_last_lr()[0]]
    for _ in range(120):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert lrs[5] == pytest.approx(0.1)
    # Halfway through the decay, (52.5 - 5) / 95 = 0.5 of the period: cos(pi / 2) = 0.
    assert lrs[52] == pytest.approx(0.05 * (1 + math.cos(math.pi * 47 / 95)))
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert lrs[120] == pytest.approx(0.0, abs=1e-12)  # past the end it stays at zero


@pytest.mark.parametrize(
    "done, total, left, per_step",
    [
        (40, 120, 1000.0, 0.5),
        (40, 120, 30.0, 0.5),
        (40, 120, 29.99, 0.5),
        (7, 12, -3.0, 1.0),
        (0, 50, 12.0, 0.25),
        (3, 9, 0.0, 2.0),
    ],
)
def test_steps_in_time_is_the_most_steps_that_fit_by_counting(done, total, left, per_step):
    # By brute force: add steps one at a time while their time still fits.
    expected, spent = done, 0.0
    while expected < total and spent + per_step <= left + 1e-12:
        expected, spent = expected + 1, spent + per_step
    assert common.steps_in_time(done, total, left, per_step) == expected
