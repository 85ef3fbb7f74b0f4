"""End-to-end: the main job submitted to a separate local Ray cluster with token auth.

``ray start --head`` on loopback with ``RAY_AUTH_MODE=token`` and a fresh ``RAY_AUTH_TOKEN``,
then ``ray job submit --working-dir <copy> -- python jobs/pretrain.py <tiny overrides>`` against
its dashboard, all in subprocesses with explicit addresses, so the session's own local Ray
(``ray_cluster``) is neither used nor disturbed. The submitted job's summary table, its driver's
connection to this cluster, and the models it registered in the sqlite MLflow store are checked.

The cluster is stopped by killing the processes whose command line names its private temp dir
(and their children), by pid: ``ray stop`` would also stop every other Ray on the machine.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = [
    "data.image_size=32",
    "data.num_pairs=32",
    "data.render_batch_size=16",
    "data.render_num_cpus=0.25",
    "data.stage_num_cpus=0.1",
    "model.embedding_dim=32",
    "model.projection_hidden=64",
    "model.head_hidden=[32]",
    "pretrain.epochs=1",
    "pretrain.batch_size=8",
    "pretrain.cpus_per_worker=0.5",
    "pretrain.torch_threads=1",
    "pretrain.use_gpu=false",
    "head.epochs=1",
    "head.num_samples=16",
    "head.batch_size=8",
    "head.cpus_per_worker=0.5",
    "head.torch_threads=1",
    "head.use_gpu=false",
    "eval.num_samples=8",
    "run_name=submitted",
]


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process, from /proc."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            # The parent pid is the second field after the parenthesised command name.
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out[int(d.name)] = (ppid, cmdline)
    return out


def _stop_cluster(temp_dir: str) -> None:
    """Terminate this cluster's processes (command line names ``temp_dir``) and their
    descendants, by pid."""
    procs = _processes()
    ours = {pid for pid, (_, cmd) in procs.items() if temp_dir in cmd}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _) in procs.items() if ppid in ours} - ours
        ours |= children
        grew = bool(children)
    ours.discard(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in ours):
            time.sleep(0.2)


def _working_dir(tmp_path: Path) -> Path:
    work = tmp_path / "workdir"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("clerf_ray", "jobs", "configs"):
        shutil.copytree(REPO / part, work / part, ignore=ignore)
    return work


@pytest.mark.slow
def test_main_job_submitted_to_token_auth_cluster(tmp_path):
    from clerf_ray import registry

    temp_dir = tempfile.mkdtemp(prefix="clerf-rj-", dir="/tmp")  # short: socket paths
    ports = _free_ports(9)
    gcs, dash = ports[0], ports[1]
    token = secrets.token_hex(32)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_ENABLE_TELEMETRY": "false",
    }
    env.pop("RAY_ADDRESS", None)
    # MLflow exports these when a test in this process sets a store: keep the job off them.
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    start = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--num-cpus=2",
        f"--port={gcs}",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={ports[2]}",
        f"--dashboard-agent-listen-port={ports[3]}",
        f"--dashboard-agent-grpc-port={ports[4]}",
        f"--runtime-env-agent-port={ports[5]}",
        f"--metrics-export-port={ports[6]}",
        f"--node-manager-port={ports[7]}",
        f"--object-manager-port={ports[8]}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    address = f"http://127.0.0.1:{dash}"
    store = tmp_path / "mlflow.db"
    try:
        started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr

        # Auth is on: a client with the wrong token is refused.
        wrong = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_ADDRESS": address}
        refused = subprocess.run(
            [str(BIN / "ray"), "job", "list"], env=wrong, capture_output=True, text=True, timeout=60
        )
        assert refused.returncode != 0
        assert "token" in (refused.stdout + refused.stderr).lower()

        client = {**env, "RAY_ADDRESS": address}
        cmd = [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            str(_working_dir(tmp_path)),
            "--",
            "python",
            "jobs/pretrain.py",
            *TINY,
            f"storage_path={tmp_path / 'runs'}",
            f"tracking.tracking_uri=sqlite:///{store}",
        ]
        t0 = time.monotonic()
        submitted = subprocess.run(cmd, env=client, capture_output=True, text=True, timeout=330)
        logs = submitted.stdout + submitted.stderr
        print(f"job took {time.monotonic() - t0:.0f}s")
        job_id = re.search(r"Job '(raysubmit_\w+)'", logs)
        assert job_id, logs[-3000:]
        status = subprocess.run(
            [str(BIN / "ray"), "job", "status", job_id.group(1)],
            env=client,
            capture_output=True,
            text=True,
            timeout=60,
        )
        state = status.stdout + status.stderr
        # `ray job submit` waits for the end and exits 0 only on success; `ray job status`
        # confirms it from the cluster's side.
        assert submitted.returncode == 0, logs[-3000:]
        assert f"Job '{job_id.group(1)}' succeeded" in state, state + logs[-3000:]
        (tmp_path / "job.log").write_text(logs)  # kept for a look when something fails
        # The job's driver joined this cluster, not a fresh local Ray of its own, and the
        # training workers ran here: this cluster's session logs hold the Ray Train worker logs.
        assert "Started a local Ray instance" not in logs
        worker_logs = list(Path(temp_dir).glob("session_*/logs/train/ray-train-app-worker-*"))
        assert worker_logs, sorted(p.name for p in Path(temp_dir).glob("session_*/logs/*"))
        assert "CLERF run summary" in logs
        assert "models:/clerf-encoder/1 (alias candidate)" in logs
        assert "models:/clerf-head/1 (alias candidate)" in logs
        median = float(re.search(r"geodesic error, median\s+([0-9.]+) deg", logs).group(1))
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)

    # The registered models, read from the job's store by this process.
    import mlflow

    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        registry.setup(f"sqlite:///{store}")
        enc = registry.model_version("clerf-encoder@candidate")
        head = registry.model_version("clerf-head@candidate")
        assert str(enc.version) == "1" and str(head.version) == "1"
        assert head.tags["encoder_name"] == "clerf-encoder"
        assert head.tags["encoder_version"] == "1"
        assert float(head.tags["geodesic_median"]) == pytest.approx(median, abs=0.006)
        model = registry.load_registered("clerf-head@candidate")
        assert model.encoder.config.image_size == 32
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
