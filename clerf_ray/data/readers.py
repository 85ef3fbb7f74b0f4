"""Readers of the real head-pose datasets in their published folder layouts, and
:func:`prepare_dataset`, which turns one into labelled Parquet shards (``clerf_ray.data.schema``).

Layouts
-------
* **300W-LP**: ``AFW/``, ``HELEN/``, ``IBUG/``, ``LFPW/`` and their ``*_Flip`` variants, each with
  ``NAME.jpg`` + ``NAME.mat`` (e.g. ``AFW/AFW_134212_1_0.jpg``); ``landmarks/`` (no images) and any
  other folder are ignored.
* **AFLW2000**: ``imageNNNNN.jpg`` + ``imageNNNNN.mat`` in one folder.
* **BIWI** (Kinect head pose database): ``hpdb/NN/frame_XXXXX_rgb.png`` +
  ``frame_XXXXX_pose.txt`` and a per-sequence ``rgb.cal``; ``--source`` may name ``hpdb`` or its
  parent.

Labels
------
300W-LP / AFLW2000 ``.mat`` files (MATLAB 5) hold ``Pose_Para`` (1x7: pitch, yaw, roll in radians,
then translation and scale) and ``pt2d`` (2x68 in 300W-LP, 2x21 in AFLW2000); the label is
``geometry.euler_to_matrix(pitch, yaw, roll)``. AFLW2000 stores its invisible 2D points with
negative coordinates; ``include_invisible=True`` (the default for AFLW2000) keeps them in the crop
box as the peers' loaders do (their published numbers use those crops), ``False`` boxes the visible
points only.

BIWI's ``frame_XXXXX_pose.txt`` holds a 3x3 rotation (three rows), a blank line, then the head
centre in millimetres. Conversion to our label: HopeNet (``code/datasets.py``, class ``BIWI``) and
FSA-Net (``data/TYY_create_db_biwi.py``, whose output 6DRepNet evaluates on) read the three rows as
a matrix F, set M = F^T and take ``roll = -atan2(M10, M00)``,
``yaw = -atan2(-M20, hypot(M21, M22))``, ``pitch = atan2(M21, M22)``. Those are the ZYX Euler
angles of M with roll and yaw negated: M = Rz(-roll) Ry(-yaw) Rx(pitch). Conjugating by
S = diag(-1, 1, 1) negates the angles about z and y and keeps the one about x
(S Rz(a) S = Rz(-a), S Ry(b) S = Ry(-b), S Rx(c) S = Rx(c)), so the peers' label is, as a matrix
and without Euler angles (exact also near gimbal lock),

    R = Rz(roll) Ry(yaw) Rx(pitch) = S M S = S F^T S.

Since C = diag(1, -1, -1) = -S, this equals ``C F^T C = geometry.from_camera(F)``: the BIWI matrix
is the head's rotation in the OpenCV camera frame (x right, y down, z forward), which is the
Kinect frame the dataset's own head-centre projection implies (``u = fx x / z + cx``). The signs
are not a guess: models trained on 300W-LP labels and tested on BIWI labels made this way report
about 3.5-5 deg MAE (HopeNet, FSA-Net, 6DRepNet), which a flipped yaw, pitch or roll would rule
out. Check by reasoning: a subject turning to the sensor's left turns the nose toward -x, the
image's left; F is then a turn about the Kinect's vertical axis, F = Ry(t) with t > 0, and
R = C Ry(t)^T C = Ry(t): yaw = +t, as our convention says (tests/data/test_readers.py).
"""

from __future__ import annotations

import math
import os
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from clerf_ray import geometry
from clerf_ray.data import crop as crops
from clerf_ray.data.schema import IMAGE_FORMATS, encode_image, make_row
from clerf_ray.data.shards import DEFAULT_SHARD_ROWS, ShardWriter

DATASETS = ("300w_lp", "aflw2000", "biwi")
LP_FOLDERS = ("AFW", "HELEN", "IBUG", "LFPW")
# Per dataset: the split it is normally used as (train: random k; test: k = 0.2), whether the
# AFLW2000 protocol's 99-degree filter applies, whether invisible landmarks enter the box.
DEFAULT_SPLIT = {"300w_lp": "train", "aflw2000": "test", "biwi": "test"}
DEFAULT_FILTER_99 = {"300w_lp": False, "aflw2000": True, "biwi": False}
DEFAULT_INCLUDE_INVISIBLE = {"300w_lp": True, "aflw2000": True, "biwi": True}

# Reasons a sample is skipped (each is counted and listed in _report.json).
SKIP_REASONS = {
    "missing_image": "the annotation has no image beside it",
    "missing_mat": "the image has no .mat beside it",
    "missing_pose": "the image has no _pose.txt beside it",
    "bad_image": "the image cannot be decoded (truncated, corrupt)",
    "bad_mat": "the .mat cannot be read or lacks Pose_Para / pt2d",
    "bad_pose_file": "the BIWI pose file cannot be parsed or its head centre is unusable",
    "bad_calibration": "the sequence's rgb.cal cannot be parsed",
    "pose_nan": "the pose holds NaN or infinite values",
    "pose_out_of_range": "an Euler angle exceeds pi in magnitude",
    "non_orthonormal": "the BIWI rotation is not orthonormal with determinant +1",
    "no_landmarks": "no usable 2D landmark for the crop box",
    "empty_crop": "the crop box lies outside the image",
}
FILTERED_99 = "filtered_99"
# BIWI rotations are printed with ~6 significant digits: allow that much, reject anything worse.
ORTHONORMAL_TOL = 1e-3


class Skip(Exception):
    """A sample that cannot be used; ``reason`` is a key of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str = "", file: str | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.file = file  # the offending file relative to the dataset root, set by _blame


@contextmanager
def _blame(file: str) -> Iterator[None]:
    """Attribute a :class:`Skip` raised inside the block to ``file`` (unless already set)."""
    try:
        yield
    except Skip as s:
        if s.file is None:
            s.file = file
        raise


class Filtered(Skip):
    """A valid sample left out by a protocol filter (counted apart from skips)."""


class NoValidSamplesError(RuntimeError):
    """Nothing valid remained to write."""


@dataclass(frozen=True)
class PrepareOptions:
    """How samples become rows. Build with :meth:`for_dataset` for the per-dataset defaults.

    Attributes:
        dataset: one of :data:`DATASETS`.
        split: ``"train"`` (crop factor k uniform in [0.2, 0.4), seeded per file) or ``"test"``
            (k = 0.2).
        filter_99: drop samples with any |pitch|, |yaw|, |roll| > 99 deg (AFLW2000 protocol).
        include_invisible: AFLW2000: box invisible landmarks too (peer-comparable).
        seed: base seed of the per-file k draws.
        image_size: resize crops to image_size x image_size pixels (None: keep the crop size).
        image_format: ``"jpeg"`` (quality 95) or ``"png"``.
        biwi_box_mm: side of BIWI's head-centre box in millimetres.
    """

    dataset: str
    split: str
    filter_99: bool
    include_invisible: bool = True
    seed: int = 0
    image_size: int | None = None
    image_format: str = "jpeg"
    biwi_box_mm: float = crops.BIWI_BOX_MM

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}")
        if not self.biwi_box_mm > 0:
            raise ValueError(f"biwi_box_mm must be > 0, got {self.biwi_box_mm}")

    @classmethod
    def for_dataset(
        cls,
        dataset: str,
        *,
        split: str | None = None,
        filter_99: bool | None = None,
        include_invisible: bool | None = None,
        **kwargs,
    ) -> PrepareOptions:
        """Options with the dataset's defaults for every argument left at None."""
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
        return cls(
            dataset=dataset,
            split=DEFAULT_SPLIT[dataset] if split is None else split,
            filter_99=DEFAULT_FILTER_99[dataset] if filter_99 is None else filter_99,
            include_invisible=(
                DEFAULT_INCLUDE_INVISIBLE[dataset]
                if include_invisible is None
                else include_invisible
            ),
            **kwargs,
        )


# --------------------------------------------------------------------------- listing


def dataset_root(dataset: str, source: str | os.PathLike) -> Path:
    """The folder the sample names are relative to (BIWI: ``hpdb``)."""
    src = Path(source)
    if not src.is_dir():
        raise FileNotFoundError(f"--source {str(src)!r} is not a folder")
    if dataset == "biwi" and (src / "hpdb").is_dir():
        return src / "hpdb"
    return src


def _stems(folder: Path, suffixes: tuple[str, ...]) -> set[str]:
    return {p.name[: -len(s)] for s in suffixes for p in folder.glob(f"*{s}") if p.is_file()}


def list_samples(dataset: str, root: Path) -> list[str]:
    """Sample names relative to ``root``, sorted: ``AFW/AFW_134212_1_0`` (300W-LP),
    ``image00002`` (AFLW2000), ``01/frame_00003`` (BIWI). A name is listed when either of its two
    files exists, so a missing partner is reported rather than silently ignored."""
    if dataset == "300w_lp":
        folders = [f"{n}{v}" for n in LP_FOLDERS for v in ("", "_Flip")]
        present = [f for f in folders if (root / f).is_dir()]
        if not present:
            raise FileNotFoundError(
                f"--source {str(root)!r} holds none of the 300W-LP folders {folders}"
            )
        return sorted(f"{f}/{s}" for f in present for s in _stems(root / f, (".jpg", ".mat")))
    if dataset == "aflw2000":
        return sorted(_stems(root, (".jpg", ".mat")))
    if dataset == "biwi":
        seqs = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.isdigit())
        if not seqs:
            raise FileNotFoundError(
                f"--source {str(root)!r} holds no BIWI sequence folders (01, 02, ...)"
            )
        return sorted(f"{q}/{s}" for q in seqs for s in _stems(root / q, ("_rgb.png", "_pose.txt")))
    raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")


# --------------------------------------------------------------------------- per-sample parts


def _load_image(path: Path):
    from PIL import Image

    if not path.is_file():
        raise Skip("missing_image", path.name)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # convert() loads every pixel: truncation surfaces here
    except Exception as e:  # PIL raises several types (OSError, SyntaxError, ValueError)
        raise Skip("bad_image", f"{type(e).__name__}: {e}") from None


def _check_angles(pitch: float, yaw: float, roll: float) -> None:
    angles = (pitch, yaw, roll)
    if not all(math.isfinite(a) for a in angles):
        raise Skip("pose_nan", f"pitch, yaw, roll = {angles}")
    if any(abs(a) > math.pi for a in angles):
        raise Skip("pose_out_of_range", f"pitch, yaw, roll = {angles} rad")


def _filter_99(opts: PrepareOptions, euler_deg: tuple[float, float, float]) -> None:
    if opts.filter_99 and any(abs(a) > 99.0 for a in euler_deg):
        raise Filtered(
            FILTERED_99, "pitch, yaw, roll = ({:.1f}, {:.1f}, {:.1f}) deg".format(*euler_deg)
        )


def _crop_and_encode(image, box, opts: PrepareOptions) -> tuple[bytes, tuple[int, int, int, int]]:
    from PIL import Image

    box = crops.clip_box(box, image.width, image.height)
    if crops.is_empty(box):
        raise Skip("empty_crop", f"box {box} in a {image.width}x{image.height} image")
    out = image.crop(box)
    if opts.image_size is not None:
        out = out.resize((opts.image_size, opts.image_size), Image.BILINEAR)
    return encode_image(np.asarray(out), opts.image_format), box


def _k(opts: PrepareOptions, name: str) -> float:
    # One generator per file, keyed by (seed, name): the draw does not depend on listing order,
    # worker count or which samples before it were skipped.
    rng = np.random.default_rng([opts.seed, zlib.crc32(name.encode("utf-8"))])
    return crops.sample_k(opts.split, rng)


def read_mat_sample(root: Path, name: str, opts: PrepareOptions) -> dict[str, Any]:
    """One 300W-LP / AFLW2000 sample as a labelled row; raises :class:`Skip` or :class:`Filtered`."""
    import scipy.io

    mat_file, img_file = f"{name}.mat", f"{name}.jpg"
    mat_path, img_path = root / mat_file, root / img_file
    if not mat_path.is_file():
        raise Skip("missing_mat", mat_path.name, file=mat_file)
    if not img_path.is_file():
        raise Skip("missing_image", img_path.name, file=img_file)
    with _blame(mat_file):
        try:
            mat = scipy.io.loadmat(str(mat_path))
        except Exception as e:  # scipy raises ValueError, TypeError, MatReadError... on garbage
            raise Skip("bad_mat", f"{type(e).__name__}: {e}") from None
        missing = [k for k in ("Pose_Para", "pt2d") if k not in mat]
        if missing:
            raise Skip("bad_mat", f"no {', '.join(missing)} in {mat_path.name}")
        pose = np.asarray(mat["Pose_Para"], dtype=np.float64).ravel()
        pts = np.asarray(mat["pt2d"], dtype=np.float64)
        if pose.size < 3:
            raise Skip("bad_mat", f"Pose_Para has {pose.size} values, expected 7")
        if pts.ndim != 2 or 2 not in pts.shape:
            raise Skip("bad_mat", f"pt2d has shape {pts.shape}, expected (2, N)")
        if pts.shape[0] != 2:
            pts = pts.T
        pitch, yaw, roll = (float(v) for v in pose[:3])
        _check_angles(pitch, yaw, roll)
        euler_deg = (math.degrees(pitch), math.degrees(yaw), math.degrees(roll))
        _filter_99(opts, euler_deg)
        usable = np.isfinite(pts).all(axis=0)
        if not opts.include_invisible:
            usable &= (pts >= 0).all(axis=0)  # invisible AFLW2000 points carry negative coordinates
        if not usable.any():
            raise Skip("no_landmarks", f"none of {pts.shape[1]} points usable")
    with _blame(img_file):
        image = _load_image(img_path)
        box = crops.loose_box(pts[:, usable], _k(opts, name), crops.PEER_BOX[opts.dataset])
        data, box = _crop_and_encode(image, box, opts)
    R = geometry.euler_to_matrix(pitch, yaw, roll)
    return make_row(data, R, file=img_file, dataset=opts.dataset, box=box, euler_deg=euler_deg)


def parse_biwi_pose(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A BIWI ``_pose.txt``: (3, 3) rotation rows as stored, and the (3,) head centre in mm."""
    try:
        rows = [
            [float(v) for v in line.split()]
            for line in path.read_text().splitlines()
            if line.strip()
        ]
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise Skip("bad_pose_file", f"{path.name}: {type(e).__name__}: {e}") from None
    if len(rows) < 4 or any(len(r) != 3 for r in rows[:4]):
        raise Skip("bad_pose_file", f"{path.name}: expected 3 rotation rows and a centre row")
    return np.asarray(rows[:3]), np.asarray(rows[3])


@lru_cache(maxsize=64)
def biwi_intrinsics(cal_path: str) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) from a sequence's ``rgb.cal`` (first three rows: the 3x3 intrinsic
    matrix); the published values when the file is absent. Raises :class:`Skip` if unreadable."""
    path = Path(cal_path)
    if not path.is_file():
        return crops.BIWI_RGB_INTRINSICS
    try:
        rows = [
            [float(v) for v in ln.split()] for ln in path.read_text().splitlines() if ln.strip()
        ]
        K = np.asarray(rows[:3], dtype=np.float64).reshape(3, 3)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise Skip("bad_calibration", f"{path}: {type(e).__name__}: {e}") from None
    if not (np.isfinite(K).all() and K[0, 0] > 0 and K[1, 1] > 0):
        raise Skip("bad_calibration", f"{path}: intrinsics {K.tolist()}")
    return float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])


def biwi_label(F: np.ndarray) -> np.ndarray:
    """Our label from a BIWI rotation as stored (rows as rows): ``R = C F^T C`` (module
    docstring). ``F`` is first projected onto the nearest rotation (SVD) to drop print rounding."""
    U, _, Vt = np.linalg.svd(np.asarray(F, dtype=np.float64))
    return geometry.from_camera(U @ Vt)


def read_biwi_sample(root: Path, name: str, opts: PrepareOptions) -> dict[str, Any]:
    """One BIWI frame as a labelled row; raises :class:`Skip` or :class:`Filtered`."""
    seq = name.split("/", 1)[0]
    pose_file, img_file, cal_file = f"{name}_pose.txt", f"{name}_rgb.png", f"{seq}/rgb.cal"
    pose_path, img_path = root / pose_file, root / img_file
    if not pose_path.is_file():
        raise Skip("missing_pose", pose_path.name, file=pose_file)
    if not img_path.is_file():
        raise Skip("missing_image", img_path.name, file=img_file)
    with _blame(pose_file):
        F, centre = parse_biwi_pose(pose_path)
        if not (np.isfinite(F).all() and np.isfinite(centre).all()):
            raise Skip("pose_nan", f"{pose_path.name}")
        err = float(np.abs(F @ F.T - np.eye(3)).max())
        det = float(np.linalg.det(F))
        if err > ORTHONORMAL_TOL or det <= 0:
            raise Skip("non_orthonormal", f"max |F F^T - I| = {err:.3g}, det = {det:.3g}")
        R = biwi_label(F)
        euler_deg = tuple(math.degrees(float(a)) for a in geometry.matrix_to_euler(R))
        _filter_99(opts, euler_deg)
    with _blame(cal_file):
        intr = biwi_intrinsics(str(root / cal_file))
    with _blame(pose_file):
        try:
            box = crops.head_centre_box(centre, intr, opts.biwi_box_mm)
        except ValueError as e:
            raise Skip("bad_pose_file", f"{pose_path.name}: {e}") from None
    with _blame(img_file):
        image = _load_image(img_path)
        data, box = _crop_and_encode(image, box, opts)
    return make_row(data, R, file=img_file, dataset="biwi", box=box, euler_deg=euler_deg)


READERS: dict[str, Callable[[Path, str, PrepareOptions], dict[str, Any]]] = {
    "300w_lp": read_mat_sample,
    "aflw2000": read_mat_sample,
    "biwi": read_biwi_sample,
}


def _process(root: Path, name: str, opts: PrepareOptions) -> tuple:
    """("ok", row) or (kind, entry) with kind "filtered" / "skip" and entry the report's record:
    sample name, offending file, reason, detail."""
    try:
        return ("ok", READERS[opts.dataset](root, name, opts))
    except Skip as s:
        entry = {"sample": name, "file": s.file or name, "reason": s.reason, "detail": s.detail}
        return ("filtered" if isinstance(s, Filtered) else "skip", entry)


def _process_star(args) -> tuple:
    return _process(*args)


def _results(root: Path, names: list[str], opts: PrepareOptions, workers: int) -> Iterator[tuple]:
    if workers <= 1:
        for name in names:
            yield _process(root, name, opts)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # forkserver: the workers do not inherit the parent's threads (Ray, pyarrow pools).
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        # map() keeps input order, so the shards do not depend on the worker count.
        yield from pool.map(_process_star, ((root, n, opts) for n in names), chunksize=32)


# --------------------------------------------------------------------------- the job


def prepare_dataset(
    dataset: str,
    source: str | os.PathLike,
    output: str,
    *,
    split: str | None = None,
    filter_99: bool | None = None,
    include_invisible: bool | None = None,
    seed: int = 0,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    image_size: int | None = None,
    image_format: str = "jpeg",
    biwi_box_mm: float = crops.BIWI_BOX_MM,
    workers: int = 1,
    endpoint_url: str | None = None,
    progress_every: int = 1000,
    log: TextIO | None = sys.stderr,
) -> dict[str, Any]:
    """Read a dataset from its published layout and write labelled shards plus ``_report.json``.

    Args:
        dataset: ``"300w_lp"``, ``"aflw2000"`` or ``"biwi"``.
        source: the dataset folder (BIWI: ``hpdb`` or its parent).
        output: local folder or ``s3://bucket/prefix``.
        split, filter_99, include_invisible: None takes the dataset's default
            (:class:`PrepareOptions`).
        seed: base seed of the training crop factor.
        shard_rows: rows per Parquet shard.
        image_size: resize crops to this square size (None keeps each crop's size).
        image_format: ``"jpeg"`` or ``"png"``.
        biwi_box_mm: BIWI head-centre box side in millimetres.
        workers: processes decoding images (1: in this process). Above 1 they are started with
            ``forkserver``, which re-imports the calling script: call from a script guarded by
            ``if __name__ == "__main__":`` (``jobs/prepare_data.py`` is). Worth it for full
            datasets only: each worker pays a ~1-2 s start.
        endpoint_url: S3 endpoint override (default ``AWS_ENDPOINT_URL``).
        progress_every: print processed counts to ``log`` every this many samples.
        log: stream for progress lines (None: silent).

    Returns:
        The report, as written to ``_report.json``: ``counts`` (seen, written, filtered, skipped,
        skipped_by_reason), ``skipped`` and ``filtered`` (one record per sample: ``sample`` name,
        the offending ``file``, ``reason``, ``detail``), ``options``, ``shards``.

    Raises:
        NoValidSamplesError: nothing valid remained; the output is left as it was.
        FileNotFoundError: ``source`` is not a folder of the dataset's layout.
    """
    opts = PrepareOptions.for_dataset(
        dataset,
        split=split,
        filter_99=filter_99,
        include_invisible=include_invisible,
        seed=seed,
        image_size=image_size,
        image_format=image_format,
        biwi_box_mm=biwi_box_mm,
    )
    root = dataset_root(dataset, source).resolve()
    names = list_samples(dataset, root)

    def say(msg: str) -> None:
        if log is not None:
            print(f"prepare_data[{dataset}]: {msg}", file=log, flush=True)

    say(f"{len(names)} samples under {root}")
    skipped: list[dict[str, str]] = []
    filtered: list[dict[str, str]] = []
    reasons: Counter[str] = Counter()
    written = 0
    t0 = time.monotonic()
    with ShardWriter(output, shard_rows=shard_rows, endpoint_url=endpoint_url) as writer:
        for i, res in enumerate(_results(root, names, opts, workers), start=1):
            if res[0] == "ok":
                writer.write(res[1])
                written += 1
            elif res[0] == "filtered":
                filtered.append(res[1])
            else:
                skipped.append(res[1])
                reasons[res[1]["reason"]] += 1
            if progress_every and (i % progress_every == 0 or i == len(names)):
                say(
                    f"{i}/{len(names)} processed, {written} written, {len(filtered)} filtered, "
                    f"{len(skipped)} skipped ({time.monotonic() - t0:.0f} s)"
                )
        if written == 0:
            summary = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items())) or "none"
            raise NoValidSamplesError(
                f"no valid {dataset} samples in {str(root)!r}: {len(names)} seen, "
                f"{len(filtered)} filtered, {len(skipped)} skipped ({summary}); "
                f"{output!r} left unchanged"
            )
        report = {
            "dataset": dataset,
            "source": str(root),
            "output": str(output),
            "options": asdict(opts),
            "counts": {
                "seen": len(names),
                "written": written,
                "filtered": len(filtered),
                "skipped": len(skipped),
                "skipped_by_reason": dict(sorted(reasons.items())),
            },
            "skipped": skipped,
            "filtered": filtered,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        writer.commit(report)
    say(f"wrote {written} rows to {output} ({len(skipped)} skipped, {len(filtered)} filtered)")
    report["shards"] = [{"name": n, "rows": r} for n, r in writer.shards]
    report["rows"] = written
    return report
