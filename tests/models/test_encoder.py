"""The encoder: embedding, preprocessing, backbones, pretrained weights."""

from __future__ import annotations

import os

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from clerf_ray.models import (
    create_encoder,
    save_model,
)

from .common import SMALL, assert_backbone_equals, marker_pickle, reference_backbone


def test_encoder_embedding_shape_and_unit_norm(images):
    torch.manual_seed(0)
    enc = create_encoder(**SMALL).eval()
    x = enc.preprocess(images)
    z, f = enc(x, return_features=True)
    assert z.shape == (3, 16)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    assert f.shape == (3, enc.num_features) == (3, 512)
    # features() is the backbone's own pooled output, before projection and normalisation.
    torch.testing.assert_close(enc.features(x), enc.backbone(x))
    assert not torch.allclose(f.norm(dim=1), torch.ones(3))


def test_preprocess_scales_normalises_and_transposes(images):
    enc = create_encoder(**SMALL)
    x = enc.preprocess(images)
    # resnet10t's pretrained_cfg carries ImageNet statistics.
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    expected = ((images / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    assert x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)
    # A single HxWx3 tensor works too, and other sizes are resized to image_size.
    assert enc.preprocess(torch.from_numpy(images[0])).shape == (1, 3, 32, 32)
    # Resizing keeps a flat colour flat: every output pixel is that colour, normalised.
    flat = np.empty((2, 80, 48, 3), dtype=np.uint8)
    flat[...] = np.array([200, 30, 120], dtype=np.uint8)
    out = enc.preprocess(flat)
    assert out.shape == (2, 3, 32, 32)
    value = (np.array([200, 30, 120]) / 255.0 - mean) / std
    np.testing.assert_allclose(
        out.numpy(), np.broadcast_to(value[None, :, None, None], out.shape), rtol=1e-5, atol=1e-5
    )


def test_preprocess_rejects_float_images(images):
    enc = create_encoder(**SMALL)
    with pytest.raises(ValueError, match="uint8"):
        enc.preprocess(images.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        enc.preprocess(images[..., :2].copy())


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="'no_such_net'"):
        create_encoder(backbone="no_such_net")


@pytest.mark.parametrize("backbone", ["mobilenetv3_small_100", "lcnet_050"])
def test_backbones_with_a_pre_logits_layer_project_their_pooled_output(backbone):
    """MobileNetV3 and LCNet pool num_features channels, then widen them in a pre-logits layer:
    the projection must take the width that actually comes out."""
    enc = create_encoder(backbone=backbone, embedding_dim=16, image_size=32).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        z, f = enc(x, return_features=True)
    assert f.shape == (3, enc.num_features) and enc.num_features > enc.backbone.num_features
    assert z.shape == (3, 16)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))


def test_paper_swin_setting_by_config_only():
    torch.manual_seed(0)
    enc = create_encoder(backbone="swin_tiny_patch4_window7_224", image_size=224).eval()
    assert enc.num_features == 768
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(1, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        x = enc.preprocess(img)
        z = enc(x)
    assert x.shape == (1, 3, 224, 224)
    assert z.shape == (1, 128)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(1))


def test_pretrained_from_local_safetensors(tmp_path):
    ref = reference_backbone()
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    torch.manual_seed(99)  # the encoder's own random init differs from ref's
    enc = create_encoder(**{**SMALL, "pretrained": str(path)})
    assert_backbone_equals(enc, ref)


def test_pretrained_from_torch_checkpoint_with_classifier_and_nesting(tmp_path):
    ref = reference_backbone(num_classes=1000)
    path = tmp_path / "ckpt.pth"
    # A training checkpoint: nested under 'state_dict', DDP prefix, classifier weights included.
    torch.save(
        {"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}, "epoch": 3}, path
    )
    enc = create_encoder(**{**SMALL, "pretrained": str(path)})
    assert_backbone_equals(enc, ref)


def test_pretrained_from_a_saved_encoder_takes_its_backbone(tmp_path):
    torch.manual_seed(7)
    trained = create_encoder(**SMALL)
    save_model(trained, None, str(tmp_path / "enc"))
    torch.manual_seed(8)
    fresh = create_encoder(
        **{**SMALL, "embedding_dim": 8, "pretrained": str(tmp_path / "enc" / "model.safetensors")}
    )
    assert_backbone_equals(fresh, trained.backbone)


def test_pretrained_missing_file_names_the_option(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="pretrained") as e:
        create_encoder(**{**SMALL, "pretrained": str(missing)})
    assert str(missing) in str(e.value)


def test_pretrained_mismatched_keys_name_the_option(tmp_path):
    torch.manual_seed(4)
    other = timm.create_model("resnet18", pretrained=False, num_classes=0)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match=r"pretrained=.*do not match backbone 'resnet10t'"):
        create_encoder(**{**SMALL, "pretrained": str(path)})


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pretrained_pickle_is_not_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    marker_pickle(path, marker)
    with pytest.raises(ValueError, match="pretrained"):
        create_encoder(**{**SMALL, "pretrained": str(path)})
    assert not marker.exists()


def test_pretrained_hub_offline_error_names_the_option(tmp_path):
    # timm's download path, kept offline: HF_HUB_OFFLINE is read at import, hence a subprocess.
    import subprocess
    import sys

    code = (
        "from clerf_ray.models import create_encoder\n"
        "try:\n"
        "    create_encoder(pretrained='hub', image_size=32)\n"
        "except RuntimeError as e:\n"
        "    print('ERR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "ERR pretrained='hub'" in out.stdout and "resnet10t" in out.stdout


def test_feature_map_keeps_the_grid_and_averages_to_the_pooled_features():
    """At 128 px resnet10t's last map is 4 x 4: each of the 2 x 2 cells is the mean of its own
    2 x 2 block of that map (sliced here by hand), channel-major, and the cells' mean is timm's
    own global pooling (the pooled features)."""
    torch.manual_seed(0)
    enc = create_encoder(backbone="resnet10t", embedding_dim=16, image_size=128).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        fm = enc.backbone.forward_features(x)
        got = enc.feature_map(x)
        pooled = enc.features(x)
    assert fm.shape == (2, 512, 4, 4)
    assert got.shape == (2, enc.feature_map_dim) == (2, 512 * 4)
    cells = got.reshape(2, 512, 2, 2)
    for i in range(2):
        for j in range(2):
            block = fm[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(dim=(2, 3))
            torch.testing.assert_close(cells[:, :, i, j], block)
    torch.testing.assert_close(cells.mean(dim=(2, 3)), pooled)
    # The cells are not copies of one another: the map keeps where in the image features lie.
    assert not torch.allclose(cells[:, :, 0, 0], cells[:, :, 1, 1])


def test_feature_map_of_a_channels_last_backbone_is_transposed_to_channels_first():
    """Swin's stages give (B, H, W, C) = (1, 7, 7, 768): the grid must come from the spatial
    axes. Adaptive pooling splits 7 rows into rows 0-3 and 3-6 (floor and ceiling of i * 7 / 2),
    sliced here by hand from the channels-last map."""
    torch.manual_seed(0)
    enc = create_encoder(backbone="swin_tiny_patch4_window7_224", image_size=224).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        nhwc = enc.backbone.forward_features(x)
        got = enc.feature_map(x)
    assert nhwc.shape == (1, 7, 7, 768) and got.shape == (1, 768 * 4)
    cells = got.reshape(1, 768, 2, 2)
    spans = [(0, 4), (3, 7)]
    for i, (r0, r1) in enumerate(spans):
        for j, (c0, c1) in enumerate(spans):
            block = nhwc[:, r0:r1, c0:c1, :].mean(dim=(1, 2))
            torch.testing.assert_close(cells[:, :, i, j], block, atol=1e-5, rtol=1e-4)


def test_feature_map_of_a_token_backbone_is_refused_by_name():
    enc = create_encoder(backbone="vit_tiny_patch16_224", embedding_dim=16, image_size=224)
    with pytest.raises(ValueError, match="head_input='feature_map'.*vit_tiny_patch16_224"):
        enc.feature_map(torch.zeros(1, 3, 224, 224))
