"""Saving and loading models: safetensors + JSON, old formats, refusals, S3 (moto server)."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from clerf_ray.models import (
    EncoderConfig,
    PoseModel,
    create_encoder,
    create_head,
    create_head_for,
    load_model,
    save_model,
)

from .common import (
    EMB,
    SMALL,
    SMALL_CFG,
    assert_backbone_equals,
    marker_pickle,
    reference_backbone,
)


def _roundtrip_check(model, tmp_path, x):
    model.eval()
    save_model(model, None, str(tmp_path / "m"))
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    loaded = load_model(str(tmp_path / "m"))
    assert type(loaded) is type(model)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    return meta, loaded


def test_save_load_encoder_roundtrip(tmp_path, images):
    torch.manual_seed(5)
    enc = create_encoder(**SMALL)
    enc.train()
    enc(enc.preprocess(images))  # move BN running statistics away from their init
    meta, loaded = _roundtrip_check(enc, tmp_path, enc.preprocess(images))
    assert meta["kind"] == "encoder" and meta["encoder"]["embedding_dim"] == 16
    assert loaded.config == enc.config


def test_save_load_head_and_pose_model_roundtrip(tmp_path, images):
    torch.manual_seed(6)
    head = create_head(EMB, in_dim=16, hidden=(24,))
    _roundtrip_check(head, tmp_path / "h", torch.randn(5, 16))
    model = PoseModel(create_encoder(**SMALL), create_head(EMB, in_dim=16), freeze_encoder=True)
    meta, loaded = _roundtrip_check(model, tmp_path / "p", model.preprocess(images))
    assert meta["kind"] == "pose_model" and loaded.freeze_encoder
    assert not any(p.requires_grad for p in loaded.encoder.parameters())
    # A features head keeps its input choice and its standardisation through save and load.
    enc = create_encoder(**SMALL)
    fhead = create_head_for(enc, hidden=(24,), input="features", standardize=True)
    fhead.set_input_stats(np.linspace(-1, 1, 512), np.linspace(0.5, 2, 512))
    model = PoseModel(enc, fhead, freeze_encoder=True)
    meta, loaded = _roundtrip_check(model, tmp_path / "f", model.preprocess(images))
    assert meta["head"]["input"] == "features" and meta["head"]["standardize"] is True
    assert loaded.head.config == fhead.config
    torch.testing.assert_close(loaded.head.input_std, fhead.input_std)


def test_models_saved_before_head_inputs_existed_load_as_embedding_heads(tmp_path, images):
    """A config.json without the head's ``input``/``standardize`` (written by earlier versions)
    loads as a head on the embedding, without standardisation, and predicts as before."""
    torch.manual_seed(7)
    model = PoseModel(
        create_encoder(**SMALL), create_head(EMB, in_dim=16), freeze_encoder=True
    ).eval()
    save_model(model, None, str(tmp_path / "old"))
    cfg_path = tmp_path / "old" / "config.json"
    meta = json.loads(cfg_path.read_text())
    del meta["head"]["input"], meta["head"]["standardize"]
    cfg_path.write_text(json.dumps(meta))
    loaded = load_model(str(tmp_path / "old"))
    assert loaded.head.config.input == "embedding" and not loaded.head.config.standardize
    x = model.preprocess(images)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_saved_encoder_keeps_pretrained_record_without_reloading_it(tmp_path):
    ref = reference_backbone()
    wpath = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(wpath))
    enc = create_encoder(**{**SMALL, "pretrained": str(wpath)}).eval()
    save_model(enc, enc.config, str(tmp_path / "m"))
    wpath.unlink()  # loading must not need the original pretrained file
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.config.pretrained == str(wpath)
    assert_backbone_equals(loaded, ref)


def test_save_model_rejects_a_config_of_another_model(tmp_path):
    enc = create_encoder(**SMALL)
    with pytest.raises(ValueError, match="does not describe"):
        save_model(enc, EncoderConfig(**{**SMALL_CFG, "embedding_dim": 8}), str(tmp_path / "m"))
    with pytest.raises(TypeError, match="must be EncoderConfig or None"):
        save_model(enc, create_head(in_dim=4).config, str(tmp_path / "m"))


def test_load_model_refuses_pickled_weights(tmp_path):
    head = create_head(EMB, in_dim=4, hidden=(4,))
    save_model(head, None, str(tmp_path / "m"))
    marker = tmp_path / "pwned"
    marker_pickle(tmp_path / "m" / "model.safetensors", marker)
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_model(str(tmp_path / "m"))
    # torch.save output (a zip of pickles) is refused as well.
    torch.save(head.state_dict(), tmp_path / "m" / "model.safetensors")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_model(str(tmp_path / "m"))
    assert not marker.exists()


def test_load_model_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path / "absent"))
    head = create_head(EMB, in_dim=4, hidden=(4,))
    save_model(head, None, str(tmp_path / "m"))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["head"]["hidden"] = [5]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match its config"):
        load_model(str(tmp_path / "m"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3_pretrained_and_save_load_with_moto_standin(tmp_path, monkeypatch, images):
    boto3 = pytest.importorskip("boto3")
    s3fs = pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # botocore reads the endpoint from the environment, as a deployment would set it.
        "AWS_ENDPOINT_URL": endpoint,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="weights")
        ref = reference_backbone()
        local = tmp_path / "b.safetensors"
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(local))
        s3.upload_file(str(local), "weights", "backbones/resnet10t.safetensors")

        enc = create_encoder(
            **{**SMALL, "pretrained": "s3://weights/backbones/resnet10t.safetensors"}
        )
        assert_backbone_equals(enc, ref)
        with pytest.raises(FileNotFoundError, match="pretrained"):
            create_encoder(**{**SMALL, "pretrained": "s3://weights/backbones/absent.safetensors"})

        enc.eval()
        save_model(enc, None, "s3://weights/runs/encoder")
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="weights")["Contents"]}
        assert {"runs/encoder/model.safetensors", "runs/encoder/config.json"} <= keys
        loaded = load_model("s3://weights/runs/encoder")
        x = enc.preprocess(images)
        with torch.no_grad():
            assert torch.equal(loaded(x), enc(x))
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
