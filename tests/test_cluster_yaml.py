"""cluster.yaml is a valid Ray cluster launcher config with the node types the README relies on,
keeps the dashboard and job API closed to the internet, runs with token auth, starts MLflow on
the head with a database and S3 artifacts, and the README's cluster commands use S3 and pin the
GAN pickle's hash."""

import ipaddress
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PRIVATE_PORTS = (8265, 10001)  # dashboard + job API, Ray client server


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_rays_schema(raw):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(raw))  # raises on a schema violation
    types = raw["available_node_types"]
    assert types["renderer"]["resources"].get("renderer", 0) >= 1  # renderer actors pin here
    assert types["renderer"]["resources"].get("GPU", 0) >= 1
    assert raw["head_node_type"] in types


def _world_open_ports(rule) -> range | None:
    """Ports a security-group ingress rule opens to every address (None: none)."""
    cidrs = [r.get("CidrIp") for r in rule.get("IpRanges", [])]
    cidrs += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
    world = any(c and ipaddress.ip_network(c, strict=False).prefixlen == 0 for c in cidrs)
    if not world:
        return None
    if str(rule.get("IpProtocol")) == "-1":  # all protocols: all ports, whatever From/To say
        return range(0, 65536)
    return range(int(rule["FromPort"]), int(rule["ToPort"]) + 1)


def test_world_open_ports_helper_sees_open_rules():
    # The check below could pass vacuously if the helper never saw a rule; it sees these.
    assert 8265 in _world_open_ports(
        {
            "IpProtocol": "tcp",
            "FromPort": 8000,
            "ToPort": 9000,
            "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
        }
    )
    assert 10001 in _world_open_ports({"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]})
    assert (
        _world_open_ports(
            {
                "IpProtocol": "tcp",
                "FromPort": 8265,
                "ToPort": 8265,
                "IpRanges": [{"CidrIp": "10.0.0.0/8"}],
            }
        )
        is None
    )


def test_no_ingress_opens_dashboard_or_client_port_to_the_world(raw):
    """The rules Ray writes into the cluster's security group: its defaults (intra-cluster, SSH)
    plus the config's IpPermissions, computed by Ray's own code; none may open 8265 or 10001 to
    0.0.0.0/0 or ::/0. No node type brings its own security groups (they would replace these)."""
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    extra = raw["provider"].get("security_group", {}).get("IpPermissions", [])
    rules = _create_default_inbound_rules({"sg-clerf"}, extra)
    assert any(r.get("FromPort") == 22 for r in rules)  # SSH stays: port forwarding needs it
    for rule in rules:
        opened = _world_open_ports(rule)
        for port in PRIVATE_PORTS:
            assert opened is None or port not in opened, rule
    for name, node_type in raw["available_node_types"].items():
        config = node_type["node_config"]
        assert "SecurityGroupIds" not in config, name
        assert "NetworkInterfaces" not in config, name  # another way to attach groups


def _start_commands(raw):
    return raw["head_start_ray_commands"], raw["worker_start_ray_commands"]


def test_token_auth_on_every_node(raw):
    head, worker = _start_commands(raw)
    for commands in (head, worker):
        starts = [c for c in commands if re.search(r"\bray start\b", c)]
        assert len(starts) == 1
        assert re.search(r"(^|\s)RAY_AUTH_MODE=token\s", starts[0]), starts[0]
    # The same token on every node: the client's, mounted where Ray looks for it by default.
    mounts = raw["file_mounts"]
    assert mounts.get("/home/ubuntu/.ray/auth_token") == "~/.ray/auth_token"
    assert "RAY_AUTH_MODE=disabled" not in yaml.safe_dump(raw)


def test_mlflow_server_on_the_head_with_a_database_and_s3_artifacts(raw):
    head, worker = _start_commands(raw)
    servers = [c for c in raw.get("setup_commands", []) + head if "mlflow server" in c]
    assert len(servers) == 1
    server = servers[0]
    backend = re.search(r"--backend-store-uri\s+(\S+)", server).group(1)
    assert backend.split(":")[0] in {"sqlite", "postgresql", "mysql", "mssql"}  # a database
    assert re.search(r"--artifacts-destination\s+s3://\S+", server)
    assert "--no-serve-artifacts" not in server
    assert "mlflow server" not in " ".join(worker)
    # Every node's Ray processes (jobs, trials, workers) find the server without a config entry.
    port = re.search(r"--port\s+(\d+)", server).group(1)
    (head_start,) = [c for c in head if "ray start" in c]
    (worker_start,) = [c for c in worker if "ray start" in c]
    assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in head_start
    assert f"MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:{port}" in worker_start


def test_setup_pins_ray_and_installs_the_synced_project(raw):
    import ray

    setup = " ".join(raw["setup_commands"])
    assert f"ray[default,data,train,tune]=={ray.__version__}" in setup  # same Ray as the client
    assert raw["file_mounts"]["/home/ubuntu/clerf_ray"] == "."
    assert "pip install -q -e ~/clerf_ray" in setup
    assert ".gitignore" in raw.get("rsync_filter", [])  # no .venv/ or runs/ uploaded


def _readme_cluster_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("### On a cluster, with token auth")
    return text[start : text.index("\n## ", start)]


def test_readme_cluster_commands_use_s3_and_pin_the_pickle_hash():
    section = _readme_cluster_section()
    commands = "\n".join(re.findall(r"```bash\n(.*?)```", section, flags=re.S))
    assert "RAY_AUTH_MODE=token" in commands
    assert re.search(r"storage_path=s3://", commands)
    # A GAN pickle fetched from S3 is loaded with its hash.
    for m in re.finditer(r"network_pkl:\s*(s3://\S+?)[,}]", commands):
        tail = commands[m.end() : m.end() + 200]
        assert re.search(r"network_sha256:\s*\S+", tail), m.group(1)
    assert re.search(r"network_pkl:\s*s3://", commands)


def test_fake_cluster_node_types_mirror_cluster_yaml(raw):
    """The autoscaling tests' node types (tests/cluster/fake_cluster.py) are cluster.yaml's:
    the same worker type names and resource keys (the fake GPU standing in for the GPU), and the
    head offers only CPUs in both. The resources the jobs ask for pin each stage to one type."""
    from cluster.fake_cluster import FAKE_GPU, HEAD_RESOURCES, NODE_TYPES, PLACEMENT
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE

    from clerf_ray.config import load_config

    types = raw["available_node_types"]
    head = raw["head_node_type"]
    workers = {k: v for k, v in types.items() if k != head}
    assert sorted(NODE_TYPES) == sorted(workers) and FAKE_HEAD_NODE_TYPE not in workers

    def keys(resources):
        # The fake nodes' object store size is a property of one machine, not a resource.
        return sorted(
            FAKE_GPU if k == "GPU" else k for k in resources if k != "object_store_memory"
        )

    for name, node_type in workers.items():
        assert keys(node_type["resources"]) == keys(NODE_TYPES[name]["resources"]), name
    assert sorted(types[head]["resources"]) == sorted(HEAD_RESOURCES) == ["CPU"]

    cfg = load_config(None, PLACEMENT)
    for wanted, home in (
        (cfg.data.render_resources, "renderer"),
        (cfg.pretrain.worker_resources, "trainer"),
        (cfg.head.worker_resources, "trainer"),
    ):
        for name, node_type in types.items():
            offers = set(wanted) <= set(node_type["resources"])
            assert offers == (name == home), (wanted, name)
