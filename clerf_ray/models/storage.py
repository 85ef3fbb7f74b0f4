"""Reading weight files from local paths or fsspec URLs (``s3://``) without unpickling objects:
safetensors, or torch files loaded with ``weights_only=True``."""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from typing import Any

import torch


def open_file(path: str, mode: str):
    import fsspec

    return fsspec.open(path, mode)


def exists(path: str) -> bool:
    import fsspec

    fs, p = fsspec.core.url_to_fs(path)
    return fs.exists(p)


def read_state_dict(path: str, option: str) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a torch file loaded with ``weights_only=True``.

    Raises FileNotFoundError / ValueError whose message names ``option`` and the path.
    """
    if not exists(path):
        raise FileNotFoundError(f"{option}: weights file {path!r} not found")
    with open_file(path, "rb") as f:
        data = f.read()
    if is_safetensors(data):
        from safetensors import SafetensorError
        from safetensors.torch import load as st_load

        try:
            return st_load(data)
        except SafetensorError as e:
            raise ValueError(f"{option}: {path!r} is not a valid safetensors file: {e}") from None
    try:
        # weights_only refuses arbitrary pickled objects: only tensors and plain containers load.
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(
            f"{option}: {path!r} is neither a safetensors file nor a weights-only torch "
            f"state dict (it may hold pickled objects, which are not loaded): {e}"
        ) from None
    return _unwrap_state_dict(state, path, option)


def is_safetensors(data: bytes) -> bool:
    # Layout: little-endian u64 header length, then a JSON header starting with '{'.
    if len(data) < 10:
        return False
    n = int.from_bytes(data[:8], "little")
    return 2 <= n <= len(data) - 8 and data[8:9] == b"{"


def _unwrap_state_dict(state: Any, path: str, option: str) -> dict[str, torch.Tensor]:
    # Training checkpoints often nest the weights one level down.
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = state.get(key)
            if isinstance(inner, Mapping) and all(isinstance(k, str) for k in inner):
                state = inner
                break
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"{option}: {path!r} does not hold a state dict of tensors")
    return dict(state)
