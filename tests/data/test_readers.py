"""Dataset readers -> labelled shards, on fixtures written in the real formats (tests/data/fixtures).

Expected values are computed independently of the code under test: boxes by hand from the peers'
formula, labels with scipy's Rotation, BIWI matrices by the inverse of the peers' Euler extraction.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.spatial.transform import Rotation

from clerf_ray import geometry
from clerf_ray.data import crop as crops
from clerf_ray.data.readers import NoValidSamplesError, prepare_dataset
from clerf_ray.data.schema import (
    SCHEMA,
    NotALabelledSetError,
    decode_image,
    encode_image,
    labelled_R,
    load_labelled,
    make_table,
    read_labelled,
)
from clerf_ray.data.shards import ShardWriter, read_report, write_shards

from .fixtures import (
    AFLW2000_POSES,
    AFLW_H,
    AFLW_W,
    build_aflw2000,
    landmarks_in_box,
    ramp_position,
    truncate_file,
    write_biwi_cal,
    write_biwi_frame,
    write_garbage,
    write_mat_sample,
)

REPO = Path(__file__).resolve().parents[2]


def scipy_label(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """Rz(roll) Ry(yaw) Rx(pitch) built by scipy (intrinsic Z-Y-X), not by clerf_ray.geometry."""
    return Rotation.from_euler("ZYX", [roll, yaw, pitch]).as_matrix()


def rows_by_file(table: pa.Table) -> dict[str, dict]:
    return {r["file"]: r for r in table.to_pylist()}


def crop_origin_matches(row: dict, width: int, height: int, tol: float = 5.0) -> None:
    """The crop's corner colours come from the box corners of the source ramp image."""
    img = decode_image(row["image"])
    x0, y0, x1, y1 = row["box"]
    assert img.shape == (y1 - y0, x1 - x0, 3)
    tl = ramp_position(img[0, 0].astype(float), width, height)
    br = ramp_position(img[-1, -1].astype(float), width, height)
    assert abs(tl[0] - x0) < tol and abs(tl[1] - y0) < tol, (tl, row["box"])
    assert abs(br[0] - (x1 - 1)) < tol and abs(br[1] - (y1 - 1)) < tol, (br, row["box"])


# --------------------------------------------------------------------------- fixtures


LP_GOOD = {
    # name: (pose, landmark extent, hand-computed 300W-LP box at k = 0.2 after clipping to 320x320)
    # x_min -= 0.12 w; y_min -= 0.4 h; x_max += 0.12 (x_max - x_min'); y_max += 0.12 (y_max - y_min')
    # AFW: w = h = 100 -> 100-12 = 88, 150-40 = 110, 200+0.12*112 = 213.44, 250+0.12*140 = 266.8
    "AFW/AFW_134212_1_0": ((0.1, -0.3, 0.2), (100, 150, 200, 250), (88, 110, 213, 266)),
    # AFW_Flip: w = 200, h = 220 -> 36, -8 (clipped to 0), 260+0.12*224 = 286.88,
    # 300+0.12*308 = 336.96 (clipped to 320)
    "AFW_Flip/AFW_134212_1_0": ((-0.2, 0.5, -0.1), (60, 80, 260, 300), (36, 0, 286, 320)),
}


@pytest.fixture(scope="module")
def lp_source(tmp_path_factory) -> Path:
    """A 300W-LP tree: two good samples, five broken ones, and a landmarks/ folder to ignore."""
    root = tmp_path_factory.mktemp("300W_LP")
    for i, (name, (pose, ext, _)) in enumerate(LP_GOOD.items()):
        folder, stem = name.split("/")
        write_mat_sample(root / folder, stem, pose=pose, pt2d=landmarks_in_box(*ext, 68, seed=i))
    pts = landmarks_in_box(100, 100, 200, 200, 68)
    write_mat_sample(root / "HELEN", "HELEN_1_0", pose=(0.1, 0.1, 0.1), pt2d=pts)
    truncate_file(root / "HELEN" / "HELEN_1_0.jpg")
    write_mat_sample(root / "IBUG", "IBUG_2_0", pose=(0.1, 0.1, 0.1), pt2d=pts, write_mat=False)
    write_garbage(root / "IBUG" / "IBUG_2_0.mat")
    write_mat_sample(root / "LFPW", "LFPW_3_0", pose=(0.1, 0.1, 0.1), pt2d=pts, write_mat=False)
    write_mat_sample(root / "LFPW", "LFPW_4_0", pose=(0.1, math.nan, 0.1), pt2d=pts)
    write_mat_sample(root / "LFPW_Flip", "LFPW_5_0", pose=(0.1, 3.5, 0.1), pt2d=pts)
    # landmarks/ holds .mat files without images in the real set: it must not be read at all.
    write_mat_sample(root / "landmarks" / "AFW", "AFW_134212_1_0_pts", pose=(0, 0, 0), pt2d=pts)
    return root


@pytest.fixture(scope="module")
def aflw_source(tmp_path_factory) -> Path:
    return build_aflw2000(tmp_path_factory.mktemp("AFLW2000"))


def biwi_file_matrix(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """The rotation rows BIWI would store for a label, by inverting the peers' extraction.

    HopeNet / FSA-Net read rows F, set M = F^T and take roll = -atan2(M10, M00),
    yaw = -atan2(-M20, ...), pitch = atan2(M21, M22), i.e. the ZYX angles of M are
    (-roll, -yaw, pitch). So M = Rz(-roll) Ry(-yaw) Rx(pitch) and F = M^T (built with scipy).
    """
    return Rotation.from_euler("ZYX", [-roll, -yaw, pitch]).as_matrix().T


def peers_biwi_euler_deg(F: np.ndarray) -> tuple[float, float, float]:
    """(pitch, yaw, roll) in degrees by the peers' formula, written out as they do."""
    M = np.asarray(F).T
    roll = -math.atan2(M[1, 0], M[0, 0])
    yaw = -math.atan2(-M[2, 0], math.hypot(M[2, 1], M[2, 2]))
    pitch = math.atan2(M[2, 1], M[2, 2])
    return math.degrees(pitch), math.degrees(yaw), math.degrees(roll)


BIWI_POSE = (0.2, -0.5, 0.1)  # pitch, yaw, roll radians of frame 01/frame_00003
# Subject turning to the sensor's left by 30 deg: in the Kinect frame (x right, y down, z forward)
# the nose, along -z when facing the sensor, moves toward -x (image left): a turn about the
# vertical axis, Ry(+30 deg) (0, 0, -1) = (-sin 30, 0, -cos 30).
TURN_LEFT = Rotation.from_rotvec([0.0, math.radians(30.0), 0.0]).as_matrix()
# Head tilting up by 20 deg: the nose moves toward -y (image up): Rx(-20 deg) (0, 0, -1) has y < 0.
TILT_UP = Rotation.from_rotvec([math.radians(-20.0), 0.0, 0.0]).as_matrix()


@pytest.fixture(scope="module")
def biwi_source(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("kinect_head_pose_db")
    seq1, seq2 = base / "hpdb" / "01", base / "hpdb" / "02"
    write_biwi_cal(seq1, 500.0, 500.0, 320.0, 240.0)
    write_biwi_frame(seq1, 3, F=biwi_file_matrix(*BIWI_POSE), centre_mm=(50.0, -20.0, 1000.0))
    write_biwi_frame(seq1, 4, F=TURN_LEFT, centre_mm=(0.0, 0.0, 900.0))
    bad = biwi_file_matrix(0.1, 0.2, 0.3)
    bad[0] *= 1.5
    write_biwi_frame(seq1, 5, F=bad, centre_mm=(0.0, 0.0, 900.0))
    nan = np.eye(3)
    nan[1, 1] = math.nan
    write_biwi_frame(seq1, 6, F=nan, centre_mm=(0.0, 0.0, 900.0))
    # Sequence 02 has no rgb.cal: the published intrinsics apply.
    write_biwi_frame(seq2, 0, F=TILT_UP, centre_mm=(0.0, 0.0, 1000.0))
    # Sequence 03's rgb.cal is unreadable; its frame 00001 has no pose file.
    seq3 = base / "hpdb" / "03"
    write_biwi_frame(seq3, 0, F=np.eye(3), centre_mm=(0.0, 0.0, 1000.0))
    write_garbage(seq3 / "rgb.cal")
    write_biwi_frame(seq3, 1, F=np.eye(3), centre_mm=(0.0, 0.0, 1000.0))
    (seq3 / "frame_00001_pose.txt").unlink()
    return base


# --------------------------------------------------------------------------- 300W-LP


def test_300w_lp_labels_boxes_and_report(lp_source, tmp_path):
    out = tmp_path / "lp"
    report = prepare_dataset("300w_lp", lp_source, str(out), split="test", log=None)
    table = load_labelled(str(out))
    assert table.schema.equals(SCHEMA, check_metadata=False)
    rows = rows_by_file(table)
    assert sorted(rows) == sorted(f"{n}.jpg" for n in LP_GOOD)
    for name, (pose, _, box) in LP_GOOD.items():
        row = rows[f"{name}.jpg"]
        assert row["dataset"] == "300w_lp"
        np.testing.assert_allclose(np.reshape(row["R"], (3, 3)), scipy_label(*pose), atol=1e-6)
        np.testing.assert_allclose(row["euler_deg"], np.degrees(pose), atol=1e-4)
        assert tuple(row["box"]) == box
        crop_origin_matches(row, 320, 320)
        assert (row["width"], row["height"]) == (box[2] - box[0], box[3] - box[1])

    c = report["counts"]
    assert c == read_report(str(out))["counts"]
    assert (c["seen"], c["written"], c["filtered"], c["skipped"]) == (7, 2, 0, 5)
    expected = {
        "HELEN/HELEN_1_0.jpg": "bad_image",
        "IBUG/IBUG_2_0.mat": "bad_mat",
        "LFPW/LFPW_3_0.mat": "missing_mat",
        "LFPW/LFPW_4_0.mat": "pose_nan",
        "LFPW_Flip/LFPW_5_0.mat": "pose_out_of_range",
    }
    assert {s["file"]: s["reason"] for s in report["skipped"]} == expected
    assert c["skipped_by_reason"] == {r: 1 for r in expected.values()}
    assert not any("landmarks" in s["file"] for s in report["skipped"])


def test_300w_lp_training_crop_factor_is_seeded_and_in_range(lp_source, tmp_path):
    boxes = {}
    for seed in (0, 0, 1):
        out = tmp_path / f"seed{seed}-{len(boxes)}"
        prepare_dataset("300w_lp", lp_source, str(out), split="train", seed=seed, log=None)
        boxes[str(out)] = {r["file"]: tuple(r["box"]) for r in load_labelled(str(out)).to_pylist()}
    first, again, other = boxes.values()
    assert first == again  # same seed, same crops
    assert first != other  # another seed draws other k
    name = "AFW/AFW_134212_1_0"
    x0, y0, x1, y1 = first[f"{name}.jpg"]
    # k in [0.2, 0.4): each edge lies between its positions at k = 0.2 and k = 0.4 (by hand:
    # k = 0.4 -> 100-24 = 76, 150-80 = 70, 200+0.24*124 = 229.76, 250+0.24*180 = 293.2).
    assert 76 <= x0 <= 88 and 70 <= y0 <= 110 and 213 <= x1 <= 229 and 266 <= y1 <= 293


def test_workers_give_the_same_rows(lp_source, tmp_path):
    """Worker processes write the single-process set: every column of every row (image bytes,
    R, Euler angles, box, sizes, file, dataset) in the same order, and the same report. The
    rows hold the true labels, so two equal tables are not two equally wrong ones."""
    a, b = tmp_path / "one", tmp_path / "two"
    ra = prepare_dataset("300w_lp", lp_source, str(a), seed=3, log=None)
    rb = prepare_dataset("300w_lp", lp_source, str(b), seed=3, workers=2, log=None)
    ta, tb = load_labelled(str(a)), load_labelled(str(b))
    assert ta.column_names == tb.column_names == SCHEMA.names
    assert ta.num_rows == len(LP_GOOD)
    for column in SCHEMA.names:
        assert ta.column(column).to_pylist() == tb.column(column).to_pylist(), column
    rows = rows_by_file(tb)
    for name, (pose, _, _) in LP_GOOD.items():
        np.testing.assert_allclose(
            np.reshape(rows[f"{name}.jpg"]["R"], (3, 3)), scipy_label(*pose), atol=1e-6
        )
    assert ra["counts"] == rb["counts"] and ra["skipped"] == rb["skipped"]


# --------------------------------------------------------------------------- AFLW2000


def test_aflw2000_invisible_points_and_99_filter(aflw_source, tmp_path):
    peer = tmp_path / "peer"
    report = prepare_dataset("aflw2000", aflw_source, str(peer), log=None)
    rows = rows_by_file(load_labelled(str(peer)))
    assert sorted(rows) == ["image00002.jpg", "image00006.jpg"]
    assert report["counts"]["filtered"] == 1 and report["counts"]["skipped"] == 0
    assert report["filtered"][0]["sample"] == "image00004"
    assert report["filtered"][0]["file"] == "image00004.mat"
    assert report["filtered"][0]["reason"] == "filtered_99"
    # Peer box (AFLW2000: x_min -= 0.4 w, y_min -= 0.4 h, x_max += 0.4 (x_max - x_min'),
    # y_max += 0.12 (y_max - y_min')) with the invisible (-1, -1) points in the extent:
    # x: [-1, 180] -> -73.4, 180 + 0.4 * 253.4 = 281.36; y: [-1, 220] -> -89.4,
    # 220 + 0.12 * 309.4 = 257.128; clipped to the image -> (0, 0, 281, 257).
    assert tuple(rows["image00002.jpg"]["box"]) == (0, 0, 281, 257)
    # image00006: x: [50, 150] -> 10, 150 + 0.4 * 140 = 206; y: [60, 160] -> 20, 176.8.
    assert tuple(rows["image00006.jpg"]["box"]) == (10, 20, 206, 176)
    crop_origin_matches(rows["image00006.jpg"], AFLW_W, AFLW_H)
    np.testing.assert_allclose(
        np.reshape(rows["image00006.jpg"]["R"], (3, 3)),
        scipy_label(*AFLW2000_POSES["image00006"]),
        atol=1e-6,
    )

    clean = tmp_path / "clean"
    report = prepare_dataset(
        "aflw2000", aflw_source, str(clean), include_invisible=False, filter_99=False, log=None
    )
    rows = rows_by_file(load_labelled(str(clean)))
    assert report["counts"]["filtered"] == 0 and len(rows) == 3
    # Visible points only: x: [100, 180] -> 68, 180 + 0.4 * 112 = 224.8;
    # y: [120, 220] -> 80, 220 + 0.12 * 140 = 236.8.
    assert tuple(rows["image00002.jpg"]["box"]) == (68, 80, 224, 236)
    assert rows["image00004.jpg"]["euler_deg"][1] == pytest.approx(math.degrees(2.0), abs=1e-4)


def test_image_size_and_png(aflw_source, tmp_path):
    out = tmp_path / "small"
    prepare_dataset("aflw2000", aflw_source, str(out), image_size=64, image_format="png", log=None)
    for row in load_labelled(str(out)).to_pylist():
        assert row["image"][:8] == b"\x89PNG\r\n\x1a\n"
        assert decode_image(row["image"]).shape == (64, 64, 3)
        assert (row["width"], row["height"]) == (64, 64)


# --------------------------------------------------------------------------- BIWI


def test_biwi_labels_round_trip_and_signs(biwi_source, tmp_path):
    out = tmp_path / "biwi"
    report = prepare_dataset("biwi", biwi_source, str(out), biwi_box_mm=200.0, log=None)
    rows = rows_by_file(load_labelled(str(out)))
    assert sorted(rows) == [
        "01/frame_00003_rgb.png",
        "01/frame_00004_rgb.png",
        "02/frame_00000_rgb.png",
    ]
    assert {s["file"]: s["reason"] for s in report["skipped"]} == {
        "01/frame_00005_pose.txt": "non_orthonormal",
        "01/frame_00006_pose.txt": "pose_nan",
        "03/rgb.cal": "bad_calibration",
        "03/frame_00001_pose.txt": "missing_pose",
    }

    # Round trip: a label -> BIWI rows (inverse of the peers' extraction) -> our reader.
    row = rows["01/frame_00003_rgb.png"]
    np.testing.assert_allclose(np.reshape(row["R"], (3, 3)), scipy_label(*BIWI_POSE), atol=1e-5)
    np.testing.assert_allclose(row["euler_deg"], np.degrees(BIWI_POSE), atol=1e-3)
    # ... and our Euler angles agree with the peers' formula applied to the stored rows.
    F = biwi_file_matrix(*BIWI_POSE)
    np.testing.assert_allclose(row["euler_deg"], peers_biwi_euler_deg(F), atol=1e-3)

    # Turning to the sensor's left puts the nose toward the image's left: yaw > 0 in our
    # convention (DESIGN.md), +30 deg, nothing else.
    pitch, yaw, roll = rows["01/frame_00004_rgb.png"]["euler_deg"]
    assert yaw == pytest.approx(30.0, abs=1e-3)
    assert abs(pitch) < 1e-3 and abs(roll) < 1e-3
    assert peers_biwi_euler_deg(TURN_LEFT)[1] == pytest.approx(30.0, abs=1e-6)
    # Tilting up is pitch > 0.
    pitch, yaw, roll = rows["02/frame_00000_rgb.png"]["euler_deg"]
    assert pitch == pytest.approx(20.0, abs=1e-3) and abs(yaw) < 1e-3 and abs(roll) < 1e-3
    # The label's camera-frame rotation moves the frontal nose (0, 0, -1) the same way.
    R = np.reshape(rows["01/frame_00004_rgb.png"]["R"], (3, 3)).astype(np.float64)
    nose = geometry.to_camera(R) @ np.array([0.0, 0.0, -1.0])
    np.testing.assert_allclose(nose, [-0.5, 0.0, -math.sqrt(3) / 2], atol=1e-5)


def test_biwi_head_centre_boxes(biwi_source, tmp_path):
    out = tmp_path / "biwi"
    prepare_dataset("biwi", biwi_source, str(out), biwi_box_mm=200.0, log=None)
    rows = rows_by_file(load_labelled(str(out)))
    # 01 uses its rgb.cal (f = 500, c = (320, 240)): centre (50, -20, 1000) mm -> (345, 230) px,
    # side 500 * 200 / 1000 = 100 px.
    assert tuple(rows["01/frame_00003_rgb.png"]["box"]) == (295, 180, 395, 280)
    crop_origin_matches(rows["01/frame_00003_rgb.png"], 640, 480)
    # 02 has no rgb.cal: published f = 517.679, c = (320, 240.5); centre (0, 0, 1000) mm,
    # half side 517.679 * 100 / 1000 = 51.7679 -> (268.23, 188.73, 371.77, 292.27) rounded.
    assert tuple(rows["02/frame_00000_rgb.png"]["box"]) == (268, 189, 372, 292)
    assert crops.BIWI_RGB_INTRINSICS == (517.679, 517.679, 320.0, 240.5)


# --------------------------------------------------------------------------- shards


def test_rerun_replaces_shards_without_duplicates(aflw_source, tmp_path):
    out = tmp_path / "rerun"
    prepare_dataset("aflw2000", aflw_source, str(out), filter_99=False, shard_rows=1, log=None)
    assert sorted(os.listdir(out)) == [
        "_report.json",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    prepare_dataset("aflw2000", aflw_source, str(out), filter_99=False, shard_rows=1, log=None)
    assert load_labelled(str(out)).num_rows == 3
    # Fewer, larger shards: the stale part-00001/00002 go, nothing else is left behind.
    prepare_dataset("aflw2000", aflw_source, str(out), filter_99=False, shard_rows=2, log=None)
    assert sorted(os.listdir(out)) == ["_report.json", "part-00000.parquet", "part-00001.parquet"]
    table = load_labelled(str(out))
    assert table.num_rows == 3
    assert sorted(table.column("file").to_pylist()) == [
        "image00002.jpg",
        "image00004.jpg",
        "image00006.jpg",
    ]
    assert [s["rows"] for s in read_report(str(out))["shards"]] == [2, 1]


def test_failed_or_crashed_runs_leave_output_intact(aflw_source, tmp_path):
    out = tmp_path / "keep"
    prepare_dataset("aflw2000", aflw_source, str(out), log=None)
    before = sorted(os.listdir(out))
    rows = load_labelled(str(out)).to_pylist()

    # An exception inside the writer: staged shards are discarded, the old ones stay.
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(str(out), shard_rows=1) as w:
            w.write(rows)
            raise RuntimeError("boom")
    assert sorted(os.listdir(out)) == before

    # A hard crash (no cleanup at all): the staging folder is ignored by readers and removed by
    # the next commit.
    w = ShardWriter(str(out), shard_rows=1)
    w.write(rows + rows)
    assert any(n.startswith("_staging-") for n in os.listdir(out))
    assert load_labelled(str(out)).num_rows == len(rows)
    write_shards(rows, str(out))
    assert sorted(os.listdir(out)) == ["_report.json", "part-00000.parquet"]


def test_nothing_valid_fails_and_names_source(tmp_path):
    src = tmp_path / "AFLW2000_broken"
    pts = landmarks_in_box(10, 10, 50, 50, 21)
    write_mat_sample(src, "image00001", pose=(0.0, 0.0, 0.0), pt2d=pts, kind="aflw2000")
    truncate_file(src / "image00001.jpg")
    write_mat_sample(src, "image00003", pose=(0.0, 0.0, 0.0), pt2d=pts, write_mat=False)
    out = tmp_path / "none"
    with pytest.raises(NoValidSamplesError, match=str(src)) as err:
        prepare_dataset("aflw2000", src, str(out), log=None)
    assert "bad_image: 1" in str(err.value) and "missing_mat: 1" in str(err.value)
    assert not out.exists() or not any(out.iterdir())


def test_a_rerun_with_nothing_valid_keeps_the_previous_output(aflw_source, tmp_path):
    """A good run's shards and report survive a later run on a source with nothing valid in it,
    byte for byte."""
    out = tmp_path / "kept"
    prepare_dataset("aflw2000", aflw_source, str(out), filter_99=False, shard_rows=2, log=None)
    before = {f.name: f.read_bytes() for f in sorted(out.iterdir())}
    assert len(before) == 3  # two shards and the report
    broken = tmp_path / "AFLW2000_broken"
    pts = landmarks_in_box(10, 10, 50, 50, 21)
    write_mat_sample(broken, "image00001", pose=(0.0, 0.0, 0.0), pt2d=pts, kind="aflw2000")
    truncate_file(broken / "image00001.jpg")
    with pytest.raises(NoValidSamplesError, match="left unchanged"):
        prepare_dataset("aflw2000", broken, str(out), shard_rows=2, log=None)
    assert {f.name: f.read_bytes() for f in sorted(out.iterdir())} == before
    assert load_labelled(str(out)).num_rows == 3


def test_cli(aflw_source, tmp_path):
    out = tmp_path / "cli"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "jobs" / "prepare_data.py"), "--dataset", "aflw2000"]
    ok = subprocess.run(
        [*cmd, "--source", str(aflw_source), "--output", str(out), "--no-filter-99"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "3/3 processed, 3 written" in ok.stderr
    assert json.loads((out / "_report.json").read_text())["counts"]["written"] == 3

    empty = tmp_path / "empty_source"
    empty.mkdir()
    bad = subprocess.run(
        [*cmd, "--source", str(empty), "--output", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode != 0
    assert str(empty) in bad.stderr and "no valid aflw2000 samples" in bad.stderr


# --------------------------------------------------------------------------- schema


def test_rows_from_arrays_share_the_schema(tmp_path):
    """A synthetic source (arrays, e.g. renders) writes the same schema the readers do."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 20, 3), dtype=np.uint8)
    R = geometry.sample_rotations(3, seed=1)
    table = make_table(
        images, R, files=[f"r{i}" for i in range(3)], dataset="render:test", image_format="png"
    )
    write_shards(table, str(tmp_path / "renders"), shard_rows=2)
    back = load_labelled(str(tmp_path / "renders"))
    assert back.num_rows == 3
    np.testing.assert_allclose(labelled_R(back), R, atol=1e-6)
    for i, row in enumerate(back.to_pylist()):
        np.testing.assert_array_equal(decode_image(row["image"]), images[i])  # PNG is lossless
        assert tuple(row["box"]) == (0, 0, 20, 16)
        # euler_deg from R, checked against scipy's ZYX angles (roll, yaw, pitch)
        roll, yaw, pitch = Rotation.from_matrix(R[i]).as_euler("ZYX", degrees=True)
        np.testing.assert_allclose(row["euler_deg"], [pitch, yaw, roll], atol=1e-3)
    with pytest.raises(ValueError, match="not a rotation"):
        make_table(images[:1], np.eye(3)[None] * 2, files=["x"], dataset="render:test")


def test_read_labelled_with_ray(ray_cluster, aflw_source, tmp_path):
    out = tmp_path / "ray"
    prepare_dataset("aflw2000", aflw_source, str(out), filter_99=False, shard_rows=2, log=None)
    # A leftover staging folder must not be read.
    ShardWriter(str(out), shard_rows=1).write(load_labelled(str(out)))
    ds = read_labelled(str(out))
    batch = ds.take_batch(10, batch_format="numpy")
    assert sorted(batch["file"].tolist()) == ["image00002.jpg", "image00004.jpg", "image00006.jpg"]
    R = np.stack(list(batch["R"])).reshape(-1, 3, 3)
    np.testing.assert_allclose(
        R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-5
    )


def pair_shard_files(out: Path) -> None:
    """Pair shards as jobs/render.py writes them (PairShardWriter, PAIR_SCHEMA), without Ray."""
    from clerf_ray.data.pair_shards import PairShardWriter, pair_table

    png = encode_image(np.zeros((8, 8, 3), np.uint8), "png")
    batch = {
        "pair_id": np.arange(3),
        "anchor": [png] * 3,
        "positive": [png] * 3,
        "R": np.broadcast_to(np.eye(3), (3, 3, 3)),
        "identity_a": np.arange(3),
        "identity_b": np.arange(3) + 10,
        "source": ["render:procedural"] * 3,
    }
    with PairShardWriter(str(out), shard_rows=2) as writer:
        writer.write(pair_table(batch))
        writer.commit({"kind": "pairs"})


def test_labelled_readers_refuse_pair_shards(tmp_path):
    out = tmp_path / "pairs"
    pair_shard_files(out)
    # pyarrow alone would read these with a null image column (the schema is forced on them).
    import pyarrow.dataset as pads

    shards = sorted(str(p) for p in out.glob("part-*.parquet"))
    silent = pads.dataset(shards, format="parquet", schema=SCHEMA).to_table()
    assert silent.column("image").null_count == 3
    for read in (load_labelled, read_labelled):
        with pytest.raises(NotALabelledSetError) as err:
            read(str(out))
        message = str(err.value)
        assert str(out) in message and "part-00000.parquet" in message
        assert "pair-shard set written by jobs/render.py" in message
        assert "prepare_data" in message and "render.py --labelled" in message
    from clerf_ray.evaluate import load_parquet_set

    with pytest.raises(ValueError, match="pair-shard set"):
        load_parquet_set(str(out), image_size=8)


def test_labelled_readers_name_missing_columns(tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    pq.write_table(pa.table({"image": [b"x"], "label": [1.0]}), str(out / "part-00000.parquet"))
    with pytest.raises(NotALabelledSetError, match=r"lacks the labelled columns \['R'") as err:
        load_labelled(str(out))
    assert str(out) in str(err.value) and "'label'" in str(err.value)


def test_pair_reader_refuses_a_labelled_set(aflw_source, tmp_path):
    from clerf_ray.data.pair_shards import read_pair_shards

    out = tmp_path / "labelled"
    prepare_dataset("aflw2000", aflw_source, str(out), filter_99=False, log=None)
    with pytest.raises(ValueError, match="data.shards_path") as err:
        read_pair_shards(str(out))
    assert str(out) in str(err.value) and "a labelled set" in str(err.value)
