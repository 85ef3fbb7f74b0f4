"""How the search reads Tune's results (``clerf_ray.runs.search._rows``), without Ray: Ray Tune's
own ``Result`` objects, as a ``ResultGrid`` holds them, for two finished trials, one stopped
early and one failed. Finished trials come first, ranked by the metric in the configured mode
(the first row is the trial the search registers), then stopped ones by how far they got, then
failed ones; each row's status, epochs and learning curve are what the reports say."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from ray.tune import Result

from clerf_ray.config import load_config
from clerf_ray.runs.search import FINAL, _rows

SPACE = "tune.space={pretrain.lr: {choices: [1.0e-3, 2.0e-3, 3.0e-3, 4.0e-3, 5.0e-3]}}"


def _result(tmp_path, trial_id: str, lr: float, reports: list[dict], error=None) -> Result:
    """A trial's Result as Tune builds it: its last report (with the trial's config) as the
    metrics, every report as the metrics dataframe."""
    last = {"trial_id": trial_id, "config": {"pretrain.lr": lr}, **(reports[-1] if reports else {})}
    return Result(
        metrics=last,
        checkpoint=None,
        error=error,
        path=str(tmp_path / trial_id),
        metrics_dataframe=pd.DataFrame(reports) if reports else None,
    )


def _epochs(n: int, probe: list[float]) -> list[dict]:
    return [{"epoch": e + 1, "val/retrieval_median": probe[e]} for e in range(n)]


def _finished(n: int, probe: list[float], val: float) -> list[dict]:
    # The final report comes one past the last pretraining epoch and repeats its probe.
    final = {"epoch": n + 1, FINAL: 1, "val/retrieval_median": probe[-1]}
    return _epochs(n, probe) + [{**final, "val/geodesic_median": val, "mlflow_run_id": f"r{val}"}]


def _restored_failure(tmp_path, trial_id: str, lr: float) -> Result:
    """A trial that failed before its first report, as a resumed search restores it: no
    metrics; its config only in the ``params.json`` Tune wrote in its folder."""
    folder = tmp_path / f"run_trial_{trial_id}_7_pretrain_lr={lr:.4f}_2026-12-02_03-35-09"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps({"pretrain.lr": lr}))
    return Result(
        metrics={}, checkpoint=None, error=RuntimeError("boom\nnon-finite"), path=str(folder)
    )


@pytest.fixture
def results(tmp_path):
    return [
        _restored_failure(tmp_path, "49ef0_00007", 1e-3),
        _result(tmp_path, "t_killed_1", 1e-3, _epochs(1, [90.0])),
        _result(tmp_path, "t_fin_40", 2e-3, _finished(3, [80.0, 70.0, 60.0], 40.0)),
        _result(tmp_path, "t_failed", 3e-3, [], error=RuntimeError("non-finite loss")),
        _result(tmp_path, "t_fin_30", 4e-3, _finished(3, [85.0, 75.0, 65.0], 30.0)),
        # Stopped after epoch 2, with a validation figure in a report by mistake: only the
        # final report's counts.
        _result(
            tmp_path,
            "t_killed_2",
            5e-3,
            _epochs(1, [88.0])
            + [{"epoch": 2, "val/retrieval_median": 86.0, "val/geodesic_median": 1.0}],
        ),
    ]


def test_rows_rank_finished_trials_by_the_metric_then_stopped_then_failed(results):
    rows = _rows(results, load_config(None, [SPACE]))
    assert [r["trial_id"] for r in rows] == [
        "t_fin_30",  # the lower validation error: the one registered
        "t_fin_40",
        "t_killed_2",  # stopped later than t_killed_1
        "t_killed_1",
        # Failed, restored with no reports: id and config from its folder. (Failed trials keep
        # Tune's order.)
        "49ef0_00007",
        "t_failed",
    ]
    assert [r["status"] for r in rows] == ["FINISHED"] * 2 + ["KILLED"] * 2 + ["FAILED"] * 2
    assert rows[4]["pretrain.lr"] == 1e-3 and rows[4]["error"] == "non-finite"
    best = rows[0]
    assert best["val/geodesic_median"] == 30.0 and best["mlflow_run_id"] == "r30.0"
    assert best["pretrain.lr"] == 4e-3
    assert [r["epochs_done"] for r in rows] == [3, 3, 2, 1, 0, 0]
    # A stopped trial has no validation error, even where a report carried one.
    assert rows[2]["val/geodesic_median"] is None
    assert rows[5]["error"] == "non-finite loss"
    # The learning curve holds the epochs' probes, not the final report's repeat of the last.
    assert best["_curve"] == [(1, 85.0), (2, 75.0), (3, 65.0)]


def test_rows_rank_by_the_configured_mode(results):
    rows = _rows(results, load_config(None, [SPACE, "tune.mode=max"]))
    assert [r["trial_id"] for r in rows][:2] == ["t_fin_40", "t_fin_30"]
    assert [r["trial_id"] for r in rows][2:4] == ["t_killed_2", "t_killed_1"]
