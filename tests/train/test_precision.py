"""Mixed precision on the CPU: when it runs, and that losses and Gram-Schmidt stay float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clerf_ray import geometry
from clerf_ray.models import create_encoder, create_head
from clerf_ray.train import common

CPU = torch.device("cpu")


def test_amp_runs_on_a_cpu_only_with_native_bf16(monkeypatch):
    monkeypatch.setattr(common, "native_cpu_bf16", lambda: False)
    assert not common.amp_enabled(CPU, True)
    with common.autocast(CPU, True):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(common, "native_cpu_bf16", lambda: True)
    assert common.amp_enabled(CPU, True)
    assert not common.amp_enabled(CPU, False)
    with common.autocast(CPU, True):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        with common.full_precision(CPU):
            a = torch.randn(4, 4)
            assert (a @ a).dtype == torch.float32


def test_native_cpu_bf16_is_a_bool():
    assert isinstance(common.native_cpu_bf16(), bool)


def test_head_gram_schmidt_stays_float32_under_bf16_autocast():
    """Under bfloat16 autocast the MLP runs in bf16, but the rotation must come out float32 and
    orthonormal to float32 precision (bf16 Gram-Schmidt is off by ~1e-2): the float32 identity
    offset promotes the 6D output, and Gram-Schmidt has no op that autocast lowers."""
    torch.manual_seed(0)
    head = create_head(in_dim=16, hidden=(32,), input="features", standardize=False)
    z = torch.randn(64, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        R = head(z)
    assert R.dtype == torch.float32
    eye = torch.eye(3).expand(64, 3, 3)
    assert torch.allclose(R.transpose(1, 2) @ R, eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(64), atol=1e-5)
    # The same 6D numbers through Gram-Schmidt outside autocast give the same rotations.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        six = head.forward_6d(z)
    np.testing.assert_allclose(
        R.detach().numpy(), geometry.rotation_6d_to_matrix(six.float()).detach().numpy(), atol=1e-6
    )


@pytest.mark.skipif(not common.native_cpu_bf16(), reason="this CPU has no native bfloat16")
def test_channels_last_bf16_encoder_matches_float32():
    """The workers' layout and precision change the arithmetic, not the function: bf16
    channels-last features agree with float32 contiguous ones to bf16 precision."""
    torch.manual_seed(0)
    enc = create_encoder(backbone="resnet10t", image_size=32).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref = enc.features(x)
        fast = common.channels_last(enc)
        with common.autocast(CPU, True):
            got = fast.features(x.contiguous(memory_format=torch.channels_last)).float()
    rel = (got - ref).norm() / ref.norm()
    assert rel < 0.05, rel
    assert fast.backbone.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
