"""The Ray Tune search (clerf_ray.runs.search) on tiny settings, in one search of three learning
rates whose driver is killed once and resumed (in a subprocess with its own local Ray, so that the
driver can really be killed; one search, not two, because every trial costs two Ray Train runs):

* 1e30 fails (the loss is not finite) before the kill; the resumed search does not run it again;
* 3e-3 is interrupted by the kill and finishes after the resume;
* 1e-9 (too small to learn) is stopped early by ASHA, against 3e-3's rungs (Ray does not
  restore ASHA's rungs, so the trial it stops must follow a trial that the resumed search ran).

The finished trial's models are registered and load by alias; the parent run holds the table and
the plots, each trial a nested run with its status. (Which of several finished trials is the
best is ranked from Tune's results in tests/runs/test_search_rows.py, without Ray: a fourth trial
here would cost 85 s.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

TINY = [
    "data.image_size=32",
    "data.num_pairs=64",
    "data.render_batch_size=32",
    "data.render_num_cpus=0.25",
    "data.stage_num_cpus=0.1",
    "model.embedding_dim=16",
    "model.projection_hidden=32",
    "model.head_hidden=[32]",
    "pretrain.batch_size=16",
    "pretrain.epochs=3",
    "pretrain.cpus_per_worker=0.5",
    "pretrain.torch_threads=1",
    "pretrain.max_failures=0",
    "pretrain.warmup_fraction=0",
    "head.batch_size=16",
    "head.epochs=1",
    "head.passes=1",
    "head.num_samples=16",
    "head.draws=1",
    "head.views=1",
    "head.cpus_per_worker=0.5",
    "head.torch_threads=1",
    "head.max_failures=0",
    "tune.trial_overrides=[]",
    "tune.val_samples=16",
    "tune.probe_queries=8",
    "tune.probe_references=16",
    "tune.search_alg=grid",
    "tune.num_samples=1",
    "tune.grace_period=1",
    "tune.reduction_factor=2",
    "tune.max_concurrent_trials=1",
    # The pretraining loss as ASHA's measure: with one seed every trial starts from the same
    # weights on the same batches, so a learning rate of 1e-9 keeps the loss where it started
    # while 3e-3 and 4e-3 lower it within two epochs (measured for 4e-3: 56.4 -> 54.1 against
    # 55.9 -> 56.1); the retrieval probe is too noisy on 16 references to rank trials this small.
    "tune.asha_metric=loss",
]

# YAML floats need e+NN.
GRID3 = "tune.space={pretrain.lr: {choices: [1.0e+30, 3.0e-3, 1.0e-9]}}"


def _search_cmd(tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "jobs" / "tune.py"),
        *TINY,
        f"storage_path={tmp_path / 'runs'}",
        f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        *extra,
    ]


def _env():
    env = dict(os.environ)
    for k in [k for k in env if k.startswith(("MLFLOW_", "RAY_ADDRESS"))]:
        env.pop(k)
    # A local Ray of the driver's own, never a cluster recorded on this machine by another test
    # (one left behind by a failed test would hang the driver on its dead GCS).
    env["RAY_ADDRESS"] = "local"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _recorded_statuses(exp_dir: Path) -> dict[str, str]:
    """Each trial's status in the newest experiment state Tune has written to storage."""
    files = sorted(exp_dir.glob("experiment_state-*.json"), key=lambda f: f.stat().st_mtime)
    try:
        state = json.loads(files[-1].read_text()) if files else {}
    except (OSError, ValueError):  # being written
        return {}
    trials = [json.loads(trial_json) for trial_json, _ in state.get("trial_data", [])]
    return {t["trial_id"]: t["status"] for t in trials}


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL every process in the driver's session (the driver and the local Ray it started)
    and wait until none is left, so that the rerun's Ray is the only one."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    zombie = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
                    if os.getsid(int(entry.name)) == proc.pid and not zombie:
                        left.append(int(entry.name))
                except OSError:  # gone meanwhile
                    pass
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.5)
    raise AssertionError(f"processes of the killed driver's session are still alive: {left}")


def _tune_lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if "[tune] trial" in x]


@pytest.mark.slow
def test_a_killed_search_resumes_stops_one_early_records_a_failure_and_registers_the_best(
    tmp_path,
):
    from mlflow import MlflowClient

    from clerf_ray import registry

    cmd = _search_cmd(tmp_path, GRID3, "tune.name=grid3")
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # Kill the driver (and its local Ray) once the first trial has failed, Tune's state on
        # storage says so (what a resume reads), and the second trial has started: the second
        # is then unfinished.
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            lines = _tune_lines(log_path.read_text())
            failed = [x.split()[2] for x in lines if "failed:" in x]
            if (
                sum("started:" in x for x in lines) >= 2
                and failed
                and _recorded_statuses(tmp_path / "runs" / "grid3").get(failed[0]) == "ERROR"
            ):
                break
            time.sleep(0.5)
        assert proc.poll() is None, log_path.read_text()[-4000:]
        _kill_session(proc)
    first = log_path.read_text()
    assert not any("finished:" in x for x in _tune_lines(first))
    failed = [x.split()[2] for x in _tune_lines(first) if "failed:" in x]
    assert len(failed) == 1

    out = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    second = out.stdout + out.stderr
    assert out.returncode == 0, second[-6000:]
    assert "resuming the search" in second
    lines = _tune_lines(second)
    both = "\n".join(_tune_lines(first)) + "\n--\n" + "\n".join(lines)
    # The failed trial is neither started nor failed again; the interrupted one finishes.
    assert not any(failed[0] in x for x in lines), both
    assert sum("finished:" in x for x in lines) == 1, both
    assert "stopped early by ASHA" in second, both

    uri = registry.setup(f"sqlite:///{tmp_path}/mlflow.db", "clerf")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("clerf")
    parents = client.search_runs([exp.experiment_id], "tags.kind = 'search'")
    assert len(parents) == 1  # the resumed search went on in the same parent run
    parent = parents[0]
    nested = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    by_lr = {float(r.data.params["search.pretrain.lr"]): r for r in nested}
    assert sorted(by_lr) == [1e-9, 3e-3, 1e30]
    status = {lr: r.info.status for lr, r in by_lr.items()}
    assert status == {3e-3: "FINISHED", 1e-9: "KILLED", 1e30: "FAILED"}, both
    assert "non-finite loss" in by_lr[1e30].data.tags["error"]
    # The stopped trial's teardown (its Ray Train controller killed with it) is not its error.
    assert "error" not in by_lr[1e-9].data.tags, by_lr[1e-9].data.tags["error"]
    # Per-epoch metrics reached the nested runs as the epochs came, ASHA's stop included: the
    # stopped trial ended at a rung (epoch 1 or 2) before its last epoch, so its head never
    # trained. The interrupted trial's run, taken up again after the resume, reached epoch 3.
    stopped_after = len(client.get_metric_history(by_lr[1e-9].info.run_id, "pretrain/loss"))
    assert stopped_after in (1, 2)
    assert "val/geodesic_median" not in by_lr[1e-9].data.metrics
    assert "val/geodesic_median" in by_lr[3e-3].data.metrics
    finished_epochs = client.get_metric_history(by_lr[3e-3].info.run_id, "pretrain/loss")
    assert {m.step for m in finished_epochs} == {1, 2, 3}, finished_epochs

    # The parent holds the space, the table (CSV and markdown) and the plots.
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert {"search/results.csv", "search/results.md", "search/learning_curves.png"} <= arts
    assert "search/error_vs_pretrain_lr.png" in arts
    space = json.loads(
        Path(
            client.download_artifacts(parent.info.run_id, "search.json", str(tmp_path))
        ).read_text()
    )
    assert space["space"]["pretrain.lr"]["choices"] == [1e30, 3e-3, 1e-9]
    table = Path(
        client.download_artifacts(parent.info.run_id, "search/results.md", str(tmp_path))
    ).read_text()
    rows = [x for x in table.splitlines() if x.startswith("| ") and "trial_id" not in x]
    assert [x.split(" | ")[1] for x in rows] == ["FINISHED", "KILLED", "FAILED"]

    # The finished trial is the one registered, and its encoder and head load by alias.
    enc = registry.model_version("clerf-encoder@candidate")
    head = registry.model_version("clerf-head@candidate")
    assert enc.run_id == head.run_id == by_lr[3e-3].info.run_id
    assert enc.tags["search_run_id"] == parent.info.run_id
    encoder = registry.load_registered("clerf-encoder@candidate")
    model = registry.load_registered("clerf-head@candidate")
    assert encoder.config.embedding_dim == 16
    assert model.encoder.config.image_size == 32
