"""Checks made when a job loads its config, before Ray starts: each names the field."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clerf_ray.config import ConfigError, load_config
from clerf_ray.preflight import check_config

REPO = Path(__file__).resolve().parents[1]


def problems(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as e:
        check_config(load_config(None, overrides))
    return str(e.value)


def test_a_default_config_passes():
    check_config(load_config())


def test_unknown_backbone_names_the_field_and_close_names():
    msg = problems(["model.backbone=resnet18x"])
    assert "model.backbone: unknown timm model 'resnet18x'" in msg
    assert "resnet18" in msg.split("close names:")[1]


def test_image_size_the_backbone_cannot_take():
    # ConvNeXt downsamples by 32 with a 2x2 kernel in its last stage: 16 px leave 1 x 1 before it.
    msg = problems(["model.backbone=convnext_atto", "data.image_size=16"])
    assert "data.image_size: backbone 'convnext_atto' cannot take 16 px" in msg
    check_config(load_config(None, ["model.backbone=convnext_atto", "data.image_size=32"]))


def test_feature_map_head_needs_a_backbone_with_a_spatial_map():
    msg = problems(
        [
            "model.backbone=vit_tiny_patch16_224",
            "data.image_size=224",
            "model.head_input=feature_map",
        ]
    )
    assert "model.head_input: 'feature_map' needs a backbone with a spatial feature map" in msg
    assert "(2, 197, 192)" in msg
    check_config(load_config(None, ["model.head_input=feature_map"]))
    vit = ["model.backbone=vit_tiny_patch16_224", "data.image_size=224"]
    check_config(load_config(None, [*vit, "model.head_input=features"]))


def test_unknown_renderer_and_option():
    assert "data.renderer:" in problems(["data.renderer=nerf9000"])
    msg = problems(["data.renderer_options={lightning: frontal}"])
    assert "data.renderer_options.lightning: renderer 'procedural' takes no option" in msg
    assert "did you mean lighting" in msg
    assert "data.image_size" in problems(["data.renderer_options={image_size: 32}"])
    check_config(load_config(None, ["data.renderer_options={lighting: frontal}"]))


def _pair_set(path: Path) -> None:
    from clerf_ray.data.pair_shards import PairShardWriter, encode_png, pair_table

    img = encode_png(np.zeros((2, 8, 8, 3), np.uint8))
    batch = {
        "pair_id": np.arange(2),
        "anchor": img,
        "positive": img,
        "R": np.tile(np.eye(3, dtype=np.float32).reshape(1, 9), (2, 1)),
        "identity_a": np.zeros(2, np.int64),
        "identity_b": np.ones(2, np.int64),
        "source": np.asarray(["render:procedural"] * 2),
    }
    with PairShardWriter(str(path), shard_rows=10) as w:
        w.write(pair_table(batch))
        w.commit({"kind": "pairs"})


def test_labelled_paths_must_exist_and_hold_a_labelled_set(tmp_path):
    missing = str(tmp_path / "nowhere")
    msg = problems([f"head.labelled_path={missing}"])
    assert "head.labelled_path: no part-*.parquet shards" in msg and missing in msg
    msg = problems(["data.source=real_anchor", f"data.labelled_path={missing}"])
    assert "data.labelled_path: no part-*.parquet shards" in msg
    assert "data.poses:" in problems([f"data.poses={missing}"])

    pairs = tmp_path / "pairs"
    _pair_set(pairs)
    msg = problems([f"head.labelled_path={pairs}"])
    assert "head.labelled_path:" in msg and "is not a labelled set" in msg
    assert "data.source=shards" in msg
    # The same set is what data.source=shards reads.
    check_config(load_config(None, ["data.source=shards", f"data.shards_path={pairs}"]))


def test_shards_path_refuses_a_labelled_set(tmp_path):
    from clerf_ray.data.schema import make_table
    from clerf_ray.data.shards import write_shards

    table = make_table(
        np.zeros((1, 8, 8, 3), np.uint8), np.eye(3)[None], files=["a.jpg"], dataset="test"
    )
    write_shards(table, str(tmp_path / "lab"), shard_rows=10)
    msg = problems(["data.source=shards", f"data.shards_path={tmp_path / 'lab'}"])
    assert "data.shards_path:" in msg and "holds no pair shards" in msg


def test_time_limits_that_cannot_fit_an_epoch():
    msg = problems(["pretrain.time_limit_s=0.001"])
    assert "pretrain.time_limit_s: 0.001 s cannot fit one epoch of 8192 pairs" in msg
    msg = problems(["head.time_limit_s=0.0001"])
    assert "head.time_limit_s:" in msg
    check_config(load_config(None, ["pretrain.time_limit_s=1"]))


def test_every_problem_is_listed_at_once():
    msg = problems(["model.backbone=resnet_nope", "data.renderer=nerf9000"])
    assert "model.backbone:" in msg and "data.renderer:" in msg


def test_the_job_exits_before_ray_starts_naming_the_field():
    """`python jobs/pretrain.py model.backbone=resnet_nope` exits 2 with the field, the close
    names and no Ray: the job's process never imports ray."""
    code = (
        "import sys; sys.path.insert(0, 'jobs'); import pretrain; "
        "rc = pretrain.main(['model.backbone=resnet_nope']); "
        "print('RC', rc, 'RAY', 'ray' in sys.modules)"
    )
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    took = time.monotonic() - t0
    assert "RC 2 RAY False" in out.stdout, out.stdout + out.stderr
    assert "model.backbone: unknown timm model 'resnet_nope'; close names:" in out.stderr
    print(f"bad backbone refused in {took:.1f} s")
