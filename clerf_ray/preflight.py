"""Checks of a loaded config that need no Ray: run when a job loads its config, so that a bad
value exits within seconds, before Ray starts or anything is rendered, with the field's dotted
name in the message.

    cfg = load_checked_config("configs/paper.yaml", ["model.backbone=resnet_nope"])
    # ConfigError: invalid configuration:
    #   model.backbone: unknown timm model 'resnet_nope'; close names: resnet50, ...

:func:`check_config` covers what :mod:`clerf_ray.config`'s field types cannot: names that live
in timm's and our renderer registries, an image size the backbone cannot take, labelled and
pair-shard sets that must exist and hold the right schema, and time limits that cannot fit an
epoch.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import sys
from pathlib import Path

from clerf_ray.config import Config, ConfigError, load_config

# The fastest rates any single worker reaches on these models (pairs/s of contrastive
# pretraining, embeddings/s of the head's MLP), far above what one GPU does for the backbones of
# this project: a time limit below one epoch at these rates cannot fit an epoch anywhere, so it
# is refused; anything slower is left to the run, whose limit stops after the epoch crossing it.
CEILING_PAIRS_PER_S = 50_000.0
CEILING_HEAD_ROWS_PER_S = 5_000_000.0


def _backbone_problems(cfg: Config) -> list[str]:
    import timm

    name = cfg.model.backbone
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else ""
        return [f"model.backbone: unknown timm model {name!r}{hint}"]
    return _image_size_problems(name, cfg.data.image_size, cfg.model.head_input)


def _image_size_problems(backbone: str, size: int, head_input: str = "features") -> list[str]:
    """Build ``backbone`` on PyTorch's meta device (shapes only: no memory, no weights) and run
    a batch of ``size`` px through it; a shape error means the backbone cannot take the size.
    With ``head_input="feature_map"`` its ``forward_features`` must give a spatial map."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            try:
                # Transformers with a fixed input size (Swin, ViT) are built for the size.
                model = timm.create_model(backbone, num_classes=0, img_size=size)
            except TypeError:
                model = timm.create_model(backbone, num_classes=0)
            model.eval()
            model(torch.empty(2, 3, size, size))
            fm = model.forward_features(torch.empty(2, 3, size, size))
    except NotImplementedError:
        return []  # an operator without a meta kernel: the size cannot be checked here
    except (RuntimeError, ValueError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return [f"data.image_size: backbone {backbone!r} cannot take {size} px images ({first})"]
    if head_input == "feature_map" and fm.ndim != 4:
        return [
            f"model.head_input: 'feature_map' needs a backbone with a spatial feature map; "
            f"{backbone!r} gives {tuple(fm.shape)} from forward_features (token sequences "
            "have no grid): use 'features'"
        ]
    return []


def _renderer_problems(cfg: Config) -> list[str]:
    from clerf_ray.render import renderer_class

    d = cfg.data
    try:
        cls = renderer_class(d.renderer)
    except ValueError as e:
        return [f"data.renderer: {e}"]
    problems = []
    if "image_size" in d.renderer_options:
        problems.append(
            "data.renderer_options.image_size: set the output size with data.image_size"
        )
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        known = sorted(n for n in params if n != "image_size")
        for key in sorted(d.renderer_options):
            if key != "image_size" and key not in params:
                close = difflib.get_close_matches(key, known, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                problems.append(
                    f"data.renderer_options.{key}: renderer {d.renderer!r} takes no option "
                    f"{key!r}{hint}; it takes {', '.join(known) or 'none'}"
                )
    return problems


def _set_problems(field: str, path: str, kind: str) -> list[str]:
    """``kind`` "labelled": a labelled set (prepare_data.py, render.py --labelled); "pairs": pair
    shards (render.py). Local paths and s3:// alike; only footers are read."""
    from clerf_ray.data.schema import NotALabelledSetError, labelled_shard_rows
    from clerf_ray.data.shards import list_shards, resolve

    try:
        fs, root = resolve(path)
        shards = list_shards(fs, root)
    except (OSError, ValueError) as e:
        return [f"{field}: cannot read {path!r}: {e}"]
    if not shards:
        return [f"{field}: no part-*.parquet shards under {path!r} (does it exist?)"]
    if kind == "labelled":
        try:
            labelled_shard_rows(fs, shards, path, check="first")
        except NotALabelledSetError as e:
            pairs = "pair shards (render.py without --labelled): use data.source=shards"
            return [f"{field}: {e}; if it holds {pairs}"]
        return []
    from clerf_ray.data.pair_shards import check_pair_shard

    try:
        check_pair_shard(fs, shards[0], path)
    except ValueError as e:
        return [str(e)]
    return []


def _data_set_problems(cfg: Config) -> list[str]:
    d, problems = cfg.data, []
    if d.source == "real_anchor" or d.labelled_path:
        if not d.labelled_path:
            problems.append("data.labelled_path: required when data.source is 'real_anchor'")
        else:
            problems += _set_problems("data.labelled_path", d.labelled_path, "labelled")
    if d.source == "shards":
        if not d.shards_path:
            problems.append("data.shards_path: required when data.source is 'shards'")
        else:
            problems += _set_problems("data.shards_path", d.shards_path, "pairs")
    if d.poses not in ("so3", "ranges"):
        problems += _set_problems("data.poses", d.poses, "labelled")
    if cfg.head.labelled_path:
        problems += _set_problems("head.labelled_path", cfg.head.labelled_path, "labelled")
    return problems


def _time_limit_problems(cfg: Config) -> list[str]:
    problems = []
    p, h = cfg.pretrain, cfg.head
    fastest = cfg.data.num_pairs / CEILING_PAIRS_PER_S
    if cfg.data.source == "synthetic" and p.time_limit_s is not None and p.time_limit_s < fastest:
        problems.append(
            f"pretrain.time_limit_s: {p.time_limit_s:g} s cannot fit one epoch of "
            f"{cfg.data.num_pairs} pairs (at least {fastest:.2g} s even at "
            f"{CEILING_PAIRS_PER_S:,.0f} pairs/s)"
        )
    rows = h.num_samples * h.draws * h.passes
    fastest = rows / CEILING_HEAD_ROWS_PER_S
    if h.time_limit_s is not None and h.time_limit_s < fastest:
        problems.append(
            f"head.time_limit_s: {h.time_limit_s:g} s cannot fit one epoch of {rows} embedding "
            f"rows (at least {fastest:.2g} s even at {CEILING_HEAD_ROWS_PER_S:,.0f} rows/s)"
        )
    return problems


def _search_space_problems(cfg: Config) -> list[str]:
    """Backbones and image sizes a search would try (each searched value checked as above),
    and the searcher's package."""
    space = cfg.tune.space
    backbones = space["model.backbone"].values_to_check() if "model.backbone" in space else []
    sizes = space["data.image_size"].values_to_check() if "data.image_size" in space else []
    problems = []
    for b in backbones or [cfg.model.backbone]:
        for s in sizes or [cfg.data.image_size]:
            if (b, s) == (cfg.model.backbone, cfg.data.image_size):
                continue
            changed = cfg.model_copy(
                update={
                    "model": cfg.model.model_copy(update={"backbone": b}),
                    "data": cfg.data.model_copy(update={"image_size": int(s)}),
                }
            )
            problems += [f"tune.space: {p}" for p in _backbone_problems(changed)]
    if cfg.tune.search_alg == "optuna" and importlib.util.find_spec("optuna") is None:
        problems.append(
            "tune.search_alg: 'optuna' needs the optuna package, an optional extra "
            "(pip install -e '.[optuna]', or pip install optuna)"
        )
    return problems


def check_config(cfg: Config, *, data_sets: bool = True) -> None:
    """Raise :class:`ConfigError` listing every problem of ``cfg`` found without Ray: the
    backbone (unknown names get the closest timm names), the image size it must take, the
    renderer and its options, the labelled and pair-shard sets it names (``data_sets``), and
    time limits that cannot fit one epoch. Does nothing when all is well."""
    problems = _backbone_problems(cfg) + _renderer_problems(cfg) + _time_limit_problems(cfg)
    problems += _search_space_problems(cfg)
    if data_sets:
        problems += _data_set_problems(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


def load_checked_config(path: str | Path | None = None, overrides: list[str] | None = None):
    """:func:`clerf_ray.config.load_config`, then :func:`check_config`."""
    cfg = load_config(path, overrides)
    check_config(cfg)
    return cfg


def config_from_args(args) -> Config | None:
    """The checked config named by ``add_config_arguments``'s arguments (``--config`` and
    ``key=value`` overrides), or None after printing the error (naming the field or file) to
    stderr; jobs then exit with status 2."""
    try:
        return load_checked_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
