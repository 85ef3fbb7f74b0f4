"""Figures of an evaluation (matplotlib, Agg backend: no display needed) and pose axes drawn on
images.

* :func:`draw_pose_axes`: the head's axes projected onto an image (x red, y green, z blue).
* :func:`plot_error_by_angle`: geodesic error binned by yaw, pitch and roll of the true label,
  upright and upside-down poses apart.
* :func:`plot_worst_cases`: the worst predictions with predicted (solid) and true (dashed) axes.
* :func:`plot_turn_embedding`: the encoder's embedding of a 360 deg turn, PCA to 3D, coloured by
  the turn angle (CLERF, Figure 5).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clerf_ray import geometry  # noqa: E402

AXIS_COLOURS = ((230, 25, 25), (25, 190, 25), (30, 60, 235))  # x red, y green, z blue


def axis_endpoints(R: np.ndarray, centre: tuple[float, float], length: float) -> np.ndarray:
    """Image end points (3, 2) of the head's x, y, z axes drawn from ``centre`` (pixels, x right,
    y down): the columns of ``R_cam = geometry.to_camera(R)`` scaled by ``length`` pixels,
    orthographic projection (the camera-frame z component is dropped)."""
    R_cam = geometry.to_camera(np.asarray(R, dtype=np.float64))
    return np.asarray(centre, dtype=np.float64)[None, :] + length * R_cam[:2, :].T


def upside_down(R: np.ndarray) -> np.ndarray:
    """Whether the head's up axis points down in the image, (N,) bool for labels (N, 3, 3).

    The head's up direction is -y of its own frame (y points to the chin); in the camera frame
    (y down) it is ``R_cam @ (0, -1, 0)``, which points down in the image when its y > 0.
    """
    R_cam = geometry.to_camera(np.asarray(R, dtype=np.float64))
    up = -R_cam[..., :, 1]
    return up[..., 1] > 0


def draw_pose_axes(
    image: np.ndarray,
    R: np.ndarray,
    centre: tuple[float, float] | None = None,
    length: float | None = None,
    width: int | None = None,
) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 with the axes of label ``R`` (3, 3) drawn.

    Args:
        image: the picture (a face crop, or a whole image with ``centre`` at the face).
        R: label in the dataset convention.
        centre: (x, y) pixel origin of the axes; default the image centre.
        length: axis length in pixels; default 40% of the smaller image side.
        width: line width in pixels; default scaled to the image.
    """
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    centre = ((w - 1) / 2.0, (h - 1) / 2.0) if centre is None else centre
    length = 0.4 * min(h, w) if length is None else length
    width = max(1, int(round(min(h, w) / 60))) if width is None else width
    ends = axis_endpoints(R, centre, length)
    R_cam = geometry.to_camera(np.asarray(R, dtype=np.float64))
    pil = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(pil)
    # Far axes first, so the axis nearest the viewer (smallest camera z) is drawn on top.
    for j in np.argsort(-R_cam[2, :]):
        draw.line([tuple(centre), tuple(ends[j])], fill=AXIS_COLOURS[j], width=width)
    return np.asarray(pil)


def _bin_means(values: np.ndarray, err: np.ndarray, edges: np.ndarray):
    idx = np.clip(np.digitize(values, edges) - 1, 0, len(edges) - 2)
    means = np.full(len(edges) - 1, np.nan)
    counts = np.zeros(len(edges) - 1, dtype=int)
    for b in range(len(edges) - 1):
        sel = idx == b
        counts[b] = int(sel.sum())
        if counts[b]:
            means[b] = float(err[sel].mean())
    return means, counts


def plot_error_by_angle(
    R_true: np.ndarray,
    err_deg: np.ndarray,
    path: str | Path,
    title: str = "",
    bin_deg: float = 15.0,
) -> Path:
    """Mean geodesic error (degrees) binned by the true label's yaw, pitch and roll
    (``geometry.matrix_to_euler``: yaw in [-90, 90], pitch and roll in (-180, 180]), with upright
    and upside-down poses (:func:`upside_down`) as separate curves, and the error histograms.

    Returns the written PNG path.
    """
    R_true = np.asarray(R_true, dtype=np.float64)
    err = np.asarray(err_deg, dtype=np.float64)
    pitch, yaw, roll = (np.degrees(a) for a in geometry.matrix_to_euler(R_true))
    flip = upside_down(R_true)
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for ax, (name, vals, lim) in zip(
        axes, (("yaw", yaw, 90.0), ("pitch", pitch, 180.0), ("roll", roll, 180.0)), strict=False
    ):
        edges = np.arange(-lim, lim + bin_deg / 2, bin_deg)
        centres = (edges[:-1] + edges[1:]) / 2
        for mask, label, colour in (
            (~flip, "upright", "tab:blue"),
            (flip, "upside-down", "tab:orange"),
        ):
            if not mask.any():
                continue
            means, counts = _bin_means(vals[mask], err[mask], edges)
            ax.plot(centres, means, "o-", color=colour, label=f"{label} (n={int(mask.sum())})")
        ax.set_xlabel(f"true {name} (deg)")
        ax.set_ylabel("mean geodesic error (deg)")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[3]
    bins = np.linspace(0, 180, 37)
    for mask, label, colour in (
        (~flip, "upright", "tab:blue"),
        (flip, "upside-down", "tab:orange"),
    ):
        if mask.any():
            ax.hist(err[mask], bins=bins, alpha=0.6, color=colour, label=label)
    ax.set_xlabel("geodesic error (deg)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    fig.suptitle(title or "geodesic error by true angle")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_worst_cases(
    images: np.ndarray,
    R_pred: np.ndarray,
    R_true: np.ndarray,
    err_deg: np.ndarray,
    path: str | Path,
    k: int = 16,
    title: str = "",
    files: list[str] | None = None,
) -> Path:
    """The ``k`` samples with the largest geodesic error, each with its predicted axes (solid,
    thick) and true axes (dashed, thin) drawn from the image centre (x red, y green, z blue).

    Returns the written PNG path.
    """
    err = np.asarray(err_deg, dtype=np.float64)
    order = np.argsort(-err)[: max(1, min(k, len(err)))]
    cols = int(np.ceil(np.sqrt(len(order))))
    rows = int(np.ceil(len(order) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    colours = [tuple(c / 255 for c in rgb) for rgb in AXIS_COLOURS]
    for ax, i in zip(axes.ravel(), order, strict=False):
        im = images[i]
        h, w = im.shape[:2]
        centre = ((w - 1) / 2.0, (h - 1) / 2.0)
        ax.imshow(im)
        for R, style, lw in ((R_true[i], "--", 1.2), (R_pred[i], "-", 2.2)):
            ends = axis_endpoints(R, centre, 0.42 * min(h, w))
            for j in range(3):
                ax.plot(
                    [centre[0], ends[j, 0]], [centre[1], ends[j, 1]], style, color=colours[j], lw=lw
                )
        name = "" if files is None else f"\n{Path(str(files[i])).name[:22]}"
        ax.set_title(f"{err[i]:.1f} deg{name}", fontsize=8)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
    fig.suptitle((title or "worst cases") + "\nsolid: predicted, dashed: true", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def turn_labels(kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n, 3, 3) of a 360 deg turn and the angles (n,) in degrees: ``"yaw"`` turns the head
    about its vertical axis (the back of the head shows half-way), ``"roll"`` turns it in the
    image plane (upside-down half-way)."""
    t = np.linspace(0.0, 360.0, n, endpoint=False)
    z = np.zeros_like(t)
    if kind == "yaw":
        R = geometry.euler_to_matrix(z, np.radians(t), z)
    elif kind == "roll":
        R = geometry.euler_to_matrix(z, z, np.radians(t))
    else:
        raise ValueError(f"turn must be 'yaw' or 'roll', got {kind!r}")
    return R, t


def render_turn(
    kind: str,
    n: int,
    identity: int,
    image_size: int,
    renderer: str = "procedural",
    renderer_options: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one identity over a 360 deg turn: (images (n, S, S, 3) uint8, angles (n,) deg).
    ``renderer_options`` are the renderer's keyword options (``image_size`` is the argument)."""
    from clerf_ray.render import make_renderer, renderer_class

    R, t = turn_labels(kind, n)
    cls = renderer_class(renderer)
    if not cls.pose_range.contains(R, tol_deg=0.5).all():
        raise ValueError(
            f"renderer {renderer!r} cannot render a full {kind} turn (its pose range is "
            f"{cls.pose_range}); use turn='roll'"
        )
    opts = {k: v for k, v in (renderer_options or {}).items() if k != "image_size"}
    r = make_renderer(renderer, image_size=image_size, **opts)
    ids = np.full(n, identity, dtype=np.int64)
    try:
        # One background for the whole turn, so only the head changes from frame to frame.
        images = r.render(ids, R, background_seeds=np.full(n, identity, dtype=np.int64))
    except TypeError:
        images = r.render(ids, R)
    return images, t


def pca_3d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project (N, D) points on their first three principal components: ((N, 3), explained
    variance ratios (3,))."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    k = min(3, vt.shape[0])
    proj = x @ vt[:k].T
    if k < 3:
        proj = np.pad(proj, ((0, 0), (0, 3 - k)))
    var = s**2
    ratio = var[:k] / max(var.sum(), 1e-12)
    return proj, np.pad(ratio, (0, 3 - k))


def plot_turn_embedding(
    encoder,
    path: str | Path,
    kind: str = "yaw",
    identity: int = 2_000_000,
    renderer: str = "procedural",
    n: int = 72,
    title: str = "",
    renderer_options: dict | None = None,
    space: str = "embedding",
) -> Path:
    """Embed a rendered 360 deg turn with ``encoder`` (an ``Encoder``) and plot its PCA to 3D,
    coloured by the turn angle, with thumbnails of the turn below (CLERF, Figure 5): a pose-aware
    embedding traces a closed loop.

    ``space``: ``"embedding"`` (the L2-normalised output Circle Loss trains) or ``"features"``
    (the pooled backbone features, for an encoder whose projection was never trained, such as
    the supervised baseline's).

    Returns the written PNG path.
    """
    import torch

    images, t = render_turn(kind, n, identity, encoder.image_size, renderer, renderer_options)
    encoder.eval()
    if space not in ("embedding", "features"):
        raise ValueError(f"space must be 'embedding' or 'features', got {space!r}")
    with torch.no_grad():
        x = encoder.preprocess(images)
        z = (encoder.features(x) if space == "features" else encoder(x)).double().cpu().numpy()
    proj, ratio = pca_3d(z)
    fig = plt.figure(figsize=(8, 8.6))
    ax = fig.add_axes([0.0, 0.2, 0.84, 0.75], projection="3d")
    ax.plot(*np.vstack([proj, proj[:1]]).T, color="0.7", lw=0.8)
    sc = ax.scatter(*proj.T, c=t, cmap="twilight", s=28, depthshade=False)
    ax.set_xlabel(f"PC1 ({ratio[0]:.0%})")
    ax.set_ylabel(f"PC2 ({ratio[1]:.0%})")
    ax.set_zlabel(f"PC3 ({ratio[2]:.0%})")
    cax = fig.add_axes([0.91, 0.3, 0.02, 0.55])
    fig.colorbar(sc, cax=cax, label=f"{kind} (deg)")
    ax.set_title(title or f"{space} of a 360 deg {kind} turn (PCA)", fontsize=10)
    picks = np.linspace(0, n, 8, endpoint=False).astype(int)
    for i, p in enumerate(picks):
        tax = fig.add_axes([0.02 + i * 0.12, 0.02, 0.11, 0.14])
        tax.imshow(images[p])
        tax.set_title(f"{t[p]:.0f}", fontsize=8)
        tax.axis("off")
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
