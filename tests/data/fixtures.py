"""Build small dataset folders in the real published formats (and broken variants) for tests.

* 300W-LP / AFLW2000: ``NAME.jpg`` (PIL JPEG) + ``NAME.mat`` written by ``scipy.io.savemat``
  (MATLAB 5) with the datasets' keys and shapes: ``Pose_Para`` 1x7, ``pt2d`` 2x68 (300W-LP) or
  2x21 plus ``pt3d_68`` 3x68 (AFLW2000), and the 3DMM parameter arrays.
* BIWI: ``hpdb/NN/frame_XXXXX_rgb.png`` + ``frame_XXXXX_pose.txt`` (three rotation rows, a blank
  line, the head centre in mm, each row ending in a space as in the published files) and
  ``rgb.cal`` (intrinsics, blank, distortion, blank, rotation, blank, translation).

Images are colour ramps: red grows with x and green with y, so a crop's corner colours tell where
in the source image it was cut from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image


def ramp_image(width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8: R = 255 x / (W - 1), G = 255 y / (H - 1), B = 128."""
    x = np.linspace(0.0, 255.0, width)
    y = np.linspace(0.0, 255.0, height)
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[..., 0] = np.round(x)[None, :]
    img[..., 1] = np.round(y)[:, None]
    img[..., 2] = 128
    return img


def ramp_position(pixel: np.ndarray, width: int, height: int) -> tuple[float, float]:
    """Inverse of :func:`ramp_image`: the (x, y) a ramp colour came from."""
    return float(pixel[0]) * (width - 1) / 255.0, float(pixel[1]) * (height - 1) / 255.0


def landmarks_in_box(
    x0: float, y0: float, x1: float, y1: float, n: int, seed: int = 0
) -> np.ndarray:
    """(2, n) points whose extent is exactly [x0, x1] x [y0, y1] (two corners, the rest inside)."""
    rng = np.random.default_rng(seed)
    pts = np.stack([rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)])
    pts[:, 0] = (x0, y0)
    pts[:, 1] = (x1, y1)
    return pts


def write_mat_sample(
    folder: Path,
    name: str,
    *,
    pose: tuple[float, float, float],
    pt2d: np.ndarray,
    image_size: tuple[int, int] = (320, 320),
    kind: str = "300w_lp",
    write_image: bool = True,
    write_mat: bool = True,
) -> None:
    """``folder/name.jpg`` and ``folder/name.mat`` as in 300W-LP (``kind="300w_lp"``) or AFLW2000.

    Args:
        pose: (pitch, yaw, roll) radians; Pose_Para gets translation and scale after them.
        pt2d: (2, N) landmarks (68 for 300W-LP, 21 for AFLW2000).
        image_size: (width, height) of the ramp image.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if write_image:
        Image.fromarray(ramp_image(*image_size)).save(folder / f"{name}.jpg", quality=95)
    if write_mat:
        pose_para = np.array([[*pose, 160.0, 150.0, 0.0, 0.0012]], dtype=np.float32)
        contents = {
            "Pose_Para": pose_para,
            "pt2d": np.asarray(pt2d, dtype=np.float64),
            "Shape_Para": np.zeros((199, 1), dtype=np.float32),
            "Exp_Para": np.zeros((29, 1), dtype=np.float32),
            "Tex_Para": np.zeros((199, 1), dtype=np.float32),
            "Color_Para": np.zeros((1, 7), dtype=np.float32),
            "Illum_Para": np.zeros((1, 10), dtype=np.float32),
            "roi": np.array([[0, 0, image_size[0], image_size[1]]], dtype=np.float64),
        }
        if kind == "aflw2000":
            contents["pt3d_68"] = np.zeros((3, 68), dtype=np.float64)
        scipy.io.savemat(folder / f"{name}.mat", contents, format="5")


AFLW_W, AFLW_H = 300, 300
AFLW2000_POSES = {
    "image00002": (0.05, -0.4, 0.15),
    "image00004": (0.1, 2.0, 0.0),  # yaw 114.6 deg: beyond the protocol's 99 deg
    "image00006": (-0.4, 1.2, 0.3),
}


def build_aflw2000(root: Path) -> Path:
    """Three AFLW2000 samples in ``root``: image00002 with two invisible points (-1, -1) and
    visible extent [100, 180] x [120, 220]; image00004 beyond 99 deg (extent [80, 200]^2);
    image00006 with extent [50, 150] x [60, 160]. Images are 300 x 300 ramps."""
    pts = landmarks_in_box(100, 120, 180, 220, 21, seed=1)
    pts[:, [5, 9]] = -1.0  # invisible points, stored with negative coordinates
    extents = {
        "image00002": None,
        "image00004": (80, 80, 200, 200),
        "image00006": (50, 60, 150, 160),
    }
    for name, pose in AFLW2000_POSES.items():
        ext = extents[name]
        write_mat_sample(
            root,
            name,
            pose=pose,
            pt2d=pts if ext is None else landmarks_in_box(*ext, 21),
            kind="aflw2000",
            image_size=(AFLW_W, AFLW_H),
        )
    return root


def truncate_file(path: Path, keep: float = 0.5) -> None:
    """Cut a file to ``keep`` of its length (a download that stopped half way)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write_garbage(path: Path, nbytes: int = 512, seed: int = 0) -> None:
    """Random bytes under a real file name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes())


def write_biwi_frame(
    seq_dir: Path,
    frame: int,
    *,
    F: np.ndarray,
    centre_mm: tuple[float, float, float],
    image_size: tuple[int, int] = (640, 480),
    write_image: bool = True,
) -> None:
    """``frame_XXXXX_rgb.png`` + ``frame_XXXXX_pose.txt`` with rotation rows ``F`` as stored."""
    seq_dir.mkdir(parents=True, exist_ok=True)
    stem = seq_dir / f"frame_{frame:05d}"
    if write_image:
        Image.fromarray(ramp_image(*image_size)).save(f"{stem}_rgb.png")
    rows = [" ".join(f"{v:.6g}" for v in row) + " " for row in np.asarray(F, dtype=np.float64)]
    centre = " ".join(f"{v:.6g}" for v in centre_mm) + " "
    Path(f"{stem}_pose.txt").write_text("\n".join(rows) + "\n\n" + centre + "\n")


def write_biwi_cal(seq_dir: Path, fx: float, fy: float, cx: float, cy: float) -> None:
    """A sequence's ``rgb.cal`` in the published layout (depth-to-RGB extrinsics after K)."""
    seq_dir.mkdir(parents=True, exist_ok=True)
    seq_dir.joinpath("rgb.cal").write_text(
        f"{fx} 0 {cx} \n0 {fy} {cy} \n0 0 1 \n\n0 0 0 0 \n\n"
        "0.999947 0.00432361 0.00929419 \n-0.00446314 0.999877 0.0150443 \n"
        "-0.009228 -0.015085 0.999844 \n\n-24.0198 5.8896 -13.2308 \n"
    )
