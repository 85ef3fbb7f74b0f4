"""The supervised baseline: every parameter trains (encoder included), and a tiny run on Ray Train
registers ``clerf-baseline@candidate`` in a real sqlite MLflow store."""

import numpy as np
import torch

from clerf_ray import geometry
from clerf_ray.config import load_config
from clerf_ray.train import common
from clerf_ray.train.supervised import build_baseline_model, train_baseline

TINY = [
    "data.image_size=32",
    "data.num_pairs=8",
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
    model.train()
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    R = torch.as_tensor(geometry.sample_rotations(4, seed=1), dtype=torch.float32)
    geodesic_loss(model(model.preprocess(images)), R).backward()
    grads = [p.grad for p in model.encoder.backbone.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0  # the backbone learns, unlike CLERF's head


def test_tiny_baseline_run_registers_a_candidate(ray_cluster, tmp_path, monkeypatch):
    import mlflow

    from clerf_ray import registry

    # mlflow.set_registry_uri exports MLFLOW_REGISTRY_URI, which registry.setup then keeps: an
    # earlier test's store would receive the registration.
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    registry.setup(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.create_experiment("clerf", artifact_location=f"file://{tmp_path}/artifacts")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)

    cfg = load_config(
        None,
        TINY
        + [
            f"storage_path={tmp_path / 'runs'}",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            "run_name=tiny-baseline",
        ],
    )
    result = train_baseline(cfg, model_name="clerf-baseline")
    assert result.version == "1"
    assert len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
    assert result.metrics["n"] == 8

    registry.setup(cfg.tracking.tracking_uri)
    mv = registry.model_version("clerf-baseline@candidate")
    assert str(mv.version) == "1" and mv.tags["augment"] == "none"
    loaded = registry.load_registered("clerf-baseline@candidate")
    assert not loaded.freeze_encoder

    # The worker built its model right after seeding with seed + 2000 (rank 0); the registered
    # encoder must have moved away from that initialisation.
    common.seed_everything(cfg.seed + 2000)
    initial = build_baseline_model(cfg).state_dict()
    trained = loaded.state_dict()
    moved = [
        k
        for k in initial
        if k.startswith("encoder.backbone.")
        and initial[k].is_floating_point()
        and not torch.equal(initial[k], trained[k])
    ]
    assert moved, "the baseline's backbone did not train"
    # The head too.
    assert not torch.equal(initial["head.mlp.0.weight"], trained["head.mlp.0.weight"])
