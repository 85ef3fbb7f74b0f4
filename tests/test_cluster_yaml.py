"""cluster.yaml is a valid Ray cluster launcher config with the node types the README relies on."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(raw))  # raises on a schema violation
    types = raw["available_node_types"]
    assert types["renderer"]["resources"].get("renderer", 0) >= 1  # renderer actors pin here
    assert types["renderer"]["resources"].get("GPU", 0) >= 1
    assert raw["head_node_type"] in types
