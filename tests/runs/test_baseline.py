"""The supervised baseline run (clerf_ray.runs.baseline): a tiny pooled FA run registers a candidate."""

import numpy as np
import torch

from clerf_ray.config import load_config
from clerf_ray.runs.baseline import train_baseline
from clerf_ray.train import common
from clerf_ray.train.supervised import (
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


def test_tiny_pooled_fa_baseline_run_registers_a_candidate(ray_cluster, tmp_path, capsys):
    import mlflow

    from clerf_ray import registry

    registry.setup(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.create_experiment("clerf", artifact_location=f"file://{tmp_path}/artifacts")

    cfg = load_config(
        None,
        TINY
        + [
            "data.pool=true",
            "data.augment=fa",
            f"storage_path={tmp_path / 'runs'}",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            "run_name=tiny-baseline",
        ],
    )
    result = train_baseline(cfg, model_name="clerf-baseline")
    assert result.version == "1"
    assert "rendering a pool of 16 pairs" in capsys.readouterr().err  # rendered once, reused
    (epoch,) = result.history
    # 16 pairs in batches of 8 pairs are 2 CLERF steps; the baseline's 32 images in batches of
    # 16 images are 2 steps too.
    assert len(epoch["step_losses"]) == 2 and np.isfinite(epoch["loss"])
    assert result.metrics["n"] == 8

    registry.setup(cfg.tracking.tracking_uri)
    mv = registry.model_version("clerf-baseline@candidate")
    assert str(mv.version) == "1" and mv.tags["augment"] == "fa"
    run = mlflow.MlflowClient(cfg.tracking.tracking_uri).get_run(result.run_id)
    assert run.data.params["baseline.batch_images"] == "16"
    assert run.data.params["data.pool"] == "True"
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


def test_tiny_labelled_baseline_run_reads_the_set_once_per_epoch(ray_cluster, tmp_path):
    """``train_baseline(labelled_path=...)``: the labelled set's rows are the epoch (24 rows in
    steps of 2 x 4 images: 3 steps per epoch, for each of 2 epochs), read as one dataset for the
    run and augmented on the worker."""
    import mlflow

    from clerf_ray import geometry
    from clerf_ray.data.schema import make_table
    from clerf_ray.data.shards import write_shards
    from clerf_ray.render import make_renderer

    R = geometry.sample_rotations(24, seed=3)
    images = make_renderer("procedural", image_size=32).render(np.arange(24) + 500, R)
    labelled = str(tmp_path / "set")
    table = make_table(
        images, R, files=[f"im{i}.png" for i in range(24)], dataset="toy", image_format="png"
    )
    write_shards(table, labelled, shard_rows=10)  # 3 shards

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("clerf", artifact_location=f"file://{tmp_path}/artifacts")
    cfg = load_config(
        None,
        TINY
        + [
            "data.augment=fa",
            "pretrain.epochs=2",
            "pretrain.batch_size=4",
            f"storage_path={tmp_path / 'runs'}",
            f"tracking.tracking_uri={uri}",
            "run_name=tiny-labelled-baseline",
        ],
    )
    result = train_baseline(cfg, labelled_path=labelled, register=False)
    assert [len(h["step_losses"]) for h in result.history] == [3, 3]
    assert all(np.isfinite(h["loss"]) for h in result.history)
    run = mlflow.MlflowClient(uri).get_run(result.run_id)
    assert run.data.params["baseline.labelled_path"] == labelled
