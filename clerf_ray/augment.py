"""Geometric image augmentations with their exact label transforms.

Images are HxWx3 uint8 numpy arrays; labels are (3, 3) rotation matrices in the dataset convention
(``clerf_ray.geometry``). Every image operation here is paired with the label transform derived
from the camera frame in ``geometry`` (``rotate_label``, ``hflip_label``, ``vflip_label``). These
preserve geodesic distances between labels (CLERF, Theorem 3.1), so a pair and its negatives keep
their relations when one draw is applied to all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from clerf_ray import geometry


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"expected an HxWx3 uint8 image, got shape {image.shape} dtype {image.dtype}"
        )
    return image


def rotate(
    image: np.ndarray, R: np.ndarray, degrees: float, fill: tuple[int, int, int] | str = "edge"
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate an image about its centre by ``degrees`` counterclockwise as displayed.

    Args:
        image: HxWx3 uint8.
        R: (3, 3) label of ``image``.
        degrees: rotation angle, counterclockwise as displayed.
        fill: colour of the corners uncovered by the rotation, or ``"edge"`` to reflect the image
            into them (no constant-coloured corners that would reveal the angle).

    Returns:
        The rotated image (same size, bilinear) and its label ``geometry.rotate_label(R, degrees)``.
    """
    image = _check_image(image)
    R2 = geometry.rotate_label(np.asarray(R, dtype=np.float64), float(degrees))
    return _rotate_image(image, float(degrees), fill), R2


def _rotate_image(image: np.ndarray, degrees: float, fill) -> np.ndarray:
    """The image part of :func:`rotate` (``image`` already checked)."""
    if degrees % 360.0 == 0.0:
        return image.copy()
    h, w = image.shape[:2]
    if fill == "edge":
        # Pad by reflection so the corners hold image content. A corner samples up to half the
        # diagonal from the centre, so the shorter side needs the most pad.
        pad = int(np.ceil((np.hypot(h, w) - min(h, w)) / 2)) + 2
        padded = np.pad(
            image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect" if pad < min(h, w) else "edge"
        )
        # PIL's rotate about the padded image's centre, (W/2, H/2) in continuous coordinates
        # (pixel centres at i + 0.5), as the affine map from output to input pixels that
        # Image.rotate builds (same rounding), with the output origin moved to the crop's
        # corner (pad, pad): PIL then resamples only the h x w pixels kept, not the whole
        # padded image (the same pixels up to one grey level at rounding ties; augment_batch
        # x1.54, benchmarks/bench_augment.py).
        H, W = h + 2 * pad, w + 2 * pad
        a = -math.radians(degrees % 360.0)
        c, s = round(math.cos(a), 15), round(math.sin(a), 15)
        tx = c * (-W / 2) + s * (-H / 2) + W / 2 + c * pad + s * pad
        ty = -s * (-W / 2) + c * (-H / 2) + H / 2 - s * pad + c * pad
        out = Image.fromarray(padded).transform(
            (w, h), Image.AFFINE, (c, s, tx, -s, c, ty), resample=Image.BILINEAR
        )
        return np.asarray(out)
    out = Image.fromarray(image).rotate(degrees, resample=Image.BILINEAR, fillcolor=tuple(fill))
    return np.asarray(out)


def hflip(image: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right; label ``geometry.hflip_label(R)``."""
    image = _check_image(image)
    return image[:, ::-1].copy(), geometry.hflip_label(np.asarray(R, dtype=np.float64))


def vflip(image: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror top-bottom; label ``geometry.vflip_label(R)``."""
    image = _check_image(image)
    return image[::-1].copy(), geometry.vflip_label(np.asarray(R, dtype=np.float64))


@dataclass(frozen=True)
class GeometricAugment:
    """A random geometric augmentation applied identically to several images sharing one label.

    Each call draws one in-plane rotation angle (uniform in ``rotation_deg``) and independent
    horizontal and vertical flips; the flips are applied first, then the rotation.

    Attributes:
        rotation_deg: (low, high) range of the counterclockwise rotation angle in degrees.
        hflip_p: probability of a horizontal mirror.
        vflip_p: probability of a vertical mirror.
        fill: corner fill passed to :func:`rotate`.
    """

    rotation_deg: tuple[float, float] = (-180.0, 180.0)
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    fill: tuple[int, int, int] | str = "edge"

    def __post_init__(self):
        lo, hi = self.rotation_deg
        if lo > hi:
            raise ValueError(f"rotation_deg: low {lo} > high {hi}")
        for name in ("hflip_p", "vflip_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")

    @classmethod
    def preset(cls, name: str) -> GeometricAugment:
        """``"none"``; ``"sa"``: slight in-plane rotation (+-15 deg), no flips; ``"fa"``: any rotation
        and flips, which carries a label set over all of SO(3)."""
        presets = {
            "none": cls(rotation_deg=(0.0, 0.0), hflip_p=0.0, vflip_p=0.0),
            "sa": cls(rotation_deg=(-15.0, 15.0), hflip_p=0.0, vflip_p=0.0),
            "fa": cls(rotation_deg=(-180.0, 180.0), hflip_p=0.5, vflip_p=0.5),
        }
        if name not in presets:
            raise ValueError(f"unknown augmentation preset {name!r}; choose from {sorted(presets)}")
        return presets[name]

    def draw(self, rng: np.random.Generator) -> tuple[float, bool, bool]:
        """One draw: (degrees, hflip, vflip)."""
        lo, hi = self.rotation_deg
        degrees = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
        return degrees, bool(rng.random() < self.hflip_p), bool(rng.random() < self.vflip_p)

    def apply(
        self, images: Sequence[np.ndarray], R: np.ndarray, draw: tuple[float, bool, bool]
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Apply a given draw to every image; returns the images and the one transformed label."""
        degrees, do_h, do_v = draw
        out = []
        for image in images:
            image = _check_image(image)
            if do_h:
                image = image[:, ::-1]
            if do_v:
                image = image[::-1]
            out.append(_rotate_image(np.ascontiguousarray(image), float(degrees), self.fill))
        return out, self.label(R, draw)

    def label(self, R: np.ndarray, draw: tuple[float, bool, bool]) -> np.ndarray:
        """The label transform of a draw alone (same order as :meth:`apply`)."""
        degrees, do_h, do_v = draw
        R = np.asarray(R, dtype=np.float64)
        if do_h:
            R = geometry.hflip_label(R)
        if do_v:
            R = geometry.vflip_label(R)
        return geometry.rotate_label(R, degrees)

    def __call__(
        self, images: Sequence[np.ndarray], R: np.ndarray, rng: np.random.Generator
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Draw once from ``rng`` and apply that draw to all ``images`` (which share label ``R``)."""
        return self.apply(images, R, self.draw(rng))
