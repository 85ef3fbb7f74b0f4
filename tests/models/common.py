"""Constants and helpers shared by the model tests."""

import pickle

import timm
import torch

# The heads these tests build read the L2-normalised embedding, unstandardised (the config's
# default head reads the backbone features).
EMB = {"input": "embedding", "standardize": False}

SMALL = dict(backbone="resnet10t", embedding_dim=16, projection_hidden=32, image_size=32)
# The same as a complete EncoderConfig (no field has a default of its own).
SMALL_CFG = {**SMALL, "pretrained": None}


def marker_pickle(path, marker):
    """A pickle that, if ever unpickled, creates ``marker`` (it must never be)."""

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path.write_bytes(pickle.dumps({"fc.weight": Payload()}))


def reference_backbone(num_classes=0, seed=3):
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", pretrained=False, num_classes=num_classes)


def assert_backbone_equals(enc, ref):
    own = enc.backbone.state_dict()
    for k, v in own.items():
        assert torch.equal(v, ref.state_dict()[k]), k
