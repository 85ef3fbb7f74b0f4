"""``jobs/render.py --labelled``: renders written as a labelled set, in prepare_data's schema, and
read by every consumer of labelled sets (``load_labelled``, evaluation's Parquet sets, coverage,
the head's ``labelled_path`` stream, real anchors).

Expected values are computed independently: the poses requested are a small pool built with
scipy's Euler angles (``data.poses`` = a labelled set of them), so every label must be one of them;
each image must be the procedural render of its identity at its label, rendered here directly.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.spatial.transform import Rotation

from clerf_ray.config import PairDataConfig
from clerf_ray.data.labelled_images import build_labelled_image_dataset
from clerf_ray.data.pairs import build_pair_dataset
from clerf_ray.data.schema import SCHEMA, decode_image, labelled_R, load_labelled, make_table
from clerf_ray.data.shards import list_shards, resolve, write_shards
from clerf_ray.render import make_renderer

from .test_shards_s3 import BUCKET, _keys, s3_env  # noqa: F401  (s3_env is a fixture)

ROOT = Path(__file__).resolve().parents[2]
SIZE = 16
RENDER = {"image_size": SIZE, "lighting": "frontal", "background": "grey", "supersample": 1}
# (pitch, yaw, roll) degrees of the poses requested; scipy builds R = Rz(roll) Ry(yaw) Rx(pitch).
POSES_DEG = [(10.0, -35.0, 5.0), (-20.0, 60.0, -40.0), (0.0, 150.0, 170.0)]
IDENTITIES = (500, 510)


def scipy_label(pitch: float, yaw: float, roll: float) -> np.ndarray:
    return Rotation.from_euler("ZYX", [roll, yaw, pitch], degrees=True).as_matrix()


REQUESTED = np.stack([scipy_label(*p) for p in POSES_DEG])


def load_job():
    spec = importlib.util.spec_from_file_location("render_job", ROOT / "jobs" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pose_set(tmp_path_factory) -> str:
    """A labelled set holding the requested poses (grey images: only ``R`` is used)."""
    out = str(tmp_path_factory.mktemp("poses") / "set")
    images = np.full((len(REQUESTED), 8, 8, 3), 128, np.uint8)
    table = make_table(
        images, REQUESTED, files=["a", "b", "c"], dataset="poses", image_format="png"
    )
    write_shards(table, out)
    return out


def job_args(out: str, pose_set: str, *extra: str) -> list[str]:
    return [
        "--labelled",
        "--num-images",
        "7",
        "--identities",
        str(IDENTITIES[0]),
        str(IDENTITIES[1]),
        "--image-format",
        "png",
        "--image-size",
        str(SIZE),
        "--poses",
        pose_set,
        "--seed",
        "4",
        "--output",
        out,
        "data.renderer_options={lighting: frontal, background: grey, supersample: 1}",
        "data.render_batch_size=3",
        "data.render_num_cpus=0.25",
        "data.stage_num_cpus=0.1",
        *extra,
    ]


def check_rows(table) -> None:
    """7 labelled renders: labels among the requested poses, images the renders of their
    identities at their labels, euler_deg and box as the schema defines them."""
    assert table.num_rows == 7
    rows = table.to_pylist()
    R = labelled_R(table)
    # Each label is one of the requested poses (float32 storage).
    d = np.abs(R[:, None] - REQUESTED[None]).max(axis=(2, 3))
    assert np.all(d.min(axis=1) < 1e-6)
    assert len(set(d.argmin(axis=1).tolist())) >= 2  # drawn from the pool, not one pose
    renderer = make_renderer("procedural", **RENDER)
    identities = np.asarray([int(r["file"].rsplit("-id", 1)[1]) for r in rows])
    assert np.all((identities >= IDENTITIES[0]) & (identities < IDENTITIES[1]))
    expected = renderer.render(identities, R)
    images = np.stack([decode_image(r["image"]) for r in rows])
    assert images.shape == (7, SIZE, SIZE, 3)
    assert np.abs(images.astype(int) - expected.astype(int)).mean() < 0.5  # PNG, float32 label
    for i, row in enumerate(rows):
        assert row["file"] == f"render-{i:08d}-id{identities[i]}"
        assert row["dataset"] == "render:procedural"
        assert tuple(row["box"]) == (0, 0, SIZE, SIZE)
        assert (row["width"], row["height"]) == (SIZE, SIZE)
        # euler_deg are angles of R: scipy rebuilds R from them (the triple itself is not
        # unique past 90 deg of yaw, so compare matrices).
        np.testing.assert_allclose(scipy_label(*row["euler_deg"]), R[i], atol=1e-5)


def test_labelled_render_job_every_consumer_reads_it(ray_cluster, tmp_path, pose_set, capsys):
    job = load_job()
    out = str(tmp_path / "renders")
    assert job.main(job_args(out, pose_set, "--shard-rows", "3")) == 0
    assert "wrote 7 labelled images" in capsys.readouterr().out
    names = sorted(p.name for p in Path(out).iterdir())
    assert names == [
        "_report.json",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    report = json.loads((Path(out) / "_report.json").read_text())
    assert report["kind"] == "labelled" and report["dataset"] == "render:procedural"
    assert report["counts"]["written"] == 7 and report["counts"]["skipped"] == 0
    assert report["skipped"] == [] and report["identities"] == list(IDENTITIES)
    assert [s["rows"] for s in report["shards"]] == [3, 3, 1]

    # The shards hold prepare_data's schema, read with pyarrow alone.
    fs, root = resolve(out)
    for shard in list_shards(fs, root):
        assert pq.read_schema(shard).equals(SCHEMA, check_metadata=False)

    table = load_labelled(out)
    check_rows(table)
    R = labelled_R(table)

    # Evaluation's Parquet path (what `clerf evaluate --data` reads).
    from clerf_ray.evaluate import load_parquet_set

    evalset = load_parquet_set(out, image_size=SIZE)
    np.testing.assert_allclose(evalset.R, R)
    np.testing.assert_array_equal(
        evalset.images, np.stack([decode_image(b) for b in table.column("image").to_pylist()])
    )
    np.testing.assert_allclose(evalset.reference_euler_deg(), table.column("euler_deg").to_pylist())

    # Coverage's labels.
    from clerf_ray.data.coverage import labels_from_parquet

    np.testing.assert_allclose(labels_from_parquet(out), R)

    # The head's labelled_path stream (no augmentation: labels as stored), numbered in set order.
    cfg = PairDataConfig.from_defaults(
        renderer_options=dict(RENDER), augment="none", stage_num_cpus=0.1
    )
    batch = build_labelled_image_dataset(cfg, labelled_path=out).take_batch(
        20, batch_format="numpy"
    )
    assert len(batch["R"]) == 7 and set(batch["source"].tolist()) == {"render:procedural"}
    got = batch["R"].astype(np.float64)
    order = np.lexsort(got.reshape(7, 9).T)
    np.testing.assert_allclose(got[order], R[np.lexsort(R.reshape(7, 9).T)], atol=1e-7)

    # Real anchors from the render set: anchor k is row k of the set.
    anchors = PairDataConfig.from_defaults(
        source="real_anchor",
        labelled_path=out,
        renderer_options=dict(RENDER),
        augment="none",
        render_num_cpus=0.25,
        stage_num_cpus=0.1,
    )
    pairs = build_pair_dataset(anchors).take_batch(20, batch_format="numpy")
    order = np.argsort(pairs["pair_id"])
    assert pairs["pair_id"][order].tolist() == list(range(7))
    np.testing.assert_allclose(pairs["R"][order].astype(np.float64), R, atol=1e-7)

    # A rerun with the same seed and bigger shards: the same rows in the same order, no stale
    # shard left behind.
    assert job.main(job_args(out, pose_set, "--shard-rows", "10")) == 0
    assert sorted(p.name for p in Path(out).iterdir()) == ["_report.json", "part-00000.parquet"]
    assert load_labelled(out).equals(table)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--labelled"], "--num-images"),
        (["--num-images", "3"], "--labelled"),
        (["--labelled", "--num-images", "3", "--source", "real_anchor"], "data.source"),
        (["--labelled", "--num-images", "3", "--identities", "5", "6"], "data.identities"),
    ],
)
def test_labelled_render_job_rejects_bad_settings(tmp_path, capsys, argv, message):
    job = load_job()
    assert job.main(["--output", str(tmp_path / "x"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_labelled_render_job_to_s3(ray_cluster, s3_env, pose_set):  # noqa: F811
    job = load_job()
    out = f"s3://{BUCKET}/renders"
    assert job.main(job_args(out, pose_set, "--shard-rows", "4")) == 0
    assert _keys("renders/") == ["_report.json", "part-00000.parquet", "part-00001.parquet"]
    check_rows(load_labelled(out))
    assert job.main(job_args(out, pose_set, "--shard-rows", "10")) == 0
    assert _keys("renders/") == ["_report.json", "part-00000.parquet"]
    assert load_labelled(out).num_rows == 7
