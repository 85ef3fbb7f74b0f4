"""The supervised baseline: every parameter it uses trains (encoder included), its budget is
CLERF's (the pretraining pairs as labelled images, two images per pair per step, a render pool
reused across epochs), its loss falls on a fixed set, and a tiny run on Ray Train registers
``clerf-baseline@candidate`` in a real sqlite MLflow store."""

import numpy as np
import pytest
import torch

from clerf_ray import geometry
from clerf_ray.config import load_config
from clerf_ray.train import common
from clerf_ray.train.supervised import (
    baseline_batch_size,
    baseline_loss,
    baseline_optimizer,
    baseline_pair_transform,
    build_baseline_model,
)

TINY = [
    "data.image_size=32",
    "data.num_pairs=16",
    "data.render_batch_size=8",
    "data.augment=none",
    "model.embedding_dim=16",
    "model.projection_hidden=32",
    "model.head_hidden=[32]",
    "pretrain.epochs=1",
    "pretrain.batch_size=8",
    "pretrain.torch_threads=1",
    "pretrain.cpus_per_worker=0.5",
    "eval.num_samples=8",
]


def test_baseline_model_regresses_end_to_end():
    from clerf_ray.losses import geodesic_loss

    cfg = load_config(None, TINY)
    model = build_baseline_model(cfg)
    assert not model.freeze_encoder
    assert model.views == cfg.head.views  # CLERF's test-time views
    model.train()
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    R = torch.as_tensor(geometry.sample_rotations(4, seed=1), dtype=torch.float32)
    geodesic_loss(model(model.preprocess(images)), R).backward()
    grads = [p.grad for p in model.encoder.backbone.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0  # the backbone learns, unlike CLERF's head
    assert all(p.grad is not None for p in model.head.parameters())
    if model.head.config.input == "features":
        # The projection feeds nothing the head reads: frozen, so DDP waits for no gradient.
        assert not any(p.requires_grad for p in model.encoder.projection.parameters())


@pytest.mark.parametrize(
    "backbone, head_input",
    [
        ("resnet10t", "feature_map"),
        ("mobilenetv3_small_100", "features"),
        ("mobilenetv3_small_100", "feature_map"),
    ],
)
def test_baseline_trains_exactly_the_parameters_its_head_input_reaches(backbone, head_input):
    """What DDP needs: after a real backward pass every parameter left trainable has a
    gradient, and every frozen one would have had none. MobileNetV3 widens its pooled features
    in ``conv_head``, which the pooled features go through and the feature map does not."""
    from clerf_ray.losses import geodesic_loss

    cfg = load_config(None, [*TINY, f"model.backbone={backbone}", f"model.head_input={head_input}"])
    model = build_baseline_model(cfg).train()
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    R = torch.as_tensor(geometry.sample_rotations(4, seed=1), dtype=torch.float32)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    geodesic_loss(model(model.preprocess(images)), R).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert {n.split(".")[1] for n in frozen if n.startswith("encoder.")} >= {"projection"}
    conv_head = any(n.startswith("encoder.backbone.conv_head.") for n in frozen)
    assert conv_head == (backbone.startswith("mobilenet") and head_input == "feature_map")
    # Unfrozen, the same parameters would get no gradient: they really are unused.
    for n, p in model.named_parameters():
        if n in frozen:
            p.requires_grad_(True)
            p.grad = None
    model.zero_grad(set_to_none=True)
    geodesic_loss(model(model.preprocess(images)), R).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)


def test_baseline_step_holds_as_many_images_as_a_clerf_step():
    cfg = load_config(None, ["pretrain.batch_size=64", "data.num_pairs=8192"])
    # A CLERF step of 64 pairs embeds 128 images; 8192 pairs make 128 steps an epoch.
    assert baseline_batch_size(cfg) == 128
    assert common.global_batches(2 * 8192, baseline_batch_size(cfg), 1) == (128, 128)
    assert common.global_batches(2 * 8192, baseline_batch_size(cfg), 2) == (64, 128)


def _rows(batch):
    """Labelled images of a transformed batch as (image, R) pairs."""
    R = np.asarray(batch["R"], dtype=np.float64).reshape(-1, 3, 3)
    return list(zip(batch["image"], R, strict=True))


def _key(image):
    return image.tobytes()


def test_pooled_baseline_epochs_reuse_the_pretraining_renders(ray_cluster):
    """The baseline reads pretraining's pair stream (one dataset per run from the pool) and, on
    the worker, augments each batch and splits it into labelled images: every epoch is the
    pool's images, both of each pair, each with its pair's label."""
    from clerf_ray.data.pairs import pretrain_inputs, render_pool

    cfg = load_config(None, TINY + ["data.num_pairs=6", "data.render_batch_size=3"])
    pair_cfg = cfg.data.pair_config(seed=cfg.seed)
    pool = render_pool(pair_cfg)
    pairs = pool.take_all()
    rendered = sorted(_key(p[k]) for p in pairs for k in ("anchor", "positive"))
    labels = {
        _key(p[k]): np.asarray(p["R"]).reshape(3, 3) for p in pairs for k in ("anchor", "positive")
    }

    datasets, reading = pretrain_inputs(pair_cfg, 2, pool=pool)
    assert list(datasets) == ["pairs"] and reading["dataset"] == "pairs"  # one for the run
    a = reading["augment"]
    assert (a["preset"], a["seed"]) == ("none", pair_cfg.seed)

    def epoch(e, preset="none", ds=None):
        batch = (ds or datasets["pairs"])().take_batch(100, batch_format="numpy")
        return _rows(baseline_pair_transform(preset, a["seed"])(batch, e))

    # Without augmentation every epoch is the pool's images, each with its pair's label.
    for e in (0, 1):
        rows = epoch(e)
        assert sorted(_key(im) for im, _ in rows) == rendered
        for im, R in rows:
            np.testing.assert_allclose(R, labels[_key(im)], atol=1e-6)

    # Without the pool a new epoch renders new pairs.
    live, _ = pretrain_inputs(pair_cfg, 2, pool=None)
    assert list(live) == ["epoch_0", "epoch_1"]
    fresh = epoch(1, ds=live["epoch_1"])
    assert len(fresh) == 12 and not set(_key(im) for im, _ in fresh) & set(rendered)

    # With fa the same pool gets a new augmentation each epoch: new labels, and anchor and
    # positive of a pair keep one label between them (6 labels, each twice: image i and i + 6).
    e0, e1 = (epoch(e, "fa") for e in (0, 1))
    for rows in (e0, e1):
        keys = [tuple(np.round(R, 5).ravel()) for _, R in rows]
        assert len(rows) == 12 and len(set(keys)) == 6
        assert keys[:6] == keys[6:]
        assert not set(_key(im) for im, _ in rows[6:]) & set(_key(im) for im, _ in rows[:6])
    l0 = np.stack([R for _, R in e0])
    l1 = np.stack([R for _, R in e1])
    assert not np.allclose(np.sort(l0.reshape(12, 9), axis=0), np.sort(l1.reshape(12, 9), axis=0))


def test_baseline_loss_falls_on_a_fixed_set():
    """25 steps of the baseline's own optimiser and loss on 16 fixed renders: the geodesic loss
    (radians) must fall from that of an untrained model to a small fraction of it."""
    from clerf_ray.render import make_renderer

    torch.set_num_threads(1)
    cfg = load_config(None, TINY)
    common.seed_everything(0)
    model = build_baseline_model(cfg).train()
    R = geometry.sample_rotations(16, seed=1)
    images = make_renderer("procedural", image_size=32).render(np.arange(16) + 10, R)
    batch = {"image": torch.from_numpy(images), "R": torch.as_tensor(R, dtype=torch.float32)}
    optimizer = baseline_optimizer(model, cfg.pretrain)
    losses = []
    for _ in range(25):
        loss = baseline_loss(model, batch, "cpu")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[0] > 1.0  # untrained: far from the labels (random rotations: ~2.2 rad)
    assert np.mean(losses[-5:]) < 0.3 * losses[0]
