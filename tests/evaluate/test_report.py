"""The whole report on a labelled Parquet set with a real sqlite MLflow store, its plots and errors, render settings read back from a training run, and `clerf evaluate` end to end."""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clerf_ray import evaluate

from .common import _geo, rz


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


def test_cli_evaluate_reads_a_labelled_set_from_s3(s3, store, labelled_set, tmp_path, capsys):
    """``clerf evaluate --data s3://...``: the set's shards, uploaded to the session's loopback S3
    server, are read through the AWS variables; the errors are the model's on the stored images,
    computed here."""
    import boto3
    import torch

    from clerf_ray.cli import main

    uri, model = store
    path, images, R = labelled_set
    client = boto3.client("s3")
    shards = sorted(p for p in Path(path).rglob("*") if p.is_file())
    assert any(p.suffix == ".parquet" for p in shards)
    for f in shards:
        client.upload_file(str(f), s3["bucket"], f"eval/set/{f.relative_to(path)}")
    out = tmp_path / "eval"
    rc = main(
        [
            "evaluate",
            "--model",
            "tiny-head@candidate",
            "--data",
            f"s3://{s3['bucket']}/eval/set",
            "--variants",
            "standard",
            "--no-plots",
            "--out",
            str(out),
            "--tracking-uri",
            uri,
        ]
    )
    assert rc == 0, capsys.readouterr().err
    with open(out / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    small = np.stack(
        [np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR)) for im in images]
    )
    with torch.no_grad():
        pred = model(model.preprocess(small)).double().numpy()
    true = R.astype(np.float32).astype(np.float64)  # the set stores float32 labels
    err = [_geo(p, t) for p, t in zip(pred, true, strict=True)]
    assert int(row["n"]) == 12
    assert float(row["geodesic_mean"]) == pytest.approx(np.mean(err), abs=1e-3)
    assert float(row["geodesic_median"]) == pytest.approx(np.median(err), abs=1e-3)


def _euler_deg(R):
    """(N, 3) (pitch, yaw, roll) degrees of R = Rz(roll) Ry(yaw) Rx(pitch), |yaw| < 90 (by hand,
    not geometry.matrix_to_euler)."""
    R = np.asarray(R, dtype=np.float64)
    pitch = np.arctan2(R[:, 2, 1], R[:, 2, 2])
    yaw = np.arcsin(np.clip(-R[:, 2, 0], -1, 1))
    roll = np.arctan2(R[:, 1, 0], R[:, 0, 0])
    return np.degrees(np.stack([pitch, yaw, roll], -1))


def _wrapped_mae(pred_deg, true_deg):
    """Per-angle mean of |difference| wrapped into [0, 180]: (pitch, yaw, roll)."""
    d = np.abs(np.asarray(pred_deg, dtype=np.float64) - true_deg) % 360.0
    return np.minimum(d, 360.0 - d).mean(axis=0)


def _check_mae(row, expected):
    for k, v in zip(("mae_pitch", "mae_yaw", "mae_roll"), expected, strict=True):
        assert float(row[k]) == pytest.approx(v, abs=1e-3), (k, row[k], v)
    assert float(row["mae_mean"]) == pytest.approx(np.mean(expected), abs=1e-3)


def test_report_mae_against_the_sets_own_angles(store, euler_set, tmp_path):
    """On a Parquet set the MAE columns compare with the stored ``euler_deg`` (here another
    triple of the same rotation, or wrapped by 360), the SA variant's with its transformed labels'
    own angles; the AFLW2000 protocol filters by the stored angles."""
    import torch

    uri, model = store
    path, images, R, stored = euler_set
    with torch.no_grad():
        pred = model(model.preprocess(images)).double().numpy()
    pred_deg = _euler_deg(pred)
    report = evaluate.run_evaluation(
        ["tiny-head@candidate"],
        path,
        variants=["standard", "sa"],
        out=tmp_path / "all",
        tracking_uri=uri,
        plots=False,
        log_mlflow=False,
    )
    expected = _wrapped_mae(pred_deg, stored)
    # The fixture has teeth: against the labels' own angles the MAE is far off.
    assert np.abs(_wrapped_mae(pred_deg, _euler_deg(R)) - expected).min() > 10
    std, sa = report.rows
    assert (std["variant"], std["n"], sa["variant"], sa["n"]) == ("standard", 6, "sa", 6)
    _check_mae(std, expected)
    with open(tmp_path / "all" / "results.csv") as f:
        _check_mae(next(csv.DictReader(f)), expected)
    first = (tmp_path / "all" / "results.md").read_text().splitlines()[4].split("|")
    assert [c.strip() for c in first[4:8]] == [f"{v:.2f}" for v in [*expected, expected.mean()]]

    # SA: the set's labels turned in-plane; the reference is their own angles (the stored
    # ones describe the untransformed labels). Images and labels of the variant as the report
    # makes them (tests/evaluate/test_test_sets.py checks that they agree).
    v = evaluate.make_variant(evaluate.EvalSet("x", images, R), "sa", seed=0)
    with torch.no_grad():
        pred_sa = model(model.preprocess(v.images)).double().numpy()
    _check_mae(sa, _wrapped_mae(_euler_deg(pred_sa), _euler_deg(v.R)))

    # AFLW2000 protocol by the stored angles: rows 1, 3, 5 (the labels' own: 0, 3, 5).
    report = evaluate.run_evaluation(
        ["tiny-head@candidate"],
        path,
        variants=["standard"],
        aflw_protocol=True,
        out=tmp_path / "aflw",
        tracking_uri=uri,
        plots=False,
        log_mlflow=False,
    )
    (row,) = report.rows
    keep = [1, 3, 5]
    assert row["n"] == 3
    _check_mae(row, _wrapped_mae(pred_deg[keep], stored[keep]))
    err = [_geo(p, t) for p, t in zip(pred[keep], R[keep], strict=True)]
    assert row["geodesic_mean"] == pytest.approx(np.mean(err), abs=1e-3)


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
    recorded, at the size and with the options given on the command line, standard, SA and FA."""
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
            "standard,sa,fa",
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

    # Expected errors from the model run directly on those images and on their SA and FA
    # variants, rebuilt here without make_variant (whose images and labels
    # tests/evaluate/test_test_sets.py checks against the renderer).
    with open(out / "results.csv") as f:
        rows = {row["variant"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"standard", "sa", "fa"}
    for variant in ("standard", "sa", "fa"):
        images, labels = _variant_by_hand(base.images, base.R, variant, seed=3)
        with torch_no_grad():
            pred = model(model.preprocess(images)).double().numpy()
        err = [_geo(p, t) for p, t in zip(pred, labels, strict=True)]
        assert float(rows[variant]["geodesic_mean"]) == pytest.approx(np.mean(err), abs=1e-3)
        assert float(rows[variant]["geodesic_p90"]) == pytest.approx(
            np.percentile(err, 90), abs=1e-3
        )
        assert float(rows[variant]["mae_mean"]) == pytest.approx(
            _wrapped_mae(_euler_deg(pred), _euler_deg(labels)).mean(), abs=1e-3
        )
        assert int(rows[variant]["n"]) == 8


def _variant_by_hand(images, R, preset, seed):
    """The SA / FA variant rebuilt without make_variant: the draw of sample i from the generator
    keyed by (seed, salt, i) that make_variant documents, then numpy flips, ``augment.rotate``
    for the turn, and labels written out from the frame convention (DESIGN.md): a mirror x -> -x
    maps R to S R S, a mirror y -> -y to S R S Rz(180), a turn of the image by t counterclockwise
    as displayed to R Rz(-t)."""
    from clerf_ray.augment import GeometricAugment, rotate
    from clerf_ray.evaluate.test_sets import _VARIANT_SALT

    if preset == "standard":
        return images, R
    S = np.diag([-1.0, 1.0, 1.0])
    aug = GeometricAugment.preset(preset)
    out_images, out_R = [], []
    for i in range(len(R)):
        degrees, h, v = aug.draw(np.random.default_rng([seed, _VARIANT_SALT, i]))
        im, lab = images[i], R[i]
        if h:
            im, lab = im[:, ::-1], S @ lab @ S
        if v:
            im, lab = im[::-1], S @ lab @ S @ rz(180)
        out_images.append(rotate(np.ascontiguousarray(im), np.eye(3), degrees)[0])
        out_R.append(lab @ rz(-degrees))
    return np.stack(out_images), np.stack(out_R)


def torch_no_grad():
    import torch

    return torch.no_grad()


def test_views_override_predicts_with_the_views_asked_for(store, labelled_set, tmp_path):
    """``views=8`` (``clerf evaluate --views 8``) on a model registered with one view: the
    errors are those of that model with 8 views, predicted here on the resized images, not the
    single view's; the report names the views; a value PoseModel lacks is refused."""
    import copy

    import torch

    uri, model = store
    path, images, R = labelled_set
    small = np.stack(
        [np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR)) for im in images]
    )
    true = R.astype(np.float32).astype(np.float64)
    by_views = {}
    for views in (1, 8):
        m = copy.deepcopy(model)
        m.views = views
        with torch.no_grad():
            pred = m(m.preprocess(small)).double().numpy()
        by_views[views] = np.mean([_geo(p, t) for p, t in zip(pred, true, strict=True)])
    assert abs(by_views[8] - by_views[1]) > 0.1  # the views change the answer
    report = evaluate.run_evaluation(
        ["tiny-head@candidate"],
        path,
        variants=["standard"],
        out=tmp_path / "out",
        tracking_uri=uri,
        plots=False,
        log_mlflow=False,
        views=8,
    )
    assert report.rows[0]["geodesic_mean"] == pytest.approx(by_views[8], abs=1e-3)
    assert (
        "test-time views: tiny-head@candidate 8." in (tmp_path / "out" / "results.md").read_text()
    )
    with pytest.raises(ValueError, match="--views: 4 is not one of"):
        evaluate.run_evaluation(["tiny-head@candidate"], path, tracking_uri=uri, views=4)
