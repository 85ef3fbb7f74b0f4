"""A pose head on a registered encoder (clerf_ray.runs.head_on_registered) through jobs/train_head.py."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from clerf_ray.config import load_config
from clerf_ray.train import common


def _load_job(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "jobs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"job_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _register_random_encoder(seed: int, version: str):
    """A random-init encoder (16-d embedding, 32 px) registered as ``clerf-encoder``, expected
    to become ``version``; returns it."""
    import mlflow

    from clerf_ray import registry
    from clerf_ray.models import create_encoder

    torch.manual_seed(seed)
    enc = create_encoder(
        backbone="resnet10t", embedding_dim=16, projection_hidden=32, image_size=32
    )
    with mlflow.start_run() as run:
        src = registry.log_model(enc, "encoder")
        assert registry.register("clerf-encoder", src, run.info.run_id) == version
    return enc


def test_train_head_job_on_registered_encoder(ray_cluster, tmp_path, monkeypatch, capsys):
    """``jobs/train_head.py --encoder clerf-encoder@candidate``: the encoder is a registered
    random-init stand-in (no pretraining, to keep the test short). The head trains on one draw
    of un-augmented renders, so that its training images are known here and the input
    standardisation it registered can be checked against their features, computed with numpy.
    (That check rides on this job because every Ray Train run costs 20-30 s of start-up here.)"""
    import mlflow

    from clerf_ray import registry
    from clerf_ray.evaluate import evaluate_model, heldout_renders
    from clerf_ray.models import PoseModel

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        registry.setup(uri, "head-job-test")
        enc = _register_random_encoder(seed=0, version="1")
        job = _load_job("train_head")
        # A missing encoder fails before any training, naming the reference.
        assert (
            job.main(["--encoder", "clerf-encoder@champion", f"tracking.tracking_uri={uri}"]) == 2
        )
        assert "'clerf-encoder@champion'" in capsys.readouterr().err

        overrides = [
            f"tracking.tracking_uri={uri}",
            f"storage_path={tmp_path / 'runs'}",
            "run_name=headjob",
            "model.embedding_dim=64",  # the registered encoder's 16 wins
            "data.render_num_cpus=0.25",
            "data.stage_num_cpus=0.1",
            "data.render_batch_size=16",
            "model.head_hidden=[16]",
            "head.epochs=1",
            "head.num_samples=16",
            "head.draws=1",
            "data.augment=none",
            "model.head_input=features",
            "model.head_standardize=true",
            "head.batch_size=8",
            "head.cpus_per_worker=0.5",
            "head.torch_threads=1",
            "head.use_gpu=false",
            "eval.num_samples=12",
            # float32 encoder actors: the statistics are checked against float32 features to
            # 1e-4 below (bfloat16's agreement is tested in tests/train/test_precision.py).
            "pretrain.amp=false",
        ]
        assert job.main(["--encoder", "clerf-encoder@candidate", *overrides]) == 0
        out = capsys.readouterr().out
        assert "CLERF head summary" in out
        assert "models:/clerf-encoder/1" in out and "models:/clerf-head/1 (alias candidate)" in out

        mv = registry.model_version("clerf-head@candidate")
        assert str(mv.version) == "1"
        assert mv.tags["encoder_name"] == "clerf-encoder" and mv.tags["encoder_version"] == "1"
        model = registry.load_registered("clerf-head@candidate")
        assert isinstance(model, PoseModel)
        # The encoder inside the registered head is the registered encoder, untouched.
        assert model.encoder.config.embedding_dim == 16
        assert common.parameter_checksum(model.encoder) == common.parameter_checksum(enc)
        # The error the job reported is what the registered model gives on the same renders.
        median = float(re.search(r"median\s+([0-9.]+) deg", out).group(1))
        cfg = load_config(None, overrides + ["data.image_size=32"])
        eval_cfg = cfg.data.pair_config(
            seed=cfg.seed + 2, identities=cfg.eval.identities, augment="fa", source="synthetic"
        )
        images, R = heldout_renders(eval_cfg, cfg.eval.num_samples)
        assert len(images) == 12 and images.shape[1] == 32
        assert evaluate_model(model, images, R)["geodesic_median"] == pytest.approx(
            median, abs=0.006
        )
        assert float(mv.tags["geodesic_median"]) == pytest.approx(median, abs=0.006)

        # The head's input standardisation holds the statistics of what it trained on: the
        # frozen encoder's pooled features of the head's training images (one draw of
        # un-augmented renders: exactly the renders).
        from clerf_ray.train.head import head_images

        train_images = np.stack([np.asarray(r["image"]) for r in head_images(cfg).take_all()])
        assert train_images.shape == (16, 32, 32, 3)
        with torch.no_grad():
            z = enc.eval().features(enc.preprocess(train_images)).double().numpy()
        assert z.shape == (16, 512)
        # Population std, floored at set_input_stats' 1e-6: a random-init resnet10t on 32 px
        # images leaves some pooled channels at zero for every image.
        mean, std = z.mean(axis=0), np.maximum(z.std(axis=0), 1e-6)
        assert (std > 1e-3).sum() > 100  # most channels vary: the statistics are not the defaults
        head = model.head
        np.testing.assert_allclose(head.input_mean.double().numpy(), mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(head.input_std.double().numpy(), std, rtol=1e-4, atol=1e-6)
        # And the model standardises with them: the head's first layer sees standardised
        # features.
        with torch.no_grad():
            x = torch.from_numpy(((z - mean) / std).astype(np.float32))
            want = head.mlp(x) + head.offset
            got = head.forward_6d(torch.from_numpy(z.astype(np.float32)))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

        # The head's Ray Train run is named by the encoder it fits (its parameter checksum,
        # computed here from the registered encoder): the same run name on another encoder (as
        # after more pretraining) trains a new head instead of resuming this one, fitted to the
        # first encoder's features (a second job would show it at the cost of a whole run; that
        # a same-name rerun resumes is tested in tests/train/test_train_ray.py).
        runs = sorted(d.name for d in (tmp_path / "runs").iterdir() if d.name.startswith("headjob"))
        assert runs == [f"headjob-head-{common.parameter_checksum(enc)[:12]}"], runs
        other = _register_random_encoder(seed=1, version="2")
        assert common.parameter_checksum(other)[:12] != common.parameter_checksum(enc)[:12]
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
