"""``data.render_resources`` places the renderer actors: on a two-node loopback cluster (a head
without the custom resource, a second node with ``renderer: 1``), every renderer actor of the pair
stream and of a labelled render set runs on the second node and holds the resource.

The session's Ray (``ray_cluster``) has no custom resource and one node, so this test starts its
own short-lived cluster (``ray.cluster_utils.Cluster``) in a subprocess; the actors report their
node and assigned resources from inside the renderer's constructor.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, os, sys

    import ray
    import ray.data
    from ray.cluster_utils import Cluster

    log_dir = sys.argv[1]
    loopback = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **loopback})
    # Shut the cluster down however the script ends: a cluster left behind stays recorded as
    # this machine's current one (/tmp/ray/ray_current_cluster), and a later ray.init() with no
    # address would wait on its dead GCS.
    import atexit

    atexit.register(cluster.shutdown)
    node = cluster.add_node(num_cpus=1, resources={"renderer": 1}, **loopback)
    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    from clerf_ray.config import PairDataConfig
    from clerf_ray.data.pairs import build_pair_dataset
    from clerf_ray.data.renders import labelled_render_dataset
    from clerf_ray.render import register_renderer
    from clerf_ray.render.procedural import ProceduralRenderer


    # Defined in __main__, so Ray ships the class by value to the actors.
    @register_renderer("placed")
    class PlacedRenderer(ProceduralRenderer):
        def __init__(self, log_dir, **kw):
            super().__init__(**kw)
            ctx = ray.get_runtime_context()
            with open(os.path.join(log_dir, f"actor-{os.getpid()}.json"), "w") as f:
                json.dump(
                    {"node": ctx.get_node_id(), "resources": ctx.get_assigned_resources()}, f
                )


    cfg = PairDataConfig.from_defaults(
        renderer="placed",
        renderer_options={"image_size": 8, "supersample": 1, "log_dir": log_dir},
        render_resources={"renderer": 1},
        num_pairs=4,
        render_batch_size=2,
        render_num_cpus=0.25,
        stage_num_cpus=0.1,
    )
    pairs = build_pair_dataset(cfg).take_all()
    labelled = labelled_render_dataset(cfg, 3).take_all()
    nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    print("RESULT " + json.dumps(
        {"pairs": len(pairs), "labelled": len(labelled), "renderer_node": node.node_id,
         "nodes": nodes}
    ))
    ray.shutdown()
    """
)


def test_render_resources_place_actors_on_the_node_that_has_them(tmp_path):
    script = tmp_path / "placement.py"
    script.write_text(SCRIPT)
    log_dir = tmp_path / "actors"
    log_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=str(ROOT),
        # Loopback only: ray.init turns a 127.0.0.1 address into the machine's own IP unless
        # Ray is told this is a single-machine cluster (its switch for laptops).
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
    )
    # Its own process group, so that a hang kills the cluster's processes too, not only Python.
    proc = subprocess.Popen(
        [sys.executable, str(script), str(log_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(tmp_path),
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"placement cluster hung:\n{stderr[-3000:]}") from None
    assert proc.returncode == 0, stderr[-3000:]
    line = [x for x in stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    assert result["pairs"] == 4 and result["labelled"] == 3

    # Two live nodes; only the second one offers the resource.
    nodes = result["nodes"]
    target = result["renderer_node"]
    assert len(nodes) == 2 and nodes[target].get("renderer") == 1.0
    assert all("renderer" not in r for n, r in nodes.items() if n != target)

    # One actor per pipeline (pairs, labelled renders), both on that node, holding the resource.
    actors = [json.loads(p.read_text()) for p in sorted(log_dir.glob("actor-*.json"))]
    assert len(actors) == 2
    for actor in actors:
        assert actor["node"] == target
        assert actor["resources"].get("renderer") == 1.0
        assert actor["resources"].get("CPU") == 0.25
