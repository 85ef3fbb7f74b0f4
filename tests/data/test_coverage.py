"""Coverage plot (CLERF Fig. 2): the plotted points are the columns of the labels, before and after
the augmentation's label transform; the PNG is written, from a labelled Parquet set or a pose config.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clerf_ray import cli, geometry
from clerf_ray.data import coverage
from clerf_ray.data.schema import make_table
from clerf_ray.data.shards import write_shards

S = np.diag([-1.0, 1.0, 1.0])  # mirror x


def upright_labels(n=300, seed=0):
    return geometry.sample_rotations(
        n, seed, yaw_range=(-90, 90), pitch_range=(-40, 40), roll_range=(-20, 20)
    )


def test_axis_vectors_are_the_columns():
    R = geometry.sample_rotations(50, 1)
    axes = coverage.axis_vectors(R)
    for k in range(3):
        e = np.zeros(3)
        e[k] = 1.0
        np.testing.assert_allclose(axes[:, k], np.einsum("nij,j->ni", R, e), atol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(axes, axis=-1), 1.0, atol=1e-12)


def _in_plane_angle(M):
    """If M is a rotation about z, its angle in degrees; else None."""
    if abs(M[2, 2] - 1.0) > 1e-9:
        return None
    return np.degrees(np.arctan2(M[1, 0], M[0, 0]))


def test_fa_labels_are_a_flip_then_an_in_plane_turn():
    R = upright_labels(400)
    after = coverage.augment_labels(R, "fa", seed=3)
    mirrored = 0
    for r, a in zip(R, after, strict=True):
        # Independently of the augmentation code: an in-plane turn is R' = R Rz(.), a mirror
        # R' = S R S Rz(.) (a vertical flip is a mirror and a half turn).
        plain = _in_plane_angle(r.T @ a)
        flipped = _in_plane_angle((S @ r @ S).T @ a)
        assert (plain is None) != (flipped is None)
        mirrored += flipped is not None
    # h and v flips with p = 0.5 each: the label is mirrored when exactly one happens (p = 0.5).
    assert 0.4 < mirrored / len(R) < 0.6
    # Where the camera sits, seen from the head (column z), keeps its out-of-face component.
    np.testing.assert_allclose(after[:, 2, 2], R[:, 2, 2], atol=1e-12)
    # The head's up column lands everywhere: about half the augmented heads are upside down,
    # none of the originals.
    assert R[:, 1, 1].min() > 0.2
    assert 0.35 < (after[:, 1, 1] < 0).mean() < 0.65


def test_sa_labels_turn_slightly():
    R = upright_labels(100)
    after = coverage.augment_labels(R, "sa", seed=4)
    angles = np.array([_in_plane_angle(r.T @ a) for r, a in zip(R, after, strict=True)])
    assert np.all(np.abs(angles) <= 15.0 + 1e-9) and np.abs(angles).max() > 10.0
    np.testing.assert_allclose(coverage.augment_labels(R, "none"), R)


def test_hammer_plot_holds_the_columns(tmp_path):
    R = upright_labels(200)
    data = coverage.coverage_data(R, "fa", seed=5, max_points=None, title="toy")
    out = tmp_path / "sub" / "coverage.png"
    fig = coverage.plot_coverage(data, out, projection="hammer")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 300
    after = coverage.augment_labels(R, "fa", seed=5)
    for ax, labels in zip(fig.axes[:2], (R, after), strict=True):
        assert len(ax.collections) == 3
        for k, coll in enumerate(ax.collections):
            col = labels[:, :, k]
            expected = np.stack([np.arctan2(col[:, 0], col[:, 2]), np.arcsin(col[:, 1])], 1)
            np.testing.assert_allclose(coll.get_offsets(), expected, atol=1e-12)


def test_subsample_keeps_rows_of_the_input():
    R = geometry.sample_rotations(500, 6)
    data = coverage.coverage_data(R, "none", seed=1, max_points=50)
    assert data.before.shape == (50, 3, 3)
    # Each kept label is one of the input labels (matched by its columns).
    d = np.abs(data.before[:, None] - coverage.axis_vectors(R)[None]).max(axis=(2, 3))
    assert np.all(d.min(axis=1) < 1e-12) and len(set(d.argmin(axis=1))) == 50
    with pytest.raises(ValueError, match="empty"):
        coverage.coverage_data(np.zeros((0, 3, 3)))


def test_cli_from_labelled_parquet_and_pose_config(tmp_path, capsys):
    R = upright_labels(20, seed=7)
    images = np.zeros((20, 8, 8, 3), dtype=np.uint8)
    table = make_table(images, R, files=[f"f{i}" for i in range(20)], dataset="toy")
    write_shards(table, str(tmp_path / "set"))
    out = tmp_path / "cov.png"
    assert cli.main(["coverage", "--labelled", str(tmp_path / "set"), "--out", str(out)]) == 0
    assert "20 labels" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.format == "PNG"
    out2 = tmp_path / "so3.png"
    argv = ["coverage", "--poses", "so3", "--num", "100", "--projection", "hammer"]
    assert cli.main([*argv, "--out", str(out2)]) == 0
    assert out2.stat().st_size > 10_000
    with pytest.raises(SystemExit, match="exactly one of"):
        cli.main(["coverage", "--out", str(out)])
    with pytest.raises(SystemExit, match="no part"):
        cli.main(["coverage", "--labelled", str(tmp_path / "missing"), "--out", str(out)])


def test_cli_pose_ranges_reach_the_plotted_labels(tmp_path, monkeypatch, capsys):
    """``clerf coverage --poses ranges``: every plotted label lies in the ranges given on the
    command line, and fills them. The angles are read back from the plotted axis vectors by hand
    (R = Rz(roll) Ry(yaw) Rx(pitch): R[2,0] = -sin yaw, R[2,1] : R[2,2] = tan pitch, R[1,0] :
    R[0,0] = tan roll), not by the code under test."""
    seen = []
    real_plot = coverage.plot_coverage

    def record_then_plot(data, out, **kw):  # a spy: it records the data, then really plots
        seen.append(data)
        return real_plot(data, out, **kw)

    monkeypatch.setattr(coverage, "plot_coverage", record_then_plot)
    out = tmp_path / "ranges.png"
    ranges = {"yaw": (10.0, 30.0), "pitch": (-5.0, 5.0), "roll": (40.0, 50.0)}
    argv = ["coverage", "--poses", "ranges", "--num", "400", "--max-points", "400"]
    argv += ["--augment", "none", "--out", str(out)]
    for name, (lo, hi) in ranges.items():
        argv += [f"--{name}-range", str(lo), str(hi)]
    assert cli.main(argv) == 0
    assert "400 labels" in capsys.readouterr().out and out.stat().st_size > 10_000
    R = np.swapaxes(seen[0].before, 1, 2)  # the columns back into matrices
    angles = {
        "yaw": np.degrees(-np.arcsin(R[:, 2, 0])),
        "pitch": np.degrees(np.arctan2(R[:, 2, 1], R[:, 2, 2])),
        "roll": np.degrees(np.arctan2(R[:, 1, 0], R[:, 0, 0])),
    }
    for name, (lo, hi) in ranges.items():
        a = angles[name]
        assert a.min() >= lo - 1e-6 and a.max() <= hi + 1e-6, name
        assert a.min() < lo + 0.1 * (hi - lo) and a.max() > hi - 0.1 * (hi - lo), name
    # With augment none the plotted labels are the drawn ones.
    np.testing.assert_allclose(seen[0].after, seen[0].before)
    with pytest.raises(SystemExit, match="yaw_range"):
        cli.main(["coverage", "--poses", "ranges", "--yaw-range", "30", "10", "--out", str(out)])
