"""Pose coverage of a label set, as in the CLERF paper's Figure 2: the three axis vectors of every
label on the unit sphere, before and after geometric augmentation.

The axis vectors are the columns of ``R`` (as in the paper and in the MAEV metric). In the dataset
convention (``clerf_ray.geometry``: ``R_cam = C R^T C``) the head's rotation in the viewer's frame
(x image-right, y up, z toward the camera) is ``R^T``, so column k of ``R`` is the viewer's axis k
written in the head's own frame (x: the side of the head that is image-right in a frontal view,
y: the head's up, z: out of the face); a frontal upright head has ``R = I``. Column z is where the
camera sits, seen from the head; an in-plane image rotation (``R' = R Rz(-t)``) turns columns x
and y about it and a flip mirrors it, so geometric augmentation spreads the x and y columns over
the whole sphere while column z keeps its spread: that is what the figure shows.

    data = coverage_data(labels_from_parquet("data/300w_lp"), augment="fa", seed=0)
    plot_coverage(data, "coverage.png")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clerf_ray import geometry
from clerf_ray.augment import GeometricAugment

AXIS_LABELS = (
    "column x (image right)",
    "column y (image up)",
    "column z (toward the camera)",
)
AXIS_COLOURS = ("tab:red", "tab:green", "tab:blue")


def axis_vectors(R: np.ndarray) -> np.ndarray:
    """The axis vectors of each label: ``out[n, k] = R[n] @ e_k`` (column k of ``R[n]``).

    Args:
        R: (N, 3, 3) labels.

    Returns:
        (N, 3, 3) float64: axis vector k of sample n, a unit vector in the head's frame (module
        docstring).
    """
    R = np.asarray(R, dtype=np.float64).reshape(-1, 3, 3)
    return np.swapaxes(R, 1, 2).copy()


def augment_labels(R: np.ndarray, augment: str = "fa", seed: int = 0) -> np.ndarray:
    """Labels after one random geometric augmentation each (the label transform only).

    Args:
        R: (N, 3, 3) labels.
        augment: preset name (``GeometricAugment.preset``: ``"none"``, ``"sa"``, ``"fa"``).
        seed: seed of the draws (one generator, drawn in order).

    Returns:
        (N, 3, 3) float64 labels ``aug.label(R[n], draw_n)``.
    """
    aug = GeometricAugment.preset(augment)
    rng = np.random.default_rng(seed)
    R = np.asarray(R, dtype=np.float64).reshape(-1, 3, 3)
    return np.stack([aug.label(r, aug.draw(rng)) for r in R]) if len(R) else R.copy()


def labels_from_parquet(path: str, *, endpoint_url: str | None = None) -> np.ndarray:
    """The labels (N, 3, 3) of a labelled Parquet set (local folder or ``s3://``; a prepared
    dataset or ``render.py --labelled``), read without the images."""
    from clerf_ray.data.schema import labelled_R, load_labelled

    return labelled_R(load_labelled(path, endpoint_url=endpoint_url, columns=["R"]))


def labels_from_poses(
    poses: str,
    num: int,
    seed: int = 0,
    yaw_range: tuple[float, float] = (-90.0, 90.0),
    pitch_range: tuple[float, float] = (-90.0, 90.0),
    roll_range: tuple[float, float] = (-180.0, 180.0),
) -> np.ndarray:
    """Labels of a synthetic pose configuration, as the pair sampler draws them.

    Args:
        poses: ``"so3"`` (uniform) or ``"ranges"`` (independent uniform Euler angles, degrees).
        num: number of labels.
    """
    if poses == "so3":
        return geometry.sample_rotations(num, seed)
    if poses == "ranges":
        return geometry.sample_rotations(
            num, seed, yaw_range=yaw_range, pitch_range=pitch_range, roll_range=roll_range
        )
    raise ValueError(f"poses must be 'so3' or 'ranges', got {poses!r}")


@dataclass
class CoverageData:
    """What the coverage figure shows.

    Attributes:
        before, after: (N, 3, 3) axis vectors (:func:`axis_vectors`) of the labels and of the
            augmented labels.
        augment: the augmentation preset.
        title: a name for the label set.
    """

    before: np.ndarray
    after: np.ndarray
    augment: str
    title: str = ""


def coverage_data(
    R: np.ndarray, augment: str = "fa", seed: int = 0, max_points: int | None = 3000, title=""
) -> CoverageData:
    """Axis vectors of ``R`` before and after augmentation.

    Args:
        R: (N, 3, 3) labels.
        augment: preset name.
        seed: seed of the subsample and of the augmentation draws.
        max_points: keep a random subset of this many labels (a readable plot); None keeps all.
    """
    R = np.asarray(R, dtype=np.float64).reshape(-1, 3, 3)
    if len(R) == 0:
        raise ValueError("coverage: the label set is empty")
    if max_points is not None and len(R) > max_points:
        keep = np.sort(np.random.default_rng([seed, 1]).choice(len(R), max_points, replace=False))
        R = R[keep]
    after = augment_labels(R, augment, seed)
    return CoverageData(axis_vectors(R), axis_vectors(after), augment, title)


def sphere_angles(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longitude ``atan2(x, z)`` and latitude ``asin(y)`` in radians of unit vectors (..., 3) in
    the head's frame: out of the face at the map's centre, the head's up at the top."""
    v = np.asarray(v, dtype=np.float64)
    return np.arctan2(v[..., 0], v[..., 2]), np.arcsin(np.clip(v[..., 1], -1.0, 1.0))


def plot_coverage(data: CoverageData, out: str | Path, projection: str = "3d", dpi: int = 120):
    """Draw the axis vectors before (left) and after (right) augmentation and save a PNG.

    Args:
        data: from :func:`coverage_data`.
        out: PNG path (folders are created).
        projection: ``"3d"`` (points on a sphere) or ``"hammer"`` (Hammer equal-area map:
            longitude :func:`sphere_angles`, so equal areas of the sphere get equal areas of the
            map and densities compare honestly).

    Returns:
        The matplotlib Figure (closed; its artists hold the plotted data).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if projection not in ("3d", "hammer"):
        raise ValueError(f"projection must be '3d' or 'hammer', got {projection!r}")
    fig = plt.figure(figsize=(11, 5.6) if projection == "3d" else (12, 4.8))
    n = len(data.before)
    size = max(0.5, min(6.0, 3000.0 / n))
    for col, (vectors, when) in enumerate(
        ((data.before, "before"), (data.after, f"after '{data.augment}' augmentation"))
    ):
        if projection == "3d":
            ax = fig.add_subplot(1, 2, col + 1, projection="3d")
            u, w = np.mgrid[0 : 2 * np.pi : 25j, 0 : np.pi : 13j]
            ax.plot_wireframe(
                np.cos(u) * np.sin(w), np.cos(w), np.sin(u) * np.sin(w), color="0.85", lw=0.4
            )
            for k in range(3):
                v = vectors[:, k]
                # Plot axes (x, z, y) so that the head's up (y) is matplotlib's up.
                ax.scatter(
                    v[:, 0],
                    v[:, 2],
                    v[:, 1],
                    s=size,
                    c=AXIS_COLOURS[k],
                    label=AXIS_LABELS[k],
                )
            ax.set_xlabel("head x")
            ax.set_ylabel("head z (out of the face)")
            ax.set_zlabel("head y (up)")
            ax.set_box_aspect((1, 1, 1))
            lim = (-1.05, 1.05)
            ax.set_xlim(lim)
            ax.set_ylim(lim)
            ax.set_zlim(lim)
        else:
            ax = fig.add_subplot(1, 2, col + 1, projection="hammer")
            for k in range(3):
                lon, lat = sphere_angles(vectors[:, k])
                ax.scatter(lon, lat, s=size, c=AXIS_COLOURS[k], label=AXIS_LABELS[k])
            ax.grid(True, lw=0.4)
            ax.set_xticks(np.radians(np.arange(-120, 121, 60)))
            ax.set_xlabel("longitude atan2(x, z) in the head's frame; 0: out of the face")
            ax.set_ylabel("latitude asin(y); 90: the head's up")
        ax.set_title(
            f"{data.title + ': ' if data.title else ''}{n} labels {when}",
            fontsize=10,
            pad=20 if projection == "hammer" else 6,
        )
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=3, fontsize=9, markerscale=max(1.0, 4.0 / size)
    )
    # 3D axes ignore their titles when laid out: keep room above them.
    fig.tight_layout(rect=(0, 0.07, 1, 0.95 if projection == "3d" else 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return fig
