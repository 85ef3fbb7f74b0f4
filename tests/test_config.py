"""The typed config: defaults, YAML layered under key=value overrides, errors that name the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from clerf_ray.config import Config, ConfigError, dump_config, load_config

REPO = Path(__file__).resolve().parents[1]


def test_default_config_validates_and_names_its_backbone_renderer_and_registry_models():
    """``load_config()`` with no file: resnet10t on procedural renders, registered as
    clerf-encoder / clerf-head (the tuned numbers: :func:`test_the_documented_laptop_defaults`)."""
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.model.backbone == "resnet10t"
    assert cfg.data.renderer == "procedural"
    assert cfg.tracking.encoder_name == "clerf-encoder"
    assert cfg.tracking.head_name == "clerf-head"


def test_relative_storage_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Ray Train wants an absolute local path: a relative one resolves against the cwd.
    assert load_config(None, ["storage_path=runs"]).storage_path == str(tmp_path / "runs")
    assert load_config(None, ["storage_path=s3://b/runs"]).storage_path == "s3://b/runs"


def test_default_storage_path_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config().storage_path == str(tmp_path / "runs")


def test_yaml_then_overrides_layer_over_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {"pretrain": {"epochs": 7, "lr": 0.01}, "model": {"backbone": "resnet18"}, "seed": 3}
        )
    )
    cfg = load_config(path, ["pretrain.epochs=2", "model.head_hidden=[16, 8]", "run_name=x"])
    assert cfg.pretrain.epochs == 2  # override beats YAML
    assert cfg.pretrain.lr == 0.01  # YAML beats default
    assert cfg.model.backbone == "resnet18"
    assert cfg.seed == 3
    assert cfg.model.head_hidden == (16, 8)
    assert cfg.run_name == "x"
    assert cfg.pretrain.batch_size == Config().pretrain.batch_size  # untouched default
    # Override values parse as YAML scalars.
    cfg = load_config(None, ["pretrain.use_gpu=false", "pretrain.time_limit_s=1.5e2"])
    assert cfg.pretrain.use_gpu is False
    assert cfg.pretrain.time_limit_s == 150.0


@pytest.mark.parametrize(
    "override, field",
    [
        ("pretrain.epochs=0", "pretrain.epochs"),
        ("pretrain.lr=-1", "pretrain.lr"),
        ("data.image_size=8", "data.image_size"),
        ("data.augment=sideways", "data.augment"),
        ("head.warmup_fraction=1.5", "head.warmup_fraction"),
        ("pretrain.m=2", "pretrain.m"),
        ("pretrain.epochs=many", "pretrain.epochs"),
    ],
)
def test_bad_values_raise_config_error_naming_the_dotted_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert f"  {field}:" in str(err.value)


def test_bad_value_in_yaml_names_the_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("head:\n  batch_size: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "head.batch_size" in str(err.value)


@pytest.mark.parametrize(
    "override, field",
    [("pretrain.epoch=3", "pretrain.epoch"), ("modle.backbone=x", "modle"), ("x=1", "x")],
)
def test_unknown_keys_are_rejected(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert f"  {field}:" in str(err.value)
    assert "Extra inputs are not permitted" in str(err.value)


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["pretrain.epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/clerf.yaml")
    with pytest.raises(ConfigError, match="'pretrain' is not a section"):
        load_config(None, ["pretrain=3", "pretrain.epochs=2"])


def test_paper_config_loads_with_the_papers_setting():
    cfg = load_config(REPO / "configs" / "paper.yaml")
    assert cfg.model.backbone.startswith("swin_tiny")
    assert cfg.data.image_size == 224
    assert cfg.pretrain.batch_size == 32
    assert cfg.pretrain.epochs == 16


def test_dumped_config_loads_back_equal(tmp_path):
    cfg = load_config(
        None, ["pretrain.epochs=3", "model.head_hidden=[8]", f"storage_path={tmp_path}/runs"]
    )
    dump_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_pair_config_maps_section_fields_and_applies_changes():
    cfg = load_config(None, ["data.image_size=48", "data.train_identities=[10,20]"])
    pc = cfg.data.pair_config(seed=7)
    assert pc.identities == (10, 20)
    assert pc.renderer_options["image_size"] == 48
    assert pc.seed == 7
    # changes win over the section's own fields, identities included (held-out evaluation)
    held = cfg.data.pair_config(seed=8, identities=(2_000_000, 2_000_100), augment="none")
    assert held.identities == (2_000_000, 2_000_100)
    assert held.augment == "none"
    assert held.num_pairs == cfg.data.num_pairs


def test_parameter_objects_built_from_a_default_config_carry_its_values():
    """The pair stream, the encoder and the head take every value from the config's sections:
    no field of theirs has a default of its own that could drift from the config's."""
    import dataclasses

    from clerf_ray.config import PairDataConfig
    from clerf_ray.models import EncoderConfig, HeadConfig, create_encoder, create_head_for

    cfg = Config()
    # Changed values as well as defaults, so that a field silently falling back to a default
    # of the parameter object is seen.
    data = cfg.data.model_copy(update={"num_pairs": 123, "render_batch_size": 7, "augment": "sa"})
    stream = data.pair_config(seed=5)
    section = data.model_dump()
    for f in dataclasses.fields(PairDataConfig):
        if f.name == "identities":
            assert stream.identities == section["train_identities"]
        elif f.name == "seed":
            assert stream.seed == 5
        elif f.name == "renderer_options":
            assert stream.renderer_options == {"image_size": data.image_size}
        else:
            assert getattr(stream, f.name) == section[f.name], f.name
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    assert stream.num_pairs == 123 and stream.augment == "sa"

    for kind in (PairDataConfig, EncoderConfig, HeadConfig):
        defaults = [
            f.name
            for f in dataclasses.fields(kind)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        ]
        assert defaults == [], f"{kind.__name__} declares defaults for {defaults}"

    model = cfg.model.model_copy(update={"head_hidden": (48, 24), "embedding_dim": 32})
    enc = create_encoder(model, image_size=cfg.data.image_size)
    assert dataclasses.asdict(enc.config) == {
        "backbone": model.backbone,
        "embedding_dim": 32,
        "projection_hidden": model.projection_hidden,
        "pretrained": model.pretrained,
        "image_size": cfg.data.image_size,
    }
    head = create_head_for(enc, model)
    assert head.config.hidden == (48, 24)
    assert head.config.input == model.head_input == "feature_map"
    assert head.config.standardize is model.head_standardize is True
    assert head.config.in_dim == enc.feature_map_dim == 4 * enc.backbone.num_features


def test_the_documented_laptop_defaults():
    """The tuned laptop defaults the README's tables describe (a change here is a change of the
    recipe: say what it bought)."""
    cfg = Config()
    assert (cfg.data.image_size, cfg.data.num_pairs, cfg.data.pool) == (64, 8192, True)
    assert cfg.data.pool_render_actors == 2
    assert (cfg.pretrain.epochs, cfg.pretrain.batch_size, cfg.pretrain.lr) == (12, 64, 4e-3)
    assert (cfg.head.epochs, cfg.head.passes) == (4, 4)
    assert cfg.pretrain.time_limit_s == 380.0
    assert (cfg.head.num_samples, cfg.head.draws, cfg.head.views) == (8192, 4, 16)
    assert cfg.model.head_hidden == (512, 512) and cfg.model.head_input == "feature_map"
    assert cfg.pretrain.augment_in == "loop"


@pytest.mark.parametrize(
    "override, message",
    [
        ("tune.space={pretrain.epochs: {choices: [0]}}", "tune.space.pretrain.epochs: 0"),
        ("tune.space={pretrain.nope: {choices: [1]}}", "'pretrain.nope' is not a config field"),
        ("tune.space={pretrain.lr: {low: 1.0e-2, high: 1.0e-4}}", "low < high"),
        ("tune.space={pretrain.lr: {low: 0, high: 1, log: true}}", "log range needs low > 0"),
        ("tune.space={pretrain.lr: {choices: []}}", "choices must not be empty"),
        ("tune.val_identities=[0, 10]", "overlap data.train_identities"),
    ],
)
def test_search_space_values_are_validated_at_load(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_a_valid_search_space_loads():
    cfg = load_config(None, ["tune.space={pretrain.lr: {low: 1.0e-4, high: 1.0e-2, log: true}}"])
    dim = cfg.tune.space["pretrain.lr"]
    assert (dim.low, dim.high, dim.log, dim.choices) == (1e-4, 1e-2, True, None)
    assert list(load_config().tune.space) == [
        "pretrain.batch_size",
        "pretrain.epochs",
        "model.backbone",
    ]
