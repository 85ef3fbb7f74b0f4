"""``jobs/render.py``: rendered pairs to Parquet shards on a local disk and on S3 (a moto server on
loopback, the real S3 API), atomically, without duplicates on a rerun, with a report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from clerf_ray import geometry
from clerf_ray.config import PairDataConfig
from clerf_ray.data.pair_shards import PAIR_SCHEMA
from clerf_ray.data.pairs import build_pair_dataset
from clerf_ray.data.schema import decode_image
from clerf_ray.data.shards import list_shards, resolve
from clerf_ray.render import make_renderer

from .test_shards_s3 import BUCKET, _keys, s3_env  # noqa: F401  (s3_env is a fixture)

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = "data.renderer_options={lighting: frontal, background: grey, supersample: 1}"
TINY = [
    "--num-pairs",
    "6",
    "--image-size",
    "16",
    "--seed",
    "3",
    OPTIONS,
    "data.render_batch_size=3",
    "data.render_num_cpus=0.25",
    "data.stage_num_cpus=0.1",
]


def load_job():
    spec = importlib.util.spec_from_file_location("render_job", ROOT / "jobs" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_pairs(path: str) -> dict[str, list]:
    """Every row of the shards under ``path``, with pyarrow alone (no Ray)."""
    fs, root = resolve(path)
    shards = list_shards(fs, root)
    tables = [pq.read_table(s, filesystem=fs) for s in shards]
    for t in tables:
        assert t.schema.equals(PAIR_SCHEMA, check_metadata=False)
    rows: dict[str, list] = {}
    for t in tables:
        for k, v in t.to_pydict().items():
            rows.setdefault(k, []).extend(v)
    return rows


def check_pairs(rows: dict[str, list], n: int) -> None:
    """n pairs, ids 0..n-1 once each, each the render of its identities at its label."""
    assert sorted(rows["pair_id"]) == list(range(n))
    R = np.asarray(rows["R"], dtype=np.float64).reshape(-1, 3, 3)
    np.testing.assert_allclose(
        R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-5
    )
    renderer = make_renderer(
        "procedural", image_size=16, lighting="frontal", background="grey", supersample=1
    )
    for key, ids in (("anchor", "identity_a"), ("positive", "identity_b")):
        images = np.stack([decode_image(b) for b in rows[key]])
        assert images.shape == (n, 16, 16, 3)
        expected = renderer.render(np.asarray(rows[ids]), R)
        # The pipeline rendered at the float64 label, stored as float32.
        assert np.abs(images.astype(int) - expected.astype(int)).mean() < 0.5
    assert all(a != b for a, b in zip(rows["identity_a"], rows["identity_b"], strict=True))
    assert set(rows["source"]) == {"render:procedural"}


def test_render_job_local_rerun_and_report(ray_cluster, tmp_path, capsys):
    job = load_job()
    out = tmp_path / "pairs"
    assert job.main(["--output", str(out), "--shard-rows", "4", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "render: 6 pairs with procedural at 16 px" in printed
    assert "render: wrote 6 pairs" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "_report.json",
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    report = json.loads((out / "_report.json").read_text())
    assert report["counts"] == {"pairs": 6, "by_source": {"render:procedural": 6}}
    assert [s["rows"] for s in report["shards"]] == [4, 2]
    assert report["seed"] == 3 and report["renderer_options"]["background"] == "grey"
    check_pairs(read_pairs(str(out)), 6)

    # A rerun with bigger shards replaces the old ones: no stale part-00001, no duplicates.
    assert job.main(["--output", str(out), "--shard-rows", "10", *TINY]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["_report.json", "part-00000.parquet"]
    check_pairs(read_pairs(str(out)), 6)

    # Training sizes its epochs from the shards themselves, not from data.num_pairs.
    from clerf_ray.data.pairs import pairs_per_epoch

    shards_cfg = PairDataConfig.from_defaults(source="shards", shards_path=str(out), num_pairs=100)
    assert pairs_per_epoch(shards_cfg) == len(read_pairs(str(out))["pair_id"]) == 6
    assert pairs_per_epoch(PairDataConfig.from_defaults(num_pairs=100)) == 100


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--image-size", "4"], "data.image_size"),
        (["data.source=shards"], "data.source"),
        (["data.augment=heavy"], "data.augment"),
        (["--source", "real_anchor"], "data.labelled_path"),
        (["--shard-rows", "0"], "--shard-rows"),
    ],
)
def test_render_job_rejects_bad_settings(tmp_path, capsys, argv, message):
    job = load_job()
    assert job.main(["--output", str(tmp_path / "x"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_render_job_to_s3_and_stream_back(ray_cluster, s3_env, capsys):  # noqa: F811
    job = load_job()
    out = f"s3://{BUCKET}/pairs"
    assert job.main(["--output", out, "--shard-rows", "4", *TINY]) == 0
    assert _keys("pairs/") == ["_report.json", "part-00000.parquet", "part-00001.parquet"]
    check_pairs(read_pairs(out), 6)
    assert job.main(["--output", out, "--shard-rows", "10", *TINY]) == 0
    assert _keys("pairs/") == ["_report.json", "part-00000.parquet"]
    assert "wrote 6 pairs" in capsys.readouterr().out

    # Stream the S3 shards back as training pairs. The session's Ray may have started before the
    # AWS variables were set, so run the consumer as a task whose runtime_env holds them (as
    # `ray job submit --runtime-env-json` would); Ray Data's tasks inherit it.
    @ray_cluster.remote(num_cpus=0, runtime_env={"env_vars": dict(s3_env)})
    def consume(path):
        cfg = PairDataConfig.from_defaults(
            source="shards", shards_path=path, augment="fa", seed=3, stage_num_cpus=0.1
        )
        batch = build_pair_dataset(cfg, epoch=2).take_batch(10, batch_format="numpy")
        return batch["pair_id"], batch["R"], batch["anchor"].shape

    ids, R_aug, shape = ray_cluster.get(consume.remote(out), timeout=300)
    assert sorted(ids.tolist()) == list(range(6)) and shape == (6, 16, 16, 3)
    stored = read_pairs(out)
    R = np.asarray(stored["R"], dtype=np.float64).reshape(-1, 3, 3)[np.argsort(stored["pair_id"])]
    R_aug = R_aug.astype(np.float64)[np.argsort(ids)]
    # Augmented on the way out (fresh draws from the stored pairs): every label changed.
    assert np.all(geometry.geodesic_error(R_aug, R) > 1.0)


def _by_id(batch: dict) -> dict:
    order = np.argsort(batch["pair_id"])
    return {k: np.asarray(v)[order] for k, v in batch.items()}


def test_in_memory_pool_gives_the_pairs_that_disk_shards_give(ray_cluster, tmp_path):
    """``data.pool``: the pairs rendered once into Ray's object store and augmented afresh each
    epoch are exactly those of the disk route (render to shards, stream them back), epoch by
    epoch; the epochs share renders and differ in their augmentation."""
    from clerf_ray.data.pairs import render_pool, write_pair_shards

    options = {"image_size": 16, "lighting": "frontal", "background": "grey", "supersample": 1}
    base = dict(
        renderer_options=options,
        num_pairs=8,
        seed=5,
        augment="fa",
        render_batch_size=4,
        render_num_cpus=0.25,
        stage_num_cpus=0.1,
    )
    write_pair_shards(PairDataConfig.from_defaults(**base), str(tmp_path / "shards"), log=None)
    disk = PairDataConfig.from_defaults(
        **{**base, "source": "shards", "shards_path": str(tmp_path / "shards")}
    )
    cfg = PairDataConfig.from_defaults(**base)
    pool = render_pool(cfg)
    epochs = []
    for epoch in (0, 1):
        got = _by_id(
            build_pair_dataset(cfg, epoch, pool=pool).take_batch(100, batch_format="numpy")
        )
        want = _by_id(build_pair_dataset(disk, epoch).take_batch(100, batch_format="numpy"))
        assert got["pair_id"].tolist() == list(range(8))
        for key in ("anchor", "positive", "R", "identity_a", "identity_b"):
            np.testing.assert_allclose(got[key].astype(float), want[key].astype(float), atol=1e-6)
        epochs.append(got)
    np.testing.assert_array_equal(epochs[0]["identity_b"], epochs[1]["identity_b"])
    assert np.all(geometry.geodesic_error(epochs[0]["R"], epochs[1]["R"]) > 1.0)
