"""The labelled-set schema: one Parquet layout for real datasets and synthetic renders alike.

Every labelled set (300W-LP, AFLW2000, BIWI prepared by ``jobs/prepare_data.py``, and renders
written later by the rendering jobs) is a folder of ``part-NNNNN.parquet`` shards with this schema,
so a consumer reads any of them the same way:

* ``image`` (binary): the encoded crop, JPEG by default, PNG on request (PIL detects which).
* ``R`` (fixed_size_list<float32>[9]): the label ``R = Rz(roll) Ry(yaw) Rx(pitch)`` in the
  dataset convention (``clerf_ray.geometry``), row-major.
* ``euler_deg`` (fixed_size_list<float32>[3]): (pitch, yaw, roll) in degrees; for 300W-LP and
  AFLW2000 the dataset's own ``Pose_Para`` angles (the peers compare with these), otherwise
  ``geometry.matrix_to_euler(R)``.
* ``box`` (fixed_size_list<int32>[4]): (x0, y0, x1, y1) of the crop in the source image, pixels,
  x1 and y1 exclusive; renders use the whole image.
* ``width``, ``height`` (int32): size of the encoded image, pixels.
* ``file`` (string): the source file relative to the dataset root (renders: any stable id).
* ``dataset`` (string): ``"300w_lp"``, ``"aflw2000"``, ``"biwi"``, ``"render:<name>"``, ...

Rows are built with :func:`make_row` (one sample) or :func:`make_table` (arrays); both check
shapes and compute ``euler_deg`` from ``R`` when it is not given. Writing goes through
:mod:`clerf_ray.data.shards`, which accepts rows from any source.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from clerf_ray import geometry

IMAGE_FORMATS = ("jpeg", "png")

SCHEMA = pa.schema(
    [
        pa.field("image", pa.binary(), nullable=False),
        pa.field("R", pa.list_(pa.float32(), 9), nullable=False),
        pa.field("euler_deg", pa.list_(pa.float32(), 3), nullable=False),
        pa.field("box", pa.list_(pa.int32(), 4), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("file", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
    ],
    metadata={"clerf_ray.schema": "labelled/1"},
)
COLUMNS = tuple(SCHEMA.names)


def encode_image(image: np.ndarray, image_format: str = "jpeg", quality: int = 95) -> bytes:
    """Encode an (H, W, 3) uint8 RGB image as JPEG (``quality``) or PNG bytes."""
    from PIL import Image

    fmt = image_format.lower()
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    else:
        Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """Decode the ``image`` column of one row to an (H, W, 3) uint8 RGB array."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _image_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size


def _check_rotation(R: np.ndarray, what: str) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(R)):
        raise ValueError(f"{what}: R has non-finite entries")
    if np.abs(R @ R.T - np.eye(3)).max() > 1e-4 or np.linalg.det(R) < 0:
        raise ValueError(f"{what}: R is not a rotation matrix")
    return R


def make_row(
    image: bytes | np.ndarray,
    R: Any,
    *,
    file: str,
    dataset: str,
    box: Sequence[int] | None = None,
    euler_deg: Sequence[float] | None = None,
    image_format: str = "jpeg",
) -> dict[str, Any]:
    """One row of the labelled schema.

    Args:
        image: encoded bytes (JPEG/PNG) or an (H, W, 3) uint8 RGB array, encoded here with
            ``image_format``.
        R: (3, 3) label in the dataset convention (or 9 numbers, row-major).
        file: source file or identifier.
        dataset: dataset name (``"300w_lp"``, ``"render:procedural"``, ...).
        box: (x0, y0, x1, y1) of the crop in the source image; default the whole image.
        euler_deg: (pitch, yaw, roll) degrees; default ``geometry.matrix_to_euler(R)``.
        image_format: encoding for array images.

    Returns:
        A dict with the columns of :data:`SCHEMA`, ready for ``pa.Table.from_pylist``.
    """
    R = _check_rotation(R, f"row {file!r}")
    if isinstance(image, np.ndarray):
        h, w = image.shape[:2]
        data = encode_image(image, image_format)
    else:
        data = bytes(image)
        w, h = _image_size(data)
    if euler_deg is None:
        euler_deg = [math.degrees(float(a)) for a in geometry.matrix_to_euler(R)]
    euler = [float(a) for a in euler_deg]
    if len(euler) != 3:
        raise ValueError(f"row {file!r}: euler_deg needs 3 numbers, got {len(euler)}")
    box = (0, 0, w, h) if box is None else tuple(int(v) for v in box)
    if len(box) != 4:
        raise ValueError(f"row {file!r}: box needs 4 numbers, got {len(box)}")
    return {
        "image": data,
        "R": R.astype(np.float32).ravel().tolist(),
        "euler_deg": euler,
        "box": list(box),
        "width": int(w),
        "height": int(h),
        "file": str(file),
        "dataset": str(dataset),
    }


def make_table(
    images: Sequence[bytes] | np.ndarray,
    R: np.ndarray,
    *,
    files: Sequence[str],
    dataset: str | Sequence[str],
    boxes: np.ndarray | None = None,
    euler_deg: np.ndarray | None = None,
    image_format: str = "jpeg",
) -> pa.Table:
    """A table of the labelled schema from arrays (e.g. a batch of renders).

    Args:
        images: N encoded images, or an (N, H, W, 3) uint8 array.
        R: (N, 3, 3) or (N, 9) labels in the dataset convention.
        files: N identifiers.
        dataset: one name for all rows or N names.
        boxes: (N, 4) crop boxes; default each image's full frame.
        euler_deg: (N, 3) (pitch, yaw, roll) degrees; default from ``R``.
        image_format: encoding for array images.
    """
    R = np.asarray(R, dtype=np.float64).reshape(-1, 3, 3)
    n = len(R)
    names = [dataset] * n if isinstance(dataset, str) else list(dataset)
    if not (len(images) == len(files) == len(names) == n):
        raise ValueError(
            f"make_table: lengths differ: images {len(images)}, R {n}, files {len(files)}, "
            f"dataset {len(names)}"
        )
    rows = [
        make_row(
            images[i],
            R[i],
            file=files[i],
            dataset=names[i],
            box=None if boxes is None else boxes[i],
            euler_deg=None if euler_deg is None else euler_deg[i],
            image_format=image_format,
        )
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def check_table(table: pa.Table) -> pa.Table:
    """Cast ``table`` to :data:`SCHEMA` (column order and types), naming what does not fit."""
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"labelled table lacks columns {missing}; schema is {list(COLUMNS)}")
    return table.select(list(COLUMNS)).cast(SCHEMA)


def labelled_R(table: pa.Table) -> np.ndarray:
    """The ``R`` column as an (N, 3, 3) float64 array."""
    col = table.column("R").combine_chunks()
    flat = col.values.to_numpy(zero_copy_only=False) if len(col) else np.zeros(0)
    return np.asarray(flat, dtype=np.float64).reshape(-1, 3, 3)


def load_labelled(path: str, *, endpoint_url: str | None = None) -> pa.Table:
    """Read a labelled set (local folder or ``s3://bucket/prefix``) into one pyarrow Table.

    For small sets (evaluation benchmarks, tests); training reads go through
    :func:`read_labelled`. Files starting with ``_`` or ``.`` (the report, staging folders) are
    ignored, as Ray does.
    """
    import pyarrow.dataset as pads

    from clerf_ray.data.shards import list_shards, resolve

    fs, root = resolve(path, endpoint_url=endpoint_url)
    shards = list_shards(fs, root)
    if not shards:
        raise FileNotFoundError(f"no part-*.parquet shards under {path!r}")
    return pads.dataset(shards, filesystem=fs, format="parquet", schema=SCHEMA).to_table()


def read_labelled(path: str, *, endpoint_url: str | None = None, **read_options):
    """A labelled set (local folder or ``s3://bucket/prefix``) as a lazy ``ray.data.Dataset``.

    The filesystem is built on the driver (credentials from the standard AWS environment, endpoint
    from ``endpoint_url`` or ``AWS_ENDPOINT_URL``) and shipped to the readers, so Ray workers
    started before those variables were set still reach the same store.

    Args:
        path: the folder given to ``prepare_data.py --output`` (or a render job).
        endpoint_url: S3 endpoint override.
        **read_options: passed to ``ray.data.read_parquet`` (e.g. ``num_cpus`` per read task).
    """
    import ray.data

    from clerf_ray.data.shards import list_shards, resolve

    fs, root = resolve(path, endpoint_url=endpoint_url)
    shards = list_shards(fs, root)
    if not shards:
        raise FileNotFoundError(f"no part-*.parquet shards under {path!r}")
    return ray.data.read_parquet(shards, filesystem=fs, **read_options)
