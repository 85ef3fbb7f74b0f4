"""cluster.yaml's node types on one machine, under Ray's autoscaler with its fake multi-node
provider (``ray.cluster_utils.AutoscalingCluster``, what Ray tests its own autoscaler with).

The node types mirror cluster.yaml's (``tests/test_cluster_yaml.py`` keeps them in step): a head
with CPUs only; ``renderer`` nodes offering the ``renderer`` resource; ``trainer`` nodes offering
``trainer``. Each has one logical CPU (the stages ask for fractions), and the custom resource
``FAKE_GPU`` stands in for cluster.yaml's GPU (no GPU here; Ray's resources are only counts).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE
from ray.cluster_utils import AutoscalingCluster

FAKE_GPU = "fake_gpu"
HEAD_RESOURCES = {"CPU": 1}
# Each fake node is a raylet with its own object store on this machine: small ones, so that
# several nodes fit in its memory (Ray's default is 30% of the memory per node).
OBJECT_STORE_BYTES = 500 * 1024**2
NODE_TYPES = {
    "renderer": {
        "resources": {
            "CPU": 1,
            FAKE_GPU: 1,
            "renderer": 1,
            "object_store_memory": OBJECT_STORE_BYTES,
        },
        "node_config": {},
        "min_workers": 0,
        "max_workers": 2,
    },
    "trainer": {
        "resources": {
            "CPU": 1,
            FAKE_GPU: 1,
            "trainer": 1,
            "object_store_memory": OBJECT_STORE_BYTES,
        },
        "node_config": {},
        "min_workers": 0,
        "max_workers": 2,
    },
}
# What the jobs ask for on this cluster, as on the real one (README, cluster section).
PLACEMENT = [
    "data.render_resources={renderer: 1}",
    "pretrain.worker_resources={trainer: 1}",
    "head.worker_resources={trainer: 1}",
]


class FakeAutoscalingCluster(AutoscalingCluster):
    """``AutoscalingCluster`` with its base config given here: Ray builds it from
    ``fake_multi_node/example.yaml``, which the ``ray`` wheel does not ship. The values are
    that file's provider settings and empty command lists; ``idle_timeout_minutes`` is short so
    that idle nodes go within seconds.

    ``start()`` runs ``ray stop --force`` first, which stops every Ray on the machine: the tests
    using this run alone (``pytest -m cluster``)."""

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **kw):
        config = {
            "cluster_name": "clerf-fake",
            "max_workers": 8,
            "provider": {
                "type": "fake_multinode",
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "available_node_types": {
                **copy.deepcopy(worker_node_types),
                FAKE_HEAD_NODE_TYPE: {
                    "resources": dict(head_resources),
                    "node_config": {},
                    "max_workers": 0,
                },
            },
            "head_node_type": FAKE_HEAD_NODE_TYPE,
            "auth": {},
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": 0.1,
            "docker": {},
            **{
                k: []
                for k in (
                    "initialization_commands",
                    "setup_commands",
                    "head_setup_commands",
                    "worker_setup_commands",
                    "head_start_ray_commands",
                    "worker_start_ray_commands",
                    "cluster_synced_files",
                    "rsync_exclude",
                    "rsync_filter",
                )
            },
            "file_mounts": {},
            "file_mounts_sync_continuously": False,
        }
        config.update(kw)
        return config


def other_ray_processes() -> list[int]:
    """Pids of raylets running on this machine (another Ray that ``ray stop`` would kill)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == "raylet":
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def raylet_pid(node_id: str) -> int:
    """The pid of the raylet of fake node ``node_id``: the provider starts each node's raylet
    with ``RAY_OVERRIDE_NODE_ID_FOR_TESTING=<node id>`` in its environment."""
    want = f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "comm").read_text().strip() != "raylet":
                continue
            if want in (d / "environ").read_bytes().split(b"\0"):
                return int(d.name)
        except OSError:
            continue
    raise LookupError(f"no raylet of node {node_id} on this machine")


def env_without_ray_address() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env
