"""What the evaluation figures show: the data behind each curve, histogram, axis line and scatter
point, and the directions of their axes, read from the matplotlib figure before it is closed.
Expected values are worked out here (labels from scipy, means and PCA with numpy)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from clerf_ray import plots


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions close (kept open to be read; closed after the test)."""
    close, kept = plt.close, []
    monkeypatch.setattr(plt, "close", kept.append)
    yield kept
    for fig in kept:
        close(fig)


def label(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """R = Rz(roll) Ry(yaw) Rx(pitch), degrees, built by scipy (intrinsic Z-Y-X)."""
    return Rotation.from_euler("ZYX", [roll, yaw, pitch], degrees=True).as_matrix()


# (pitch, yaw, roll) in degrees and the error of each sample. The last two are upside down
# (rolled past 90 deg: the head's up axis points down in the image).
SAMPLES = [
    ((10, -80, 5), 4.0),
    ((-20, -82, 0), 8.0),
    ((0, 10, 0), 3.0),
    ((5, 50, -10), 20.0),
    ((0, 40, 175), 90.0),
    ((0, 35, 170), 70.0),
]


def _binned(points: dict[float, float], lim: float, bin_deg: float = 15.0) -> np.ndarray:
    """Curve values at the bin centres from -lim to lim: ``points`` maps a bin's left edge to
    its mean, every other bin is empty (NaN)."""
    lefts = np.arange(-lim, lim, bin_deg)
    return np.array([points.get(float(x), np.nan) for x in lefts])


def test_error_by_angle_bins_each_angle_and_keeps_upside_down_poses_apart(figures, tmp_path):
    R = np.stack([label(*angles) for angles, _ in SAMPLES])
    err = np.array([e for _, e in SAMPLES])
    plots.plot_error_by_angle(R, err, tmp_path / "e.png", bin_deg=15.0)
    (fig,) = figures
    yaw_ax, pitch_ax, roll_ax, hist_ax = fig.axes[:4]
    # Mean error per 15 deg bin of the true angle, by hand: upright, then upside-down.
    expected = {
        "yaw": (yaw_ax, 90, {-90: (4 + 8) / 2, 0: 3, 45: 20}, {30: (90 + 70) / 2}),
        "pitch": (pitch_ax, 180, {0: (4 + 3 + 20) / 3, -30: 8}, {0: 80}),
        "roll": (roll_ax, 180, {0: (4 + 8 + 3) / 3, -15: 20}, {165: 80}),
    }
    for name, (ax, lim, upright, flipped) in expected.items():
        assert ax.get_xlabel() == f"true {name} (deg)"
        assert ax.get_xlim() == (-lim, lim)  # increasing to the right
        assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > 80  # error up from zero, all shown
        up, down = ax.get_lines()
        assert up.get_label() == "upright (n=4)" and down.get_label() == "upside-down (n=2)"
        centres = np.arange(-lim, lim, 15.0) + 7.5
        for line, means in ((up, upright), (down, flipped)):
            np.testing.assert_allclose(line.get_xdata(), centres)
            np.testing.assert_allclose(line.get_ydata(), _binned(means, lim), err_msg=name)
    # Error histograms in 5 deg bins: the upright errors, then the upside-down ones.
    up_bars, down_bars = hist_ax.containers
    up_counts = np.array([b.get_height() for b in up_bars])
    down_counts = np.array([b.get_height() for b in down_bars])
    assert up_counts.sum() == 4 and down_counts.sum() == 2
    assert {int(i) for i in np.flatnonzero(down_counts)} == {70 // 5, 90 // 5}
    assert {int(i) for i in np.flatnonzero(up_counts)} == {0, 1, 4}  # 3 and 4; 8; 20


# Where each axis of a label points in the image (x right, y down) when drawn from the centre:
# frontal, its x axis (red) points right and y (green) down to the chin, z away from the viewer
# (a point). Yaw +90 deg turns the nose to the image's left: z (blue) points right, x at the viewer.
FRONTAL = np.eye(3)
YAW_90 = np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])
DIRECTIONS = {
    "frontal": ((1, 0), (0, 1), (0, 0)),
    "yaw90": ((0, 0), (0, 1), (1, 0)),
}


def test_worst_cases_show_the_largest_errors_with_true_and_predicted_axes(figures, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 33, 33, 3), dtype=np.uint8)
    R_true = np.stack([FRONTAL, FRONTAL, YAW_90])
    R_pred = np.stack([FRONTAL, YAW_90, FRONTAL])
    err = np.array([5.0, 50.0, 20.0])
    plots.plot_worst_cases(images, R_pred, R_true, err, tmp_path / "w.png", k=2)
    (fig,) = figures
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 2
    # Worst first: sample 1 (true frontal, predicted yaw 90), then sample 2 (the reverse).
    cases = [(1, "frontal", "yaw90"), (2, "yaw90", "frontal")]
    length, centre = 0.42 * 33, np.array([16.0, 16.0])
    colours = [tuple(c / 255 for c in rgb) for rgb in plots.AXIS_COLOURS]
    for ax, (i, true, pred) in zip(shown, cases, strict=True):
        assert ax.get_title() == f"{err[i]:.1f} deg"
        np.testing.assert_array_equal(ax.images[0].get_array(), images[i])
        # Image coordinates: x grows to the right, y downward (the first limit is the bottom).
        assert ax.get_xlim() == (-0.5, 32.5) and ax.get_ylim() == (32.5, -0.5)
        lines = ax.get_lines()
        assert len(lines) == 6
        for style, name, group in (("--", true, lines[:3]), ("-", pred, lines[3:])):
            for j, line in enumerate(group):
                assert line.get_linestyle() == style
                assert line.get_color() == colours[j]
                xy = np.asarray(line.get_xydata())
                np.testing.assert_allclose(xy[0], centre)
                want = centre + length * np.array(DIRECTIONS[name][j], dtype=float)
                np.testing.assert_allclose(xy[1], want, atol=1e-9, err_msg=f"{name} axis {j}")


def test_turn_embedding_scatters_the_pca_of_the_encoders_embedding(figures, tmp_path):
    from clerf_ray.models import create_encoder

    torch.manual_seed(0)
    enc = create_encoder(
        backbone="resnet10t", embedding_dim=16, projection_hidden=32, image_size=32
    ).eval()
    n = 12
    plots.plot_turn_embedding(enc, tmp_path / "t.png", kind="roll", n=n, identity=5)
    (fig,) = figures
    ax3d = fig.axes[0]
    images, angles = plots.render_turn("roll", n, identity=5, image_size=32)
    np.testing.assert_allclose(angles, np.arange(n) * 360.0 / n)
    with torch.no_grad():
        z = enc(enc.preprocess(images)).double().numpy()
    # PCA by hand: eigenvectors of the covariance, largest eigenvalue first.
    zc = z - z.mean(axis=0)
    values, vectors = np.linalg.eigh(zc.T @ zc)
    top = np.argsort(values)[::-1][:3]
    proj = zc @ vectors[:, top]
    ratio = values[top] / values.sum()
    # The loop through the points, closed back to the first; each component up to its sign.
    loop = np.stack(ax3d.get_lines()[0].get_data_3d(), axis=1)
    assert loop.shape == (n + 1, 3)
    np.testing.assert_allclose(loop[-1], loop[0])
    for c in range(3):
        sign = np.sign(loop[:n, c] @ proj[:, c])
        np.testing.assert_allclose(loop[:n, c], sign * proj[:, c], atol=1e-6, err_msg=f"PC{c + 1}")
    assert ax3d.get_xlabel() == f"PC1 ({ratio[0]:.0%})"
    assert ax3d.get_zlabel() == f"PC3 ({ratio[2]:.0%})"
    # Points coloured by the turn angle; the thumbnails are frames of the turn.
    (scatter,) = ax3d.collections
    np.testing.assert_allclose(scatter.get_array(), angles)
    thumbs = [ax for ax in fig.axes if ax.images]
    picks = [0, 1, 3, 4, 6, 7, 9, 10]  # 8 frames evenly spread over 12, rounded down
    assert [ax.get_title() for ax in thumbs] == [f"{30 * p}" for p in picks]
    for ax, p in zip(thumbs, picks, strict=True):
        np.testing.assert_array_equal(ax.images[0].get_array(), images[p])
