"""The paper's claim, measured on this project's renders: CLERF against supervised 6D baselines at
equal budget, three seeds, on standard-range, SA, FA and full-range test sets. Writes
``BENCHMARKS.md`` (the method table's sections) and a JSON file with every figure.

Usage::

    python benchmarks/method_table.py              # the full table (about 2 h on 2 cores)
    python benchmarks/method_table.py --quick      # smoke run: tiny, full range, one seed (8 min here)
    python benchmarks/method_table.py --seeds 0 1 2 --epochs 4 model.backbone=resnet18
    python benchmarks/method_table.py --labelled data/aflw2000   # on a labelled set (below)

The protocol (arXiv 2412.02066, Section 4, on procedural heads instead of photographs):

* **Training ranges.** ``standard``: poses drawn like 300W-LP's, |yaw| <= 90 and |pitch|,
  |roll| <= 45 deg (``data.poses=ranges``); ``full``: uniform over SO(3).
* **Models.** ``clerf``: Circle Loss pretraining on anchor-positive pairs with the geometric (FA)
  augmentation, then the pose head on the frozen encoder (``jobs/pretrain.py``'s recipe);
  ``baseline``: the supervised 6D baseline without augmentation (6DRepNet's recipe: the same
  backbone and head trained end to end by 6D regression with the geodesic loss); ``baseline+fa``:
  the same baseline with CLERF's geometric augmentation.
* **Test sets**, renders of identities none of the models trained on (``eval.identities``), the
  same images for every model and seed: ``standard`` (the standard range, unaugmented), ``SA``
  (each standard image rotated in-plane within +-15 deg, the label transformed exactly), ``FA``
  (any in-plane rotation and flips of each standard image), ``full`` (uniform over SO(3)).
* **Equal budget: wall-clock on the same renders.** For one seed every model reads the same
  rendered pool (``data.pool``, the same seed), in steps of the same number of images. CLERF
  pretrains ``--epochs`` epochs and then spends its head stage: the first CLERF run's median
  epoch time times ``--epochs``, plus its head stage's wall time (Ray Train's start-up and the
  embedding actors included: what CLERF pays, the baselines get as training time), is the
  budget of every run. Each baseline trains as many epochs as fit in it at its own epoch time,
  measured on its first run (rerun once at the right count when the first guess was off; not
  with ``--quick``, whose figures only show that the machinery works). Every
  schedule runs to its end (no time limit cuts a cosine schedule short); each run's measured
  training wall time is reported beside the errors.
* **Fair settings.** Each model's ``pretrain.lr`` and ``pretrain.weight_decay`` come from the same
  grid (``--lr``, ``--wd``), each grid point trained once on the full range with the first seed
  and scored by its median geodesic error on validation renders (``tune.val_identities``, disjoint
  from the training and test identities); the lowest wins and trains every cell of that model.
  Everything else is the project's default for all three.
* **Seeds.** A seed changes the renders, the augmentation draws and the initialisation. Each cell
  gives the mean over seeds and the spread (min-max) of the geodesic median and mean and the
  Euler MAE.

**On a labelled set** (``--labelled PATH``, a labelled Parquet set such as ``jobs/prepare_data.py``
writes): the set is split by image (seeded) into 70% train, 10% validation and 20% test. The one
training range is the set's own poses: CLERF pretrains on its training images as real anchors
with procedural positives rendered at their poses (``data.source=real_anchor``) and trains its
head on the same images (``head.labelled_path``); both baselines train on the same images. The
search scores on the validation split; the tests are the test split (MAE against the set's own
Euler angles) and its SA and FA variants. The outputs default to
``benchmarks/results/method_table-labelled.{md,json}``, leaving ``BENCHMARKS.md`` to the renders.

Runs go to ``--work`` (default ``method_table_runs/<date-time>``): Ray Train checkpoints, a
sqlite MLflow store holding every run, and ``runs.jsonl`` with each finished run's record as it
lands (what is left of a table stopped part-way). The table is rerun in a new folder each time, because a
Ray Train run whose name and storage already hold a checkpoint resumes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

MODELS = {
    "clerf": "CLERF (Circle Loss pretraining + head on the frozen encoder)",
    "baseline": "supervised 6D baseline, no augmentation (6DRepNet's recipe)",
    "baseline+fa": "supervised 6D baseline with CLERF's geometric augmentation (FA)",
}
RANGES = {
    "standard": [
        "data.poses=ranges",
        "data.yaw_range=[-90, 90]",
        "data.pitch_range=[-45, 45]",
        "data.roll_range=[-45, 45]",
    ],
    "full": ["data.poses=so3"],
}
TEST_SETS = ("standard", "SA", "FA", "full")
# With --labelled: the training range is the set's own poses; the tests are its test split and
# that split's SA and FA variants (no full-range photographs exist to test on).
LABELLED_TEST_SETS = ("standard", "SA", "FA")
# Shares of a labelled set's images held out, by image, for validation and test (the rest trains).
LABELLED_SPLIT = {"val": 0.1, "test": 0.2}
LABELLED_SPLIT_SEED = 8001
METRICS = {
    "geodesic_median": "geodesic error, median (deg)",
    "geodesic_mean": "geodesic error, mean (deg)",
    "mae_mean": "Euler MAE, mean of pitch, yaw, roll (deg)",
}

# The settings of a run of the whole table and of --quick; command-line options override them.
FULL = {
    "epochs": 6,
    "seeds": [0, 1, 2],
    "lr": [1e-3, 4e-3],
    "wd": [0.01, 0.1],
    "ranges": ["standard", "full"],
    "recalibrate": True,
    "test_samples": 512,
    "val_samples": 256,
    "overrides": [
        "data.num_pairs=2048",
        "head.num_samples=2048",
        "head.draws=2",
        "eval.num_samples=16",  # each run's own closing check; the table has its own sets
    ],
}
QUICK = {
    "epochs": 1,
    "seeds": [0],
    "lr": [4e-3],
    "wd": [0.05],
    "ranges": ["full"],  # --ranges standard full: both, about 13 min
    # Keep each baseline's first guess of its epoch count (no rerun at the measured count): a
    # smoke run checks the machinery, not the budget.
    "recalibrate": False,
    "test_samples": 32,
    "val_samples": 16,
    "overrides": [
        "data.image_size=32",
        "data.num_pairs=64",
        "data.render_batch_size=32",
        "model.embedding_dim=32",
        "model.projection_hidden=64",
        "model.head_hidden=[32]",
        "pretrain.batch_size=16",
        "head.num_samples=32",
        "head.draws=1",
        "head.epochs=1",
        "head.batch_size=16",
        "head.views=1",
        "eval.num_samples=8",
    ],
}


# --------------------------------------------------------------------------- figures


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Cells of the table from per-seed records (``range``, ``model``, ``seed``, ``test``:
    {set: metrics}, ``train_s``): per (range, model, set, metric) the mean over seeds, min, max
    and the seeds' values; per (range, model) the mean training wall time."""
    cells: dict[str, Any] = {}
    for rec in records:
        for test, metrics in rec["test"].items():
            for name in METRICS:
                key = f"{rec['range']}|{rec['model']}|{test}|{name}"
                cells.setdefault(key, []).append(float(metrics[name]))
    out = {
        key: {
            "mean": float(np.mean(v)),
            "min": float(np.min(v)),
            "max": float(np.max(v)),
            "values": v,
        }
        for key, v in cells.items()
    }
    times: dict[str, list[float]] = {}
    for rec in records:
        times.setdefault(f"{rec['range']}|{rec['model']}", []).append(float(rec["train_s"]))
    return {"cells": out, "train_s": {k: float(np.mean(v)) for k, v in times.items()}}


def verdict(clerf: dict[str, Any], baselines: list[dict[str, Any]]) -> str:
    """``better``, ``worse`` or ``on par``: CLERF's cell against the better baseline's (lower is
    better). Better or worse only when the seeds' ranges do not overlap: with three seeds an
    overlap is not a difference this table can show; with one seed there is no range, and no
    verdict (``one seed``)."""
    best = min(baselines, key=lambda c: c["mean"])
    if min(len(clerf["values"]), len(best["values"])) < 2:
        return "one seed"
    if clerf["max"] < best["min"]:
        return "better"
    if clerf["min"] > best["max"]:
        return "worse"
    return "on par"


def budget_sentence(report: dict[str, Any]) -> str:
    cal, ep, s = report["calibration"], report["epochs"], report["settings"]
    c = cal["clerf"]
    base = ", ".join(
        f"`{m}` {ep[m]} epochs ({cal[m]['epoch_s']:.1f} s each)" for m in MODELS if m != "clerf"
    )
    kept = "" if s.get("recalibrate", True) else " (`--quick`: first guesses, not refitted)"
    if s.get("labelled"):
        what = f"{s['num_pairs']} pairs (the training images as anchors, rendered positives)"
        same = "training images"
    else:
        what, same = f"{s['num_pairs']} pooled pairs", "pool"
    return (
        f"CLERF pretrains {ep['clerf']} epoch{'s' if ep['clerf'] != 1 else ''} of {what} "
        f"({c['epoch_s']:.1f} s each in the first CLERF run) and then trains its head "
        f"({c['head_s']:.0f} s): {c['budget_s']:.0f} s per run. The baselines train on the same "
        f"{same} as many epochs as fit in that at their own epoch time{kept}: {base}."
    )


# How this script's baselines read their images (clerf_ray.runs.baseline), kept in each report:
# pretraining's pair stream, one dataset per run, augmented on the Ray Train worker.
BASELINE_INPUT = "pretrain_inputs"


def epoch_time_sentence(report: dict[str, Any]) -> str:
    """Where a baseline's epochs on the same images took more than 10% longer than CLERF's: by
    how much, the epochs it would have had at CLERF's epoch time, and what its first run (at
    the first guess, CLERF's epoch time) scored on validation. Empty when they match."""
    cal, ep = report["calibration"], report["epochs"]
    c = cal["clerf"]
    parts = []
    for m in MODELS:
        if m == "clerf" or m not in cal:
            continue
        ratio = cal[m]["epoch_s"] / c["epoch_s"]
        if ratio <= 1.1:
            continue
        part = (
            f"`{m}`'s epochs took {ratio:.2f} times CLERF's on the same images "
            f"({ep[m]} epochs in the budget instead of {cal[m]['first_guess']}"
        )
        first = cal[m].get("first_guess_val_median")
        if first is not None:
            part += (
                f"; its first run, at {cal[m]['first_guess']} epochs with the grid's first point, "
                f"scored {first:.1f} deg on validation"
            )
        parts.append(part + ")")
    if not parts:
        return ""
    if report.get("baseline_input") == BASELINE_INPUT:
        cause = (
            "The baselines read CLERF's pair stream (one dataset per run, augmented on the "
            "worker), so the difference lies in their training steps."
        )
    else:  # reports of runs before the baseline read pretraining's stream (580ff47 and older)
        cause = (
            "The baselines' stream started a Ray Data dataset per epoch and augmented in Ray "
            "Data tasks that share the cores with training, where CLERF's reads one dataset per "
            "run and augments on its worker."
        )
    return "The budget is wall-clock, so input pipelines count: " + "; ".join(parts) + ". " + cause


def _cell(c: dict[str, float] | None) -> str:
    if c is None:
        return "-"
    if len(c["values"]) == 1:
        return f"{c['mean']:.1f}"
    return f"{c['mean']:.1f} ({c['min']:.1f}-{c['max']:.1f})"


def claim_paragraph(
    agg: dict[str, Any], ranges: list[str], test_sets: tuple[str, ...] | list[str] = TEST_SETS
) -> str:
    """What the table says about the paper's claim, from the verdicts on the geodesic median:
    on par on the standard range, better on SA, FA and the full range."""
    cells = agg["cells"]
    lines = []
    for rng in ranges:
        parts = []
        for test in test_sets:
            c = cells.get(f"{rng}|clerf|{test}|geodesic_median")
            bs = [
                cells.get(f"{rng}|{m}|{test}|geodesic_median") for m in ("baseline", "baseline+fa")
            ]
            bs = [b for b in bs if b is not None]
            if c is None or not bs:
                continue
            best = min(bs, key=lambda b: b["mean"])
            parts.append(
                f"{test}: {verdict(c, bs)} ({c['mean']:.1f} against {best['mean']:.1f} deg)"
            )
        if parts:
            lines.append(
                f"- trained on the {rng} range, CLERF against the better baseline: "
                + "; ".join(parts)
                + "."
            )
    paper = (
        "The paper's claim: on par with supervised models on standard-range test sets, clearly "
        "better on SA and FA variants and over the full range. Verdicts compare the median "
        "geodesic error of CLERF with that of the better of the two baselines on each set; "
        "better or worse only where the seeds' ranges do not overlap."
    )
    return paper + "\n\n" + "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """The BENCHMARKS.md sections of a report (see :func:`main`)."""
    s, agg = report["settings"], report["aggregate"]
    m = report["machine"]
    tests = s.get("test_sets", TEST_SETS)
    lab = s.get("labelled")
    out = [
        "## Method table: CLERF against supervised baselines",
        "",
        f"`python benchmarks/method_table.py{' --quick' if s['quick'] else ''}` on "
        f"{m['date']} (git {m['git_sha']}), {m['cpus']} CPUs, no GPU, Python {m['python']}, "
        f"torch {m['torch']}, Ray {m['ray']}, timm {m['timm']}; load average "
        f"{m['load_average_start'][0]:.1f} at the start, {m['load_average_end'][0]:.1f} at the "
        f"end; {report['wall_s'] / 60:.0f} min in all."
        + (
            " **A smoke run (`--quick`): tiny settings, one seed; its figures show the machinery "
            "works, not how the methods compare.**"
            if s["quick"]
            else ""
        ),
        "",
        (
            f"Trained and tested on the labelled set `{lab['source']}` ({lab['rows']} images, "
            f"split by image with seed {lab['seed']}: {lab['counts']['train']} train, "
            f"{lab['counts']['val']} validation, {lab['counts']['test']} test); CLERF's "
            "positives are procedural renders at the anchors' poses. The protocol is in the "
            "docstring of `benchmarks/method_table.py`."
            if lab
            else "The models learn the project's procedural heads, not photographs; the protocol "
            "is in the docstring of `benchmarks/method_table.py`."
        ),
        "",
        "**Budget.** "
        + budget_sentence(report)
        + (" " + epoch_time_sentence(report) if epoch_time_sentence(report) else "")
        + " Mean training wall time per run (pool and stages, not the evaluation):",
        "",
        "| range | " + " | ".join(MODELS) + " |",
        "|---|" + "---:|" * len(MODELS),
    ]
    for rng in s["ranges"]:
        row = [f"{agg['train_s'].get(f'{rng}|{k}', float('nan')):.0f} s" for k in MODELS]
        out.append(f"| {rng} | " + " | ".join(row) + " |")
    out += [
        "",
        "**Searched settings.** The grid, each point trained once on the "
        f"{s.get('search_range', 'full')} range (seed {s['seeds'][0]}), scored on "
        + (
            f"the {lab['counts']['val']} validation images (disjoint from training and test)"
            if lab
            else f"{s['val_samples']} validation renders of identities outside training and test"
        )
        + " (median geodesic error, deg):",
        "",
        "| model | "
        + " | ".join(f"lr {p['lr']:g}, wd {p['wd']:g}" for p in report["grid"])
        + " | chosen |",
        "|---|" + "---:|" * (len(report["grid"]) + 1),
    ]
    for k in MODELS:
        pts = report["search"][k]
        vals = " | ".join(f"{p['val_median']:.1f}" for p in pts)
        ch = report["chosen"][k]
        out.append(f"| {k} | {vals} | lr {ch['lr']:g}, wd {ch['wd']:g} |")
    n = len(s["seeds"])
    for name, label in METRICS.items():
        for rng in s["ranges"]:
            out += [
                "",
                f"**Trained on the {rng} range: {label}**, "
                + (
                    f"{lab['counts']['test']} test images"
                    if lab
                    else f"{s['test_samples']} test renders"
                )
                + f" per set; mean over {n} seed{'s' if n > 1 else ''}"
                + (" (min-max)" if n > 1 else "")
                + ":",
                "",
                "| model | " + " | ".join(tests) + " |",
                "|---|" + "---:|" * len(tests),
            ]
            for k in MODELS:
                cells = [_cell(agg["cells"].get(f"{rng}|{k}|{t}|{name}")) for t in tests]
                out.append(f"| {k} | " + " | ".join(cells) + " |")
    out += ["", "**What it shows.** " + report["claim"], ""]
    perf = report.get("performance")
    if perf:
        out += ["## Performance", ""]
        r = perf["renderer"]
        out.append(
            f"Procedural renderer, one thread, 64 px: {r['images_per_s']:.0f} "
            f"images/s ({r['ms_per_image']:.2f} ms/image), measured by this command "
            "(`benchmarks/bench_render.py` for sizes and a profile)."
        )
        t = perf.get("training")
        if t:
            out += [
                "",
                f"Training pipeline against a plain PyTorch loop (`benchmarks/bench_train.py`, "
                f"{t['source']}):",
                "",
                "| case | samples/s | vs (a) |",
                "|---|---:|---:|",
            ]
            for case in t["cases"]:
                out.append(
                    f"| ({case['case']}) {case['label']} | {case['samples_per_s']:.1f} | "
                    f"{case['ratio']:.2f} |"
                )
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- runs


def _sibling(name: str):
    """Another script of benchmarks/ as a module (they are scripts, not a package)."""
    import importlib.util

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def _machine() -> dict[str, Any]:
    """bench_train's record of the machine, plus the architecture and timm's version."""
    import timm

    return {
        **_sibling("bench_train")._machine(),
        "machine": platform.machine(),
        "timm": timm.__version__,
    }


def _log(msg: str) -> None:
    print(f"[method-table] {msg}", file=sys.stderr, flush=True)


class Table:
    """The runs of one table: configs, training, loading and evaluating the models."""

    def __init__(self, settings: dict[str, Any], work: Path, user_overrides: list[str]):
        self.s, self.work, self.user = settings, work, user_overrides
        # With --labelled: the split's folders (split_labelled), else None.
        self.labelled = (settings.get("labelled") or {}).get("paths")
        self.uri = f"sqlite:///{work / 'mlflow.db'}"
        self.count = 0

    def config(self, model: str, rng: str, seed: int, lr: float, wd: float, epochs: int):
        """The config of the next run, with a run name of its own."""
        self.count += 1
        name = f"{self.count:03d}-{rng}-{model.replace('+', '-')}-s{seed}"
        return self._load(model, rng, seed, lr, wd, epochs, name)

    def base(self):
        """The protocol's config without a run: for its data and evaluation sections."""
        return self._load("clerf", self.s["ranges"][-1], 0, 1e-3, 0.0, 1, "unnamed")

    def _range(self, rng: str) -> list[str]:
        if rng != "labelled":
            return RANGES[rng]
        if not self.labelled:
            raise ValueError("the labelled range needs --labelled PATH")
        # CLERF: the training images as real anchors (positives rendered at their poses, so the
        # poses are the set's own) and as the head's labelled images; the baselines read the
        # same images (Table.train).
        train = self.labelled["train"]
        return [
            "data.source=real_anchor",
            f"data.labelled_path={train}",
            f"head.labelled_path={train}",
        ]

    def _load(self, model, rng, seed, lr, wd, epochs, name):
        from clerf_ray.config import load_config

        return load_config(
            None,
            [
                *self.user,
                *self.s["overrides"],
                *self._range(rng),
                "data.pool=true",
                f"data.augment={'none' if model == 'baseline' else 'fa'}",
                f"seed={seed}",
                f"pretrain.epochs={epochs}",
                f"pretrain.lr={lr}",
                f"pretrain.weight_decay={wd}",
                "pretrain.time_limit_s=null",
                "head.time_limit_s=null",
                "tracking.register_models=false",
                f"tracking.tracking_uri={self.uri}",
                "tracking.experiment=method-table",
                f"storage_path={self.work / 'runs'}",
                f"run_name={name}",
            ],
        )

    def train(self, model: str, rng: str, seed: int, lr: float, wd: float, epochs: int):
        """Train one model; returns (pose model, record without test figures)."""
        from mlflow import MlflowClient

        from clerf_ray.runs.baseline import train_baseline
        from clerf_ray.runs.clerf import run_recipe

        cfg = self.config(model, rng, seed, lr, wd, epochs)
        _log(
            f"{cfg.run_name}: {model} on the {rng} range, seed {seed}, lr {lr:g}, wd {wd:g}, "
            f"{epochs} epochs"
        )
        rec: dict[str, Any] = {
            "range": rng,
            "model": model,
            "seed": seed,
            "lr": lr,
            "wd": wd,
            "epochs": epochs,
            "run_name": cfg.run_name,
        }
        if model == "clerf":
            res = run_recipe(cfg)
            rec["train_s"] = res.timings["pretrain_s"] + res.timings["head_s"]
            rec["head_s"] = res.timings["head_s"]
            # RecipeResult keeps no history; the run logged every epoch's metrics.
            history = MlflowClient(res.tracking_uri).get_metric_history(
                res.run_id, "pretrain/epoch_s"
            )
            rec["epoch_s"] = float(np.median([h.value for h in history]))
        else:
            res = train_baseline(
                cfg,
                model_name="clerf-baseline",
                labelled_path=self.labelled["train"] if rng == "labelled" else None,
                register=False,
            )
            rec["train_s"] = res.timings["train_s"]
            rec["epoch_s"] = float(np.median([h["epoch_s"] for h in res.history]))
        rec["mlflow_run_id"] = res.run_id
        return self.load(res.run_id), rec

    @staticmethod
    def load(run_id: str):
        import mlflow

        from clerf_ray.models import load_model

        with tempfile.TemporaryDirectory() as d:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"runs:/{run_id}/pose_model", dst_path=d
            )
            return load_model(path)

    def sets(self) -> tuple[Any, dict[str, Any]]:
        """The validation set (full range, ``tune.val_identities``) and the test sets
        (``eval.identities``), rendered once with fixed seeds; with --labelled, the split's
        validation and test images and the test images' SA and FA variants."""
        from clerf_ray.evaluate.test_sets import (
            EvalSet,
            heldout_renders,
            load_parquet_set,
            make_variant,
        )

        if self.labelled:
            size = self.base().data.image_size
            val = load_parquet_set(self.labelled["val"], size)
            standard = load_parquet_set(self.labelled["test"], size)
            return val, {
                "standard": standard,
                "SA": make_variant(standard, "sa", seed=7004),
                "FA": make_variant(standard, "fa", seed=7005),
            }

        base = self.base()

        def render(name, identities, seed, n, rng):
            poses = {
                "standard": {
                    "poses": "ranges",
                    "yaw_range": (-90.0, 90.0),
                    "pitch_range": (-45.0, 45.0),
                    "roll_range": (-45.0, 45.0),
                },
                "full": {"poses": "so3"},
            }[rng]
            pc = base.data.pair_config(
                seed=seed, identities=identities, augment="none", source="synthetic", **poses
            )
            images, R = heldout_renders(pc, n)
            return EvalSet(name, images, R, None, [f"{name}-{i:05d}" for i in range(len(R))])

        val = render("val", base.tune.val_identities, 7001, self.s["val_samples"], "full")
        standard = render(
            "standard", base.eval.identities, 7002, self.s["test_samples"], "standard"
        )
        full = render("full", base.eval.identities, 7003, self.s["test_samples"], "full")
        tests = {
            "standard": standard,
            "SA": make_variant(standard, "sa", seed=7004),
            "FA": make_variant(standard, "fa", seed=7005),
            "full": full,
        }
        return val, tests


def _evaluate(model, evalset) -> dict[str, float]:
    from clerf_ray.evaluate.metrics import predict, summarize

    # A labelled set's own Euler angles are the MAE's reference where it has them (as the
    # peers compare); renders and SA/FA variants use their labels' angles.
    return summarize(predict(model, evalset.images), evalset.R, evalset.euler)


def split_labelled(path: str, out: Path, seed: int = LABELLED_SPLIT_SEED) -> dict[str, Any]:
    """Split a labelled Parquet set by image into train, validation and test sets (shares
    ``LABELLED_SPLIT``, a seeded permutation), written under ``out`` as labelled sets of their
    own (``out/train``, ``out/val``, ``out/test``).

    Raises:
        ValueError: too few images for every split to hold one.
    """
    from clerf_ray.data.schema import load_labelled
    from clerf_ray.data.shards import write_shards

    table = load_labelled(path)
    n = table.num_rows
    n_test = round(n * LABELLED_SPLIT["test"])
    n_val = round(n * LABELLED_SPLIT["val"])
    if min(n_test, n_val, n - n_test - n_val) < 1:
        raise ValueError(
            f"--labelled {path!r}: {n} images are too few to split into train, validation and test"
        )
    order = np.random.default_rng(seed).permutation(n)
    parts = {
        "train": order[n_test + n_val :],
        "val": order[n_test : n_test + n_val],
        "test": order[:n_test],
    }
    paths = {}
    for name, idx in parts.items():
        paths[name] = str(out / name)
        write_shards(
            table.take(np.sort(idx)),
            paths[name],
            report={"kind": "labelled", "split_of": path, "split": name, "seed": seed},
        )
    return {
        "source": path,
        "rows": n,
        "seed": seed,
        "counts": {k: len(v) for k, v in parts.items()},
        "paths": paths,
    }


def _training_figures() -> dict[str, Any] | None:
    """The newest bench_train JSON under benchmarks/results, if any."""
    files = sorted((ROOT / "benchmarks" / "results").glob("bench_train-*.json"))
    if not files:
        return None
    data = json.loads(files[-1].read_text())
    rows = data.get("cases") or []
    base = next((r for r in rows if r.get("case") == "a"), None)
    if base is None:
        return None
    cases = [
        {
            "case": r["case"],
            "label": r["what"],
            "samples_per_s": float(r["steady_samples_per_s"]),
            "ratio": float(r["steady_samples_per_s"]) / float(base["steady_samples_per_s"]),
        }
        for r in rows
    ]
    date = data.get("machine", {}).get("date", "")
    return {"source": f"benchmarks/results/{files[-1].name}, {date}", "cases": cases}


def _renderer_figure() -> dict[str, Any]:
    """The procedural renderer's images/s at 64 px on one thread (bench_render's measure)."""
    import torch

    bench = _sibling("bench_render").bench
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return bench("procedural", 64, 64, 256, 3, {})
    finally:
        torch.set_num_threads(threads)


def run_table(settings: dict[str, Any], work: Path, user_overrides: list[str]) -> dict[str, Any]:
    import ray

    from clerf_ray.ray_init import init_ray

    t_start = time.monotonic()
    machine = _machine()
    init_ray()
    table = Table(settings, work, user_overrides)
    val, tests = table.sets()
    _log(
        f"validation: {len(val)} renders; tests: "
        + ", ".join(f"{k} {len(v)}" for k, v in tests.items())
    )
    seed0 = settings["seeds"][0]
    search_range = settings["search_range"]
    grid = [{"lr": lr, "wd": wd} for lr in settings["lr"] for wd in settings["wd"]]
    records: list[dict[str, Any]] = []
    search: dict[str, list[dict[str, Any]]] = {k: [] for k in MODELS}
    calibration: dict[str, Any] = {}
    epochs = {"clerf": settings["epochs"]}

    def keep(rec):
        # Every finished run is appended as it lands, so that a table stopped part-way (a
        # crash, a killed job) still leaves its figures behind.
        with open(work / "runs.jsonl", "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")

    def scored(model, point, n_epochs):
        pose_model, rec = table.train(
            model, search_range, seed0, point["lr"], point["wd"], n_epochs
        )
        rec["val_median"] = _evaluate(pose_model, val)["geodesic_median"]
        _log(f"{rec['run_name']}: validation median {rec['val_median']:.1f} deg")
        keep(rec)
        return rec

    # The search: every grid point of every model, full (or labelled) range, first seed. CLERF first: its
    # first run sets the budget; each baseline's first run measures its epoch time.
    for model in MODELS:
        for i, point in enumerate(grid):
            if model == "clerf":
                rec = scored(model, point, epochs[model])
                if i == 0:
                    budget = settings["epochs"] * rec["epoch_s"] + rec["head_s"]
                    calibration["clerf"] = {
                        "epoch_s": rec["epoch_s"],
                        "head_s": rec["head_s"],
                        "budget_s": budget,
                    }
                    _log(
                        f"budget: {settings['epochs']} CLERF epochs of {rec['epoch_s']:.0f} s "
                        f"and its head stage's {rec['head_s']:.0f} s: {budget:.0f} s per run"
                    )
            elif i == 0:
                # A first guess (CLERF's epoch time), then the count that fits the budget at
                # this model's own epoch time; rerun once if the guess was off.
                guess = max(1, round(budget / calibration["clerf"]["epoch_s"]))
                rec = scored(model, point, guess)
                fits = max(1, round(budget / rec["epoch_s"]))
                calibration[model] = {
                    "epoch_s": rec["epoch_s"],
                    "first_guess": guess,
                    "first_guess_val_median": rec["val_median"],
                }
                epochs[model] = fits if settings["recalibrate"] else guess
                _log(
                    f"budget: {model} epochs take {rec['epoch_s']:.0f} s: {fits} fit "
                    f"(first guess {guess}); training {epochs[model]}"
                )
                if epochs[model] != guess:
                    rec = scored(model, point, epochs[model])
            else:
                rec = scored(model, point, epochs[model])
            search[model].append(rec)
    chosen = {k: min(pts, key=lambda p: p["val_median"]) for k, pts in search.items()}
    # Only a chosen point's run is a cell of the table (search range, first seed): test it alone.
    for rec in chosen.values():
        pose_model = table.load(rec["mlflow_run_id"])
        rec["test"] = {k: _evaluate(pose_model, v) for k, v in tests.items()}
        keep(rec)

    # Every cell: chosen settings, each range and seed (the search's first-seed run of the
    # chosen point is that cell's first seed: it is not trained twice).
    for rng in settings["ranges"]:
        for seed in settings["seeds"]:
            for model in MODELS:
                ch = chosen[model]
                if rng == search_range and seed == seed0:
                    records.append(ch)
                    continue
                pose_model, rec = table.train(model, rng, seed, ch["lr"], ch["wd"], epochs[model])
                rec["test"] = {k: _evaluate(pose_model, v) for k, v in tests.items()}
                keep(rec)
                records.append(rec)
                last = list(tests)[-1]
                med = rec["test"][last]["geodesic_median"]
                _log(f"{rec['run_name']}: {last} test median {med:.1f} deg")

    agg = aggregate(records)
    ray.shutdown()
    renderer = _renderer_figure()  # with Ray's processes gone
    machine["load_average_end"] = os.getloadavg()
    report = {
        "machine": machine,
        "settings": {
            **settings,
            "num_pairs": (
                settings["labelled"]["counts"]["train"]
                if settings.get("labelled")
                else table.base().data.num_pairs
            ),
            "user_overrides": user_overrides,
        },
        "grid": grid,
        "calibration": calibration,
        "epochs": epochs,
        "search": {
            k: [
                {
                    "lr": p["lr"],
                    "wd": p["wd"],
                    "val_median": p["val_median"],
                    "run_name": p["run_name"],
                }
                for p in pts
            ]
            for k, pts in search.items()
        },
        "chosen": {k: {"lr": p["lr"], "wd": p["wd"]} for k, p in chosen.items()},
        "records": records,
        "aggregate": agg,
        "claim": claim_paragraph(agg, settings["ranges"], settings["test_sets"]),
        "baseline_input": BASELINE_INPUT,
        "performance": {"renderer": renderer, "training": _training_figures()},
        "wall_s": time.monotonic() - t_start,
    }
    return report


def backfill_first_guesses(report: dict[str, Any], runs_jsonl: Path) -> int:
    """Fill each baseline's ``first_guess_val_median`` missing from ``report["calibration"]``
    (reports written before it was recorded) from the runs folder's ``runs.jsonl``: the first
    run of that model at the grid's first point, the search range and first seed, trained for the
    first guess's epochs. Returns how many were filled."""
    s = report["settings"]
    point = report["grid"][0]
    runs = [json.loads(line) for line in runs_jsonl.read_text().splitlines() if line.strip()]
    filled = 0
    for m, cal in report["calibration"].items():
        if m == "clerf" or cal.get("first_guess_val_median") is not None:
            continue
        for r in runs:
            if (
                r["model"] == m
                and r["range"] == s.get("search_range", "full")
                and r["seed"] == s["seeds"][0]
                and (r["lr"], r["wd"]) == (point["lr"], point["wd"])
                and r["epochs"] == cal["first_guess"]
                and "val_median" in r
            ):
                cal["first_guess_val_median"] = r["val_median"]
                filled += 1
                break
    return filled


def _outputs(ns, report: dict[str, Any], work: Path | None) -> tuple[Path, Path]:
    """Where the markdown and the JSON go: ``--md``/``--json``, else the work folder for a
    --quick run, else BENCHMARKS.md (or benchmarks/results/ for a labelled set)."""
    s = report["settings"]
    stem = "method_table-labelled" if s.get("labelled") else "method_table"
    md_default = ROOT / (f"benchmarks/results/{stem}.md" if s.get("labelled") else "BENCHMARKS.md")
    quick = s["quick"] and work is not None
    md_path = ns.md or (work / "BENCHMARKS.md" if quick else md_default)
    json_path = ns.json or (
        work / f"{stem}.json" if quick else ROOT / f"benchmarks/results/{stem}.json"
    )
    return md_path, json_path


def _write(report: dict[str, Any], md_path: Path, json_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md_path.write_text("# Benchmarks\n\n" + markdown(report) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="a smoke run of under 10 minutes")
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2; --quick 0)")
    ap.add_argument("--epochs", type=int, help="CLERF's pretraining epochs (default 6)")
    ap.add_argument("--lr", type=float, nargs="+", help="the learning-rate grid")
    ap.add_argument("--wd", type=float, nargs="+", help="the weight-decay grid")
    ap.add_argument("--ranges", nargs="+", choices=sorted(RANGES), help="training ranges")
    ap.add_argument("--test-samples", type=int, help="renders per test set")
    ap.add_argument("--work", type=Path, help="runs folder (default method_table_runs/<time>)")
    ap.add_argument(
        "--labelled",
        metavar="PATH",
        help="a labelled Parquet set (jobs/prepare_data.py's output, local or s3://), split by "
        "image into train, validation and test: CLERF trains on its training images as real "
        "anchors with rendered positives, the baselines on the same images; the tests are the "
        "test split and its SA and FA variants (default outputs: "
        "benchmarks/results/method_table-labelled.{md,json})",
    )
    ap.add_argument(
        "--md",
        type=Path,
        default=None,
        help="write the markdown here (default BENCHMARKS.md; --quick: the work folder)",
    )
    ap.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write the JSON here (default benchmarks/results/method_table.json; "
        "--quick: the work folder)",
    )
    ap.add_argument(
        "--from-json",
        type=Path,
        metavar="REPORT",
        help="no runs: rewrite the markdown (and the JSON) from a saved report; with --work, "
        "figures the report lacks are read from that runs folder's runs.jsonl",
    )
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    ns = ap.parse_args(argv)
    if ns.from_json:
        report = json.loads(ns.from_json.read_text())
        if ns.work:
            n = backfill_first_guesses(report, ns.work / "runs.jsonl")
            _log(f"filled {n} first-guess figure(s) from {ns.work / 'runs.jsonl'}")
        md_path, json_path = _outputs(ns, report, ns.from_json.parent)
        _write(report, md_path, json_path)
        _log(f"wrote {md_path} and {json_path}")
        return 0
    settings = {**(QUICK if ns.quick else FULL), "quick": ns.quick}
    for key in ("seeds", "epochs", "lr", "wd", "ranges", "test_samples"):
        if getattr(ns, key) is not None:
            settings[key] = getattr(ns, key)
    if ns.labelled:
        if ns.ranges:
            ap.error("--ranges and --labelled exclude each other: a labelled set has its own poses")
        settings.update(ranges=["labelled"], search_range="labelled", test_sets=LABELLED_TEST_SETS)
    else:
        if "full" not in settings["ranges"]:
            ap.error("--ranges must include full: the search trains on the full range")
        settings.update(search_range="full", test_sets=TEST_SETS)
    work = ns.work or Path("method_table_runs") / time.strftime("%Y%m%d-%H%M%S")
    if work.exists() and any(work.iterdir()):
        ap.error(f"--work {work} is not empty: a rerun there would resume its runs' checkpoints")
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    # Validate every config before Ray starts: a bad override fails here, naming the field.
    from clerf_ray.config import ConfigError
    from clerf_ray.preflight import check_config

    try:
        if ns.labelled:
            # Split first (pyarrow, no Ray), so that the runs' configs name real folders.
            settings["labelled"] = split_labelled(ns.labelled, work / "labelled")
            _log(f"split {ns.labelled}: {settings['labelled']['counts']}")
        for model in MODELS:
            check_config(
                Table(settings, work, ns.overrides).config(
                    model, settings["ranges"][0], 0, 1e-3, 0.0, 1
                )
            )
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = run_table(settings, work, ns.overrides)
    md_path, json_path = _outputs(ns, report, work)
    _write(report, md_path, json_path)
    print(markdown(report))
    _log(f"wrote {md_path} and {json_path} in {report['wall_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
