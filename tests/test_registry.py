"""MLflow registry round trip on a real sqlite store in tmp_path: log, register, load by alias,
promote, lookup errors, and the ``clerf promote`` command."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from clerf_ray import registry
from clerf_ray.cli import main as clerf
from clerf_ray.models import PoseModel, create_encoder, create_head

# The heads these tests build read the L2-normalised embedding, unstandardised (the config's
# default head reads the backbone features).
EMB = {"input": "embedding", "standardize": False}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh sqlite tracking + registry store; artifacts under tmp_path (the cwd)."""
    monkeypatch.chdir(tmp_path)
    return registry.setup(f"sqlite:///{tmp_path}/mlflow.db", experiment="registry-test")


def _models(seed: int):
    torch.manual_seed(seed)
    enc = create_encoder(
        backbone="resnet10t", embedding_dim=16, projection_hidden=32, image_size=32
    ).eval()
    head = create_head(EMB, in_dim=16, hidden=(16,))
    return enc, PoseModel(enc, head, freeze_encoder=True).eval()


def _images(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _log_and_register(seed: int):
    enc, model = _models(seed)
    with mlflow.start_run() as run:
        enc_uri = registry.log_model(enc, "encoder")
        head_uri = registry.log_model(model, "pose_model")
        v_enc = registry.register("clerf-encoder", enc_uri, run.info.run_id)
        v_head = registry.register(
            "clerf-head",
            head_uri,
            run.info.run_id,
            tags={"encoder_name": "clerf-encoder", "encoder_version": v_enc},
        )
    return enc, model, v_enc, v_head


def test_register_load_by_alias_same_predictions(store, tmp_path):
    enc, model, v_enc, v_head = _log_and_register(seed=0)
    assert (v_enc, v_head) == ("1", "1")
    assert Path(store.removeprefix("sqlite:///")) == tmp_path / "mlflow.db"

    x = model.preprocess(_images())
    with torch.no_grad():
        expected_R = model(x)
        expected_z = enc(x)
    loaded = registry.load_registered("clerf-head@candidate")
    assert isinstance(loaded, PoseModel) and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected_R, rtol=0, atol=1e-6)
        R = loaded(x).numpy()
    # Predictions are rotations (a check that does not depend on the model under test).
    np.testing.assert_allclose(
        R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-5
    )
    enc_loaded = registry.load_registered("clerf-encoder/1")
    with torch.no_grad():
        torch.testing.assert_close(enc_loaded(x), expected_z, rtol=0, atol=1e-6)

    # The head version records the encoder version it was trained on.
    mv = registry.model_version("clerf-head@candidate")
    assert mv.tags["encoder_name"] == "clerf-encoder" and mv.tags["encoder_version"] == v_enc
    # Stored as safetensors + JSON only: nothing to unpickle.
    art = mlflow.artifacts.download_artifacts(mv.source, dst_path=str(tmp_path / "dl"))
    assert sorted(p.name for p in Path(art).iterdir()) == ["config.json", "model.safetensors"]


def test_candidate_moves_to_new_version_and_promote_moves_champion(store):
    _, model1, _, _ = _log_and_register(seed=0)
    _, model2, _, v2 = _log_and_register(seed=1)
    assert v2 == "2"
    assert str(registry.model_version("clerf-head@candidate").version) == "2"
    # No champion yet: the bare name means @champion.
    with pytest.raises(LookupError, match="'clerf-head'"):
        registry.load_registered("clerf-head")

    x = model1.preprocess(_images(seed=3))
    registry.promote("clerf-head", 1)
    assert str(registry.model_version("clerf-head@champion").version) == "1"
    with torch.no_grad():
        torch.testing.assert_close(registry.load_registered("clerf-head")(x), model1(x))
    registry.promote("clerf-head", "2")
    assert str(registry.model_version("clerf-head@champion").version) == "2"
    with torch.no_grad():
        torch.testing.assert_close(registry.load_registered("clerf-head@champion")(x), model2(x))
        assert not torch.allclose(model1(x), model2(x))


def test_missing_model_version_or_alias_raises_lookup_error_naming_ref(store):
    with pytest.raises(LookupError, match="'no-such-model@candidate'") as err:
        registry.load_registered("no-such-model@candidate")
    assert store in str(err.value)
    _log_and_register(seed=0)
    with pytest.raises(LookupError, match="'models:/clerf-head/7'"):
        registry.load_registered("models:/clerf-head/7")
    with pytest.raises(LookupError, match="'clerf-head@staging'"):
        registry.load_registered("clerf-head@staging")
    with pytest.raises(LookupError, match="'clerf-head/9'"):
        registry.promote("clerf-head", 9)


def test_artifacts_live_next_to_the_sqlite_store_not_in_the_cwd(store, tmp_path, monkeypatch):
    # A job under `ray job submit` runs in a temporary copy of its working directory: artifacts
    # written relative to the cwd would vanish with it.
    elsewhere = tmp_path / "job-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _log_and_register(seed=0)
    mv = registry.model_version("clerf-head@candidate")
    assert mv.source.startswith((tmp_path / "mlartifacts").as_uri())
    assert not any(elsewhere.iterdir())
    assert (tmp_path / "mlartifacts").is_dir()


def test_setup_twice_moves_the_registry_too(tmp_path, monkeypatch):
    # mlflow.set_registry_uri exports MLFLOW_REGISTRY_URI; a second setup() in the same process
    # must not mistake that for a user setting and keep registering into the first store.
    monkeypatch.chdir(tmp_path)
    first = registry.setup(f"sqlite:///{tmp_path}/a.db")
    assert os.environ.get("MLFLOW_REGISTRY_URI") == first  # MLflow's own export
    second = registry.setup(f"sqlite:///{tmp_path}/b.db")
    assert mlflow.get_registry_uri() == second
    # A registry the user chose stays (setup would have overwritten the variable).
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path}/user.db")
    registry.setup(f"sqlite:///{tmp_path}/c.db")
    assert os.environ["MLFLOW_REGISTRY_URI"] == f"sqlite:///{tmp_path}/user.db"


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Relative sqlite paths become absolute, so Ray workers and later commands find the store.
    assert registry.tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert registry.tracking_uri() == "http://mlflow.example:5000"
    assert registry.tracking_uri("sqlite:///x.db") == f"sqlite:///{tmp_path}/x.db"


def test_parse_model_ref():
    assert registry.parse_model_ref("clerf-head@champion") == ("clerf-head", "champion", None)
    assert registry.parse_model_ref("models:/clerf-head/3") == ("clerf-head", None, "3")
    assert registry.parse_model_ref("clerf-encoder") == ("clerf-encoder", "champion", None)


def test_clerf_promote_command(store, capsys):
    _log_and_register(seed=0)
    _log_and_register(seed=1)
    assert clerf(["promote", "clerf-head", "1", "--tracking-uri", store]) == 0
    assert "clerf-head@champion -> version 1" in capsys.readouterr().out
    assert str(registry.model_version("clerf-head@champion").version) == "1"
    assert clerf(["promote", "clerf-head", "2", "--alias", "staging", "--tracking-uri", store]) == 0
    assert str(registry.model_version("clerf-head@staging").version) == "2"
    assert str(registry.model_version("clerf-head@champion").version) == "1"
    with pytest.raises(SystemExit, match="clerf promote: model 'clerf-head/5' not found"):
        clerf(["promote", "clerf-head", "5", "--tracking-uri", store])
