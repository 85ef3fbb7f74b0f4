"""The encoder: a timm backbone, a projection MLP, an L2-normalised embedding.

CLERF trains it contrastively (``clerf_ray.losses.ContrastivePoseLoss``), then freezes it for the
pose head. Its settings come from the config's ``model`` section and ``data.image_size``
(:meth:`EncoderConfig.from_section`); nothing here holds a default of its own.

    enc = create_encoder(cfg.model, image_size=cfg.data.image_size)
    x = enc.preprocess(images_uint8_nhwc)          # float NCHW, normalised, on enc's device
    z = enc(x)                                     # (B, embedding_dim), unit L2 norm

The paper's setting is configuration only: ``model.backbone=swin_tiny_patch4_window7_224``,
``data.image_size=224``. Nothing here calls ``.cuda()``: modules follow ``.to(device)`` and
:meth:`Encoder.preprocess` puts its output on the encoder's device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from clerf_ray.models.layers import check_int, mlp
from clerf_ray.models.storage import read_state_dict

# The grid that Encoder.feature_map pools the backbone's last feature map to, per side: the
# laptop default's map (resnet10t, 64 px) is 2 x 2 already, and a larger map (Swin at 224 px:
# 7 x 7) keeps the head's input at 4 x num_features instead of growing with the image.
FEATURE_MAP_GRID = 2

# ImageNet statistics: the fallback when a timm model carries no pretrained_cfg mean/std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class EncoderConfig:
    """Encoder settings (every field required; :meth:`from_section` builds it from the config).

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

    backbone: str
    embedding_dim: int
    projection_hidden: int
    pretrained: str | None
    image_size: int

    def __post_init__(self):
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(f"backbone must be a timm model name, got {self.backbone!r}")
        check_int("embedding_dim", self.embedding_dim, 1)
        check_int("projection_hidden", self.projection_hidden, 0)
        check_int("image_size", self.image_size, 8)
        if self.pretrained is not None and not isinstance(self.pretrained, str):
            raise ValueError(f"pretrained must be None, 'hub' or a path, got {self.pretrained!r}")

    @classmethod
    def from_section(cls, model: Any, image_size: int) -> EncoderConfig:
        """From a ``clerf_ray.config.ModelSection`` and the input side in pixels."""
        return cls(
            backbone=model.backbone,
            embedding_dim=model.embedding_dim,
            projection_hidden=model.projection_hidden,
            pretrained=model.pretrained,
            image_size=image_size,
        )


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
    state = _strip_prefix(read_state_dict(path, option), "module.")
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
        config: the :class:`EncoderConfig`.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        backbone, pretrained, image_size = config.backbone, config.pretrained, config.image_size
        embedding_dim, projection_hidden = config.embedding_dim, config.projection_hidden
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
        self.projection = mlp([self.num_features, *hidden, embedding_dim])
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

    @property
    def feature_map_dim(self) -> int:
        """Width of :meth:`feature_map`: the last feature map's channels x the grid's cells."""
        return int(self.backbone.num_features) * FEATURE_MAP_GRID**2

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map (``forward_features``, before global pooling),
        average-pooled to a ``FEATURE_MAP_GRID`` x ``FEATURE_MAP_GRID`` grid and flattened,
        channel-major: (B, :attr:`feature_map_dim`). Global pooling discards where in the
        image a feature lies, and the pose is largely in where."""
        fm = self.backbone.forward_features(x)
        if fm.ndim == 4 and getattr(self.backbone, "output_fmt", "NCHW") == "NHWC":
            fm = fm.permute(0, 3, 1, 2)  # Swin's stages give channels last
        if fm.ndim != 4 or fm.shape[1] != self.backbone.num_features:
            raise ValueError(
                f"model.head_input='feature_map' needs a backbone whose forward_features gives "
                f"a spatial map (B, {self.backbone.num_features}, H, W); "
                f"{self.config.backbone!r} gives {tuple(fm.shape)} (token sequences have no "
                "grid): use head_input='features'"
            )
        return F.adaptive_avg_pool2d(fm, FEATURE_MAP_GRID).flatten(1)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Embedding (B, D) of unit L2 norm; with ``return_features`` also the features."""
        f = self.features(x)
        z = F.normalize(self.projection(f), dim=-1)
        return (z, f) if return_features else z


def default_encoder_config() -> EncoderConfig:
    """The encoder of a default ``clerf_ray.config.Config`` (its ``model`` section and
    ``data.image_size``)."""
    from clerf_ray.config import Config

    cfg = Config()
    return EncoderConfig.from_section(cfg.model, cfg.data.image_size)


def create_encoder(cfg: EncoderConfig | Mapping | Any | None = None, **kwargs) -> Encoder:
    """An :class:`Encoder` from an :class:`EncoderConfig`, a ``ModelSection`` (with
    ``image_size=`` given as a keyword, else the default config's), a mapping of
    :class:`EncoderConfig` fields over the default config's, or None (the default config's);
    keywords override fields. Unknown keys are errors."""
    names = [f.name for f in dataclasses.fields(EncoderConfig)]
    unknown = sorted(set(kwargs) - set(names))
    if isinstance(cfg, Mapping):
        unknown += sorted(set(cfg) - set(names))
    if unknown:
        raise TypeError(f"unknown EncoderConfig field(s) {unknown}; known: {names}")
    if isinstance(cfg, EncoderConfig):
        base = cfg
    elif cfg is None or isinstance(cfg, Mapping):
        base = dataclasses.replace(default_encoder_config(), **dict(cfg or {}))
    else:
        size = kwargs.pop("image_size", None) or default_encoder_config().image_size
        base = EncoderConfig.from_section(cfg, size)
    return Encoder(dataclasses.replace(base, **kwargs))
