"""Models: encoder (timm backbone + projection), pose head (MLP -> 6D -> rotation matrix), the
pose model with its test-time views, and their storage.

One concept per module: :mod:`~clerf_ray.models.encoder`, :mod:`~clerf_ray.models.head`,
:mod:`~clerf_ray.models.pose_model`, :mod:`~clerf_ray.models.io` (save/load),
:mod:`~clerf_ray.models.storage` (weight files). The names below are the public API.

    enc = create_encoder(cfg.model, image_size=cfg.data.image_size)
    head = create_head_for(enc, cfg.model)          # reads model.head_input of enc
    model = PoseModel(enc, head, views=cfg.head.views)
    R = model(enc.preprocess(images_uint8_nhwc))    # (B, 3, 3) labels (geometry.py convention)
    save_model(model, None, "out/"); load_model("out/")
"""

from clerf_ray.models.encoder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    EncoderConfig,
    create_encoder,
    default_encoder_config,
    load_backbone_weights,
)
from clerf_ray.models.head import (
    HEAD_INPUTS,
    HeadConfig,
    PoseHead,
    create_head,
    create_head_for,
    head_input_dim,
    input_stats,
    read_head_input,
)
from clerf_ray.models.io import CONFIG_FILE, WEIGHTS_FILE, PoseModelConfig, load_model, save_model
from clerf_ray.models.pose_model import VIEWS, PoseModel, mean_rotation

__all__ = [
    "CONFIG_FILE",
    "HEAD_INPUTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VIEWS",
    "WEIGHTS_FILE",
    "Encoder",
    "EncoderConfig",
    "HeadConfig",
    "PoseHead",
    "PoseModel",
    "PoseModelConfig",
    "create_encoder",
    "create_head",
    "create_head_for",
    "default_encoder_config",
    "head_input_dim",
    "input_stats",
    "load_backbone_weights",
    "load_model",
    "mean_rotation",
    "read_head_input",
    "save_model",
]
