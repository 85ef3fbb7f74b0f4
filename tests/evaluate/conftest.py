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


# (own angles of the label, angles the set stores), degrees. The stored ones are the same rotation
# written another way (pitch + 180, 180 - yaw, roll + 180, as real sets store |yaw| > 90) or
# wrapped by 360, so MAE against them differs from MAE against the labels' own angles.
EULER_CASES = [
    ((12, 25, 27), (-168, 155, -153)),
    ((150, 85, 150), (-30, 95, -30)),
    ((-20, -40, 170), (340, -40, -190)),
    ((5, -10, 0), (5, -10, 0)),
    ((-40, 30, -160), (140, 150, 20)),
    ((60, 10, -20), (60, 10, -20)),
]


@pytest.fixture(scope="module")
def euler_set(tmp_path_factory):
    """6 renders at 32 px (the tiny model's input size) whose stored ``euler_deg`` are not the
    labels' own decomposition (:data:`EULER_CASES`). Under the AFLW2000 protocol the stored
    angles keep rows 1, 3, 5; the labels' own angles would keep rows 0, 3, 5."""
    from clerf_ray.data.schema import make_table
    from clerf_ray.data.shards import write_shards
    from clerf_ray.render import make_renderer

    own = np.array([c[0] for c in EULER_CASES], dtype=float)
    stored = np.array([c[1] for c in EULER_CASES], dtype=float)
    R = geometry.euler_to_matrix(*np.radians(own).T)
    np.testing.assert_allclose(geometry.euler_to_matrix(*np.radians(stored).T), R, atol=1e-12)
    n = len(R)
    images = make_renderer("procedural", image_size=32).render(np.arange(n) + 2_000_000, R)
    out = str(tmp_path_factory.mktemp("euler") / "set")
    table = make_table(
        images,
        R,
        files=[f"e{i}.png" for i in range(n)],
        dataset="test",
        image_format="png",
        euler_deg=stored,
    )
    write_shards(table, out)
    # As the set holds them: float32.
    return out, images, R.astype(np.float32).astype(np.float64), stored.astype(np.float32)
