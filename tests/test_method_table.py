"""benchmarks/method_table.py without Ray: the runs' configs (the three models differ only in
their augmentation; the protocol's ranges, budgets and settings reach every run), the table's
figures from per-seed records (means and spreads computed here by hand), the verdicts, and the
markdown. The runs themselves are the command's own (``--quick`` is its smoke run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mt():
    spec = importlib.util.spec_from_file_location(
        "method_table", ROOT / "benchmarks" / "method_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_models_differ_only_in_their_augmentation(mt, tmp_path):
    table = mt.Table({**mt.FULL, "quick": False}, tmp_path, ["model.backbone=resnet18"])
    cfgs = {m: table.config(m, "standard", 5, 2e-3, 0.02, 4) for m in mt.MODELS}
    assert {m: c.data.augment for m, c in cfgs.items()} == {
        "clerf": "fa",
        "baseline": "none",
        "baseline+fa": "fa",
    }
    dumps = {m: c.model_dump(mode="json") for m, c in cfgs.items()}
    for d in dumps.values():
        d["data"].pop("augment")
        d.pop("run_name")
    assert dumps["clerf"] == dumps["baseline"] == dumps["baseline+fa"]
    c = cfgs["baseline"]
    assert c.model.backbone == "resnet18"  # the user's override reaches every run
    assert c.seed == 5 and c.pretrain.epochs == 4
    assert (c.pretrain.lr, c.pretrain.weight_decay) == (2e-3, 0.02)
    assert c.data.poses == "ranges"
    assert (c.data.yaw_range, c.data.pitch_range, c.data.roll_range) == (
        (-90.0, 90.0),
        (-45.0, 45.0),
        (-45.0, 45.0),
    )
    assert c.pretrain.time_limit_s is None and c.head.time_limit_s is None
    assert c.data.pool and not c.tracking.register_models
    assert c.data.num_pairs == 2048
    assert table.config("clerf", "full", 0, 1e-3, 0.0, 1).data.poses == "so3"
    # Every run has its own name (a Ray Train run of an existing name would resume it).
    names = [c.run_name for c in cfgs.values()]
    assert len(set(names)) == 3


def _record(rng, model, seed, median, mean, mae, train_s=100.0):
    metrics = {"geodesic_median": median, "geodesic_mean": mean, "mae_mean": mae}
    return {
        "range": rng,
        "model": model,
        "seed": seed,
        "train_s": train_s,
        "test": {t: dict(metrics) for t in ("standard", "SA", "FA", "full")},
    }


def test_cells_are_means_and_spreads_over_seeds(mt):
    records = [
        _record("full", "clerf", 0, 10.0, 20.0, 5.0, train_s=90.0),
        _record("full", "clerf", 1, 14.0, 26.0, 8.0, train_s=110.0),
        _record("full", "clerf", 2, 9.0, 23.0, 2.0, train_s=100.0),
        _record("full", "baseline", 0, 30.0, 40.0, 15.0),
    ]
    agg = mt.aggregate(records)
    cell = agg["cells"]["full|clerf|SA|geodesic_median"]
    assert cell["mean"] == pytest.approx(11.0)
    assert (cell["min"], cell["max"]) == (9.0, 14.0)
    assert agg["cells"]["full|clerf|FA|geodesic_mean"]["mean"] == pytest.approx(23.0)
    assert agg["cells"]["full|clerf|full|mae_mean"]["mean"] == pytest.approx(5.0)
    assert agg["cells"]["full|baseline|standard|geodesic_median"]["values"] == [30.0]
    assert agg["train_s"]["full|clerf"] == pytest.approx(100.0)
    # Rendered as "mean (min-max)", or the one value of a single seed.
    assert mt._cell(cell) == "11.0 (9.0-14.0)"
    assert mt._cell(agg["cells"]["full|baseline|standard|geodesic_median"]) == "30.0"


def _c(values):
    return {
        "mean": sum(values) / len(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def test_verdicts_need_seed_ranges_that_do_not_overlap(mt):
    clerf = _c([10.0, 12.0, 11.0])
    assert mt.verdict(clerf, [_c([13.0, 15.0]), _c([30.0, 40.0])]) == "better"
    assert mt.verdict(clerf, [_c([11.5, 20.0])]) == "on par"  # overlap
    assert mt.verdict(clerf, [_c([8.0, 9.5])]) == "worse"
    # Against the better baseline (by mean): 9.0-9.9 beats CLERF even though 20-30 does not.
    assert mt.verdict(clerf, [_c([20.0, 30.0]), _c([9.0, 9.9])]) == "worse"
    # One seed has no spread to tell a difference by.
    assert mt.verdict(_c([10.0]), [_c([30.0])]) == "one seed"
    assert mt.verdict(clerf, [_c([30.0])]) == "one seed"


def _report(mt, agg):
    """A full-table report around ``agg`` (two seeds, both ranges)."""
    return {
        "settings": {
            **mt.FULL,
            "quick": False,
            "seeds": [0, 1],
            "num_pairs": 2048,
        },
        "machine": {
            "date": "2026-12-02 04:00",
            "git_sha": "abc1234",
            "cpus": 2,
            "python": "3.11.7",
            "torch": "2.14.1",
            "ray": "2.60.0",
            "timm": "1.0.31",
            "load_average_start": (1.0, 1.0, 1.0),
            "load_average_end": (2.0, 2.0, 2.0),
        },
        "wall_s": 3600.0,
        "epochs": {"clerf": 3, "baseline": 5, "baseline+fa": 4},
        "calibration": {
            "clerf": {"epoch_s": 50.0, "head_s": 100.0, "budget_s": 250.0},
            "baseline": {"epoch_s": 50.0, "first_guess": 5},
            "baseline+fa": {"epoch_s": 62.5, "first_guess": 5},
        },
        "grid": [{"lr": 1e-3, "wd": 0.01}],
        "search": {m: [{"val_median": 20.0}] for m in mt.MODELS},
        "chosen": {m: {"lr": 1e-3, "wd": 0.01} for m in mt.MODELS},
        "aggregate": agg,
        "claim": mt.claim_paragraph(agg, ["standard", "full"]),
    }


def test_the_markdown_holds_every_cell_and_the_budget(mt):
    agg = mt.aggregate(_markdown_records())
    report = _report(mt, agg)
    md = mt.markdown(report)
    assert "CLERF pretrains 3 epochs of 2048 pooled pairs (50.0 s each" in md
    assert "(100 s): 250 s per run" in md
    assert "`baseline` 5 epochs (50.0 s each), `baseline+fa` 4 epochs (62.5 s each)" in md
    assert "| clerf | 11.0 (10.0-12.0) | 11.0 (10.0-12.0) |" in md
    assert "| baseline | 32.0 (30.0-34.0) |" in md
    assert "| baseline+fa | 26.0 (25.0-27.0) |" in md  # the mean, 20 + 5 and 22 + 5
    assert md.count("**Trained on the") == 6  # 3 metrics x 2 ranges
    # CLERF's 10-12 against baseline+fa's 20-22: better on every set of both ranges.
    assert report["claim"].count("better (11.0 against 21.0 deg)") == 8
    # baseline+fa's epochs took 62.5 / 50 = 1.25 times CLERF's: said, with the epochs it lost;
    # baseline's took as long as CLERF's: nothing said of it.
    assert "`baseline+fa`'s epochs took 1.25 times CLERF's on the same images (4 epochs in" in md
    assert "instead of 5)" in md and "`baseline`'s epochs" not in md
    # The cause follows the input pipeline the report's baselines had: a report of this script
    # (pretraining's stream) blames the steps, an older one without the field its stream.
    assert "lies in their training steps" not in md and "dataset per epoch" in md
    md_now = mt.markdown({**report, "baseline_input": mt.BASELINE_INPUT})
    assert "lies in their training steps" in md_now and "dataset per epoch" not in md_now


def _markdown_records():
    records = []
    for seed, (c, b, f) in enumerate([(10.0, 30.0, 20.0), (12.0, 34.0, 22.0)]):
        for model, v in (("clerf", c), ("baseline", b), ("baseline+fa", f)):
            for rng in ("standard", "full"):
                records.append(_record(rng, model, seed, v, v + 5, v / 2))
    return records


def test_a_saved_report_is_rewritten_with_first_guesses_from_the_runs_file(mt, tmp_path):
    import json

    report = _report(mt, mt.aggregate(_markdown_records()))
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(report))
    work = tmp_path / "work"
    work.mkdir()
    run = {"range": "full", "seed": 0, "lr": 1e-3, "wd": 0.01}
    lines = [
        {**run, "model": "baseline+fa", "epochs": 4, "val_median": 99.0},  # not the first guess
        {**run, "model": "baseline+fa", "seed": 1, "epochs": 5, "val_median": 98.0},  # seed
        {**run, "model": "baseline+fa", "lr": 4e-3, "epochs": 5, "val_median": 97.0},  # point
        {**run, "model": "baseline+fa", "epochs": 5, "val_median": 41.5},  # this one
        {**run, "model": "baseline+fa", "epochs": 5, "val_median": 12.0},  # a later one
    ]
    (work / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    md, out = tmp_path / "B.md", tmp_path / "B.json"
    args = ["--from-json", str(saved), "--work", str(work), "--md", str(md), "--json", str(out)]
    assert mt.main(args) == 0
    rewritten = json.loads(out.read_text())
    assert rewritten["calibration"]["baseline+fa"]["first_guess_val_median"] == 41.5
    assert "first_guess_val_median" not in rewritten["calibration"]["baseline"]  # none in file
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\n## Method table")
    assert "its first run, at 5 epochs with the grid's first point, scored 41.5 deg" in text


def _labelled_set(path, n):
    """A labelled set of n tiny images, each image's pixels and angles unique to its row (the
    stored angles are not the label's own, as in real sets)."""
    from clerf_ray.data.schema import make_row
    from clerf_ray.data.shards import write_shards

    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        w, x, y, z = q
        R = np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
            ]
        )
        image = np.full((8, 8, 3), i % 256, dtype=np.uint8)
        image[0, 0] = (i // 256, 7, 9)
        rows.append(
            make_row(
                image,
                R,
                file=f"img-{i:04d}.jpg",
                dataset="test",
                euler_deg=(float(i), -float(i), 0.5),
                image_format="png",
            )
        )
    write_shards(rows, str(path), shard_rows=7)


def test_a_labelled_set_splits_by_image_into_disjoint_train_val_test(mt, tmp_path):
    from clerf_ray.data.schema import load_labelled

    _labelled_set(tmp_path / "src", 41)
    split = mt.split_labelled(str(tmp_path / "src"), tmp_path / "split", seed=5)
    # round(41 x 0.2) = 8 test, round(41 x 0.1) = 4 validation, the remaining 29 train.
    assert split["counts"] == {"train": 29, "val": 4, "test": 8}
    files = {k: load_labelled(p).column("file").to_pylist() for k, p in split["paths"].items()}
    assert {k: len(v) for k, v in files.items()} == split["counts"]
    every = [f for v in files.values() for f in v]
    assert sorted(every) == [f"img-{i:04d}.jpg" for i in range(41)]  # each image once
    # Rows travel whole: each row's angles are still its own.
    test = load_labelled(split["paths"]["test"])
    for f, e in zip(
        test.column("file").to_pylist(), test.column("euler_deg").to_pylist(), strict=True
    ):
        i = int(f[4:8])
        assert e == pytest.approx([i, -i, 0.5])
    # The split depends on the seed alone.
    again = mt.split_labelled(str(tmp_path / "src"), tmp_path / "again", seed=5)
    other = mt.split_labelled(str(tmp_path / "src"), tmp_path / "other", seed=6)
    test_files = lambda s: load_labelled(s["paths"]["test"]).column("file").to_pylist()  # noqa: E731
    assert test_files(again) == files["test"]
    assert test_files(other) != files["test"]
    _labelled_set(tmp_path / "tiny", 3)  # 1 test image, 0 validation: refused
    with pytest.raises(ValueError, match="too few"):
        mt.split_labelled(str(tmp_path / "tiny"), tmp_path / "tiny-split")


def test_labelled_runs_read_the_training_split_and_differ_only_in_augmentation(mt, tmp_path):
    paths = {k: str(tmp_path / k) for k in ("train", "val", "test")}
    settings = {
        **mt.FULL,
        "quick": False,
        "ranges": ["labelled"],
        "search_range": "labelled",
        "test_sets": mt.LABELLED_TEST_SETS,
        "labelled": {"paths": paths, "counts": {"train": 29, "val": 4, "test": 8}},
    }
    table = mt.Table(settings, tmp_path, [])
    cfgs = {m: table.config(m, "labelled", 1, 2e-3, 0.02, 4) for m in mt.MODELS}
    c = cfgs["clerf"]
    assert c.data.source == "real_anchor"
    assert c.data.labelled_path == paths["train"] and c.head.labelled_path == paths["train"]
    assert {m: c.data.augment for m, c in cfgs.items()} == {
        "clerf": "fa",
        "baseline": "none",
        "baseline+fa": "fa",
    }
    dumps = {m: c.model_dump(mode="json") for m, c in cfgs.items()}
    for d in dumps.values():
        d["data"].pop("augment")
        d.pop("run_name")
    assert dumps["clerf"] == dumps["baseline"] == dumps["baseline+fa"]
    # Without a split the labelled range cannot be built.
    with pytest.raises(ValueError, match="--labelled"):
        mt.Table({**mt.FULL, "quick": False}, tmp_path, []).config("clerf", "labelled", 0, 1, 0, 1)


def test_the_labelled_markdown_has_the_split_and_no_full_range_column(mt):
    records = []
    for seed in (0, 1):
        for model, v in (("clerf", 10.0), ("baseline", 30.0), ("baseline+fa", 20.0)):
            rec = _record("labelled", model, seed, v + seed, v + 5, v / 2)
            rec["test"].pop("full")
            records.append(rec)
    agg = mt.aggregate(records)
    lab = {
        "source": "/data/aflw2000",
        "rows": 41,
        "seed": 8001,
        "counts": {"train": 29, "val": 4, "test": 8},
        "paths": {},
    }
    report = _report(mt, agg)
    report["settings"].update(
        num_pairs=29,
        ranges=["labelled"],
        search_range="labelled",
        test_sets=list(mt.LABELLED_TEST_SETS),
        labelled=lab,
    )
    report["claim"] = mt.claim_paragraph(agg, ["labelled"], mt.LABELLED_TEST_SETS)
    md = mt.markdown(report)
    assert "`/data/aflw2000` (41 images" in md and "29 train, 4 validation, 8 test" in md
    assert "of 29 pairs (the training images as anchors" in md and "pooled" not in md
    assert "The baselines train on the same training images as many epochs" in md
    assert "each point trained once on the labelled range" in md
    assert "the 4 validation images" in md and "8 test images per set" in md
    assert "| model | standard | SA | FA |" in md and "| full |" not in md
    # Whole rows: three test columns, nothing after them.
    assert "| clerf | 10.5 (10.0-11.0) | 10.5 (10.0-11.0) | 10.5 (10.0-11.0) |" in md.splitlines()
    assert "procedural heads, not photographs" not in md
    assert report["claim"].count("better (10.5 against 20.5 deg)") == 3
