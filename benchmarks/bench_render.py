"""Throughput of a renderer on one CPU thread: images per second at several sizes.

Usage::

    python benchmarks/bench_render.py                      # procedural, 64 and 128 px
    python benchmarks/bench_render.py --sizes 64 96 128 --batch 64 --images 1024
    python benchmarks/bench_render.py --option supersample=1
    python benchmarks/bench_render.py --sizes 64 --profile  # where the procedural renderer's time goes

Poses are uniform over SO(3) and identities distinct, as in pre-training. One warm-up batch is
rendered first; the figures are the best of ``--repeats`` timed passes. ``images/s`` is wall-clock
throughput; ``images/cpu-s`` divides by the process's CPU time instead, which stays meaningful on
a shared machine where other processes take turns on the core.

``--profile`` (procedural renderer only) splits each size's best pass into the renderer's stages:
building the heads, tracing the subsample rays, shading each primitive group's hits, and the
rest of a chunk (sorting hits, scattering colours, the box filter, the background), with the
rays traced and the hits shaded per image. The stages are timed by wrapping the renderer
instance's own methods, so the renderer runs unchanged.
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

# The procedural renderer's stages: method name on the instance, label in the table.
_STAGES = (
    ("_trace", "trace (ray-ellipsoid z-buffer)"),
    ("_shade_skull", "shade: cranium and face"),
    ("_shade_hair", "shade: hair"),
    ("_shade_eyes", "shade: eyes"),
    ("_shade_ears", "shade: ears"),
    ("_shade_nose", "shade: nose"),
    ("_shade_neck", "shade: neck"),
    ("_shade", "shade: tables, gathers, final colour"),
    ("_background", "background"),
)


def _timed(renderer, name: str, spent: dict, counts: dict):
    """Replace ``renderer.name`` (on the instance only) by a wrapper adding its wall time to
    ``spent[name]``; ``_trace`` also counts rays and ``_shade`` hits."""
    inner = getattr(renderer, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
        if name == "_trace":
            counts["rays"] = counts.get("rays", 0) + out[0].numel()
        elif name == "_shade":
            counts["hits"] = counts.get("hits", 0) + out.shape[1]
        return out

    setattr(renderer, name, wrapper)


def profile(size: int, batch: int, images: int, repeats: int, options: dict) -> dict:
    """Seconds per stage of the fastest of ``repeats`` passes (see the module docstring)."""
    renderer = make_renderer("procedural", image_size=size, **options)
    R = geometry.sample_rotations(images, seed=0)
    ids = np.arange(images, dtype=np.int64)
    renderer.render(ids[:batch], R[:batch])
    best = None
    for _ in range(repeats):
        spent, counts = {}, {}
        for name, _ in _STAGES:
            _timed(renderer, name, spent, counts)
        t0 = time.perf_counter()
        for s in range(0, images, batch):
            renderer.render(ids[s : s + batch], R[s : s + batch])
        total = time.perf_counter() - t0
        for name, _ in _STAGES:  # back to the class's methods for the next pass
            del renderer.__dict__[name]
        if best is None or total < best["total_s"]:
            best = {"total_s": total, "spent": spent, "counts": counts}
    spent = best["spent"]
    groups = sum(v for k, v in spent.items() if k.startswith("_shade_"))
    spent["_shade"] -= groups  # the groups run inside _shade: keep the rest of it only
    spent["rest"] = best["total_s"] - sum(spent.values())
    return {
        "size": size,
        "images_per_s": images / best["total_s"],
        "ms_per_image": 1e3 * best["total_s"] / images,
        "stages_ms_per_image": {k: 1e3 * v / images for k, v in spent.items()},
        "rays_per_image": best["counts"]["rays"] / images,
        "hits_per_image": best["counts"]["hits"] / images,
    }


def print_profile(r: dict) -> None:
    ms = r["ms_per_image"]
    print(
        f"\n{r['size']} px: {r['images_per_s']:.0f} images/s, {ms:.3f} ms/image; per image "
        f"{r['rays_per_image']:.0f} rays traced, {r['hits_per_image']:.0f} hits shaded "
        f"({r['hits_per_image'] / r['rays_per_image']:.0%})"
    )
    labels = dict(_STAGES, rest="rest: sort, scatter, box filter, composite")
    for name, v in sorted(r["stages_ms_per_image"].items(), key=lambda kv: -kv[1]):
        print(f"  {labels[name]:<44} {v:7.3f} ms  {v / ms:5.1%}")


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
        "--profile",
        action="store_true",
        help="also split the procedural renderer's time into its stages (see the docstring)",
    )
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
    if ns.profile:
        if ns.renderer != "procedural":
            p.error("--profile splits the procedural renderer's stages only")
        for size in ns.sizes:
            print_profile(profile(size, ns.batch, ns.images, ns.repeats, options))


if __name__ == "__main__":
    main()
