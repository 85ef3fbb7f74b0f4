"""Pretraining whose parts cannot all have their CPUs at once is refused before it starts.

Ray grants an actor or task only its whole CPU request, and Ray Data waits for its renderer actors
as long as it takes, so such a run would hang with no error (seen with live renders and
``data.num_render_actors=2`` on 2 cores). The test cluster has 2 CPUs (``conftest.ray_cluster``);
every expected total below is the sum of the options' values, worked out by hand.
"""

from __future__ import annotations

import pytest

from clerf_ray.config import load_config
from clerf_ray.runs.clerf import run_recipe
from clerf_ray.runs.common import check_cpus_fit, pretraining_cpus

LIVE_TWO_ACTORS = [
    "data.pool=false",
    "data.num_render_actors=2",
    "data.render_num_cpus=0.5",
    "data.stage_num_cpus=0.25",
    "pretrain.num_workers=1",
    "pretrain.cpus_per_worker=1.0",
]


def test_the_main_job_refuses_live_renders_that_need_more_cpus_than_the_cluster_has(
    ray_cluster, tmp_path
):
    import ray

    assert ray.cluster_resources()["CPU"] == 2
    cfg = load_config(None, [*LIVE_TWO_ACTORS, f"storage_path={tmp_path}"])
    # 1 worker x 1.0 + 2 actors x 0.5 + one light stage 0.25 = 2.25 CPUs at once, on 2.
    with pytest.raises(ValueError) as err:
        run_recipe(cfg)
    msg = str(err.value)
    assert "needs 2.25 CPUs at once" in msg and "has 2" in msg
    for option in ("data.num_render_actors", "data.render_num_cpus", "pretrain.cpus_per_worker"):
        assert option in msg
    # Refused before anything ran: no stage wrote a checkpoint.
    assert not any(tmp_path.iterdir())


def test_fractional_budgets_fit_and_pool_training_counts_only_the_workers(ray_cluster):
    # The same live renders with 0.25 CPU per actor: 1 + 2 x 0.25 + 0.25 = 1.75 CPUs.
    check_cpus_fit(load_config(None, [*LIVE_TWO_ACTORS, "data.render_num_cpus=0.25"]))
    # From the render pool the renderer actors are gone by the time the workers start: a
    # worker asking for both CPUs fits (2 <= 2) ...
    pool = load_config(None, ["data.pool=true", "pretrain.cpus_per_worker=2.0"])
    assert sum(pretraining_cpus(pool).values()) == 2.0
    check_cpus_fit(pool)
    # ... and with live renders the same worker does not (2 + 1 x 0.5 + 0.25 = 2.75).
    live = load_config(None, ["data.pool=false", "pretrain.cpus_per_worker=2.0"])
    with pytest.raises(ValueError, match="needs 2.75 CPUs at once"):
        check_cpus_fit(live)


def test_a_render_pool_whose_actors_cannot_all_start_is_refused(ray_cluster):
    # The pool renders before the workers start, but its actors and the task sampling their
    # poses must fit together: 4 x 0.5 + 0.25 = 2.25 CPUs on 2 (this hung with no error);
    # 4 x 0.5 + 0 = 2.0 ran.
    pool = ["data.pool=true", "data.num_render_actors=4", "data.render_num_cpus=0.5"]
    with pytest.raises(ValueError, match="the render pool needs 2.25 CPUs at once"):
        check_cpus_fit(load_config(None, [*pool, "data.stage_num_cpus=0.25"]))
    check_cpus_fit(load_config(None, [*pool, "data.stage_num_cpus=0"]))


def test_a_config_for_nodes_that_may_come_only_warns(ray_cluster, capsys):
    # Custom resources name nodes an autoscaler may add (cluster.yaml's trainer nodes).
    cfg = load_config(None, [*LIVE_TWO_ACTORS, "pretrain.worker_resources={trainer: 1}"])
    check_cpus_fit(cfg)
    err = capsys.readouterr().err
    assert "warning: pretraining needs 2.25 CPUs at once" in err
    assert "unless the cluster grows" in err
