"""Pretraining throughput: a plain PyTorch loop against Ray Train fed by Ray Data, side by side in
one run, on the same model, pairs, batch, optimiser and torch threads.

Usage::

    python benchmarks/bench_train.py                            # 2048 pairs, 3 epochs, 64 px
    python benchmarks/bench_train.py --pairs 4096 --epochs 4 --json bench_train.json
    python benchmarks/bench_train.py --only a b pretrain.batch_size=32
    python benchmarks/bench_train.py --only a b --pairs 4096 --rounds 3   # medians of 3 rounds

The cases:

* **(a) plain**: this process, the pool's pairs held in memory as numpy arrays, each batch given
  the epoch's augmentation in the loop (:func:`clerf_ray.data.pairs.augment_batch`), then the
  same step as the workers' (:func:`clerf_ray.train.common.fit`: forward over both views, Circle
  Loss, AdamW with warm-up and cosine, gradient clipping).
* **(b) ray pool**: one Ray Train worker running :func:`clerf_ray.train.pretrain.pretrain_loop`,
  fed by Ray Data from the render pool (the default job's path: one dataset for the run, read
  once per epoch, augmented on the worker in Ray Data's collate threads).
* **(c) ray live**: the same, fed by live renderer actors that render every epoch's pairs
  (``data.pool=false``).
* **(d) ray 2 workers**: (b) on two DDP workers, each with half the torch threads.

Steady-state samples/s leave out the first epoch (start-up, allocator warm-up) and each epoch's
first batch (the dataset's start-up, reported apart as ``first_batch_s``). ``startup_s`` is the
run's wall time outside its epochs (Ray Train's controller and workers, model build, the end).
The time split per epoch comes from the loop's own clock (:class:`clerf_ray.train.common.
EpochClock`): waiting for data, compute (forward, backward with DDP's all-reduce inside it,
optimiser), augmentation (in collate threads, overlapping the steps) and, for (d), DDP's own
all-reduce timer. The output is a table and, with ``--json``, the same figures as JSON.

Run it with nothing else heavy on the machine: every case shares its cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = {
    "a": "plain PyTorch loop, pairs in memory",
    "b": "Ray Train, 1 worker, render pool",
    "c": "Ray Train, 1 worker, live renders",
    "d": "Ray Train, 2 workers, render pool",
}


def _config(ns):
    from clerf_ray.config import load_config

    return load_config(
        ns.config,
        [
            f"data.num_pairs={ns.pairs}",
            f"data.image_size={ns.size}",
            f"pretrain.epochs={ns.epochs}",
            "pretrain.time_limit_s=null",
            *ns.overrides,
        ],
    )


def _pool_arrays(pool) -> dict[str, np.ndarray]:
    cols: dict[str, list[np.ndarray]] = {}
    for batch in pool.iter_batches(batch_size=1024, batch_format="numpy"):
        for k, v in batch.items():
            cols.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in cols.items()}


def run_plain(cfg, pairs: dict[str, np.ndarray]) -> dict:
    """(a): the workers' step in a plain loop over in-memory pairs (module docstring)."""
    import torch

    from clerf_ray.data.pairs import augment_batch
    from clerf_ray.losses import ContrastivePoseLoss
    from clerf_ray.models import create_encoder
    from clerf_ray.train.common import (
        autocast,
        channels_last,
        full_precision,
        numeric_tensors,
        seed_everything,
        warmup_cosine,
    )

    p = cfg.pretrain
    if p.torch_threads:
        torch.set_num_threads(p.torch_threads)
    seed_everything(cfg.seed)
    # The workers' precision and layout (bfloat16 autocast on a CPU with native bf16, channels-
    # last weights), so that the ratios compare pipelines, not arithmetic.
    model = channels_last(create_encoder(cfg.model, image_size=cfg.data.image_size))
    cpu = torch.device("cpu")
    loss_fn = ContrastivePoseLoss(m=p.m, gamma=p.gamma, negative_margin_deg=p.negative_margin_deg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    n = len(pairs["pair_id"])
    steps = n // p.batch_size
    scheduler = warmup_cosine(optimizer, steps * p.epochs, p.warmup_fraction)
    params = [q for q in model.parameters() if q.requires_grad]
    rng = np.random.default_rng(cfg.seed)
    epochs = []
    t_run = time.monotonic()
    for epoch in range(p.epochs):
        t0 = time.monotonic()
        order = rng.permutation(n)
        augment_s = compute_s = 0.0
        first = None
        model.train()
        for s in range(steps):
            idx = order[s * p.batch_size : (s + 1) * p.batch_size]
            ta = time.monotonic()
            batch = numeric_tensors(
                augment_batch(
                    {k: v[idx] for k, v in pairs.items()}, cfg.data.augment, cfg.seed, epoch
                )
            )
            tc = time.monotonic()
            augment_s += tc - ta
            if first is None:
                first = tc - t0
            anchor = model.preprocess(batch["anchor"])
            positive = model.preprocess(batch["positive"])
            with autocast(cpu, p.amp):
                emb = model(torch.cat([anchor, positive])).float()
            with full_precision(cpu):
                loss = loss_fn(emb[: len(idx)], emb[len(idx) :], batch["R"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            scheduler.step()
            float(loss.detach())
            compute_s += time.monotonic() - tc
        took = time.monotonic() - t0
        epochs.append(
            {
                "epoch": epoch + 1,
                "samples": steps * p.batch_size,
                "took_s": took,
                "first_batch_s": first,
                "data_wait_s": augment_s,  # the loop makes its own batches: all of it is waiting
                "compute_s": compute_s,
                "augment_s": augment_s,
            }
        )
    return {"wall_s": time.monotonic() - t_run, "epochs": epochs}


def run_ray(cfg, pool, storage: str, name: str) -> dict:
    """(b), (c), (d): the main job's pretraining stage (:mod:`clerf_ray.runs.clerf`)."""
    from clerf_ray.data.pairs import pairs_per_epoch, pretrain_inputs
    from clerf_ray.train.pretrain import pretrain_loop
    from clerf_ray.train.runner import run_stage

    pair_cfg = cfg.data.pair_config(seed=cfg.seed)
    num_pairs = pool.count() if pool is not None else pairs_per_epoch(pair_cfg)
    datasets, reading = pretrain_inputs(pair_cfg, cfg.pretrain.epochs, pool=pool)
    t0 = time.monotonic()
    result = run_stage(
        stage="pretrain",
        loop=pretrain_loop,
        loop_config={"cfg": cfg.model_dump(mode="json"), "num_pairs": num_pairs, **reading},
        section=cfg.pretrain,
        datasets=datasets,
        storage_path=storage,
        name=name,
    )
    wall = time.monotonic() - t0
    epochs = []
    for h in result.history:
        epochs.append(
            {
                "epoch": h["epoch"],
                "samples": len(h["step_losses"]) * cfg.pretrain.batch_size,
                "took_s": h["epoch_s"],
                **{
                    k: h.get(k)
                    for k in (
                        "first_batch_s",
                        "data_wait_s",
                        "compute_s",
                        "augment_s",
                        "allreduce_ms_per_step",
                        "allreduce_overlap_ms_per_step",
                    )
                    if k in h
                },
            }
        )
    return {"wall_s": wall, "epochs": epochs}


def run_case(case: str, cfg, pool, storage: str, name: str) -> dict:
    """One case's run (module docstring); ``name`` must be new for every run of a Ray case: a
    Train run whose name already holds a checkpoint would resume it."""
    if case == "a":
        return run_plain(cfg, _pool_arrays(pool))
    if case == "c":
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"pool": False})})
    if case == "d":
        p = cfg.pretrain
        two = {
            "num_workers": 2,
            "cpus_per_worker": p.cpus_per_worker / 2,
            "torch_threads": max(1, (p.torch_threads or 2) // 2),
        }
        cfg = cfg.model_copy(update={"pretrain": p.model_copy(update=two)})
    return run_ray(cfg, pool if case != "c" else None, storage, name)


def summarise(case: str, out: dict, batch: int) -> dict:
    """Steady samples/s (epochs after the first, without their first batch), start-ups, split."""
    epochs = out["epochs"]
    steady = epochs[1:] or epochs
    samples = sum(e["samples"] - batch for e in steady)
    seconds = sum(e["took_s"] - e["first_batch_s"] for e in steady)
    took = sum(e["took_s"] for e in epochs)
    per_step = {}
    for k in ("data_wait_s", "compute_s", "augment_s"):
        steps = sum(e["samples"] for e in steady) / batch
        per_step[k.replace("_s", "_ms_per_step")] = 1000 * sum(e[k] for e in steady) / steps
    for k in ("allreduce_ms_per_step", "allreduce_overlap_ms_per_step"):
        if k in epochs[-1]:
            per_step[k] = epochs[-1][k]
    return {
        "case": case,
        "what": CASES[case],
        "steady_samples_per_s": samples / seconds,
        "startup_per_run_s": out["wall_s"] - took,
        "startup_per_epoch_s": float(np.mean([e["first_batch_s"] for e in epochs])),
        "first_epoch_first_batch_s": epochs[0]["first_batch_s"],
        **per_step,
        "epochs": epochs,
        "wall_s": out["wall_s"],
    }


def median_round(case: str, runs: dict[str, list[dict]]) -> dict:
    """``case``'s round with the median steady samples/s (the lower middle one of an even
    count), with ``round_ratios``: each round's samples/s over (a)'s in the same round."""
    mine = runs[case]
    row = dict(sorted(mine, key=lambda r: r["steady_samples_per_s"])[(len(mine) - 1) // 2])
    if "a" in runs:
        row["round_ratios"] = [
            r["steady_samples_per_s"] / a["steady_samples_per_s"]
            for r, a in zip(mine, runs["a"], strict=True)
        ]
    return row


def table(rows: list[dict]) -> str:
    base = next((r["steady_samples_per_s"] for r in rows if r["case"] == "a"), None)
    lines = [
        "| case | samples/s | vs (a) | vs (a), each round | start-up per run | per epoch "
        "| wait ms/step | compute ms/step | augment ms/step | all-reduce ms/step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = f"{r['steady_samples_per_s'] / base:.2f}" if base else "-"
        each = ", ".join(f"{x:.2f}" for x in r.get("round_ratios", [])) or "-"
        ar = r.get("allreduce_ms_per_step")
        lines.append(
            f"| ({r['case']}) {r['what']} | {r['steady_samples_per_s']:.1f} | {ratio} | {each} "
            f"| {r['startup_per_run_s']:.1f} s | {r['startup_per_epoch_s']:.2f} s "
            f"| {r['data_wait_ms_per_step']:.0f} | {r['compute_ms_per_step']:.0f} "
            f"| {r['augment_ms_per_step']:.0f} | {'-' if ar is None else f'{ar:.0f}'} |"
        )
    return "\n".join(lines)


def _machine() -> dict:
    import ray
    import torch

    from clerf_ray.train.common import native_cpu_bf16

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except OSError:
        sha = ""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "cpu_native_bf16": native_cpu_bf16(),
        "git_sha": sha,
        "load_average_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=2048, help="pairs per epoch (the pool's size)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per case (the first is warm-up)")
    ap.add_argument("--size", type=int, default=64, help="image size (px)")
    ap.add_argument("--only", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the cases this many times, interleaved (a b c d a b c d ...), and report each "
        "case's median round and every round's ratio to (a)'s round beside it: a noisy machine "
        "moves single runs by several percent",
    )
    ap.add_argument("--config", default=None, help="a config YAML (default: the laptop default)")
    ap.add_argument("--json", default=None, help="write the figures here as JSON")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    ns = ap.parse_args(argv)
    if ns.epochs < 2:
        ap.error("--epochs must be at least 2: the first epoch is warm-up")
    if ns.rounds < 1:
        ap.error("--rounds must be at least 1")

    import ray

    from clerf_ray.data.pairs import render_pool
    from clerf_ray.ray_init import init_ray

    cfg = _config(ns)
    machine = _machine()
    init_ray()
    t0 = time.monotonic()
    pool = render_pool(cfg.data.pair_config(seed=cfg.seed))
    print(f"rendered a pool of {pool.count()} pairs in {time.monotonic() - t0:.0f}s", flush=True)
    runs = {case: [] for case in ns.only}  # every round's summary, per case
    with tempfile.TemporaryDirectory() as storage:
        for rnd in range(ns.rounds):
            for case in ns.only:
                print(f"({case}) {CASES[case]}, round {rnd + 1} of {ns.rounds} ...", flush=True)
                out = run_case(case, cfg, pool, storage, name=f"bench-{case}-{rnd}")
                row = summarise(case, out, cfg.pretrain.batch_size)
                runs[case].append(row)
                print(
                    f"({case}) {row['steady_samples_per_s']:.1f} samples/s steady, "
                    f"start-up {row['startup_per_run_s']:.1f} s per run",
                    flush=True,
                )
    rows = [median_round(case, runs) for case in ns.only]
    ray.shutdown()
    machine["load_average_end"] = os.getloadavg()
    settings = {
        "pairs": ns.pairs,
        "epochs": ns.epochs,
        "image_size": ns.size,
        "backbone": cfg.model.backbone,
        "batch_size": cfg.pretrain.batch_size,
        "torch_threads": cfg.pretrain.torch_threads,
        "augment": cfg.data.augment,
        "rounds": ns.rounds,
        "overrides": ns.overrides,
    }
    print()
    print(table(rows))
    print(
        f"\n{settings['backbone']}, {ns.size} px, batch {settings['batch_size']}, "
        f"{settings['torch_threads']} torch threads, {ns.pairs} pairs x {ns.epochs} epochs, "
        f"{ns.rounds} round(s) (median round shown); "
        f"load average {machine['load_average_start'][0]:.1f} -> "
        f"{machine['load_average_end'][0]:.1f}"
    )
    if ns.json:
        Path(ns.json).write_text(
            json.dumps(
                {"machine": machine, "settings": settings, "cases": rows, "rounds": runs}, indent=2
            )
        )
        print(f"wrote {ns.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
