"""Parquet shards of labelled sets on a local disk or S3, written so that readers never see half
of a run.

Layout of an output folder (local path or ``s3://bucket/prefix``)::

    part-00000.parquet, part-00001.parquet, ...   the rows (schema: clerf_ray.data.schema)
    _report.json                                  what the run saw, wrote and skipped

Guarantees (single writer per output; concurrent writers to one output are not supported):

* A shard is visible whole or not at all. Shards are first written under ``_staging-<run id>/``
  inside the output (readers skip names starting with ``_`` or ``.``: pyarrow datasets, Ray Data
  and :func:`list_shards` all do), then moved to their final names: a rename on a local disk
  (atomic), a copy then delete on S3 (an S3 object appears only when its upload completes).
* Rerunning into the same output neither duplicates nor mixes rows once it finishes: shard names
  are deterministic (``part-00000.parquet`` ...), the new shards replace the old ones of the same
  name, then old shards the new run did not produce are deleted, then ``_report.json`` is replaced
  and the staging folder removed. A run that fails before :meth:`ShardWriter.commit` leaves the
  previous output untouched. While a rerun is committing, a concurrent reader may see old and new
  shards together; do not read an output while it is being rewritten.

Filesystems are pyarrow's: credentials come from the standard AWS environment and config
(``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, instance roles, ...), never from this project; the
endpoint can be overridden with ``AWS_ENDPOINT_URL`` (which pyarrow, boto3 and s3fs all honour) or
the ``endpoint_url`` argument.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from clerf_ray.data.schema import SCHEMA, check_table
from clerf_ray.data.shard_files import (  # noqa: F401  (is_remote, resolve, list_shards: public here too)
    SHARD_NAME,
    SHARD_RE,
    _basename,
    _join,
    is_remote,
    list_shards,
    resolve,
)

REPORT_NAME = "_report.json"
STAGING_PREFIX = "_staging-"
DEFAULT_SHARD_ROWS = 1000


def _staging_dirs(fs: pafs.FileSystem, root: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=False))
    return [
        i.path
        for i in infos
        if i.type == pafs.FileType.Directory and _basename(i.path).startswith(STAGING_PREFIX)
    ]


def _write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as out:
        out.write(data)


def read_report(output: str, *, endpoint_url: str | None = None) -> dict[str, Any]:
    """The ``_report.json`` of an output folder."""
    fs, root = resolve(output, endpoint_url=endpoint_url)
    with fs.open_input_stream(_join(root, REPORT_NAME)) as f:
        return json.loads(f.read().decode("utf-8"))


class ShardWriter:
    """Accumulates labelled rows and writes them as shards of ``shard_rows`` rows.

    Rows may come from any source (dataset readers, renderers): dicts made by
    :func:`clerf_ray.data.schema.make_row`, lists of them, or pyarrow Tables / RecordBatches
    with the schema's columns. Nothing is visible in ``output`` until :meth:`commit` (module
    docstring for the guarantees). Use as a context manager: leaving the block without a commit
    (an exception, or no rows) discards the staged shards.

    Args:
        output: local folder or ``s3://bucket/prefix``.
        shard_rows: rows per shard (the last one may hold fewer).
        endpoint_url: S3 endpoint override (default ``AWS_ENDPOINT_URL``).
        filesystem: a pyarrow filesystem to use instead of resolving ``output``.
    """

    def __init__(
        self,
        output: str,
        *,
        shard_rows: int = DEFAULT_SHARD_ROWS,
        endpoint_url: str | None = None,
        filesystem: pafs.FileSystem | None = None,
    ):
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        self.output = str(output)
        self.shard_rows = int(shard_rows)
        self.fs, self.root = resolve(output, endpoint_url=endpoint_url, filesystem=filesystem)
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.File:
            raise NotADirectoryError(f"output {self.output!r} is a file, expected a folder")
        self.staging = _join(self.root, f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
        self.fs.create_dir(self.staging, recursive=True)
        self._rows: list[dict[str, Any]] = []
        self._tables: list[pa.Table] = []
        self._buffered = 0
        self._staged: list[tuple[str, int]] = []
        self.rows_written = 0
        self._closed = False

    # ------------------------------------------------------------------ writing
    def write(self, rows: Mapping[str, Any] | Iterable[Mapping[str, Any]] | pa.Table) -> None:
        """Add one row (dict), several rows, or a Table / RecordBatch of the labelled schema."""
        if self._closed:
            raise RuntimeError("ShardWriter already committed or aborted")
        if isinstance(rows, pa.RecordBatch):
            rows = pa.Table.from_batches([rows])
        if isinstance(rows, pa.Table):
            self._rows_to_table()
            self._tables.append(check_table(rows))
            self._buffered += rows.num_rows
        else:
            batch = [rows] if isinstance(rows, Mapping) else list(rows)
            self._rows.extend(batch)
            self._buffered += len(batch)
        if self._buffered >= self.shard_rows:
            self._flush(final=False)

    def _rows_to_table(self) -> None:
        if self._rows:
            self._tables.append(pa.Table.from_pylist(self._rows, schema=SCHEMA))
            self._rows = []

    def _flush(self, final: bool) -> None:
        self._rows_to_table()
        if not self._tables:
            return
        table = pa.concat_tables(self._tables)
        start = 0
        while table.num_rows - start >= self.shard_rows or (final and start < table.num_rows):
            part = table.slice(start, self.shard_rows)
            name = SHARD_NAME.format(len(self._staged))
            pq.write_table(part, _join(self.staging, name), filesystem=self.fs)
            self._staged.append((name, part.num_rows))
            self.rows_written += part.num_rows
            start += part.num_rows
        rest = table.slice(start)
        self._tables = [rest] if rest.num_rows else []
        self._buffered = rest.num_rows

    @property
    def shards(self) -> list[tuple[str, int]]:
        """(name, rows) of every shard staged or published so far, in order."""
        return list(self._staged)

    # ------------------------------------------------------------------ finishing
    def commit(self, report: Mapping[str, Any] | None = None) -> list[str]:
        """Publish the staged shards, drop stale ones, write ``_report.json``.

        Args:
            report: JSON-serialisable dict; ``shards`` (names and row counts) and ``rows`` are
                added to it.

        Returns:
            The names of the published shards, in order.

        Raises:
            ValueError: no row was written (the previous output is left as it was).
        """
        if self._closed:
            raise RuntimeError("ShardWriter already committed or aborted")
        self._flush(final=True)
        if not self._staged:
            self.abort()
            raise ValueError(f"no rows to write to {self.output!r}; previous output left as it was")
        names = [name for name, _ in self._staged]
        for name in names:
            self.fs.move(_join(self.staging, name), _join(self.root, name))
        keep = {_join(self.root, n) for n in names}
        for path in list_shards(self.fs, self.root):
            if path not in keep:
                self.fs.delete_file(path)
        full = dict(report or {})
        full["shards"] = [{"name": n, "rows": r} for n, r in self._staged]
        full["rows"] = self.rows_written
        staged_report = _join(self.staging, REPORT_NAME)
        _write_bytes(self.fs, staged_report, json.dumps(full, indent=2).encode("utf-8"))
        self.fs.move(staged_report, _join(self.root, REPORT_NAME))
        # Staging folders of this run and of earlier runs that died before committing.
        for path in _staging_dirs(self.fs, self.root):
            self.fs.delete_dir(path)
        self._closed = True
        return names

    def abort(self) -> None:
        """Discard everything staged; the output keeps its previous content."""
        if self._closed:
            return
        self._closed = True
        self._rows, self._tables, self._buffered = [], [], 0
        try:
            self.fs.delete_dir(self.staging)
        except FileNotFoundError:
            pass

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort()


def write_shards(
    rows: Iterable[Mapping[str, Any]] | pa.Table,
    output: str,
    *,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    report: Mapping[str, Any] | None = None,
    endpoint_url: str | None = None,
) -> list[str]:
    """Write rows (dicts of the labelled schema, or one Table) to ``output`` in one commit.

    Returns:
        The published shard names.
    """
    with ShardWriter(output, shard_rows=shard_rows, endpoint_url=endpoint_url) as writer:
        if isinstance(rows, pa.Table):
            writer.write(rows)
        else:
            for row in rows:
                writer.write(row)
        return writer.commit(report)
