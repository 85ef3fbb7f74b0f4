"""Throughput of a renderer on one CPU thread: images per second at several sizes.

Usage::

    python benchmarks/bench_render.py                      # procedural, 64 and 128 px
    python benchmarks/bench_render.py --sizes 64 96 128 --batch 64 --images 1024
    python benchmarks/bench_render.py --option supersample=1
    python benchmarks/bench_render.py --sizes 64 --profile  # where the procedural renderer's time goes
    python benchmarks/bench_render.py --sizes 64 --vs supersample=2 --quality --json out.json

Poses are uniform over SO(3) and identities distinct, as in pre-training. One warm-up batch is
rendered first; the figures are the best of ``--repeats`` timed passes. ``images/s`` is wall-clock
throughput; ``images/cpu-s`` divides by the process's CPU time instead, which stays meaningful on
a shared machine where other processes take turns on the core.

``--vs KEY=VALUE[,KEY=VALUE...]`` adds a case with those renderer options (on top of
``--option``'s); the cases' timed passes are interleaved (case 1, case 2, ..., then again) so that
a slow spell of a shared machine hits them alike, and each case's ratio to the first is printed.
``--quality`` also renders every case's images against a reference (``--reference``, by default
the 8 x 8 supersampled grid, ``supersample=8``) of the same identities and poses and reports the
mean absolute difference in grey levels (0-255), its 99.9th percentile and the share of values off
by more than 16.

``--profile`` (procedural renderer only) splits each size's best pass into the renderer's stages:
building the heads, tracing the subsample rays, shading each primitive group's hits, and the
rest of a chunk (sorting hits, scattering colours, the box filter, the background), with the
rays traced and the hits shaded per image. The stages are timed by wrapping the renderer
instance's own methods, so the renderer runs unchanged.
"""

from __future__ import annotations

import argparse
import ast
import json
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


def _poses(images: int):
    return np.arange(images, dtype=np.int64), geometry.sample_rotations(images, seed=0)


def _timed_pass(renderer, ids, R, batch: int) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(0, len(ids), batch):
        renderer.render(ids[s : s + batch], R[s : s + batch])
    return time.perf_counter() - t0, time.process_time() - c0


def bench(
    name: str, size: int, batch: int, images: int, repeats: int, cases: list[dict]
) -> list[dict]:
    """Best of ``repeats`` passes per case, the cases' passes interleaved (see the docstring)."""
    renderers = [make_renderer(name, image_size=size, **options) for options in cases]
    ids, R = _poses(images)
    for renderer in renderers:
        renderer.render(ids[:batch], R[:batch])  # warm-up: allocations, lazy initialisation
    best = [[float("inf"), float("inf")] for _ in cases]
    for _ in range(repeats):
        for i, renderer in enumerate(renderers):
            wall, cpu = _timed_pass(renderer, ids, R, batch)
            best[i] = [min(best[i][0], wall), min(best[i][1], cpu)]
    return [
        {
            "size": size,
            "batch": batch,
            "options": options,
            "images_per_s": images / wall,
            "ms_per_image": 1e3 * wall / images,
            "images_per_cpu_s": images / cpu,
            "vs_first": best[0][0] / wall,
        }
        for options, (wall, cpu) in zip(cases, best, strict=True)
    ]


def quality(name: str, size: int, images: int, cases: list[dict], reference: dict) -> list[dict]:
    """Each case's images against the reference renderer's, same identities and poses."""
    ids, R = _poses(images)
    ref = make_renderer(name, image_size=size, **reference).render(ids, R).astype(np.float64)
    out = []
    for options in cases:
        img = make_renderer(name, image_size=size, **options).render(ids, R)
        diff = np.abs(img.astype(np.float64) - ref)
        out.append(
            {
                "mean_abs_diff": float(diff.mean()),
                "p99_9_abs_diff": float(np.percentile(diff, 99.9)),
                "share_off_by_over_16": float((diff > 16).mean()),
            }
        )
    return out


def _parse_options(items: list[str]) -> dict:
    options = {}
    for o in items:
        key, value = o.split("=", 1)
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


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
        "--vs",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="another case: these renderer options on top of --option's (repeatable)",
    )
    p.add_argument(
        "--quality",
        action="store_true",
        help="also compare every case's images with --reference's (mean abs. difference)",
    )
    p.add_argument("--reference", default="supersample=8", metavar="KEY=VALUE[,KEY=VALUE]")
    p.add_argument("--json", default=None, help="also write the results here")
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
    options = _parse_options(ns.option)
    cases = [options] + [{**options, **_parse_options(v.split(","))} for v in ns.vs]
    print(
        f"renderer={ns.renderer} threads={ns.threads} cores={cores or 'all'} options={options} "
        f"torch={torch.__version__}"
    )
    header = f"{'size':>6} {'batch':>6} {'images/s':>10} {'ms/image':>10} {'images/cpu-s':>13}"
    if len(cases) > 1:
        header += f" {'vs first':>9}  options"
    print(header)
    results = []
    for size in ns.sizes:
        rows = bench(ns.renderer, size, ns.batch, ns.images, ns.repeats, cases)
        if ns.quality:
            reference = _parse_options(ns.reference.split(","))
            for row, q in zip(
                rows, quality(ns.renderer, size, ns.images, cases, reference), strict=True
            ):
                row.update(q, reference=reference)
        for r in rows:
            line = (
                f"{r['size']:>6} {r['batch']:>6} {r['images_per_s']:>10.1f} "
                f"{r['ms_per_image']:>10.2f} {r['images_per_cpu_s']:>13.1f}"
            )
            if len(cases) > 1:
                line += f" {r['vs_first']:>9.2f}  {r['options']}"
            print(line)
        results.extend(rows)
    if ns.quality:
        print(f"\nagainst {ns.reference} (grey levels 0-255, same identities and poses):")
        print(f"{'size':>6} {'mean abs':>9} {'p99.9':>7} {'> 16':>7}  options")
        for r in results:
            print(
                f"{r['size']:>6} {r['mean_abs_diff']:>9.2f} {r['p99_9_abs_diff']:>7.1f} "
                f"{r['share_off_by_over_16']:>7.2%}  {r['options']}"
            )
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(
                {
                    "renderer": ns.renderer,
                    "threads": ns.threads,
                    "cores": cores,
                    "results": results,
                },
                f,
                indent=2,
            )
    if ns.profile:
        if ns.renderer != "procedural":
            p.error("--profile splits the procedural renderer's stages only")
        for size in ns.sizes:
            print_profile(profile(size, ns.batch, ns.images, ns.repeats, options))


if __name__ == "__main__":
    main()
