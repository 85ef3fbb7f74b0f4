"""Saving and loading models: safetensors weights plus a JSON config, read back without
unpickling anything, on local paths or fsspec URLs (``s3://``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from clerf_ray.models.encoder import Encoder, EncoderConfig
from clerf_ray.models.head import HeadConfig, PoseHead
from clerf_ray.models.pose_model import PoseModel
from clerf_ray.models.storage import exists, is_safetensors, open_file

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_FORMAT = "clerf_ray.model/1"
# Heads saved before `input` and `standardize` were written to config.json read the L2-normalised
# embedding without standardisation: the file format's meaning of a missing key, not a default.
_HEAD_FORMAT_1 = {"input": "embedding", "standardize": False}


@dataclass
class PoseModelConfig:
    """Configuration of a :class:`PoseModel`: its encoder, its head, whether it is frozen."""

    encoder: EncoderConfig
    head: HeadConfig
    freeze_encoder: bool
    views: int


def _config_of(model: nn.Module):
    if isinstance(model, PoseModel):
        return PoseModelConfig(
            model.encoder.config, model.head.config, model.freeze_encoder, model.views
        )
    if isinstance(model, Encoder | PoseHead):
        return model.config
    raise TypeError(f"save_model: expected Encoder, PoseHead or PoseModel, got {type(model)}")


def _config_to_json(cfg) -> dict[str, Any]:
    if isinstance(cfg, EncoderConfig):
        return {"kind": "encoder", "encoder": dataclasses.asdict(cfg)}
    if isinstance(cfg, HeadConfig):
        return {"kind": "head", "head": dataclasses.asdict(cfg)}
    if isinstance(cfg, PoseModelConfig):
        return {
            "kind": "pose_model",
            "encoder": dataclasses.asdict(cfg.encoder),
            "head": dataclasses.asdict(cfg.head),
            "freeze_encoder": cfg.freeze_encoder,
            "views": cfg.views,
        }
    raise TypeError(
        f"save_model: cfg must be EncoderConfig, HeadConfig or PoseModelConfig: {cfg!r}"
    )


def _join(path: str, name: str) -> str:
    return path.rstrip("/") + "/" + name


def save_model(model: nn.Module, cfg, path: str) -> None:
    """Write ``model`` to the directory ``path`` (local or fsspec URL such as ``s3://``).

    Files: ``model.safetensors`` (the state dict) and ``config.json`` (``kind`` plus the config
    fields). No pickle is written.

    Args:
        model: an :class:`Encoder`, :class:`PoseHead` or :class:`PoseModel`.
        cfg: its config (:class:`EncoderConfig`, :class:`HeadConfig`, :class:`PoseModelConfig`),
            or None to use the model's own. A config that does not describe the model is an
            error.
        path: destination directory; created if needed.
    """
    import fsspec
    from safetensors.torch import save as st_save

    model = getattr(model, "module", model)  # unwrap DDP
    own = _config_of(model)
    if cfg is None:
        cfg = own
    elif type(cfg) is not type(own):
        raise TypeError(
            f"save_model: cfg for {type(model).__name__} must be {type(own).__name__} or None, "
            f"got {type(cfg).__name__}"
        )
    elif cfg != own:
        raise ValueError(f"save_model: cfg {cfg!r} does not describe the model ({own!r})")
    meta = {"format": _FORMAT, **_config_to_json(cfg)}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fs, root = fsspec.core.url_to_fs(path)
    fs.makedirs(root, exist_ok=True)
    with open_file(_join(path, WEIGHTS_FILE), "wb") as f:
        f.write(st_save(state, metadata={"format": _FORMAT}))
    with open_file(_join(path, CONFIG_FILE), "w") as f:
        f.write(json.dumps(meta, indent=2))


def load_model(path: str, map_location: str | torch.device = "cpu") -> nn.Module:
    """Read a model written by :func:`save_model`; returned in eval mode on ``map_location``.

    Only JSON and safetensors are parsed: nothing is unpickled. The encoder's ``pretrained``
    option is kept in its config for the record but not re-loaded (the saved weights win).

    Raises:
        FileNotFoundError: ``config.json`` or ``model.safetensors`` is missing.
        ValueError: the files are malformed or the weights do not match the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    cfg_path, w_path = _join(path, CONFIG_FILE), _join(path, WEIGHTS_FILE)
    for p in (cfg_path, w_path):
        if not exists(p):
            raise FileNotFoundError(f"load_model: {p!r} not found")
    with open_file(cfg_path, "r") as f:
        try:
            meta = json.loads(f.read())
        except json.JSONDecodeError as e:
            raise ValueError(f"load_model: {cfg_path!r} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"load_model: {cfg_path!r} is not a {_FORMAT} config")
    kind = meta.get("kind")

    def enc():
        c = EncoderConfig(**meta["encoder"])
        return Encoder(dataclasses.replace(c, pretrained=None)), c

    def head():
        return PoseHead(HeadConfig(**{**_HEAD_FORMAT_1, **meta["head"]}))

    try:
        if kind == "encoder":
            model, c = enc()
            model.config = c
        elif kind == "head":
            model = head()
        elif kind == "pose_model":
            encoder, c = enc()
            encoder.config = c
            model = PoseModel(
                encoder,
                head(),
                bool(meta["freeze_encoder"]),
                # Models saved before test-time views existed predict from the image alone.
                views=int(meta.get("views", 1)),
            )
        else:
            raise ValueError(f"unknown kind {kind!r}")
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"load_model: bad config in {cfg_path!r}: {e}") from None
    with open_file(w_path, "rb") as f:
        data = f.read()
    if not is_safetensors(data):
        raise ValueError(f"load_model: {w_path!r} is not a safetensors file (refusing to unpickle)")
    try:
        state = st_load(data)
    except SafetensorError as e:
        raise ValueError(f"load_model: {w_path!r} is not a valid safetensors file: {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"load_model: weights in {w_path!r} do not match its config: {e}"
        ) from None
    return model.to(map_location).eval()
