"""The head stage's input standardisation holds the statistics of what the head trained on: the
frozen encoder's pooled features of the head's training images, computed here with numpy."""

from __future__ import annotations

import numpy as np
import torch

from .test_train_ray import tiny_config


def test_trained_head_standardises_with_the_mean_and_std_of_its_training_features(
    ray_cluster, tmp_path, monkeypatch
):
    from clerf_ray.models import create_encoder
    from clerf_ray.runs import common as runs
    from clerf_ray.train.head import head_images

    # One draw of un-augmented renders: the head's training images are exactly the renders.
    cfg = tiny_config(
        tmp_path,
        "model.head_input=features",
        "model.head_standardize=true",
        "data.augment=none",
        "head.num_samples=16",
        "head.draws=1",
        "head.epochs=1",
        "head.passes=1",
    )
    monkeypatch.setattr(runs, "log_history", lambda stage, history: None)  # no MLflow run here
    torch.manual_seed(3)
    encoder = create_encoder(cfg.model, image_size=cfg.data.image_size, pretrained=None).eval()
    model, stage = runs.train_head_stage(cfg, encoder, "stats")
    assert stage.status == "ok"

    images = np.stack([np.asarray(r["image"]) for r in head_images(cfg).take_all()])
    assert images.shape == (16, 32, 32, 3)
    with torch.no_grad():
        z = encoder.features(encoder.preprocess(images)).double().numpy()
    assert z.shape == (16, 512)
    # Population std, floored at set_input_stats' 1e-6: a random-init resnet10t on 32 px images
    # leaves some pooled channels at zero for every image.
    mean, std = z.mean(axis=0), np.maximum(z.std(axis=0), 1e-6)
    assert (std > 1e-3).sum() > 100  # most channels vary: the statistics are not the defaults
    head = model.head
    np.testing.assert_allclose(head.input_mean.double().numpy(), mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(head.input_std.double().numpy(), std, rtol=1e-4, atol=1e-6)
    # And the model standardises with them: the head's first layer sees standardised features.
    with torch.no_grad():
        x = torch.from_numpy(((z - mean) / std).astype(np.float32))
        want = head.mlp(x) + head.offset
        got = head.forward_6d(torch.from_numpy(z.astype(np.float32)))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
