"""The labelled-set schema: one Parquet layout for real datasets and synthetic renders alike.

Every labelled set (300W-LP, AFLW2000, BIWI prepared by ``jobs/prepare_data.py``, and renders
written by ``jobs/render.py --labelled``) is a folder of ``part-NNNNN.parquet`` shards with this
schema, so a consumer reads any of them the same way:

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
:mod:`clerf_ray.data.shards`, which accepts rows from any source. The readers
(:func:`load_labelled`, :func:`read_labelled`, :func:`read_labelled_numbered`) check the shards'
schema from their footers and refuse other shard sets (the pair shards of ``jobs/render.py``) with
:class:`NotALabelledSetError` instead of reading them as rows with a null image.
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


class NotALabelledSetError(ValueError):
    """A folder of shards that is not a labelled set (e.g. pair shards from ``jobs/render.py``)."""


def _schema_problem(schema: pa.Schema) -> str | None:
    """Why a shard with this schema is not a labelled-set shard, or None when it is one."""
    tag = (schema.metadata or {}).get(b"clerf_ray.schema", b"").decode("utf-8", "replace")
    names = list(schema.names)
    if tag.startswith("pairs/") or {"anchor", "positive"} <= set(names):
        return (
            "this is a pair-shard set written by jobs/render.py (columns "
            f"{names}); labelled sets come from jobs/prepare_data.py or jobs/render.py --labelled"
        )
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        return f"it lacks the labelled columns {missing} (found {names}; schema is {list(COLUMNS)})"
    if pa.types.is_null(schema.field("image").type):
        return "its image column holds no data (null type)"
    return None


def labelled_shard_rows(
    fs, shards: Sequence[str], path: str, *, check: str = "all"
) -> list[int] | None:
    """Check that shards hold the labelled schema, from their Parquet footers (no row is read).

    Args:
        fs: the pyarrow filesystem of the shards.
        shards: shard paths inside ``fs`` (``shards.list_shards``).
        path: the set's path as the user gave it, for messages.
        check: ``"all"`` reads every footer and returns the row count of each shard;
            ``"first"`` checks the first shard only and returns None (a cheap check before a
            lazy read).

    Raises:
        NotALabelledSetError: a shard's schema is not the labelled one; the message names the
            set, the shard and what was found.
    """
    import pyarrow.parquet as pq

    rows = []
    for shard in shards if check == "all" else shards[:1]:
        with fs.open_input_file(shard) as f:
            meta = pq.read_metadata(f)
        problem = _schema_problem(meta.schema.to_arrow_schema())
        if problem:
            name = shard.rstrip("/").rsplit("/", 1)[-1]
            raise NotALabelledSetError(f"{path!r} is not a labelled set: {name}: {problem}")
        rows.append(meta.num_rows)
    return rows if check == "all" else None


def load_labelled(
    path: str, *, endpoint_url: str | None = None, columns: Sequence[str] | None = None
) -> pa.Table:
    """Read a labelled set (local folder or ``s3://bucket/prefix``) into one pyarrow Table.

    For small sets (evaluation benchmarks, tests) or a few columns (``columns=["R"]`` reads the
    labels without the images); training reads go through :func:`read_labelled`. Files starting
    with ``_`` or ``.`` (the report, staging folders) are ignored, as Ray does.

    Raises:
        FileNotFoundError: no shard under ``path``.
        NotALabelledSetError: the shards are not labelled-set shards (pair shards, say).
    """
    import pyarrow.dataset as pads

    from clerf_ray.data.shard_files import list_shards, resolve

    fs, root = resolve(path, endpoint_url=endpoint_url)
    shards = list_shards(fs, root)
    if not shards:
        raise FileNotFoundError(f"no part-*.parquet shards under {path!r}")
    labelled_shard_rows(fs, shards, path)
    dataset = pads.dataset(shards, filesystem=fs, format="parquet", schema=SCHEMA)
    return dataset.to_table(columns=None if columns is None else list(columns))


def read_labelled(path: str, *, endpoint_url: str | None = None, **read_options):
    """A labelled set (local folder or ``s3://bucket/prefix``) as a lazy ``ray.data.Dataset``.

    The filesystem is built on the driver (credentials from the standard AWS environment, endpoint
    from ``endpoint_url`` or ``AWS_ENDPOINT_URL``) and shipped to the readers, so Ray workers
    started before those variables were set still reach the same store. Rows come in no fixed
    order; :func:`read_labelled_numbered` numbers them stably.

    Args:
        path: the folder given to ``prepare_data.py --output`` (or ``render.py --labelled``).
        endpoint_url: S3 endpoint override.
        **read_options: passed to ``ray.data.read_parquet`` (e.g. ``num_cpus`` per read task).

    Raises:
        FileNotFoundError: no shard under ``path``.
        NotALabelledSetError: the first shard is not a labelled-set shard.
    """
    import ray.data

    from clerf_ray.data.shard_files import list_shards, resolve

    fs, root = resolve(path, endpoint_url=endpoint_url)
    shards = list_shards(fs, root)
    if not shards:
        raise FileNotFoundError(f"no part-*.parquet shards under {path!r}")
    labelled_shard_rows(fs, shards, path, check="first")
    return ray.data.read_parquet(shards, filesystem=fs, **read_options)


def _read_numbered(batch: pa.Table, filesystem, column: str):
    """Read task of :func:`read_labelled_numbered`: each listed shard, one table per row group,
    with ``column`` = the shard's offset + the row's index in the shard."""
    import pyarrow.parquet as pq

    for shard, offset, rows in zip(
        batch.column("shard").to_pylist(),
        batch.column("offset").to_pylist(),
        batch.column("rows").to_pylist(),
        strict=True,
    ):
        start = offset
        with filesystem.open_input_file(shard) as f:
            pf = pq.ParquetFile(f)
            for g in range(pf.num_row_groups):
                table = check_table(pf.read_row_group(g))
                ids = np.arange(start, start + table.num_rows, dtype=np.int64)
                start += table.num_rows
                yield table.append_column(column, pa.array(ids))
        if start - offset != rows:
            raise RuntimeError(f"{shard}: read {start - offset} rows, its footer says {rows}")


def read_labelled_numbered(
    path: str,
    *,
    column: str = "pair_id",
    num_cpus: float = 0.25,
    endpoint_url: str | None = None,
):
    """A labelled set as a lazy ``ray.data.Dataset`` whose rows carry a stable index.

    Row ``k`` of shard ``s`` (shards in name order, as :func:`load_labelled` reads them) gets
    ``column = offset[s] + k``, where the offsets come from the shards' Parquet footers, read on
    the driver. The numbering therefore depends only on the files, never on the order in which
    Ray's read tasks finish (Ray Data hands blocks on in completion order unless
    ``preserve_order`` is set), and the shards are read in parallel, one task per shard.

    Args:
        path: local folder or ``s3://bucket/prefix`` of a labelled set.
        column: name of the int64 index column added to the labelled columns.
        num_cpus: CPU budget of each read task (fractional on small machines).
        endpoint_url: S3 endpoint override.

    Raises:
        FileNotFoundError: no shard under ``path``.
        NotALabelledSetError: a shard is not a labelled-set shard.
    """
    import ray.data

    from clerf_ray.data.shard_files import list_shards, resolve

    fs, root = resolve(path, endpoint_url=endpoint_url)
    shards = list_shards(fs, root)
    if not shards:
        raise FileNotFoundError(f"no part-*.parquet shards under {path!r}")
    rows = labelled_shard_rows(fs, shards, path)
    offsets = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
    # One block per shard, made on the driver (no 1-CPU read task, unlike ray.data.range).
    plan = [
        pa.table({"shard": [s], "offset": [int(o)], "rows": [int(n)]})
        for s, o, n in zip(shards, offsets, rows, strict=True)
    ]
    return ray.data.from_arrow(plan).map_batches(
        _read_numbered,
        fn_kwargs={"filesystem": fs, "column": column},
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=num_cpus,
    )
