"""The pose head: MLP -> 6 numbers -> Gram-Schmidt -> rotation matrix, on a frozen encoder.

Its settings come from the config's ``model`` section (:meth:`HeadConfig.from_section`:
``head_hidden``, ``head_input``, ``head_standardize``) and the width of what it reads from the
encoder (:func:`head_input_dim`); nothing here holds a default of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from clerf_ray import geometry
from clerf_ray.models.layers import check_int, mlp

HEAD_INPUTS = ("embedding", "features", "feature_map")


@dataclass
class HeadConfig:
    """Pose head settings (every field required; :meth:`from_section` builds it from the config).

    Attributes:
        in_dim: input size: the encoder's ``embedding_dim`` for ``input="embedding"``, its
            ``num_features`` for ``input="features"``, its ``feature_map_dim`` for
            ``input="feature_map"`` (see :func:`head_input_dim`).
        hidden: widths of the hidden layers of the MLP (ReLU between layers).
        input: what of the encoder the head reads: ``"embedding"`` (the L2-normalised
            projection that Circle Loss trains) or ``"features"`` (the pooled backbone features
            under the projection, which keep more of the pose: the projection is trained to be
            invariant to what the loss ignores) or ``"feature_map"`` (the last feature map
            before global pooling, on a 2 x 2 grid: ``Encoder.feature_map``; it keeps where in
            the image the features lie).
        standardize: standardise each input dimension with the mean and standard deviation of
            the head's training inputs (buffers ``input_mean`` / ``input_std``, saved with the
            weights) before the MLP.
    """

    in_dim: int
    hidden: tuple[int, ...]
    input: str
    standardize: bool

    def __post_init__(self):
        check_int("in_dim", self.in_dim, 1)
        self.hidden = tuple(self.hidden)
        for i, h in enumerate(self.hidden):
            check_int(f"hidden[{i}]", h, 1)
        if self.input not in HEAD_INPUTS:
            raise ValueError(f"input must be one of {HEAD_INPUTS}, got {self.input!r}")
        if not isinstance(self.standardize, bool):
            raise ValueError(f"standardize must be True or False, got {self.standardize!r}")

    @classmethod
    def from_section(cls, model: Any, in_dim: int, **changes) -> HeadConfig:
        """From a ``clerf_ray.config.ModelSection`` and the input width, with ``changes``."""
        values = dict(
            in_dim=in_dim,
            hidden=tuple(model.head_hidden),
            input=model.head_input,
            standardize=model.head_standardize,
        )
        values.update(changes)
        return cls(**values)


# The head's 6D output is offset by the identity's 6D vector, so an untrained head (outputs near
# zero) starts at well-conditioned Gram-Schmidt inputs instead of near-zero columns.
_IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class PoseHead(nn.Module):
    """MLP -> 6 numbers -> Gram-Schmidt (``geometry.rotation_6d_to_matrix``) -> (B, 3, 3).

    The output is a label in the dataset convention of ``clerf_ray.geometry``
    (``R = Rz(roll) Ry(yaw) Rx(pitch)``).

    Args:
        config: the :class:`HeadConfig`. With ``standardize`` the inputs are shifted by
            ``input_mean`` and divided by ``input_std`` (persistent buffers, identity until
            :meth:`set_input_stats` is called) before the MLP; ``input`` says which output of
            the encoder the head reads (``clerf_ray.models.PoseModel`` feeds it accordingly).
    """

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        in_dim = config.in_dim
        self.mlp = mlp([in_dim, *config.hidden, 6])
        self.register_buffer("offset", torch.tensor(_IDENTITY_6D), persistent=False)
        if config.standardize:
            self.register_buffer("input_mean", torch.zeros(in_dim))
            self.register_buffer("input_std", torch.ones(in_dim))

    @torch.no_grad()
    def set_input_stats(self, mean, std, min_std: float = 1e-6) -> None:
        """Set the standardisation of the inputs (per dimension; ``std`` floored at
        ``min_std`` so that a constant input dimension stays finite)."""
        if not self.config.standardize:
            raise ValueError("set_input_stats: this head was built with standardize=False")
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float32)).reshape(-1)
        std = torch.as_tensor(np.asarray(std, dtype=np.float32)).reshape(-1)
        if mean.shape != self.input_mean.shape or std.shape != self.input_std.shape:
            raise ValueError(
                f"set_input_stats: expected {self.config.in_dim} values each, got "
                f"{tuple(mean.shape)} and {tuple(std.shape)}"
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("set_input_stats: mean and std must be finite")
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp_min(min_std))

    def forward_6d(self, z: torch.Tensor) -> torch.Tensor:
        """The 6D representation (B, 6): first then second column before Gram-Schmidt."""
        if self.config.standardize:
            z = (z - self.input_mean) / self.input_std
        return self.mlp(z) + self.offset

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return geometry.rotation_6d_to_matrix(self.forward_6d(z))


def input_stats(batches) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation (population) of row vectors arriving in
    batches (iterable of (n, d) arrays), accumulated in float64 over shifted values so that
    one pass is numerically safe. Written here because the inputs are vector columns of a Ray
    dataset, whose built-in aggregations (``Dataset.mean``/``std``) reduce scalar columns."""
    n, shift, s1, s2 = 0, None, None, None
    for b in batches:
        b = np.asarray(b, dtype=np.float64)
        if len(b) == 0:
            continue
        b = b.reshape(len(b), -1)
        if shift is None:
            shift, s1, s2 = b[0].copy(), np.zeros(b.shape[1]), np.zeros(b.shape[1])
        d = b - shift
        n, s1, s2 = n + len(b), s1 + d.sum(0), s2 + (d * d).sum(0)
    if n == 0:
        raise ValueError("input_stats: no rows")
    mean = s1 / n
    var = np.maximum(s2 / n - mean * mean, 0.0)
    return (shift + mean).astype(np.float32), np.sqrt(var).astype(np.float32)


# The encoder attribute that gives the width of each head input.
_INPUT_WIDTH = {
    "embedding": "embedding_dim",
    "features": "num_features",
    "feature_map": "feature_map_dim",
}


def _check_input(input: str) -> None:
    if input not in HEAD_INPUTS:
        raise ValueError(f"head input must be one of {HEAD_INPUTS}, got {input!r}")


def head_input_dim(encoder, input: str) -> int:
    """Width of what a head with ``input`` reads from ``encoder``."""
    return getattr(encoder, head_input_name(input))


def head_input_name(input: str) -> str:
    """The encoder attribute that :func:`head_input_dim` reads, for error messages."""
    _check_input(input)
    return _INPUT_WIDTH[input]


def read_head_input(encoder, x: torch.Tensor, input: str) -> torch.Tensor:
    """What a head with ``input`` reads from ``encoder`` for preprocessed images ``x``: the
    L2-normalised embedding, the pooled features, or the feature map on its grid."""
    _check_input(input)
    if input == "feature_map":
        return encoder.feature_map(x)
    return encoder.features(x) if input == "features" else encoder(x)


def _head_config(cfg, kwargs: dict[str, Any], in_dim: int | None) -> HeadConfig:
    names = [f.name for f in dataclasses.fields(HeadConfig)]
    unknown = sorted(set(kwargs) - set(names))
    if isinstance(cfg, Mapping):
        unknown += sorted(set(cfg) - set(names))
    if unknown:
        raise TypeError(f"unknown HeadConfig field(s) {unknown}; known: {names}")
    if isinstance(cfg, HeadConfig):
        return dataclasses.replace(cfg, **kwargs, **({} if in_dim is None else {"in_dim": in_dim}))
    if cfg is None or isinstance(cfg, Mapping):
        from clerf_ray.config import ModelSection

        section, values = ModelSection(), {**dict(cfg or {}), **kwargs}
    else:
        section, values = cfg, dict(kwargs)
    if in_dim is not None:
        values["in_dim"] = in_dim
    if "in_dim" not in values:
        raise TypeError("create_head: in_dim is required (or use create_head_for(encoder, ...))")
    return HeadConfig.from_section(section, **values)


def create_head(cfg: HeadConfig | Mapping | Any | None = None, **kwargs) -> PoseHead:
    """A :class:`PoseHead` from a :class:`HeadConfig`, a ``ModelSection``, a mapping of
    :class:`HeadConfig` fields over the default config's ``model`` section, or None (that
    section); keywords override fields. ``in_dim`` is required unless ``cfg`` is a
    :class:`HeadConfig`."""
    return PoseHead(_head_config(cfg, kwargs, None))


def create_head_for(encoder, cfg: HeadConfig | Mapping | Any | None = None, **kwargs):
    """A :class:`PoseHead` for ``encoder``: as :func:`create_head`, with ``in_dim`` set to the
    width of what the head reads from this encoder (its features or its embedding)."""
    probe = _head_config(cfg, kwargs, in_dim=1)
    return PoseHead(_head_config(cfg, kwargs, in_dim=head_input_dim(encoder, probe.input)))
