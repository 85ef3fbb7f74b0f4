"""Face crops of the real datasets: the peers' loose box around 2D landmarks, and a head-centre box
for BIWI (which has no landmarks).

Loose box (300W-LP, AFLW2000). The HopeNet (natanielruiz/deep-head-pose, ``code/datasets.py``) and
6DRepNet (thohemp/6DRepNet, ``sixdrepnet/datasets.py``) loaders take the extent of ``pt2d``
(x_min, y_min, x_max, y_max) and enlarge it *in sequence*, each later line using the already moved
edge::

    x_min -= a * k * |x_max - x_min|
    y_min -= b * k * |y_max - y_min|
    x_max += c * k * |x_max - x_min|      # x_min already moved
    y_max += d * k * |y_max - y_min|      # y_min already moved

then crop ``(int(x_min), int(y_min), int(x_max), int(y_max))`` (``int`` truncates toward zero).
The coefficients (a, b, c, d) differ by loader: ``Pose_300W_LP`` uses (0.6, 2, 0.6, 0.6) with
``k = 0.2 + 0.2 * U[0, 1)`` per image (training); ``AFLW2000`` uses (2, 2, 2, 0.6) with k = 0.2
(testing). Both papers' published numbers use these boxes; :data:`PEER_BOX` holds them.

One deliberate difference: PIL's ``crop`` pads with black where the box leaves the image, we clip
the box to the image instead (a crop never contains pixels that are not in the photo). Boxes inside
the image give the peers' crop pixel for pixel.

Head-centre box (BIWI). BIWI gives the head centre in millimetres in the Kinect frame (x right,
y down, z forward: the dataset's own projection of the centre is ``u = fx x / z + cx``,
``v = fy y / z + cy``) and per-sequence RGB intrinsics in ``rgb.cal`` (published values
fx = fy = 517.679, cx = 320, cy = 240.5). We project the centre with those intrinsics and cut a
square of a fixed physical size (``box_mm``) scaled by depth, side ``fx * box_mm / z`` pixels.
This ignores the small depth-to-RGB extrinsic offset listed in ``rgb.cal`` (about 25 mm, ~14 px at
1 m), as the dataset's own projection example does; the loose box absorbs it. Peers crop BIWI with a
face detector (FSA-Net: MTCNN with a 0.4 margin; HopeNet: dockerface boxes), so BIWI crops, unlike
the landmark boxes, are not pixel-identical to theirs.
"""

from __future__ import annotations

import math

import numpy as np

# (a, b, c, d) of the loose box, per peer loader (module docstring).
PEER_BOX: dict[str, tuple[float, float, float, float]] = {
    "300w_lp": (0.6, 2.0, 0.6, 0.6),
    "aflw2000": (2.0, 2.0, 2.0, 0.6),
}
# Enlargement factor k: fixed for testing, uniform in [K_TRAIN_LOW, K_TRAIN_HIGH) for training.
K_TEST = 0.2
K_TRAIN_LOW, K_TRAIN_HIGH = 0.2, 0.4

# BIWI RGB intrinsics as published in every sequence's rgb.cal (pixels).
BIWI_RGB_INTRINSICS = (517.679, 517.679, 320.0, 240.5)
BIWI_BOX_MM = 250.0


def loose_box(
    points: np.ndarray, k: float, coefficients: tuple[float, float, float, float]
) -> tuple[int, int, int, int]:
    """The peers' loose box around 2D landmarks, before clipping.

    Args:
        points: (2, N) landmark coordinates in pixels (row 0 x, row 1 y); N >= 1.
        k: enlargement factor.
        coefficients: (a, b, c, d) as in :data:`PEER_BOX`.

    Returns:
        (x0, y0, x1, y1) integer pixels, truncated toward zero as ``int()`` does; may lie partly
        outside the image.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] != 2 or pts.shape[1] == 0:
        raise ValueError(f"points must be (2, N) with N >= 1, got {pts.shape}")
    a, b, c, d = coefficients
    x_min, y_min = float(pts[0].min()), float(pts[1].min())
    x_max, y_max = float(pts[0].max()), float(pts[1].max())
    # Sequential updates, as the peers' loaders do (later lines see the moved min edges).
    x_min -= a * k * abs(x_max - x_min)
    y_min -= b * k * abs(y_max - y_min)
    x_max += c * k * abs(x_max - x_min)
    y_max += d * k * abs(y_max - y_min)
    return int(x_min), int(y_min), int(x_max), int(y_max)


def clip_box(box: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """Clip (x0, y0, x1, y1) to an image of ``width`` x ``height`` pixels (x1, y1 exclusive)."""
    x0, y0, x1, y1 = box
    return (
        min(max(x0, 0), width),
        min(max(y0, 0), height),
        min(max(x1, 0), width),
        min(max(y1, 0), height),
    )


def is_empty(box: tuple[int, int, int, int]) -> bool:
    """Whether a clipped box holds no pixels."""
    return box[2] <= box[0] or box[3] <= box[1]


def sample_k(split: str, rng: np.random.Generator | None = None) -> float:
    """The enlargement factor: :data:`K_TEST` for ``"test"``, uniform in [0.2, 0.4) for
    ``"train"`` drawn from ``rng``."""
    if split == "test":
        return K_TEST
    if split == "train":
        if rng is None:
            raise ValueError("split 'train' draws k at random: pass an rng")
        return K_TRAIN_LOW + (K_TRAIN_HIGH - K_TRAIN_LOW) * float(rng.random())
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def head_centre_box(
    centre_mm: np.ndarray,
    intrinsics: tuple[float, float, float, float] = BIWI_RGB_INTRINSICS,
    box_mm: float = BIWI_BOX_MM,
) -> tuple[int, int, int, int]:
    """Square box around a projected 3D head centre, before clipping.

    Args:
        centre_mm: (3,) head centre in millimetres in the camera frame (x right, y down,
            z forward); z > 0.
        intrinsics: (fx, fy, cx, cy) in pixels.
        box_mm: side of the box in millimetres at the head's depth.

    Returns:
        (x0, y0, x1, y1) integer pixels: the projected centre ``(fx x/z + cx, fy y/z + cy)`` plus or
        minus half the side ``fx * box_mm / z``, each rounded to the nearest pixel.
    """
    x, y, z = (float(v) for v in np.asarray(centre_mm, dtype=np.float64).reshape(3))
    if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(z)) or z <= 0:
        raise ValueError(f"head centre must be finite with z > 0, got {(x, y, z)}")
    fx, fy, cx, cy = intrinsics
    u, v = fx * x / z + cx, fy * y / z + cy
    half_w, half_h = 0.5 * fx * box_mm / z, 0.5 * fy * box_mm / z
    return (
        round(u - half_w),
        round(v - half_h),
        round(u + half_w),
        round(v + half_h),
    )
