"""Throughput of a renderer on one CPU thread: images per second at several sizes.

Usage::

    python benchmarks/bench_render.py                      # procedural, 64 and 128 px
    python benchmarks/bench_render.py --sizes 64 96 128 --batch 64 --images 1024
    python benchmarks/bench_render.py --option supersample=1

Poses are uniform over SO(3) and identities distinct, as in pre-training. One warm-up batch is
rendered first; the figures are the best of ``--repeats`` timed passes. ``images/s`` is wall-clock
throughput; ``images/cpu-s`` divides by the process's CPU time instead, which stays meaningful on
a shared machine where other processes take turns on the core.
"""

from __future__ import annotations

import argparse
import ast
import os
import time

import numpy as np
import torch

from clerf_ray import geometry
from clerf_ray.render import make_renderer


def bench(name: str, size: int, batch: int, images: int, repeats: int, options: dict) -> dict:
    renderer = make_renderer(name, image_size=size, **options)
    R = geometry.sample_rotations(images, seed=0)
    ids = np.arange(images, dtype=np.int64)
    renderer.render(ids[:batch], R[:batch])  # warm-up: allocations, lazy initialisation
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for s in range(0, images, batch):
            renderer.render(ids[s : s + batch], R[s : s + batch])
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return {
        "size": size,
        "batch": batch,
        "images_per_s": images / best,
        "ms_per_image": 1e3 * best / images,
        "images_per_cpu_s": images / best_cpu,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--renderer", default="procedural")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--batch", type=int, default=64, help="images per render() call")
    p.add_argument("--images", type=int, default=512, help="images per timed pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--cores",
        type=int,
        nargs="+",
        default=None,
        help="pin the process to these CPU cores (default: core 0 when --threads is 1, so a "
        "one-core figure is one core, not one thread wandering over all of them)",
    )
    ns = p.parse_args(argv)
    torch.set_num_threads(ns.threads)
    cores = ns.cores if ns.cores is not None else ([0] if ns.threads == 1 else None)
    if cores is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cores))
    options = {}
    for o in ns.option:
        key, value = o.split("=", 1)
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    print(
        f"renderer={ns.renderer} threads={ns.threads} cores={cores or 'all'} options={options} "
        f"torch={torch.__version__}"
    )
    print(f"{'size':>6} {'batch':>6} {'images/s':>10} {'ms/image':>10} {'images/cpu-s':>13}")
    for size in ns.sizes:
        r = bench(ns.renderer, size, ns.batch, ns.images, ns.repeats, options)
        print(
            f"{r['size']:>6} {r['batch']:>6} {r['images_per_s']:>10.1f} {r['ms_per_image']:>10.2f}"
            f" {r['images_per_cpu_s']:>13.1f}"
        )


if __name__ == "__main__":
    main()
