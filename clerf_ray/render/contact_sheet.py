"""Contact sheets: a labelled grid of identities (rows) by poses (columns) from any renderer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clerf_ray import geometry
from clerf_ray.render.base import Renderer

# (column label, pitch, yaw, roll) in degrees, dataset convention (geometry.euler_to_matrix).
DEFAULT_POSES: tuple[tuple[str, float, float, float], ...] = (
    ("front", 0.0, 0.0, 0.0),
    ("3/4", 0.0, 45.0, 0.0),
    ("profile", 0.0, 90.0, 0.0),
    ("back", 0.0, 180.0, 0.0),
    ("top", -75.0, 0.0, 0.0),
    ("below", 70.0, 20.0, 0.0),
    ("upside-down", 0.0, 0.0, 180.0),
    ("roll 40", 0.0, -30.0, 40.0),
    ("mixed", 35.0, -120.0, -60.0),
)


def pose_matrices(poses: Sequence[tuple[str, float, float, float]]) -> np.ndarray:
    """Labels (P, 3, 3) of ``(name, pitch, yaw, roll)`` poses given in degrees."""
    angles = np.radians(np.array([p[1:] for p in poses], dtype=np.float64))
    return geometry.euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])


def make_contact_sheet(
    renderer: Renderer,
    identities: Sequence[int],
    poses: Sequence[tuple[str, float, float, float]] = DEFAULT_POSES,
    pad: int = 2,
) -> Image.Image:
    """Render every identity at every pose and lay the images out in a labelled grid.

    Args:
        renderer: any :class:`~clerf_ray.render.base.Renderer`; poses outside its ``pose_range``
            are left blank (grey) and marked ``n/a``.
        identities: identity seeds, one row each.
        poses: ``(label, pitch, yaw, roll)`` in degrees, one column each.
        pad: pixels between cells.

    Returns:
        An RGB image: a header row of pose labels (with the angles) and a column of identity
        labels on the left.
    """
    ids = np.asarray(identities, dtype=np.int64)
    R = pose_matrices(poses)
    n_id, n_pose = len(ids), len(poses)
    size = renderer.image_size
    all_ids = np.repeat(ids, n_pose)
    all_R = np.tile(R, (n_id, 1, 1))
    ok = renderer.pose_range.contains(all_R, tol_deg=0.5)
    cells = np.full((n_id * n_pose, size, size, 3), 128, np.uint8)
    if ok.any():
        cells[ok] = renderer.render(all_ids[ok], all_R[ok])

    font = ImageFont.load_default()
    header, left = 26, 52
    width = left + n_pose * (size + pad)
    height = header + n_id * (size + pad)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, (name, pitch, yaw, roll) in enumerate(poses):
        x = left + j * (size + pad)
        draw.text((x + 2, 1), name, fill=(0, 0, 0), font=font)
        draw.text((x + 2, 13), f"{pitch:g}/{yaw:g}/{roll:g}", fill=(90, 90, 90), font=font)
    draw.text((2, 1), "id", fill=(0, 0, 0), font=font)
    draw.text((2, 13), "p/y/r deg", fill=(90, 90, 90), font=font)
    for i, ident in enumerate(ids):
        y = header + i * (size + pad)
        draw.text((2, y + size // 2 - 6), str(int(ident)), fill=(0, 0, 0), font=font)
        for j in range(n_pose):
            k = i * n_pose + j
            sheet.paste(Image.fromarray(cells[k]), (left + j * (size + pad), y))
            if not ok[k]:
                draw.text((left + j * (size + pad) + 4, y + 4), "n/a", fill=(0, 0, 0), font=font)
    return sheet


def save_contact_sheet(sheet: Image.Image, out: str | Path, colors: int | None = None) -> Path:
    """Write ``sheet`` as PNG; ``colors`` (<= 256) stores a palette image, several times smaller."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if colors is not None:
        if not 2 <= colors <= 256:
            raise ValueError(f"colors must be in [2, 256], got {colors}")
        sheet = sheet.quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    sheet.save(out, optimize=True)
    return out
