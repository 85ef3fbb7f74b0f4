"""The main job under Ray's autoscaler, on cluster.yaml's node types scaled down to one machine
(:mod:`tests.cluster.fake_cluster`): the autoscaler starts a renderer node and a trainer node
for a short run, the renderer actors run on the one and the Train workers on the other, idle
nodes go away afterwards, and a node lost in the middle of a run (its raylet killed) costs no
epoch and repeats none.

Behind the ``cluster`` marker, which CI skips: ``AutoscalingCluster`` stops every Ray on the
machine when it starts, so these tests run alone, ``pytest -m cluster`` (about 10 minutes on 2
cores).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_job_submit import TINY as JOB_TINY

from .fake_cluster import (
    HEAD_RESOURCES,
    NODE_TYPES,
    OBJECT_STORE_BYTES,
    PLACEMENT,
    FakeAutoscalingCluster,
    env_without_ray_address,
    other_ray_processes,
    raylet_pid,
)

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]

# The job-submission test's tiny main job (tests/ is on sys.path, as pytest puts it there), with
# the run name and the epoch count left to each test here.
TINY = [o for o in JOB_TINY if not o.startswith(("run_name=", "pretrain.epochs="))]


@pytest.fixture(scope="module")
def cluster():
    running = other_ray_processes()
    if running:
        pytest.fail(
            f"another Ray runs on this machine (raylets {running}); AutoscalingCluster would "
            "stop it: run these tests alone, with nothing else using Ray (pytest -m cluster)"
        )
    import ray

    with pytest.MonkeyPatch.context() as mp:
        # Token auth off here: this process's Ray client fixed its auth mode when pytest imported
        # Ray (tests/test_job_submit.py runs the main job against a token-auth cluster).
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.delenv("RAY_ADDRESS", raising=False)
        # Loopback only (head, fake nodes, clients): Ray otherwise binds the machine's address,
        # which this sandbox does not route; Ray's switch for single-machine clusters.
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        from ray._private import ray_constants

        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # this process read it at import
        # AutoscalingCluster runs the `ray` command: this interpreter's, not one on PATH.
        mp.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        c = FakeAutoscalingCluster(
            head_resources={**HEAD_RESOURCES, "object_store_memory": OBJECT_STORE_BYTES},
            worker_node_types=NODE_TYPES,
            idle_timeout_minutes=0.25,
        )
        c.start()
        try:
            ray.init(address="auto", log_to_driver=False)
            yield c
        finally:
            ray.shutdown()
            c.shutdown()


def _job(tmp_path: Path, run_name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "jobs" / "pretrain.py"),
        *TINY,
        *PLACEMENT,
        f"storage_path={tmp_path / 'runs'}",
        f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"run_name={run_name}",
        *extra,
    ]


def _run(cmd, tmp_path, on_line=None, timeout=600) -> tuple[int, str]:
    """Run a job as a driver of the cluster (``RAY_ADDRESS=auto``); ``on_line(line)`` sees each
    line of its output as it comes. Returns (exit status, output)."""
    env = {**env_without_ray_address(), "RAY_ADDRESS": "auto", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(10)
        raise AssertionError("job timed out:\n" + "".join(lines)[-6000:]) from None
    reader.join(30)
    (tmp_path / f"job-{time.strftime('%H%M%S')}.log").write_text("".join(lines))
    return rc, "".join(lines)


def _node_kinds() -> dict[str, str]:
    """node id -> head / renderer / trainer, for every node the cluster has had (dead ones too),
    from the resources each node offered (Ray's state API)."""
    from ray.util.state import list_nodes

    kinds = {}
    for n in list_nodes(detail=True, limit=1000):
        res = n.resources_total or {}
        kinds[n.node_id] = (
            "renderer" if "renderer" in res else "trainer" if "trainer" in res else "head"
        )
    return kinds


def _actors_by_class() -> dict[str, list]:
    from ray.util.state import list_actors

    out: dict[str, list] = {}
    for a in list_actors(detail=True, limit=10000):
        out.setdefault(a.class_name, []).append(a)
    return out


def _alive_kinds() -> list[str]:
    import ray

    kinds = _node_kinds()
    return sorted(kinds.get(n["NodeID"], "?") for n in ray.nodes() if n["Alive"])


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _pretrain_epochs(tmp_path: Path, run_name: str) -> list[int]:
    """The epochs in the pretraining run's latest checkpoint's history (each once if none was
    lost or repeated)."""
    import ray.train

    from clerf_ray.train import common

    result = ray.train.Result.from_path(str(tmp_path / "runs" / f"{run_name}-pretrain"))
    return [int(h["epoch"]) for h in common.load_state(result.checkpoint)["history"]]


def test_autoscaler_starts_renderer_and_trainer_nodes_places_the_stages_and_scales_down(
    cluster, tmp_path
):
    assert _alive_kinds() == ["head"]  # min_workers 0: nothing runs before the job asks
    rc, out = _run(_job(tmp_path, "scaled", "pretrain.epochs=2"), tmp_path)
    assert rc == 0, out[-6000:]
    assert "held-out geodesic error, median" in out

    kinds = _node_kinds()
    actors = _actors_by_class()
    renderers = [a for c, a_s in actors.items() if "RenderPairs" in c for a in a_s]
    workers = actors.get("RayTrainWorker", [])
    embedders = [a for c, a_s in actors.items() if "EmbedImages" in c for a in a_s]
    assert renderers and workers and embedders, sorted(actors)

    # Each asked for its node type's resource (Ray names a placement group's resources
    # "<name>_group_...": the prefix is the resource) ...
    def asked_for(actor, name):
        return any(k == name or k.startswith(f"{name}_group_") for k in actor.required_resources)

    assert all(asked_for(a, "renderer") for a in renderers)
    assert all(asked_for(a, "trainer") for a in workers + embedders)
    # ... and ran there: the pool's renderers and the evaluation's on renderer nodes only, both
    # stages' Train workers and the head's embedding actors on trainer nodes only.
    assert {kinds[a.node_id] for a in renderers} == {"renderer"}
    assert {kinds[a.node_id] for a in workers + embedders} == {"trainer"}
    # The autoscaler started them: neither kind existed before the job.
    assert {"renderer", "trainer"} <= set(kinds.values())

    # Idle nodes go (idle_timeout_minutes=0.25 here; cluster.yaml's is longer).
    _wait_for(lambda: _alive_kinds() == ["head"], 180, "the idle nodes to scale down")


def test_trainer_node_lost_mid_run_restarts_from_the_checkpoint_on_a_new_node(cluster, tmp_path):
    """The trainer node's raylet is killed a second after epoch 1's checkpoint is reported, in
    epoch 2 of 3 (32 steps, tens of seconds here): Ray Train restarts the worker group on a
    trainer node the autoscaler brings up, from epoch 1's checkpoint, and the job finishes with
    epochs 1, 2, 3, each once."""
    killed: list[str] = []

    def kill_in_epoch_2(line: str) -> None:
        # Ray Train's worker logs this once the report (epoch 1 and its checkpoint) is sent.
        if killed or "Reporting training result 1:" not in line or "-pretrain/" not in line:
            return
        import ray

        time.sleep(1.0)
        kinds = _node_kinds()
        (node,) = [
            n["NodeID"] for n in ray.nodes() if n["Alive"] and kinds.get(n["NodeID"]) == "trainer"
        ]
        os.kill(raylet_pid(node), signal.SIGKILL)
        killed.append(node)

    cmd = _job(
        tmp_path,
        "lost-trainer",
        "pretrain.epochs=3",
        "pretrain.max_failures=2",
        "data.num_pairs=256",
    )
    rc, out = _run(cmd, tmp_path, on_line=kill_in_epoch_2)
    assert killed, out[-4000:]
    assert rc == 0, out[-6000:]
    assert "resuming from the checkpoint of epoch" in out, out[-6000:]
    assert _pretrain_epochs(tmp_path, "lost-trainer") == [1, 2, 3]
    import ray

    kinds = _node_kinds()
    assert killed[0] not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    workers = _actors_by_class()["RayTrainWorker"]
    # The restarted group ran on another trainer node.
    assert {a.node_id for a in workers if kinds[a.node_id] == "trainer"} - {killed[0]}


def test_renderer_node_lost_mid_run_costs_no_epoch(cluster, tmp_path):
    """Live renders (one stream per epoch): the raylet of the renderer node that runs epoch 2's
    renderer actor is killed while that actor renders. The run goes on with renders from a
    renderer node the autoscaler brings up, or stops with a clear error and the same command
    resumes it; either way the epochs are 1, 2, 3, each once."""
    killed: list[str] = []
    created: list[str] = []

    def kill_while_epoch_2_renders(line: str) -> None:
        # Ray logs this line as each epoch's stream creates its renderer actor.
        if killed or "'MapWorker(MapBatches(RenderPairs))'" not in line:
            return
        created.append(line)
        if len(created) < 2:
            return
        from ray.util.state import list_actors

        def rendering_node():
            kinds = _node_kinds()
            alive = list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=1000)
            nodes = [a.node_id for a in alive if "RenderPairs" in a.class_name]
            return next((n for n in nodes if kinds.get(n) == "renderer"), None)

        node = _wait_for(rendering_node, 120, "epoch 2's renderer actor")
        os.kill(raylet_pid(node), signal.SIGKILL)
        killed.append(node)

    cmd = _job(
        tmp_path, "lost-renderer", "data.pool=false", "pretrain.epochs=3", "data.num_pairs=64"
    )
    rc, out = _run(cmd, tmp_path, on_line=kill_while_epoch_2_renders)
    assert killed, out[-4000:]
    if rc != 0:
        # The clear error, then the same command resumes from the last checkpoint.
        assert re.search(r"pretrain: .*(Last checkpoint|checkpoint)", out), out[-6000:]
        rc, again = _run(cmd, tmp_path)
        assert rc == 0, again[-6000:]
        assert "resuming from the checkpoint of epoch" in again
        print("renderer node loss: the run stopped and the rerun resumed it")
    else:
        print("renderer node loss: the run went on")
    assert _pretrain_epochs(tmp_path, "lost-renderer") == [1, 2, 3]
