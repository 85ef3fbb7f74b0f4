"""Pair shards: rendered pairs before augmentation, one row per pair, in the shard layout of
:mod:`clerf_ray.data.shards` (written by ``clerf_ray.data.pairs.write_pair_shards``, read back
with ``data.source=shards``). Format, writer, reader and checks.

Columns (:data:`PAIR_SCHEMA`):

* pair_id (int64): the pair's index; seeds its augmentation when read back.
* anchor, positive (binary): PNG-encoded (H, W, 3) RGB images, before augmentation.
* R (fixed_size_list<float32>[9]): the pair's label, row-major, dataset convention.
* identity_a, identity_b (int64): identity seeds (-1 for a real anchor).
* source (string): "render:<renderer>" or the labelled set's name.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa

from clerf_ray.data.shards import ShardWriter
from clerf_ray.images import decode_images

# Rendered pairs before augmentation, one row per pair, written by ``write_pair_shards``
# (``jobs/render.py``) in the shard layout of ``clerf_ray.data.shards``, read back with
# ``source="shards"``:
# * pair_id (int64): the pair's index; seeds its augmentation when read back.
# * anchor, positive (binary): PNG-encoded (H, W, 3) RGB images, before augmentation.
# * R (fixed_size_list<float32>[9]): the pair's label, row-major, dataset convention.
# * identity_a, identity_b (int64): identity seeds (-1 for a real anchor).
# * source (string): "render:<renderer>" or the labelled set's name.
PAIR_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.int64(), nullable=False),
        pa.field("anchor", pa.binary(), nullable=False),
        pa.field("positive", pa.binary(), nullable=False),
        pa.field("R", pa.list_(pa.float32(), 9), nullable=False),
        pa.field("identity_a", pa.int64(), nullable=False),
        pa.field("identity_b", pa.int64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ],
    metadata={"clerf_ray.schema": "pairs/1"},
)


def encode_png(images: np.ndarray) -> list[bytes]:
    from PIL import Image

    out = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def to_shard_rows(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    n = len(batch["R"])
    missing = np.full(n, -1, dtype=np.int64)
    return {
        "pair_id": batch["pair_id"].astype(np.int64),
        "anchor": np.asarray(encode_png(batch["anchor"]), dtype=object),
        "positive": np.asarray(encode_png(batch["positive"]), dtype=object),
        "R": np.asarray(batch["R"], dtype=np.float32).reshape(n, 9),
        "identity_a": np.asarray(batch.get("identity_a", missing), dtype=np.int64),
        "identity_b": np.asarray(batch.get("identity_b", missing), dtype=np.int64),
        "source": np.asarray(batch["source"]).astype(str),
    }


def decode_shards(batch) -> dict[str, np.ndarray]:
    n = len(batch["R"])
    return {
        "pair_id": batch["pair_id"].astype(np.int64),
        "anchor": decode_images(batch["anchor"]),
        "positive": decode_images(batch["positive"]),
        "R": np.asarray(np.stack(list(batch["R"])), dtype=np.float64).reshape(n, 3, 3),
        "identity_a": batch["identity_a"].astype(np.int64),
        "identity_b": batch["identity_b"].astype(np.int64),
        "source": np.asarray(batch["source"]).astype(str),
    }


def pair_table(batch: dict[str, Any]):
    """A numpy batch of :func:`render_pair_dataset` as a ``pyarrow.Table`` of :data:`PAIR_SCHEMA`."""
    R = np.asarray(np.stack(list(batch["R"])), dtype=np.float32).reshape(-1, 9)
    columns = {
        "pair_id": pa.array(np.asarray(batch["pair_id"], dtype=np.int64)),
        "anchor": pa.array([bytes(b) for b in batch["anchor"]], pa.binary()),
        "positive": pa.array([bytes(b) for b in batch["positive"]], pa.binary()),
        "R": pa.FixedSizeListArray.from_arrays(pa.array(R.ravel(), pa.float32()), 9),
        "identity_a": pa.array(np.asarray(batch["identity_a"], dtype=np.int64)),
        "identity_b": pa.array(np.asarray(batch["identity_b"], dtype=np.int64)),
        "source": pa.array([str(x) for x in batch["source"]], pa.string()),
    }
    return pa.table(columns, schema=PAIR_SCHEMA)


class PairShardWriter(ShardWriter):
    """:class:`~clerf_ray.data.shards.ShardWriter` for pair tables (:data:`PAIR_SCHEMA`): the same
    staging, atomic publication and stale-shard cleanup, another schema. Accepts Tables and
    RecordBatches only."""

    def write(self, rows) -> None:
        if self._closed:
            raise RuntimeError("ShardWriter already committed or aborted")
        table = pa.Table.from_batches([rows]) if isinstance(rows, pa.RecordBatch) else rows
        missing = [c for c in PAIR_SCHEMA.names if c not in table.column_names]
        if missing:
            raise ValueError(f"pair table lacks columns {missing}; schema is {PAIR_SCHEMA.names}")
        self._tables.append(table.select(PAIR_SCHEMA.names).cast(PAIR_SCHEMA))
        self._buffered += table.num_rows
        if self._buffered >= self.shard_rows:
            self._flush(final=False)


def read_pair_shards(path: str, *, endpoint_url: str | None = None, **read_options):
    """Rendered pair shards (local folder or ``s3://``) as a lazy ``ray.data.Dataset`` of
    :data:`PAIR_SCHEMA` rows. The filesystem is resolved on the driver, as
    :func:`clerf_ray.data.schema.read_labelled` does."""
    import ray.data

    fs, shards = pair_shard_files(path, endpoint_url=endpoint_url)
    return ray.data.read_parquet(shards, filesystem=fs, **read_options)


def pair_shard_files(path: str, endpoint_url: str | None = None):
    """(filesystem, shard paths) of a pair-shard set, its first shard's schema checked."""
    from clerf_ray.data.shards import list_shards, resolve

    fs, root = resolve(path, endpoint_url=endpoint_url)
    shards = list_shards(fs, root)
    if not shards:
        raise FileNotFoundError(f"data.shards_path: no part-*.parquet shards under {path!r}")
    check_pair_shard(fs, shards[0], path)
    return fs, shards


def check_pair_shard(fs, shard: str, path: str) -> None:
    import pyarrow.parquet as pq

    with fs.open_input_file(shard) as f:
        schema = pq.read_metadata(f).schema.to_arrow_schema()
    missing = [c for c in PAIR_SCHEMA.names if c not in schema.names]
    if missing:
        what = (
            "a labelled set (prepare_data.py or render.py --labelled): use it with "
            "data.source=real_anchor, data.poses or head.labelled_path"
            if "image" in schema.names
            else f"columns {schema.names}"
        )
        raise ValueError(
            f"data.shards_path: {path!r} holds no pair shards ({shard.rsplit('/', 1)[-1]} lacks "
            f"{missing}); it is {what}"
        )


def pair_shard_rows(path: str) -> int:
    """Rows of the pair-shard set at ``path``, from the Parquet footers (no row is read)."""
    import pyarrow.parquet as pq

    fs, shards = pair_shard_files(path)
    rows = 0
    for shard in shards:
        with fs.open_input_file(shard) as f:
            rows += pq.read_metadata(f).num_rows
    return rows
