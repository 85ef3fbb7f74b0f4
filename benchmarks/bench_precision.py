"""Training-step speed of the encoder in float32 against bfloat16 autocast with channels-last
weights (``clerf_ray.train.common.autocast`` / ``channels_last``), side by side in one process.

    python benchmarks/bench_precision.py                      # resnet10t, 64 px, 64 pairs
    python benchmarks/bench_precision.py --rounds 5 --backbone resnet18

Each round times both settings one after the other (a fresh model each, the same input), so a
noisy machine slows both alike; the output is the median step time of each, pairs/s, and the
ratio per round. Run it with nothing else heavy on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from clerf_ray.models import create_encoder
from clerf_ray.train.common import autocast, channels_last, full_precision, native_cpu_bf16


def step_times(backbone: str, size: int, pairs: int, steps: int, fast: bool) -> list[float]:
    torch.manual_seed(0)
    model = create_encoder(backbone=backbone, image_size=size)
    x = torch.randn(2 * pairs, 3, size, size)
    if fast:
        model, x = channels_last(model), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cpu = torch.device("cpu")
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        with autocast(cpu, fast):
            z = model(x).float()
        with full_precision(cpu):
            loss = (z[:pairs] * z[pairs:]).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return times[3:]  # the first steps warm up the allocator and oneDNN's kernels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="resnet10t")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    ns = ap.parse_args(argv)
    torch.set_num_threads(ns.threads)
    native = native_cpu_bf16()
    print(f"native bfloat16 on this CPU: {native}; load average {os.getloadavg()}")
    if not native:
        print("autocast stays off on this CPU: both settings run float32")
    rounds = []
    for r in range(ns.rounds):
        a = statistics.median(step_times(ns.backbone, ns.size, ns.pairs, ns.steps, False))
        b = statistics.median(step_times(ns.backbone, ns.size, ns.pairs, ns.steps, True))
        rounds.append({"float32_s": a, "bf16_channels_last_s": b, "ratio": a / b})
        print(
            f"round {r + 1}: float32 {ns.pairs / a:.1f} pairs/s, bf16 channels-last "
            f"{ns.pairs / b:.1f} pairs/s, x{a / b:.2f}",
            flush=True,
        )
    out = {
        "settings": vars(ns),
        "native_bf16": native,
        "load_average_end": os.getloadavg(),
        "rounds": rounds,
        "median_ratio": statistics.median(r["ratio"] for r in rounds),
    }
    print(f"median ratio bf16 channels-last / float32: x{out['median_ratio']:.2f}")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
