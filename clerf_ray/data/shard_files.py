"""Where shards live: the filesystem of a local or ``s3://`` path, and the ``part-NNNNN.parquet``
shards under it. Used by every shard set (labelled sets, pair shards) and their schemas."""

from __future__ import annotations

import os
import re

import pyarrow.fs as pafs

SHARD_NAME = "part-{:05d}.parquet"
SHARD_RE = re.compile(r"^part-\d{5,}\.parquet$")


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URI (``s3://...``) rather than a local path."""
    return "://" in str(path) and not str(path).startswith("file://")


def resolve(
    path: str, *, endpoint_url: str | None = None, filesystem: pafs.FileSystem | None = None
) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``path`` and the path inside it (no scheme, no trailing slash).

    Args:
        path: a local path, ``file://...`` or ``s3://bucket/prefix`` (any URI pyarrow knows).
        endpoint_url: S3 endpoint override, e.g. ``http://127.0.0.1:9000``; default the
            ``AWS_ENDPOINT_URL`` environment variable, else AWS.
        filesystem: use this filesystem as given (``path`` is then a path inside it).
    """
    path = str(path)
    if filesystem is not None:
        return filesystem, path.rstrip("/")
    if path.startswith("s3://"):
        if endpoint_url:
            return pafs.S3FileSystem(endpoint_override=endpoint_url), path[5:].rstrip("/")
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs, inner.rstrip("/")
    if is_remote(path) or path.startswith("file://"):
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs, inner.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _join(root: str, name: str) -> str:
    return f"{root}/{name}" if root else name


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def list_shards(fs: pafs.FileSystem, root: str) -> list[str]:
    """Sorted paths of the ``part-NNNNN.parquet`` shards directly under ``root`` (none if absent)."""
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=False))
    return sorted(
        i.path for i in infos if i.type == pafs.FileType.File and SHARD_RE.match(_basename(i.path))
    )
