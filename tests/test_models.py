"""Encoder, pose head, factories, pretrained weights and the safetensors/JSON model format."""

from __future__ import annotations

import json
import os
import pickle
import socket

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from clerf_ray import geometry
from clerf_ray.models import (
    EncoderConfig,
    HeadConfig,
    PoseModel,
    create_encoder,
    create_head,
    create_head_for,
    input_stats,
    load_model,
    save_model,
)

# The heads these tests build read the L2-normalised embedding, unstandardised (the config's
# default head reads the backbone features).
EMB = {"input": "embedding", "standardize": False}

SMALL = dict(backbone="resnet10t", embedding_dim=16, projection_hidden=32, image_size=32)
# The same as a complete EncoderConfig (no field has a default of its own).
SMALL_CFG = {**SMALL, "pretrained": None}


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)


def _marker_pickle(path, marker):
    """A pickle that, if ever unpickled, creates ``marker`` (it must never be)."""

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path.write_bytes(pickle.dumps({"fc.weight": Payload()}))


# --------------------------------------------------------------------------- encoder


def test_encoder_embedding_shape_and_unit_norm(images):
    torch.manual_seed(0)
    enc = create_encoder(**SMALL).eval()
    x = enc.preprocess(images)
    z, f = enc(x, return_features=True)
    assert z.shape == (3, 16)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    assert f.shape == (3, enc.num_features) == (3, 512)
    # features() is the backbone's own pooled output, before projection and normalisation.
    torch.testing.assert_close(enc.features(x), enc.backbone(x))
    assert not torch.allclose(f.norm(dim=1), torch.ones(3))


def test_preprocess_scales_normalises_and_transposes(images):
    enc = create_encoder(**SMALL)
    x = enc.preprocess(images)
    # resnet10t's pretrained_cfg carries ImageNet statistics.
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    expected = ((images / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    assert x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)
    # A single HxWx3 tensor works too, and other sizes are resized to image_size.
    assert enc.preprocess(torch.from_numpy(images[0])).shape == (1, 3, 32, 32)
    # Resizing keeps a flat colour flat: every output pixel is that colour, normalised.
    flat = np.empty((2, 80, 48, 3), dtype=np.uint8)
    flat[...] = np.array([200, 30, 120], dtype=np.uint8)
    out = enc.preprocess(flat)
    assert out.shape == (2, 3, 32, 32)
    value = (np.array([200, 30, 120]) / 255.0 - mean) / std
    np.testing.assert_allclose(
        out.numpy(), np.broadcast_to(value[None, :, None, None], out.shape), rtol=1e-5, atol=1e-5
    )


def test_preprocess_rejects_float_images(images):
    enc = create_encoder(**SMALL)
    with pytest.raises(ValueError, match="uint8"):
        enc.preprocess(images.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        enc.preprocess(images[..., :2].copy())


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="'no_such_net'"):
        create_encoder(backbone="no_such_net")


@pytest.mark.parametrize("backbone", ["mobilenetv3_small_100", "lcnet_050"])
def test_backbones_with_a_pre_logits_layer_project_their_pooled_output(backbone):
    """MobileNetV3 and LCNet pool num_features channels, then widen them in a pre-logits layer:
    the projection must take the width that actually comes out."""
    enc = create_encoder(backbone=backbone, embedding_dim=16, image_size=32).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        z, f = enc(x, return_features=True)
    assert f.shape == (3, enc.num_features) and enc.num_features > enc.backbone.num_features
    assert z.shape == (3, 16)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))


def test_paper_swin_setting_by_config_only():
    torch.manual_seed(0)
    enc = create_encoder(backbone="swin_tiny_patch4_window7_224", image_size=224).eval()
    assert enc.num_features == 768
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(1, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        x = enc.preprocess(img)
        z = enc(x)
    assert x.shape == (1, 3, 224, 224)
    assert z.shape == (1, 128)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(1))


# --------------------------------------------------------------------------- head and PoseModel


def test_head_outputs_rotations():
    torch.manual_seed(1)
    head = create_head(EMB, in_dim=16, hidden=(32, 32))
    z = torch.cat([torch.randn(32, 16), 100.0 * torch.randn(4, 16), torch.zeros(1, 16)])
    R = head(z)
    assert R.shape == (37, 3, 3)
    eye = torch.eye(3).expand(37, 3, 3)
    torch.testing.assert_close(R.transpose(1, 2) @ R, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(37), atol=1e-5, rtol=0)


def test_pose_model_keeps_a_frozen_encoder_frozen(images):
    torch.manual_seed(2)
    enc = create_encoder(**SMALL)
    model = PoseModel(enc, create_head(EMB, in_dim=16), freeze_encoder=True)
    model.train()
    assert not model.encoder.training and model.head.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    x = model.preprocess(images)
    R = model(x)
    assert R.shape == (3, 3, 3)
    R.sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())
    # BatchNorm running statistics did not move: the encoder ran in eval mode.
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k

    trainable = PoseModel(
        create_encoder(**SMALL), create_head(EMB, in_dim=16), freeze_encoder=False
    )
    trainable.train()
    assert trainable.encoder.training
    trainable(x).sum().backward()
    assert trainable.encoder.projection[0].weight.grad is not None


def test_pose_model_checks_dimensions():
    with pytest.raises(ValueError, match="in_dim"):
        PoseModel(create_encoder(**SMALL), create_head(EMB, in_dim=8))
    with pytest.raises(ValueError, match="num_features 512"):
        PoseModel(create_encoder(**SMALL), create_head(EMB, in_dim=16, input="features"))


def test_features_head_reads_the_pooled_backbone_output_standardised(images):
    """A head with ``input="features"`` gets the backbone's pooled output (not the projection),
    standardised by its buffers: the same MLP weights on hand-standardised features agree."""
    torch.manual_seed(8)
    enc = create_encoder(**SMALL).eval()
    head = create_head_for(enc, hidden=(24,), input="features", standardize=True)
    assert head.config.in_dim == 512
    mean, std = torch.randn(512), torch.rand(512) + 0.5
    head.set_input_stats(mean.numpy(), std.numpy())
    model = PoseModel(enc, head, freeze_encoder=True).eval()
    x = model.preprocess(images)
    plain = create_head(EMB, in_dim=512, hidden=(24,))
    plain.mlp.load_state_dict(head.mlp.state_dict())
    with torch.no_grad():
        expected = plain((enc.backbone(x) - mean) / std)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)
        # Not the embedding path: the projection's output gives something else.
        other = create_head(EMB, in_dim=16, hidden=(24,))
        assert not torch.allclose(model(x), other(enc(x)), atol=1e-3)
    with pytest.raises(ValueError, match="512 values"):
        head.set_input_stats(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="standardize=False"):
        plain.set_input_stats(np.zeros(512), np.ones(512))
    # A constant input dimension (std 0) is floored, so the head stays finite.
    head.set_input_stats(np.zeros(512), np.zeros(512))
    assert torch.isfinite(model(x)).all()


def test_input_stats_match_numpy_over_concatenated_batches():
    rng = np.random.default_rng(4)
    # A large common offset: naive sums of squares in float32 would lose the spread.
    rows = 1e4 + rng.normal(size=(1000, 7)) * np.arange(1, 8)
    rows[:, 3] = 5.0  # a constant column
    batches = [rows[:1], rows[1:300], rows[300:300], rows[300:]]
    mean, std = input_stats(batches)
    np.testing.assert_allclose(mean, rows.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, rows.std(0), rtol=1e-4, atol=1e-6)
    assert std[3] == 0.0
    with pytest.raises(ValueError, match="no rows"):
        input_stats([])


# --------------------------------------------------------------------------- factories and configs


def test_factories_accept_configs_mappings_keywords_and_model_section():
    from clerf_ray.config import ModelSection

    a = create_encoder(EncoderConfig(**SMALL_CFG))
    b = create_encoder(dict(SMALL))
    c = create_encoder(EncoderConfig(**SMALL_CFG), embedding_dim=8)
    assert a.config == b.config == EncoderConfig(**SMALL_CFG)
    assert c.embedding_dim == 8
    # No arguments: the default config's model section and data.image_size, written out here.
    assert create_encoder().config == EncoderConfig(
        backbone="resnet10t",
        embedding_dim=128,
        projection_hidden=512,
        pretrained=None,
        image_size=64,
    )
    assert create_head(in_dim=7).config == HeadConfig(
        in_dim=7, hidden=(512, 512), input="features", standardize=True
    )
    with pytest.raises(TypeError, match="in_dim is required"):
        create_head()

    section = ModelSection(
        backbone="resnet10t", embedding_dim=24, head_hidden=(40,), head_input="embedding"
    )
    enc = create_encoder(section, image_size=32)
    assert enc.embedding_dim == 24 and enc.config.projection_hidden == section.projection_hidden
    head = create_head(section, in_dim=24)
    assert head.config == HeadConfig(in_dim=24, hidden=(40,), input="embedding", standardize=True)
    # The default section: the head reads the pooled features, whose width is the backbone's.
    head = create_head_for(enc, ModelSection(head_hidden=(40,)))
    assert head.config == HeadConfig(in_dim=512, hidden=(40,), input="features", standardize=True)

    with pytest.raises(TypeError, match="embeding_dim"):
        create_encoder(embeding_dim=8)
    with pytest.raises(TypeError, match="hiden"):
        create_head({"hiden": (4,)})
    with pytest.raises(ValueError, match="embedding_dim"):
        EncoderConfig(**{**SMALL_CFG, "embedding_dim": 0})
    with pytest.raises(ValueError, match=r"hidden\[1\]"):
        HeadConfig(in_dim=4, hidden=(8, -1), input="features", standardize=True)
    with pytest.raises(ValueError, match="input must be one of"):
        HeadConfig(in_dim=4, hidden=(8,), input="logits", standardize=True)


# --------------------------------------------------------------------------- pretrained weights


def _reference_backbone(num_classes=0, seed=3):
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", pretrained=False, num_classes=num_classes)


def _assert_backbone_equals(enc, ref):
    own = enc.backbone.state_dict()
    for k, v in own.items():
        assert torch.equal(v, ref.state_dict()[k]), k


def test_pretrained_from_local_safetensors(tmp_path):
    ref = _reference_backbone()
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    torch.manual_seed(99)  # the encoder's own random init differs from ref's
    enc = create_encoder(**{**SMALL, "pretrained": str(path)})
    _assert_backbone_equals(enc, ref)


def test_pretrained_from_torch_checkpoint_with_classifier_and_nesting(tmp_path):
    ref = _reference_backbone(num_classes=1000)
    path = tmp_path / "ckpt.pth"
    # A training checkpoint: nested under 'state_dict', DDP prefix, classifier weights included.
    torch.save(
        {"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}, "epoch": 3}, path
    )
    enc = create_encoder(**{**SMALL, "pretrained": str(path)})
    _assert_backbone_equals(enc, ref)


def test_pretrained_from_a_saved_encoder_takes_its_backbone(tmp_path):
    torch.manual_seed(7)
    trained = create_encoder(**SMALL)
    save_model(trained, None, str(tmp_path / "enc"))
    torch.manual_seed(8)
    fresh = create_encoder(
        **{**SMALL, "embedding_dim": 8, "pretrained": str(tmp_path / "enc" / "model.safetensors")}
    )
    _assert_backbone_equals(fresh, trained.backbone)


def test_pretrained_missing_file_names_the_option(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="pretrained") as e:
        create_encoder(**{**SMALL, "pretrained": str(missing)})
    assert str(missing) in str(e.value)


def test_pretrained_mismatched_keys_name_the_option(tmp_path):
    torch.manual_seed(4)
    other = timm.create_model("resnet18", pretrained=False, num_classes=0)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match=r"pretrained=.*do not match backbone 'resnet10t'"):
        create_encoder(**{**SMALL, "pretrained": str(path)})


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pretrained_pickle_is_not_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    _marker_pickle(path, marker)
    with pytest.raises(ValueError, match="pretrained"):
        create_encoder(**{**SMALL, "pretrained": str(path)})
    assert not marker.exists()


# --------------------------------------------------------------------------- save / load


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


# --------------------------------------------------------------------------- test-time views


def _views_model(views: int) -> PoseModel:
    torch.manual_seed(11)
    return PoseModel(
        create_encoder(**SMALL), create_head(EMB, in_dim=16), freeze_encoder=True, views=views
    ).eval()


def _predict(model: PoseModel, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(model.preprocess(np.ascontiguousarray(images))).double().numpy()


def test_eight_views_make_predictions_equivariant(images):
    """Quarter turns and mirrors of the input move the 8-view prediction as the label
    transforms say (checked with numpy's rot90 and slicing on HWC images, not torch's ops); a
    single view is not equivariant, so the property is the views' doing."""
    # float32 convolutions of turned tensors round differently; the random-init model's views
    # disagree, so the average amplifies that to a few hundredths of a degree.
    for views, tol in ((8, 0.1), (1, None)):
        model = _views_model(views)
        R = _predict(model, images)
        turned = _predict(model, np.rot90(images, 1, axes=(1, 2)))
        mirrored = _predict(model, images[:, :, ::-1])
        err_turn = geometry.geodesic_error(turned, geometry.rotate_label(R, 90.0))
        err_mirror = geometry.geodesic_error(mirrored, geometry.hflip_label(R))
        if tol is not None:
            assert err_turn.max() < tol and err_mirror.max() < tol
        else:
            assert err_turn.max() > 1.0 and err_mirror.max() > 1.0


def test_eight_views_average_the_back_mapped_predictions_of_pil_augmented_images(images):
    """The 8-view prediction equals a brute force: each view made with the augmentation module
    (PIL), its single-view prediction mapped back by the inverse label transform, and the
    rotations averaged with scipy's ``Rotation.mean`` (chordal L2 mean)."""
    from scipy.spatial.transform import Rotation

    from clerf_ray.augment import GeometricAugment

    single, multi = _views_model(1), _views_model(8)
    aug = GeometricAugment.preset("none")
    back = []
    for turns in range(4):
        for mirror in (False, True):
            draw = (90.0 * turns, mirror, False)
            views = np.stack([aug.apply([im], np.eye(3), draw)[0][0] for im in images])
            P = geometry.rotate_label(_predict(single, views), -90.0 * turns)
            back.append(geometry.hflip_label(P) if mirror else P)
    back = np.stack(back, axis=1)  # (B, 8, 3, 3)
    expected = np.stack([Rotation.from_matrix(b).mean().as_matrix() for b in back])
    assert geometry.geodesic_error(_predict(multi, images), expected).max() < 0.05


def test_views_are_validated_and_kept_by_save_and_load(tmp_path, images):
    with pytest.raises(ValueError, match="views must be one of"):
        PoseModel(create_encoder(**SMALL), create_head(EMB, in_dim=16), views=4)
    model = _views_model(8)
    save_model(model, None, str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.views == 8
    np.testing.assert_allclose(_predict(loaded, images), _predict(model, images), atol=1e-6)
    # A model saved before views existed loads as single-view.
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    del meta["views"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    assert load_model(str(tmp_path / "m")).views == 1


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
    ref = _reference_backbone()
    wpath = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(wpath))
    enc = create_encoder(**{**SMALL, "pretrained": str(wpath)}).eval()
    save_model(enc, enc.config, str(tmp_path / "m"))
    wpath.unlink()  # loading must not need the original pretrained file
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.config.pretrained == str(wpath)
    _assert_backbone_equals(loaded, ref)


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
    _marker_pickle(tmp_path / "m" / "model.safetensors", marker)
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


# --------------------------------------------------------------------------- s3 (moto)


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
        ref = _reference_backbone()
        local = tmp_path / "b.safetensors"
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(local))
        s3.upload_file(str(local), "weights", "backbones/resnet10t.safetensors")

        enc = create_encoder(
            **{**SMALL, "pretrained": "s3://weights/backbones/resnet10t.safetensors"}
        )
        _assert_backbone_equals(enc, ref)
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


def test_pretrained_hub_offline_error_names_the_option(tmp_path):
    # timm's download path, kept offline: HF_HUB_OFFLINE is read at import, hence a subprocess.
    import subprocess
    import sys

    code = (
        "from clerf_ray.models import create_encoder\n"
        "try:\n"
        "    create_encoder(pretrained='hub', image_size=32)\n"
        "except RuntimeError as e:\n"
        "    print('ERR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "ERR pretrained='hub'" in out.stdout and "resnet10t" in out.stdout
