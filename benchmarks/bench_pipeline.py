"""Pairs per second through the Ray Data pair pipeline against the same work done directly in one
process, side by side in one run.

Usage::

    python benchmarks/bench_pipeline.py                         # 512 pairs, 64 px, 1 actor
    python benchmarks/bench_pipeline.py --pairs 2048 --actors 2 --batch 64
    python benchmarks/bench_pipeline.py --option supersample=1 --augment none

Both sides do the same work per pair: sample a pose and two identities, render anchor and
positive with the same renderer, apply one geometric augmentation (``--augment``), at the same
batch size. *direct* calls the library's stage functions in a loop in this process with
``--threads`` torch threads; *ray* builds :func:`clerf_ray.data.pairs.build_pair_dataset` on a
local Ray and iterates it as a trainer does (``iter_batches``), so its time includes starting the
actors, moving blocks through the object store and the consumer's copies. Each side runs
``--repeats`` times (a fresh dataset each time, as every epoch is); the best time counts.
"""

from __future__ import annotations

import argparse
import ast
import os
import time

import numpy as np


def _cfg(ns):
    from clerf_ray.config import PairDataConfig

    return PairDataConfig.from_defaults(
        renderer=ns.renderer,
        renderer_options={"image_size": ns.size, **dict(ns.option)},
        num_pairs=ns.pairs,
        augment=ns.augment,
        seed=0,
        render_batch_size=ns.batch,
        num_render_actors=ns.actors,
        render_num_cpus=ns.actor_cpus,
        stage_num_cpus=0.25,
    )


def run_direct(cfg, threads: int) -> tuple[float, float, int]:
    """Make ``cfg.num_pairs`` augmented pairs in this process, batch by batch.

    Returns:
        (total seconds, seconds to the first batch, pairs in the first batch).
    """
    import torch

    from clerf_ray.data import pairs
    from clerf_ray.render import make_renderer, renderer_class

    torch.set_num_threads(threads)
    renderer = make_renderer(cfg.renderer, **cfg.renderer_options)
    pose_range = renderer_class(cfg.renderer).pose_range
    t0 = time.perf_counter()
    made, first = 0, None
    for start in range(0, cfg.num_pairs, cfg.render_batch_size):
        ids = np.arange(start, min(start + cfg.render_batch_size, cfg.num_pairs), dtype=np.int64)
        batch = pairs._sample_synthetic({"id": ids}, cfg, 0, pose_range, None)
        batch["anchor"] = renderer.render(batch["identity_a"], batch["R"])
        batch["positive"] = renderer.render(batch["identity_b"], batch["R"])
        out = pairs.augment_batch(batch, cfg.augment, cfg.seed, 0)
        made += len(out["R"])
        first = first or (time.perf_counter() - t0, made)
    assert made == cfg.num_pairs
    return time.perf_counter() - t0, *first


def run_ray(cfg, epoch: int) -> tuple[float, float, int]:
    """Build and consume one epoch of the pair dataset (actor start included).

    Returns:
        (total seconds, seconds to the first batch, pairs in the first batch).
    """
    from clerf_ray.data.pairs import build_pair_dataset

    t0 = time.perf_counter()
    made, first = 0, None
    for batch in build_pair_dataset(cfg, epoch).iter_batches(
        batch_size=cfg.render_batch_size, batch_format="numpy"
    ):
        made += len(batch["R"])
        first = first or (time.perf_counter() - t0, made)
    assert made == cfg.num_pairs, made
    return time.perf_counter() - t0, *first


def _parse_option(text: str):
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--renderer", default="procedural")
    p.add_argument("--pairs", type=int, default=512)
    p.add_argument("--size", type=int, default=64, help="image side, pixels")
    p.add_argument("--batch", type=int, default=64, help="pairs per renderer call, both sides")
    p.add_argument("--augment", default="fa", choices=("none", "sa", "fa"))
    p.add_argument("--actors", type=int, default=1, help="renderer actors (ray side)")
    p.add_argument("--actor-cpus", type=float, default=1.0, help="CPUs per renderer actor")
    p.add_argument("--threads", type=int, default=1, help="torch threads (direct side)")
    p.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--option", type=_parse_option, action="append", default=[], metavar="K=V")
    ns = p.parse_args(argv)

    import ray
    import ray.data

    cfg = _cfg(ns)
    ray.init(num_cpus=ns.cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    load = os.getloadavg()[0]
    direct = min(run_direct(cfg, ns.threads) for _ in range(ns.repeats))
    piped = min(run_ray(cfg, epoch) for epoch in range(ns.repeats))
    ray.shutdown()
    rows = [
        ("direct (1 process)", f"{ns.threads} torch thread(s)", direct),
        ("Ray Data pipeline", f"{ns.actors} actor(s) x {ns.actor_cpus:g} CPU", piped),
    ]
    print(
        f"\n{ns.pairs} pairs, {ns.renderer} {ns.size} px, batch {ns.batch}, augment {ns.augment}, "
        f"options {dict(ns.option)}; {os.cpu_count()} CPUs, load average {load:.1f} at start; "
        f"best of {ns.repeats}\n"
    )
    print("| path | workers | total s | first batch s | pairs/s | pairs/s after first batch |")
    print("|---|---|---:|---:|---:|---:|")
    rates = []
    for name, workers, (total, t_first, n_first) in rows:
        steady = (ns.pairs - n_first) / max(total - t_first, 1e-9)
        rates.append((ns.pairs / total, steady))
        print(
            f"| {name} | {workers} | {total:.1f} | {t_first:.1f} | {ns.pairs / total:.1f} "
            f"| {steady:.1f} |"
        )
    print(
        f"\nratio Ray / direct, pairs/s: {rates[1][0] / rates[0][0]:.2f} overall, "
        f"{rates[1][1] / rates[0][1]:.2f} after the first batch"
    )


if __name__ == "__main__":
    main()
