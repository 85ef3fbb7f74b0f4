"""The pose head: rotations out, the features head with its standardisation, input statistics; the factories that build encoder and head from configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clerf_ray.models import (
    EncoderConfig,
    HeadConfig,
    PoseModel,
    create_encoder,
    create_head,
    create_head_for,
    input_stats,
)

from .common import EMB, SMALL, SMALL_CFG


def test_head_outputs_rotations():
    torch.manual_seed(1)
    head = create_head(EMB, in_dim=16, hidden=(32, 32))
    z = torch.cat([torch.randn(32, 16), 100.0 * torch.randn(4, 16), torch.zeros(1, 16)])
    R = head(z)
    assert R.shape == (37, 3, 3)
    eye = torch.eye(3).expand(37, 3, 3)
    torch.testing.assert_close(R.transpose(1, 2) @ R, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(37), atol=1e-5, rtol=0)


def test_features_head_reads_the_pooled_backbone_output_standardised(images):
    """A head with ``input="features"`` gets the backbone's pooled output (not the projection),
    standardised by its buffers: the same MLP weights on hand-standardised features agree."""
    torch.manual_seed(8)
    enc = create_encoder(**SMALL).eval()
    head = create_head_for(enc, hidden=(24,), input="features", standardize=True)
    assert head.config.in_dim == 512
    mean, std = torch.randn(512), torch.rand(512) + 0.5
    head.set_input_stats(mean.numpy(), std.numpy())
    model = PoseModel(enc, head, freeze_encoder=True).eval()
    x = model.preprocess(images)
    plain = create_head(EMB, in_dim=512, hidden=(24,))
    plain.mlp.load_state_dict(head.mlp.state_dict())
    with torch.no_grad():
        expected = plain((enc.backbone(x) - mean) / std)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)
        # Not the embedding path: the projection's output gives something else.
        other = create_head(EMB, in_dim=16, hidden=(24,))
        assert not torch.allclose(model(x), other(enc(x)), atol=1e-3)
    with pytest.raises(ValueError, match="512 values"):
        head.set_input_stats(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="standardize=False"):
        plain.set_input_stats(np.zeros(512), np.ones(512))
    # A constant input dimension (std 0) is floored, so the head stays finite.
    head.set_input_stats(np.zeros(512), np.zeros(512))
    assert torch.isfinite(model(x)).all()


def test_input_stats_match_numpy_over_concatenated_batches():
    rng = np.random.default_rng(4)
    # A large common offset: naive sums of squares in float32 would lose the spread.
    rows = 1e4 + rng.normal(size=(1000, 7)) * np.arange(1, 8)
    rows[:, 3] = 5.0  # a constant column
    batches = [rows[:1], rows[1:300], rows[300:300], rows[300:]]
    mean, std = input_stats(batches)
    np.testing.assert_allclose(mean, rows.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, rows.std(0), rtol=1e-4, atol=1e-6)
    assert std[3] == 0.0
    with pytest.raises(ValueError, match="no rows"):
        input_stats([])


def test_factories_accept_configs_mappings_keywords_and_model_section():
    from clerf_ray.config import ModelSection

    a = create_encoder(EncoderConfig(**SMALL_CFG))
    b = create_encoder(dict(SMALL))
    c = create_encoder(EncoderConfig(**SMALL_CFG), embedding_dim=8)
    assert a.config == b.config == EncoderConfig(**SMALL_CFG)
    assert c.embedding_dim == 8
    # No arguments: the default config's model section and data.image_size, written out here.
    assert create_encoder().config == EncoderConfig(
        backbone="resnet10t",
        embedding_dim=128,
        projection_hidden=512,
        pretrained=None,
        image_size=64,
    )
    assert create_head(in_dim=7).config == HeadConfig(
        in_dim=7, hidden=(512, 512), input="feature_map", standardize=True
    )
    with pytest.raises(TypeError, match="in_dim is required"):
        create_head()

    section = ModelSection(
        backbone="resnet10t", embedding_dim=24, head_hidden=(40,), head_input="embedding"
    )
    enc = create_encoder(section, image_size=32)
    assert enc.embedding_dim == 24 and enc.config.projection_hidden == section.projection_hidden
    head = create_head(section, in_dim=24)
    assert head.config == HeadConfig(in_dim=24, hidden=(40,), input="embedding", standardize=True)
    # The default section: the head reads the feature map on its 2 x 2 grid, 4 x the backbone's
    # 512 channels.
    head = create_head_for(enc, ModelSection(head_hidden=(40,)))
    assert head.config == HeadConfig(
        in_dim=2048, hidden=(40,), input="feature_map", standardize=True
    )

    with pytest.raises(TypeError, match="embeding_dim"):
        create_encoder(embeding_dim=8)
    with pytest.raises(TypeError, match="hiden"):
        create_head({"hiden": (4,)})
    with pytest.raises(ValueError, match="embedding_dim"):
        EncoderConfig(**{**SMALL_CFG, "embedding_dim": 0})
    with pytest.raises(ValueError, match=r"hidden\[1\]"):
        HeadConfig(in_dim=4, hidden=(8, -1), input="features", standardize=True)
    with pytest.raises(ValueError, match="input must be one of"):
        HeadConfig(in_dim=4, hidden=(8,), input="logits", standardize=True)
