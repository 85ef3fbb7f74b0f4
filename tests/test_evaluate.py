"""Evaluation: metric values against hand computations, SA/FA variants checked through geometry,
the AFLW2000 filter, and the whole report on a labelled Parquet set with a real sqlite MLflow
store (no Ray needed: Parquet sets load with pyarrow)."""

import csv
import math

import numpy as np
import pytest
from PIL import Image

from clerf_ray import evaluate, geometry

# The heads these tests build read the L2-normalised embedding, unstandardised (the config's
# default head reads the backbone features).
EMB = {"input": "embedding", "standardize": False}


def rz(deg):
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])


def ry(deg):
    t = math.radians(deg)
    return np.array([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]])


def rx(deg):
    t = math.radians(deg)
    return np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])


# Three hand-made cases: a 9 deg roll error, a 25 deg yaw error, a 55 deg pitch error.
R_TRUE = np.stack([np.eye(3), ry(25), rx(50)])
R_PRED = np.stack([rz(9), np.eye(3), rx(-5)])


def test_summarize_matches_hand_computed_values():
    m = evaluate.summarize(R_PRED, R_TRUE)
    # Geodesic errors 9, 25, 55 deg (single-axis rotations).
    assert m["geodesic_mean"] == pytest.approx(89 / 3)
    assert m["geodesic_median"] == pytest.approx(25)
    assert m["geodesic_p90"] == pytest.approx(25 + 0.8 * 30)  # linear interpolation at rank 1.8
    assert m["within_10"] == pytest.approx(1 / 3)
    assert m["within_20"] == pytest.approx(1 / 3)
    assert m["within_30"] == pytest.approx(2 / 3)
    # A rotation by t about one axis moves the two other axes by t and leaves its own: 2t/3.
    assert m["maev"] == pytest.approx((2 * 9 / 3 + 2 * 25 / 3 + 2 * 55 / 3) / 3)
    assert m["mae_pitch"] == pytest.approx(55 / 3)
    assert m["mae_yaw"] == pytest.approx(25 / 3)
    assert m["mae_roll"] == pytest.approx(9 / 3)
    assert m["mae_mean"] == pytest.approx(89 / 9)
    assert m["n"] == 3


def test_summarize_uses_dataset_euler_angles_when_given():
    # The dataset's own angles: roll 359 deg (wrapped error against 9 deg: 10), yaw 31 (error
    # 31 against 0), pitch 50 (error 55 against -5).
    euler = np.radians([[0.0, 0.0, 359.0], [0.0, 31.0, 0.0], [50.0, 0.0, 0.0]])
    m = evaluate.summarize(R_PRED, R_TRUE, euler)
    assert m["mae_roll"] == pytest.approx(10 / 3)
    assert m["mae_yaw"] == pytest.approx(31 / 3)
    assert m["mae_pitch"] == pytest.approx(55 / 3)
    assert m["geodesic_mean"] == pytest.approx(89 / 3)  # matrices unchanged


def test_aflw_protocol_keeps_angles_within_99_degrees():
    euler = np.array([[0, 0, 0], [99, -99, 99], [-99.5, 0, 0], [0, 120, 0], [0, 0, -150]])
    assert evaluate.aflw_protocol_mask(euler).tolist() == [True, True, False, False, False]


@pytest.fixture(scope="module")
def base_set():
    from clerf_ray.render import make_renderer

    R = geometry.sample_rotations(10, seed=3)
    images = make_renderer("procedural", image_size=32).render(np.arange(10) + 2_000_000, R)
    return evaluate.EvalSet("renders", images, R, None, [f"r{i}" for i in range(10)])


def _z_angle(M):
    """Angle (deg) of M if it is a rotation about z, else None."""
    if abs(M[2, 2] - 1) > 1e-6 or np.abs(M[2, :2]).max() > 1e-6:
        return None
    return math.degrees(math.atan2(M[1, 0], M[0, 0]))


def _geo(A, B):
    return math.degrees(math.acos(np.clip((np.trace(A.T @ B) - 1) / 2, -1, 1)))


def test_sa_variant_rotates_each_image_and_label_together(base_set):
    from clerf_ray.augment import rotate

    v = evaluate.make_variant(base_set, "sa", seed=5)
    assert v.euler is None and v.files == base_set.files
    angles = []
    for i in range(len(base_set)):
        # An in-plane rotation by t (ccw as displayed) maps R to R Rz(-t): R^T R' is about z.
        a = _z_angle(base_set.R[i].T @ v.R[i])
        assert a is not None and abs(a) <= 15 + 1e-9
        angles.append(a)
        np.testing.assert_array_equal(v.images[i], rotate(base_set.images[i], np.eye(3), -a)[0])
    assert len({round(a, 6) for a in angles}) == len(angles)  # one draw per image


def test_fa_variant_labels_are_exact_transforms_that_keep_distances(base_set):
    S = np.diag([-1.0, 1.0, 1.0])
    v = evaluate.make_variant(base_set, "fa", seed=5)
    rng = np.random.default_rng(0)
    mirrored = 0
    for i in range(len(base_set)):
        R, Rv = base_set.R[i], v.R[i]
        # Flips and rotations compose to R Rz(a) (no net mirror) or S R S Rz(a) (one mirror).
        a = _z_angle(R.T @ Rv)
        if a is not None:

            def H(X, a=a):
                return X @ rz(a)
        else:
            a = _z_angle((S @ R @ S).T @ Rv)
            assert a is not None, f"sample {i}: label is not a flip/rotation of the original"
            mirrored += 1

            def H(X, a=a):
                return S @ X @ S @ rz(a)

        np.testing.assert_allclose(H(R), Rv, atol=1e-9)
        # Theorem 3.1: the transform keeps geodesic distances between any two labels.
        A, B = geometry.sample_rotations(2, seed=rng)
        assert _geo(H(A), H(B)) == pytest.approx(_geo(A, B), abs=1e-6)
        assert _geo(H(R), H(A)) == pytest.approx(_geo(R, A), abs=1e-6)
    assert 0 < mirrored < len(base_set)  # both kinds occur among 10 draws at p = 0.5


def test_variants_are_seeded(base_set):
    a = evaluate.make_variant(base_set, "fa", seed=1)
    b = evaluate.make_variant(base_set, "fa", seed=1)
    c = evaluate.make_variant(base_set, "fa", seed=2)
    np.testing.assert_array_equal(a.R, b.R)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.allclose(a.R, c.R)
    assert evaluate.make_variant(base_set, "standard") is base_set


# --------------------------------------------------------------------------- whole report


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


def test_report_on_a_parquet_set_with_protocol_table_and_mlflow(store, labelled_set, tmp_path):
    import mlflow
    import torch

    uri, model = store
    path, images, R = labelled_set
    report = evaluate.run_evaluation(
        ["tiny-head@candidate", "tiny-head/1"],
        path,
        variants=["standard", "fa"],
        aflw_protocol=True,
        out=tmp_path / "out",
        tracking_uri=uri,
        experiment="eval",
        plots=False,
    )
    assert [(r["model"], r["variant"]) for r in report.rows] == [
        ("tiny-head@candidate", "standard"),
        ("tiny-head/1", "standard"),
        ("tiny-head@candidate", "fa"),
        ("tiny-head/1", "fa"),
    ]
    assert all(r["n"] == 11 for r in report.rows)  # sample 4 (pitch 120) left out

    # Expected standard metrics straight from the model on the kept images, resized by hand.
    keep = [i for i in range(12) if i != 4]
    small = np.stack(
        [np.asarray(Image.fromarray(images[i]).resize((32, 32), Image.BILINEAR)) for i in keep]
    )
    with torch.no_grad():
        pred = model(model.preprocess(small)).double().numpy()
    true = R[keep].astype(np.float32).astype(np.float64)  # the set stores float32 labels
    err = [_geo(p, t) for p, t in zip(pred, true, strict=True)]
    row = report.rows[0]
    assert row["geodesic_mean"] == pytest.approx(np.mean(err), abs=1e-3)
    assert row["geodesic_median"] == pytest.approx(np.median(err), abs=1e-3)
    # 90th percentile of 11 errors, linear interpolation at rank 9.0 (0-based): the 10th smallest.
    assert row["geodesic_p90"] == pytest.approx(sorted(err)[9], abs=1e-3)
    assert report.rows[1]["geodesic_mean"] == row["geodesic_mean"]  # same model, two refs

    with open(tmp_path / "out" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and float(rows[0]["geodesic_mean"]) == pytest.approx(row["geodesic_mean"])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "AFLW2000 protocol" in md and "| tiny-head/1 | fa | 11 |" in md
    header, first = md.splitlines()[2], md.splitlines()[4]
    assert "geodesic p90" in header.split("|")[11]
    assert first.split("|")[11].strip() == f"{row['geodesic_p90']:.2f}"

    client = mlflow.MlflowClient(uri)
    run = client.get_run(report.run_ids["tiny-head@candidate"])
    assert run.data.tags["model_ref"] == "tiny-head@candidate"
    assert run.data.tags["model_version"] == "1"
    assert run.data.metrics["standard/geodesic_mean"] == pytest.approx(row["geodesic_mean"])
    assert "fa/mae_mean" in run.data.metrics


def test_report_plots_are_written(store, labelled_set, tmp_path):
    uri, _ = store
    path, _, _ = labelled_set
    report = evaluate.run_evaluation(
        ["tiny-head@candidate"],
        path,
        variants=["fa"],
        out=tmp_path,
        tracking_uri=uri,
        worst_k=4,
        turn="roll",
        log_mlflow=False,
    )
    pngs = [p for p in report.files if p.suffix == ".png"]
    assert {p.name for p in pngs} == {
        "tiny-head_candidate_fa_error_by_angle.png",
        "tiny-head_candidate_fa_worst.png",
        "tiny-head_candidate_turn_embedding.png",
    }
    for p in pngs:
        with Image.open(p) as im:
            assert im.width > 200 and im.height > 200


def test_turn_plot_shows_features_only_for_an_end_to_end_features_model():
    from clerf_ray.models import PoseModel, create_encoder, create_head_for

    def model(head_input, frozen):
        enc = create_encoder(
            backbone="resnet10t", image_size=32, embedding_dim=16, projection_hidden=32
        )
        head = create_head_for(enc, hidden=(8,), input=head_input)
        return PoseModel(enc, head, freeze_encoder=frozen)

    # The supervised baseline: its projection never trained, its features did.
    assert evaluate.turn_space(model("features", frozen=False)) == "features"
    # CLERF: the contrastive embedding, whatever its head reads.
    assert evaluate.turn_space(model("features", frozen=True)) == "embedding"
    assert evaluate.turn_space(model("embedding", frozen=True)) == "embedding"
    assert evaluate.turn_space(model("embedding", frozen=False)) == "embedding"


def test_report_errors_name_the_option(store, labelled_set, tmp_path):
    uri, _ = store
    path, _, _ = labelled_set
    with pytest.raises(ValueError, match="--variants"):
        evaluate.run_evaluation(["tiny-head@candidate"], path, variants=["xa"], tracking_uri=uri)
    with pytest.raises(LookupError, match="nope@candidate"):
        evaluate.run_evaluation(["nope@candidate"], path, tracking_uri=uri, out=tmp_path)
    with pytest.raises(FileNotFoundError):
        evaluate.run_evaluation(
            ["tiny-head@candidate"], str(tmp_path / "missing"), tracking_uri=uri, out=tmp_path
        )


# --------------------------------------------------------------------------- render settings


def test_render_settings_command_line_then_training_run_then_defaults():
    recorded = {
        "a@candidate": {},
        "b@candidate": {
            "renderer": "procedural",
            "renderer_options": {"lighting": "frontal", "image_size": 99},
            "identities": (5, 9),
        },
    }
    refs = ["a@candidate", "b@candidate"]
    r = evaluate.resolve_render_settings(refs, [32, 48], recorded=recorded)
    # The first model that recorded a value gives it; the render size is the largest input size.
    assert (r.renderer, r.renderer_options, r.image_size, r.identities) == (
        "procedural",
        {"lighting": "frontal"},
        48,
        (5, 9),
    )
    assert r.origin == {
        "renderer": "training run of b@candidate",
        "renderer_options": "training run of b@candidate",
        "image_size": "model config",
        "identities": "training run of b@candidate",
    }
    r = evaluate.resolve_render_settings(
        refs,
        [32],
        recorded=recorded,
        renderer_options={"background": "grey"},
        image_size=24,
        identities=(100, 102),
    )
    assert (r.renderer_options, r.image_size, r.identities) == (
        {"background": "grey"},
        24,
        (100, 102),
    )
    assert set(r.origin.values()) == {"command line", "training run of b@candidate"}
    r = evaluate.resolve_render_settings(["a@candidate"], [32], recorded=recorded)
    assert (r.renderer, r.renderer_options, r.identities) == (
        "procedural",
        {},
        (2_000_000, 2_100_000),
    )
    assert r.describe() == (
        "renderer procedural, 32 px, identities [2000000, 2100000) (renderer, renderer_options, "
        "identities from default; image_size from model config)"
    )
    with pytest.raises(ValueError, match="--identities"):
        evaluate.resolve_render_settings(refs, [32], identities=(7, 8))
    with pytest.raises(ValueError, match="--renderer.*nope"):
        evaluate.resolve_render_settings(refs, [32], renderer="nope")


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


def test_recorded_render_settings_read_the_training_run(store, recorded_model):
    from clerf_ray import registry

    registry.setup(store[0])
    assert evaluate.recorded_render_settings(recorded_model) == {
        "renderer": "procedural",
        "renderer_options": {},
        "identities": (2_000_700, 2_000_702),
    }
    assert evaluate.recorded_render_settings("tiny-head@candidate") == {}  # run logged no params


def test_cli_evaluate_on_synthetic_renders_with_sa(
    ray_cluster, store, recorded_model, tmp_path, capsys
):
    """`clerf evaluate --data synthetic` end to end: renders of the identities the training run
    recorded, at the size and with the options given on the command line, standard and SA."""
    from clerf_ray.cli import main
    from clerf_ray.render import make_renderer

    uri, model = store
    out = tmp_path / "eval"
    rc = main(
        [
            "evaluate",
            "--model",
            recorded_model,
            "--data",
            "synthetic",
            "--variants",
            "standard,sa",
            "--num-samples",
            "8",
            "--seed",
            "3",
            "--image-size",
            "24",
            "--renderer-option",
            "lighting=frontal",
            "--renderer-option",
            "background=grey",
            "--no-plots",
            "--out",
            str(out),
            "--tracking-uri",
            uri,
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"| {recorded_model} | sa | 8 |" in printed

    md = (out / "results.md").read_text()
    assert "Evaluation on `synthetic`, 8 samples" in md
    assert (
        "Renders: renderer procedural {'lighting': 'frontal', 'background': 'grey'}, 24 px, "
        "identities [2000700, 2000702) (renderer, identities from training run of "
        "tiny-trained@candidate; renderer_options, image_size from command line)."
    ) in md

    # The set those settings describe: with frontal light and a grey background a render
    # depends only on identity and pose, so every image must be one of the two recorded
    # identities drawn at its label, and both identities must occur (two per pair).
    base = evaluate.synthetic_set(
        8,
        24,
        seed=3,
        identities=(2_000_700, 2_000_702),
        renderer_options={"lighting": "frontal", "background": "grey"},
    )
    r = make_renderer("procedural", image_size=24, lighting="frontal", background="grey")
    diffs = np.stack(
        [
            np.abs(r.render(np.full(8, i), base.R).astype(float) - base.images).mean(axis=(1, 2, 3))
            for i in (2_000_700, 2_000_701)
        ]
    )
    assert (diffs.min(axis=0) < 1.0).all() and (diffs.max(axis=0) > 5.0).all()
    assert set(diffs.argmin(axis=0)) == {0, 1}

    # Expected errors from the model run directly on those images and on their SA variant.
    with open(out / "results.csv") as f:
        rows = {row["variant"]: row for row in csv.DictReader(f)}
    for variant in ("standard", "sa"):
        vset = evaluate.make_variant(base, variant, seed=3)
        with torch_no_grad():
            pred = model(model.preprocess(vset.images)).double().numpy()
        err = [_geo(p, t) for p, t in zip(pred, vset.R, strict=True)]
        assert float(rows[variant]["geodesic_mean"]) == pytest.approx(np.mean(err), abs=1e-3)
        assert float(rows[variant]["geodesic_p90"]) == pytest.approx(
            np.percentile(err, 90), abs=1e-3
        )
        assert int(rows[variant]["n"]) == 8


def torch_no_grad():
    import torch

    return torch.no_grad()


def test_heldout_renders_come_in_one_order_whatever_order_ray_returns(ray_cluster):
    """Ray hands rows back in the order its tasks finish; the held-out set (and so the per-index
    draws of the SA/FA variants) must not depend on it: rows are ordered by their labels."""
    from clerf_ray.config import PairDataConfig
    from clerf_ray.evaluate import heldout_renders

    cfg = PairDataConfig.from_defaults(
        renderer_options={"image_size": 16, "supersample": 1},
        identities=(2_000_000, 2_000_100),
        augment="fa",
        seed=5,
        render_batch_size=2,
        render_num_cpus=0.25,
        stage_num_cpus=0.1,
    )
    images, R = heldout_renders(cfg, 7)
    assert images.shape == (7, 16, 16, 3) and R.shape == (7, 3, 3)
    keys = [r.astype(np.float32).tobytes() for r in R]  # the rows carry float32 labels
    assert keys == sorted(keys)
    images2, R2 = heldout_renders(cfg, 7)
    np.testing.assert_array_equal(R2, R)
    np.testing.assert_array_equal(images2, images)
