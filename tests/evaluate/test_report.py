"""The whole report on a labelled Parquet set with a real sqlite MLflow store, its plots and errors, render settings read back from a training run, and `clerf evaluate` end to end."""

import csv

import numpy as np
import pytest
from PIL import Image

from clerf_ray import evaluate

from .common import _geo


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
