"""The default main job at full size (``pytest -m full``; CI skips it: about 10 minutes on 2 cores).

Runs ``python jobs/pretrain.py`` with no arguments in a fresh directory, then loads the registered
head by alias and checks that it predicts poses of new renders of held-out identities with the
error the job reported.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.full
def test_default_job_reaches_its_accuracy(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "pretrain.py"), f"storage_path={tmp_path}/runs"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30 * 60,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    median = float(re.search(r"geodesic error, median\s+([\d.]+) deg", proc.stdout).group(1))

    from clerf_ray import evaluate, registry
    from clerf_ray.config import load_config

    registry.setup(env["MLFLOW_TRACKING_URI"])
    model = registry.load_registered("clerf-head@candidate")
    cfg = load_config()
    # New renders: another seed than the job's evaluation, the same held-out identity range.
    pair_cfg = cfg.data.pair_config(seed=12345, identities=cfg.eval.identities, augment="fa")
    images, R = evaluate.heldout_renders(pair_cfg, 512)
    again = evaluate.evaluate_model(model, images, R)["geodesic_median"]
    assert abs(again - median) < max(1.0, 0.25 * median)
    assert np.isfinite(again)
    # The bar for the laptop default (last: the checks above hold regardless): at most 5.0 deg
    # (the aim 4.5). On the 2-core EPYC VM the default (12 epochs, stopped at 380 s) measured
    # 4.72 and 4.49 deg; on a 2-core Xeon VM with 400 s, two pool actors and 8 views 4.66-4.82
    # deg (4.82 and 4.53 in this test); on a slower EPYC VM the present one (380 s, 16 views)
    # 4.80 deg, and 5.08 deg in this test (README, "Default runs on a 2-core Xeon VM" and
    # "... on a slower ... VM").
    assert median <= 5.0, proc.stdout
