"""``clerf predict``: the JSON-lines contract, agreement with ``evaluate`` on renders of held-out
identities, broken files among good ones, boxes, Ray Data batch inference over a directory, and
the axes drawing checked against the label convention by hand.

The model is a tiny registered ``PoseModel`` with random weights: its predictions are known by
running it directly, which is what the command must reproduce (a trained model is too slow to
make here, so pose recovery itself is not tested; see the agreement test)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from clerf_ray import evaluate, geometry
from clerf_ray.cli import main
from clerf_ray.plots import draw_pose_axes
from clerf_ray.predict import out_names, read_boxes

# The heads these tests build read the L2-normalised embedding, unstandardised (the config's
# default head reads the backbone features).
EMB = {"input": "embedding", "standardize": False}

REF = "tiny-head@candidate"


@pytest.fixture(scope="module")
def store(tmp_path_factory, fresh_store):
    import mlflow

    from clerf_ray import registry
    from clerf_ray.models import PoseModel, create_encoder, create_head

    d = tmp_path_factory.mktemp("store")
    uri = fresh_store(d)
    torch.manual_seed(0)
    enc = create_encoder(
        backbone="resnet10t", image_size=32, embedding_dim=16, projection_hidden=32
    )
    model = PoseModel(enc, create_head(EMB, in_dim=16, hidden=(32,))).eval()
    with mlflow.start_run() as run:
        src = registry.log_model(model, "pose_model")
    registry.register("tiny-head", src, run.info.run_id)
    return uri, model


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    """Six renders of held-out identities (32 px PNG files) and their labels."""
    from clerf_ray.render import make_renderer

    d = tmp_path_factory.mktemp("faces")
    R = geometry.sample_rotations(6, seed=11)
    images = make_renderer("procedural", image_size=32).render(np.arange(6) + 2_000_000, R)
    files = []
    for i, im in enumerate(images):
        files.append(str(d / f"face{i}.png"))
        Image.fromarray(im).save(files[-1])
    return d, files, images, R


def _direct(model, images):
    with torch.no_grad():
        return model(model.preprocess(images)).double().numpy()


def _lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_lines_contract_and_broken_file_among_good_ones(store, renders, tmp_path, capsys):
    uri, model = store
    d, files, images, _ = renders
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    out = tmp_path / "annotated"
    args = ["predict", files[0], str(broken), files[1], "--model", REF, "--tracking-uri", uri]
    rc = main(args + ["--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 1
    assert "broken.jpg" in cap.err and "not a readable image" in cap.err
    recs = _lines(cap.out)
    assert [r["file"] for r in recs] == [files[0], files[1]]
    expected = _direct(model, images[:2])
    for rec, R_exp in zip(recs, expected, strict=True):
        assert set(rec) == {"file", "pitch", "yaw", "roll", "R"}
        R = np.asarray(rec["R"])
        np.testing.assert_allclose(R, R_exp, atol=1e-5)
        # R = Rz(roll) Ry(yaw) Rx(pitch) is scipy's intrinsic "ZYX" sequence (roll, yaw, pitch).
        roll, yaw, pitch = Rotation.from_matrix(R).as_euler("ZYX", degrees=True)
        assert (rec["pitch"], rec["yaw"], rec["roll"]) == pytest.approx(
            (pitch, yaw, roll), abs=1e-4
        )
    assert sorted(p.name for p in out.iterdir()) == ["face0_pose.png", "face1_pose.png"]


def test_all_good_files_exit_zero(store, renders, capsys):
    uri, _ = store
    _, files, _, _ = renders
    assert main(["predict", *files[:2], "--model", REF, "--tracking-uri", uri]) == 0
    assert len(_lines(capsys.readouterr().out)) == 2


def test_predict_agrees_with_evaluate_on_heldout_renders(store, renders, capsys):
    """`clerf predict` and `clerf evaluate` compute the same thing: on renders of held-out
    identities, the rotations predict prints equal evaluate's predictions, and their geodesic
    error against the true labels (computed here by hand) equals the error evaluate reports.

    It does not check that the poses are recovered well: the model has random weights, so the
    error is large. Recovery within the reported error by a trained model needs a training run,
    too slow for these tests; this test makes sure the two commands cannot disagree about it."""
    uri, model = store
    _, files, images, R = renders
    assert main(["predict", *files, "--model", REF, "--tracking-uri", uri]) == 0
    R_cli = np.asarray([r["R"] for r in _lines(capsys.readouterr().out)])
    np.testing.assert_allclose(R_cli, evaluate.predict(model, images), atol=1e-5)
    cli_error = np.mean(
        [
            math.degrees(math.acos(np.clip((np.trace(a.T @ b) - 1) / 2, -1, 1)))
            for a, b in zip(R_cli, R, strict=True)
        ]
    )
    reported = evaluate.summarize(evaluate.predict(model, images), R)["geodesic_mean"]
    assert cli_error == pytest.approx(reported, abs=1e-3)


def test_boxes_crop_whole_images(store, renders, tmp_path, capsys):
    uri, model = store
    _, _, images, _ = renders
    canvas = np.full((80, 90, 3), 40, np.uint8)
    canvas[20:52, 10:42] = images[2]
    Image.fromarray(canvas).save(tmp_path / "whole.png")
    (tmp_path / "boxes.json").write_text(json.dumps({"whole.png": [10, 20, 42, 52]}))
    rc = main(
        [
            "predict",
            str(tmp_path / "whole.png"),
            "--boxes",
            str(tmp_path / "boxes.json"),
            "--model",
            REF,
            "--tracking-uri",
            uri,
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 0
    (rec,) = _lines(capsys.readouterr().out)
    np.testing.assert_allclose(np.asarray(rec["R"]), _direct(model, images[2:3])[0], atol=1e-5)
    with Image.open(tmp_path / "o" / "whole_pose.png") as im:
        assert im.size == (90, 80)  # axes drawn on the whole image


def test_read_boxes_csv_and_errors(tmp_path):
    p = tmp_path / "b.csv"
    p.write_text("file,x0,y0,x1,y1\na.jpg,1,2,30,40\ndir/b.png,0,0,10.4,12\n")
    assert read_boxes(str(p)) == {"a.jpg": (1, 2, 30, 40), "dir/b.png": (0, 0, 10, 12)}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a.jpg": [5, 5, 2, 9]}))
    with pytest.raises(ValueError, match="bad.json.*a.jpg"):
        read_boxes(str(bad))


def test_directory_goes_through_ray_data(ray_cluster, store, renders, tmp_path, capsys):
    import shutil

    uri, model = store
    _, files, images, _ = renders
    d = tmp_path / "dir"
    d.mkdir()
    for f in files[:3]:
        shutil.copy(f, d)
    (d / "notes.txt").write_text("not an image")
    rc = main(["predict", str(d), "--model", REF, "--tracking-uri", uri, "--num-cpus", "0.25"])
    cap = capsys.readouterr()
    assert rc == 1 and "notes.txt" in cap.err
    recs = _lines(cap.out)
    assert [r["file"].rsplit("/", 1)[-1] for r in recs] == ["face0.png", "face1.png", "face2.png"]
    np.testing.assert_allclose(
        np.asarray([r["R"] for r in recs]), _direct(model, images[:3]), atol=1e-5
    )


def test_s3_prefix_goes_through_ray_data(ray_cluster, s3, store, renders, capsys):
    """``clerf predict s3://bucket/prefix/``: the files are listed and read from the session's
    loopback S3 server by Ray Data's workers (through the AWS variables Ray runs with); a file
    that is not an image is reported and the others predicted."""
    import boto3

    uri, model = store
    _, files, images, _ = renders
    client = boto3.client("s3")
    for f in files[3:]:
        client.upload_file(f, s3["bucket"], f"predict/faces/{Path(f).name}")
    client.put_object(Bucket=s3["bucket"], Key="predict/faces/notes.txt", Body=b"not an image")
    prefix = f"s3://{s3['bucket']}/predict/faces/"
    rc = main(["predict", prefix, "--model", REF, "--tracking-uri", uri, "--num-cpus", "0.25"])
    cap = capsys.readouterr()
    assert rc == 1 and "notes.txt" in cap.err
    recs = _lines(cap.out)
    names = [r["file"].rsplit("/", 1)[-1] for r in recs]
    assert names == ["face3.png", "face4.png", "face5.png"]
    assert all(r["file"].startswith(f"{s3['bucket']}/predict/faces/") for r in recs), recs
    np.testing.assert_allclose(
        np.asarray([r["R"] for r in recs]), _direct(model, images[3:]), atol=1e-5
    )


def _colour_at(image, x, y):
    return tuple(int(v) for v in image[y, x])


def test_axes_follow_the_label_convention():
    black = np.zeros((65, 65, 3), np.uint8)
    # Frontal head: x to the image's right (red), y down toward the chin (green); z points away
    # from the viewer and projects onto the centre.
    im = draw_pose_axes(black, np.eye(3), length=20, width=1)
    assert _colour_at(im, 32 + 15, 32)[0] > 200 and _colour_at(im, 32 - 15, 32) == (0, 0, 0)
    assert _colour_at(im, 32, 32 + 15)[1] > 150 and _colour_at(im, 32, 32 - 15) == (0, 0, 0)
    # Yaw +90 deg turns the nose toward the image's left, so the back of the head (+z) points
    # right: blue to the right of the centre, and x now points at the viewer.
    Ry90 = np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])
    im = draw_pose_axes(black, Ry90, length=20, width=1)
    assert _colour_at(im, 32 + 15, 32)[2] > 200
    assert _colour_at(im, 32 - 15, 32) == (0, 0, 0)


def test_out_names_keep_same_named_inputs_apart():
    assert out_names(["a/face.png", "b/face.png", "c/other.jpg"]) == [
        "a__face_pose.png",
        "b__face_pose.png",
        "other_pose.png",
    ]
    # Same folder, same stem: the extension tells them apart; a deeper clash takes more folders.
    assert out_names(["x/a.jpg", "x/a.png", "/t/y/a.jpg", "p/q/f.png", "s3://b/r/q/f.png"]) == [
        "x__a.jpg_pose.png",
        "x__a.png_pose.png",
        "y__a_pose.png",
        "p__q__f_pose.png",
        "r__q__f_pose.png",
    ]
    assert out_names(["d/a.png", "d/a.png"]) == ["a_pose.png", "a_pose-2.png"]


def test_same_named_inputs_in_two_folders_get_two_annotated_images(
    store, renders, tmp_path, capsys
):
    uri, _ = store
    _, _, images, _ = renders
    for folder, i in (("left", 0), ("right", 1)):
        (tmp_path / folder).mkdir()
        Image.fromarray(images[i]).save(tmp_path / folder / "face.png")
    out = tmp_path / "o"
    files = [str(tmp_path / "left" / "face.png"), str(tmp_path / "right" / "face.png")]
    rc = main(["predict", *files, "--model", REF, "--tracking-uri", uri, "--out", str(out)])
    assert rc == 0
    assert len(_lines(capsys.readouterr().out)) == 2
    assert sorted(p.name for p in out.iterdir()) == ["left__face_pose.png", "right__face_pose.png"]
    # Each annotated image is its own input with axes drawn: most pixels are the input's.
    for folder, i in (("left", 0), ("right", 1)):
        with Image.open(out / f"{folder}__face_pose.png") as im:
            drawn = np.asarray(im.convert("RGB"))
        assert (drawn == images[i]).all(axis=-1).mean() > 0.5
        assert (drawn == images[1 - i]).all(axis=-1).mean() < (drawn == images[i]).all(
            axis=-1
        ).mean()


def test_whole_image_without_a_box_fails_clearly(store, renders, tmp_path, capsys):
    uri, model = store
    _, _, images, _ = renders
    canvas = np.full((80, 90, 3), 40, np.uint8)
    canvas[20:52, 10:42] = images[2]
    Image.fromarray(canvas).save(tmp_path / "boxed.png")
    Image.fromarray(canvas).save(tmp_path / "unboxed.png")
    (tmp_path / "boxes.json").write_text(json.dumps({"boxed.png": [10, 20, 42, 52]}))
    args = ["predict", str(tmp_path / "boxed.png"), str(tmp_path / "unboxed.png")]
    rc = main(
        args + ["--boxes", str(tmp_path / "boxes.json"), "--model", REF, "--tracking-uri", uri]
    )
    cap = capsys.readouterr()
    assert rc == 1
    (rec,) = _lines(cap.out)  # the boxed image only
    assert rec["file"].endswith("boxed.png")
    np.testing.assert_allclose(np.asarray(rec["R"]), _direct(model, images[2:3])[0], atol=1e-5)
    errors = [line for line in cap.err.splitlines() if "unboxed.png" in line]
    assert errors and "no face box" in errors[0] and "--boxes" in errors[0]
    assert "1 of 2 input(s) failed" in cap.err


def test_missing_champion_says_to_promote_or_use_the_candidate(store, tmp_path, renders):
    """Right after training only `candidate` is set; the default clerf-head@champion must say
    how to go on."""
    import mlflow

    from clerf_ray import registry

    uri, model = store
    _, files, _, _ = renders
    registry.setup(uri, "train")
    with mlflow.start_run() as run:
        src = registry.log_model(model, "pose_model")
    registry.register("clerf-head", src, run.info.run_id)  # alias candidate, as training does
    with pytest.raises(SystemExit) as e:
        main(["predict", files[0], "--tracking-uri", uri])  # default --model clerf-head@champion
    msg = str(e.value.code)
    assert "clerf-head@champion" in msg and "not found" in msg
    assert "clerf promote clerf-head 1" in msg
    assert "--model clerf-head@candidate" in msg
    # A model that does not exist at all gets the plain message, without a made-up hint.
    with pytest.raises(SystemExit) as e:
        main(["predict", files[0], "--tracking-uri", uri, "--model", "nothing@champion"])
    assert "nothing@champion" in str(e.value.code) and "promote" not in str(e.value.code)
