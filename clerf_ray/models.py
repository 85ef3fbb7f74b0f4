"""Encoder (timm backbone + projection head) and pose head (MLP -> 6D -> rotation matrix).

CLERF trains the :class:`Encoder` contrastively (``clerf_ray.losses.ContrastivePoseLoss``), then
freezes it and trains a :class:`PoseHead` on its embedding with the geodesic loss. Both are built
by factories from small dataclass configs (:func:`create_encoder`, :func:`create_head`) and are
stored by :func:`save_model` as safetensors weights plus a JSON config, which :func:`load_model`
reads back without unpickling anything.

    enc = create_encoder(backbone="resnet10t", embedding_dim=128, image_size=64)
    x = enc.preprocess(images_uint8_nhwc)          # float NCHW, normalised, on enc's device
    z = enc(x)                                     # (B, 128), unit L2 norm
    model = PoseModel(enc, create_head(in_dim=128))
    R = model(x)                                   # (B, 3, 3) labels (geometry.py convention)

The paper's setting is configuration only:
``create_encoder(backbone="swin_tiny_patch4_window7_224", image_size=224)``.

Nothing here calls ``.cuda()``: modules follow ``.to(device)`` and :meth:`Encoder.preprocess`
puts its output on the encoder's device.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from clerf_ray import geometry

# ImageNet statistics: the fallback when a timm model carries no pretrained_cfg mean/std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_FORMAT = "clerf_ray.model/1"


# --------------------------------------------------------------------------- configs


@dataclass
class EncoderConfig:
    """Encoder settings.

    Attributes:
        backbone: timm model name, created with ``num_classes=0`` (pooled features).
        embedding_dim: size D of the L2-normalised embedding.
        projection_hidden: hidden width of the projection MLP; 0 makes the projection one linear
            layer.
        pretrained: backbone weights: None (random init, no download), a local path or an
            ``s3://`` (any fsspec) URL of a safetensors file or a weights-only torch state dict,
            or ``"hub"`` to let timm download its default weights (needs internet).
        image_size: square input side in pixels; :meth:`Encoder.preprocess` resizes to it, and
            backbones with a fixed input size (Swin, ViT) are built for it.
    """

    backbone: str = "resnet10t"
    embedding_dim: int = 128
    projection_hidden: int = 512
    pretrained: str | None = None
    image_size: int = 64

    def __post_init__(self):
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(f"backbone must be a timm model name, got {self.backbone!r}")
        _check_int("embedding_dim", self.embedding_dim, 1)
        _check_int("projection_hidden", self.projection_hidden, 0)
        _check_int("image_size", self.image_size, 8)
        if self.pretrained is not None and not isinstance(self.pretrained, str):
            raise ValueError(f"pretrained must be None, 'hub' or a path, got {self.pretrained!r}")


HEAD_INPUTS = ("embedding", "features")


@dataclass
class HeadConfig:
    """Pose head settings.

    Attributes:
        in_dim: input size: the encoder's ``embedding_dim`` for ``input="embedding"``, its
            ``num_features`` for ``input="features"`` (see :func:`head_input_dim`).
        hidden: widths of the hidden layers of the MLP (ReLU between layers).
        input: what of the encoder the head reads: ``"embedding"`` (the L2-normalised
            projection that Circle Loss trains) or ``"features"`` (the pooled backbone features
            under the projection, which keep more of the pose: the projection is trained to be
            invariant to what the loss ignores).
        standardize: standardise each input dimension with the mean and standard deviation of
            the head's training inputs (buffers ``input_mean`` / ``input_std``, saved with the
            weights) before the MLP.
    """

    in_dim: int = 128
    hidden: tuple[int, ...] = (256, 256)
    input: str = "embedding"
    standardize: bool = False

    def __post_init__(self):
        _check_int("in_dim", self.in_dim, 1)
        self.hidden = tuple(self.hidden)
        for i, h in enumerate(self.hidden):
            _check_int(f"hidden[{i}]", h, 1)
        if self.input not in HEAD_INPUTS:
            raise ValueError(f"input must be one of {HEAD_INPUTS}, got {self.input!r}")
        if not isinstance(self.standardize, bool):
            raise ValueError(f"standardize must be True or False, got {self.standardize!r}")


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


# Attribute names of other config objects (e.g. clerf_ray.config.ModelSection) that mean a field
# of ours: the head's input is the encoder's embedding, its hidden widths are `head_hidden`.
_ALIASES = {
    HeadConfig: {
        "in_dim": "embedding_dim",
        "hidden": "head_hidden",
        "input": "head_input",
        "standardize": "head_standardize",
    }
}


def _resolve(kind: type, cfg: Any, kwargs: dict[str, Any]):
    """Build ``kind`` from a config of that type, a mapping, any object with matching attributes,
    or None, then apply keyword overrides. Unknown mapping keys and keywords are errors."""
    names = [f.name for f in dataclasses.fields(kind)]
    values: dict[str, Any] = {}
    if cfg is None:
        pass
    elif isinstance(cfg, kind):
        values = dataclasses.asdict(cfg)
    elif isinstance(cfg, Mapping):
        unknown = sorted(set(cfg) - set(names))
        if unknown:
            raise TypeError(f"unknown {kind.__name__} field(s) {unknown}; known: {names}")
        values = dict(cfg)
    else:
        # A foreign config (pydantic section, namespace): take the fields it has.
        aliases = _ALIASES.get(kind, {})
        for name in names:
            if hasattr(cfg, name):
                values[name] = getattr(cfg, name)
            elif name in aliases and hasattr(cfg, aliases[name]):
                values[name] = getattr(cfg, aliases[name])
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise TypeError(f"unknown {kind.__name__} field(s) {unknown}; known: {names}")
    values.update(kwargs)
    return kind(**values)


# --------------------------------------------------------------------------- weights I/O


def _open(path: str, mode: str):
    import fsspec

    return fsspec.open(path, mode)


def _exists(path: str) -> bool:
    import fsspec

    fs, p = fsspec.core.url_to_fs(path)
    return fs.exists(p)


def _read_state_dict(path: str, option: str) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a torch file loaded with ``weights_only=True``.

    Raises FileNotFoundError / ValueError whose message names ``option`` and the path.
    """
    if not _exists(path):
        raise FileNotFoundError(f"{option}: weights file {path!r} not found")
    with _open(path, "rb") as f:
        data = f.read()
    if _is_safetensors(data):
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


def _is_safetensors(data: bytes) -> bool:
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


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_backbone_weights(backbone: nn.Module, path: str, option: str = "pretrained") -> None:
    """Load backbone weights from a local or fsspec path, strictly.

    Accepted: a bare timm state dict, one nested under ``state_dict``/``model``, with a
    ``module.`` (DDP) prefix, or the weights of a whole :class:`Encoder` (its ``backbone.``
    entries are used, e.g. ``.../model.safetensors`` written by :func:`save_model`). Classifier weights that the pooled
    backbone (``num_classes=0``) lacks are dropped. Any other missing or unexpected key, or a shape
    mismatch, is an error naming ``option``.
    """
    state = _strip_prefix(_read_state_dict(path, option), "module.")
    own = backbone.state_dict()
    if not set(state) <= set(own) and any(k.startswith("backbone.") for k in state):
        # A whole Encoder (save_model's model.safetensors): take its backbone part.
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    classifier = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    state = {
        k: v
        for k, v in state.items()
        if k in own or not any(k == c or k.startswith(c + ".") for c in classifier)
    }
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{what} keys {keys[:5]}{more}")
        name = getattr(backbone, "default_cfg", {}).get("architecture", type(backbone).__name__)
        raise ValueError(
            f"{option}: weights in {path!r} do not match backbone {name!r}: " + "; ".join(parts)
        )
    backbone.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- modules


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _create_backbone(name: str, image_size: int, pretrained: bool) -> nn.Module:
    kwargs = dict(pretrained=pretrained, num_classes=0)
    try:
        # Transformers with a fixed input size (Swin, ViT) must be built for the input size.
        return timm.create_model(name, img_size=image_size, **kwargs)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ValueError(f"backbone: unknown timm model {name!r}") from None
        raise
    return timm.create_model(name, **kwargs)


class Encoder(nn.Module):
    """timm backbone, projection MLP, L2-normalised embedding.

    Input: float images (B, 3, H, W), RGB scaled to [0, 1] then normalised per channel with
    :attr:`mean` and :attr:`std` (the backbone's pretrained_cfg, else ImageNet's); use
    :meth:`preprocess` to get them from uint8 images. Output: (B, embedding_dim), unit L2 norm.

    Args:
        backbone, embedding_dim, projection_hidden, pretrained, image_size: see
            :class:`EncoderConfig`.
    """

    def __init__(
        self,
        backbone: str = "resnet10t",
        embedding_dim: int = 128,
        projection_hidden: int = 512,
        pretrained: str | None = None,
        image_size: int = 64,
    ):
        super().__init__()
        self.config = EncoderConfig(
            backbone=backbone,
            embedding_dim=embedding_dim,
            projection_hidden=projection_hidden,
            pretrained=pretrained,
            image_size=image_size,
        )
        hub = pretrained == "hub"
        try:
            self.backbone = _create_backbone(backbone, image_size, pretrained=hub)
        except (OSError, ConnectionError) as e:
            if hub:
                raise RuntimeError(
                    f"pretrained='hub': timm could not download weights for {backbone!r} "
                    f"(offline?): {e}. Use a local or s3:// weights file instead."
                ) from e
            raise
        if pretrained is not None and not hub:
            load_backbone_weights(self.backbone, pretrained, option=f"pretrained={pretrained!r}")
        # Pooled output width: timm's head_hidden_size where a model has a pre-logits layer
        # (MobileNetV3, LCNet: wider than num_features), else num_features.
        self.num_features = int(
            getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        )
        hidden = [projection_hidden] if projection_hidden > 0 else []
        self.projection = _mlp([self.num_features, *hidden, embedding_dim])
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        mean = cfg.get("mean") or IMAGENET_MEAN
        std = cfg.get("std") or IMAGENET_STD
        # Not persistent: they follow from the backbone name, so saved weights stay pure weights.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB images (B, H, W, 3) or (H, W, 3) -> normalised float (B, 3, S, S).

        Resized (bilinear, antialiased) to ``image_size`` S when H or W differ from it; returned
        on the encoder's device as float32.
        """
        if isinstance(images, np.ndarray):
            images = np.ascontiguousarray(images)
            # Ray hands out read-only arrays; torch wants writable memory behind a tensor.
            x = torch.from_numpy(images if images.flags.writeable else images.copy())
        else:
            x = images
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"images must be a numpy array or torch tensor, got {type(images)}")
        if x.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (0-255), got dtype {x.dtype}")
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"images must be (B, H, W, 3) or (H, W, 3), got {tuple(x.shape)}")
        x = x.to(self.mean.device).permute(0, 3, 1, 2).float().div_(255.0)
        s = self.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (B, num_features), before projection and normalisation."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Embedding (B, D) of unit L2 norm; with ``return_features`` also the features."""
        f = self.features(x)
        z = F.normalize(self.projection(f), dim=-1)
        return (z, f) if return_features else z


# The head's 6D output is offset by the identity's 6D vector, so an untrained head (outputs near
# zero) starts at well-conditioned Gram-Schmidt inputs instead of near-zero columns.
_IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class PoseHead(nn.Module):
    """MLP -> 6 numbers -> Gram-Schmidt (``geometry.rotation_6d_to_matrix``) -> (B, 3, 3).

    The output is a label in the dataset convention of ``clerf_ray.geometry``
    (``R = Rz(roll) Ry(yaw) Rx(pitch)``).

    Args:
        in_dim: input size (see :class:`HeadConfig`).
        hidden: hidden layer widths.
        input: ``"embedding"`` or ``"features"``: which output of the encoder the head reads
            (:class:`PoseModel` feeds it accordingly).
        standardize: subtract ``input_mean`` and divide by ``input_std`` (persistent buffers,
            identity until :meth:`set_input_stats` is called) before the MLP.
    """

    def __init__(
        self,
        in_dim: int = 128,
        hidden: Sequence[int] = (256, 256),
        input: str = "embedding",
        standardize: bool = False,
    ):
        super().__init__()
        self.config = HeadConfig(
            in_dim=in_dim, hidden=tuple(hidden), input=input, standardize=standardize
        )
        self.mlp = _mlp([in_dim, *self.config.hidden, 6])
        self.register_buffer("offset", torch.tensor(_IDENTITY_6D), persistent=False)
        if standardize:
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


def head_input_dim(encoder: Encoder, input: str) -> int:
    """Width of what a head with ``input`` reads from ``encoder``."""
    if input not in HEAD_INPUTS:
        raise ValueError(f"head input must be one of {HEAD_INPUTS}, got {input!r}")
    return encoder.num_features if input == "features" else encoder.embedding_dim


VIEWS = (1, 2, 8)


def _view_ops(views: int) -> list[tuple[int, bool]]:
    """(quarter turns counterclockwise, horizontal mirror first) of each test-time view."""
    turns = (0, 1, 2, 3) if views == 8 else (0,)
    mirrors = (False, True) if views >= 2 else (False,)
    return [(k, h) for k in turns for h in mirrors]


def mean_rotation(R: torch.Tensor) -> torch.Tensor:
    """Chordal L2 mean of rotations stacked on dim 0, (V, B, 3, 3) -> (B, 3, 3): the rotation
    nearest (Frobenius) to their arithmetic mean, by SVD with the determinant fixed to +1."""
    # float64: when views disagree the mean is ill-conditioned, and float32 rounding would move
    # the result by a fraction of a degree depending on the order of the views.
    M = R.double().mean(0)
    U, _, Vh = torch.linalg.svd(M)
    D = torch.ones_like(M[..., 0])
    D[..., 2] = torch.sign(torch.linalg.det(U @ Vh))
    return (U @ (D.unsqueeze(-1) * Vh)).to(R.dtype)


class PoseModel(nn.Module):
    """Images -> rotation: an encoder followed by a pose head.

    Args:
        encoder: the (pretrained) :class:`Encoder`.
        head: the :class:`PoseHead`.
        freeze_encoder: keep the encoder in eval mode, with ``requires_grad=False`` and run under
            ``torch.no_grad()`` (the CLERF head stage); ``model.train()`` then trains only the
            head, and DDP sees only the head's parameters as trainable.
        views: test-time views, in eval mode only: 1 (the image), 2 (and its mirror image) or 8
            (the four quarter turns of each). Every view's prediction is mapped back through the
            exact label transform of its image operation (``geometry.hflip_label``,
            ``geometry.rotate_label``) and the predictions are averaged on SO(3)
            (:func:`mean_rotation`). Quarter turns and mirrors move pixels without
            interpolation, and the set of views is closed under them, so with 8 views the
            prediction is equivariant to those operations (up to float rounding).
    """

    def __init__(
        self, encoder: Encoder, head: PoseHead, freeze_encoder: bool = True, views: int = 1
    ):
        super().__init__()
        want = head_input_dim(encoder, head.config.input)
        if head.config.in_dim != want:
            what = "num_features" if head.config.input == "features" else "embedding_dim"
            raise ValueError(
                f"head in_dim {head.config.in_dim} != encoder {what} {want} "
                f"(the head reads the encoder's {head.config.input})"
            )
        if views not in VIEWS:
            raise ValueError(f"views must be one of {VIEWS}, got {views!r}")
        self.encoder = encoder
        self.head = head
        self.freeze_encoder = bool(freeze_encoder)
        self.views = int(views)
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def preprocess(self, images) -> torch.Tensor:
        """See :meth:`Encoder.preprocess`."""
        return self.encoder.preprocess(images)

    def head_input(self, images: torch.Tensor) -> torch.Tensor:
        """What the head reads: the encoder's embedding or its pooled features."""
        if self.head.config.input == "features":
            return self.encoder.features(images)
        return self.encoder(images)

    def _single(self, images: torch.Tensor) -> torch.Tensor:
        if self.freeze_encoder:
            with torch.no_grad():
                z = self.head_input(images)
        else:
            z = self.head_input(images)
        return self.head(z)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, 3, 3) labels."""
        if self.training or self.views == 1:
            return self._single(images)
        preds = []
        for turns, mirror in _view_ops(self.views):
            x = torch.flip(images, dims=(-1,)) if mirror else images
            # rot90 from the row axis toward the column axis: counterclockwise as displayed.
            x = torch.rot90(x, turns, dims=(-2, -1)) if turns else x
            R = geometry.rotate_label(self._single(x.contiguous()), -90.0 * turns)
            preds.append(geometry.hflip_label(R) if mirror else R)
        return mean_rotation(torch.stack(preds))


# --------------------------------------------------------------------------- factories


def create_encoder(cfg: EncoderConfig | Mapping | Any | None = None, **kwargs) -> Encoder:
    """An :class:`Encoder` from an :class:`EncoderConfig`, a mapping, any object with the same
    attribute names (e.g. ``clerf_ray.config.ModelSection``), or keywords (which override)."""
    c = _resolve(EncoderConfig, cfg, kwargs)
    return Encoder(**dataclasses.asdict(c))


def create_head(cfg: HeadConfig | Mapping | Any | None = None, **kwargs) -> PoseHead:
    """A :class:`PoseHead` from a :class:`HeadConfig`, a mapping, an object with ``in_dim`` /
    ``hidden`` (or ``embedding_dim`` / ``head_hidden``, as ``ModelSection``), or keywords."""
    c = _resolve(HeadConfig, cfg, kwargs)
    return PoseHead(**dataclasses.asdict(c))


def create_head_for(encoder: Encoder, cfg: HeadConfig | Mapping | Any | None = None, **kwargs):
    """A :class:`PoseHead` for ``encoder``: as :func:`create_head`, with ``in_dim`` set to the
    width of what the head reads from this encoder (its features or its embedding)."""
    c = _resolve(HeadConfig, cfg, kwargs)
    return PoseHead(**{**dataclasses.asdict(c), "in_dim": head_input_dim(encoder, c.input)})


@dataclass
class PoseModelConfig:
    """Configuration of a :class:`PoseModel`: its encoder, its head, whether it is frozen."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    freeze_encoder: bool = True
    views: int = 1


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
    with _open(_join(path, WEIGHTS_FILE), "wb") as f:
        f.write(st_save(state, metadata={"format": _FORMAT}))
    with _open(_join(path, CONFIG_FILE), "w") as f:
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
        if not _exists(p):
            raise FileNotFoundError(f"load_model: {p!r} not found")
    with _open(cfg_path, "r") as f:
        try:
            meta = json.loads(f.read())
        except json.JSONDecodeError as e:
            raise ValueError(f"load_model: {cfg_path!r} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"load_model: {cfg_path!r} is not a {_FORMAT} config")
    kind = meta.get("kind")

    def enc():
        c = _resolve(EncoderConfig, meta["encoder"], {})
        return Encoder(**{**dataclasses.asdict(c), "pretrained": None}), c

    try:
        if kind == "encoder":
            model, c = enc()
            model.config = c
        elif kind == "head":
            model = create_head(meta["head"])
        elif kind == "pose_model":
            encoder, c = enc()
            encoder.config = c
            model = PoseModel(
                encoder,
                create_head(meta["head"]),
                bool(meta["freeze_encoder"]),
                # Models saved before test-time views existed predict from the image alone.
                views=int(meta.get("views", 1)),
            )
        else:
            raise ValueError(f"unknown kind {kind!r}")
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"load_model: bad config in {cfg_path!r}: {e}") from None
    with _open(w_path, "rb") as f:
        data = f.read()
    if not _is_safetensors(data):
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
