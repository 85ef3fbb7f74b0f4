"""Fixtures of the evaluation tests: renders, a sqlite store with a tiny registered model, a
labelled Parquet set."""

import math

import numpy as np
import pytest

from clerf_ray import evaluate, geometry

from .common import EMB


@pytest.fixture(scope="module")
def base_set():
    from clerf_ray.render import make_renderer

    R = geometry.sample_rotations(10, seed=3)
    images = make_renderer("procedural", image_size=32).render(np.arange(10) + 2_000_000, R)
    return evaluate.EvalSet("renders", images, R, None, [f"r{i}" for i in range(10)])


@pytest.fixture(scope="module")
def store(tmp_path_factory, fresh_store):
    """A sqlite MLflow store with a tiny random PoseModel registered as tiny-head@candidate."""
    import mlflow

    from clerf_ray import registry
    from clerf_ray.models import PoseModel, create_encoder, create_head

    d = tmp_path_factory.mktemp("store")
    uri = fresh_store(d)
    enc = create_encoder(
        backbone="resnet10t", image_size=32, embedding_dim=16, projection_hidden=32
    )
    model = PoseModel(enc, create_head(EMB, in_dim=16, hidden=(32,))).eval()
    with mlflow.start_run() as run:
        src = registry.log_model(model, "pose_model")
    registry.register("tiny-head", src, run.info.run_id)
    return uri, model


@pytest.fixture(scope="module")
def labelled_set(tmp_path_factory):
    """12 renders at 48 px (the model resizes to 32), one with pitch 120 deg (outside AFLW)."""
    from clerf_ray.data.schema import make_table
    from clerf_ray.data.shards import write_shards
    from clerf_ray.render import make_renderer

    R = geometry.sample_rotations(
        12, seed=7, yaw_range=(-60, 60), pitch_range=(-40, 40), roll_range=(-30, 30)
    )
    R[4] = geometry.euler_to_matrix(math.radians(120), 0.2, 0.1)
    images = make_renderer("procedural", image_size=48).render(np.arange(12) + 2_000_000, R)
    out = str(tmp_path_factory.mktemp("aflw") / "set")
    table = make_table(
        images, R, files=[f"img{i:02d}.png" for i in range(12)], dataset="test", image_format="png"
    )
    write_shards(table, out)
    return out, images, R


@pytest.fixture(scope="module")
def recorded_model(store):
    """The tiny model registered again as tiny-trained@candidate from a run that logged the
    training parameters evaluate reads back (as run_recipe and train_baseline log them)."""
    import json

    import mlflow

    from clerf_ray import registry

    uri, model = store
    registry.setup(uri, "train")
    with mlflow.start_run() as run:
        mlflow.log_params(
            {
                "data.renderer": "procedural",
                "data.renderer_options": json.dumps({}),
                "data.image_size": 32,
                "eval.identities": json.dumps([2_000_700, 2_000_702]),
            }
        )
        src = registry.log_model(model, "pose_model")
    registry.register("tiny-trained", src, run.info.run_id)
    return "tiny-trained@candidate"
