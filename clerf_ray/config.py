"""One typed configuration for every job: defaults here, a YAML file over them, ``key=value``
overrides over that. Bad values fail at load with the field's dotted name.

    cfg = load_config("configs/paper.yaml", ["pretrain.epochs=4", "model.backbone=resnet18"])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


@dataclass
class PairDataConfig:
    """How pairs are made: the pair stream's parameters, built from the config's ``data``
    section by :meth:`DataSection.pair_config` (or :meth:`from_defaults`); no field has a
    default of its own, so the section's defaults are the only ones.

    Attributes:
        source: ``"synthetic"``, ``"real_anchor"`` or ``"shards"``.
        renderer: registered renderer name (``clerf_ray.render.list_renderers()``).
        renderer_options: keyword options for ``make_renderer`` (``image_size`` among them).
        num_pairs: pairs per epoch (synthetic); real_anchor and shards use every row once.
        poses: ``"so3"`` (uniform), ``"ranges"`` (Euler ranges below, degrees) or the path of a
            labelled Parquet set whose poses are resampled.
        yaw_range, pitch_range, roll_range: Euler ranges in degrees for ``poses="ranges"``.
        labelled_path: labelled Parquet set (local or s3://) for ``real_anchor``.
        shards_path: rendered pair shards (local or s3://) for ``source="shards"``.
        identities: half-open range of identity seeds to draw from (keep evaluation identities
            outside it).
        augment: augmentation preset (``"none"``, ``"sa"``, ``"fa"``).
        seed: base seed of every random draw.
        render_batch_size: images per renderer call.
        num_render_actors: renderer actor pool size.
        pool_render_actors: the most renderer actors for the render pool (``data.pool``), which
            renders before pretraining starts: the pool grows from ``num_render_actors`` to this
            many where the cluster has the resources.
        render_num_cpus, render_num_gpus: per-actor budget. Keep CPU fractional on small machines.
        render_resources: custom Ray resources per actor, e.g. ``{"renderer": 1}`` to pin actors
            to renderer nodes.
        stage_num_cpus: CPU budget of the light stages (sampling, decoding, augmentation).
    """

    source: str
    renderer: str
    renderer_options: dict[str, Any]
    num_pairs: int
    poses: str
    yaw_range: tuple[float, float]
    pitch_range: tuple[float, float]
    roll_range: tuple[float, float]
    labelled_path: str | None
    shards_path: str | None
    identities: tuple[int, int]
    augment: str
    seed: int
    render_batch_size: int
    num_render_actors: int
    pool_render_actors: int
    render_num_cpus: float
    render_num_gpus: float
    render_resources: dict[str, float] | None
    stage_num_cpus: float

    @classmethod
    def from_defaults(cls, **changes) -> PairDataConfig:
        """The pair stream of a default :class:`Config` (``seed`` included), with ``changes``."""
        cfg = Config()
        return cfg.data.pair_config(**{"seed": cfg.seed, **changes})

    def __post_init__(self):
        if self.source not in ("synthetic", "real_anchor", "shards"):
            raise ValueError(
                f"data.source must be 'synthetic', 'real_anchor' or 'shards', got {self.source!r}"
            )
        if self.source == "real_anchor" and not self.labelled_path:
            raise ValueError("data.labelled_path is required when data.source is 'real_anchor'")
        if self.source == "shards" and not self.shards_path:
            raise ValueError("data.shards_path is required when data.source is 'shards'")
        if isinstance(self.num_pairs, bool) or int(self.num_pairs) != self.num_pairs:
            raise ValueError(f"data.num_pairs must be an integer, got {self.num_pairs!r}")
        if self.num_pairs <= 0:
            raise ValueError(f"data.num_pairs must be positive, got {self.num_pairs}")
        if not isinstance(self.renderer, str):
            raise ValueError(f"data.renderer must be a renderer name, got {self.renderer!r}")
        try:
            from clerf_ray.render import renderer_class

            renderer_class(self.renderer)
        except ValueError as e:
            raise ValueError(f"data.renderer: {e}") from None
        if "image_size" not in self.renderer_options:
            raise ValueError("data.renderer_options.image_size is required (the output side)")
        size = self.renderer_options["image_size"]
        if isinstance(size, bool) or int(size) != size or size < 8:
            raise ValueError(
                f"data.renderer_options.image_size must be an integer >= 8, got {size!r}"
            )
        if not self.poses:
            raise ValueError("data.poses must be 'so3', 'ranges' or a labelled set's path, got ''")
        for name in ("yaw_range", "pitch_range", "roll_range"):
            r = getattr(self, name)
            if len(r) != 2 or not all(np.isfinite(r)) or r[0] > r[1]:
                raise ValueError(
                    f"data.{name} must be (low, high) degrees with low <= high, got {r}"
                )
        lo, hi = self.identities
        if not (0 <= lo and hi - lo >= 2):
            raise ValueError(
                f"data.identities must be a range [low, high) of at least 2 seeds, got {self.identities}"
            )
        for name in ("render_batch_size", "num_render_actors", "pool_render_actors"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"data.{name} must be an integer >= 1, got {v!r}")
        for name in ("render_num_cpus", "render_num_gpus", "stage_num_cpus"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"data.{name} must be a number >= 0, got {v!r}")
        from clerf_ray.augment import GeometricAugment

        try:
            GeometricAugment.preset(self.augment)
        except ValueError as e:
            raise ValueError(f"data.augment: {e}") from None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSection(_Section):
    """Pretraining pairs; :meth:`pair_config` builds the pair stream's parameters
    (:class:`PairDataConfig`) from it."""

    source: Literal["synthetic", "real_anchor", "shards"] = "synthetic"
    renderer: str = "procedural"
    renderer_options: dict[str, Any] = Field(default_factory=dict)
    image_size: int = Field(64, ge=16, le=1024)
    num_pairs: int = Field(8192, gt=0, description="pairs per epoch (synthetic)")
    pool: bool = Field(
        True,
        description="render num_pairs pairs once and reuse them every epoch with fresh "
        "augmentation (in memory, like source=shards on disk); False: new renders every epoch",
    )
    poses: str = "so3"
    yaw_range: tuple[float, float] = (-90.0, 90.0)
    pitch_range: tuple[float, float] = (-90.0, 90.0)
    roll_range: tuple[float, float] = (-180.0, 180.0)
    labelled_path: str | None = None
    shards_path: str | None = None
    train_identities: tuple[int, int] = (0, 1_000_000)
    augment: Literal["none", "sa", "fa"] = "fa"
    render_batch_size: int = Field(64, gt=0)
    num_render_actors: int = Field(1, gt=0)
    pool_render_actors: int = Field(
        2,
        gt=0,
        description="the most renderer actors for the render pool, which renders before "
        "pretraining starts, when the renderer has the machine to itself: the pool's actors grow "
        "from num_render_actors to this many where the cluster has the resources (2: both cores "
        "of a laptop, 8,192 pairs in about half the time of one actor)",
    )
    render_num_cpus: float = Field(0.5, ge=0)
    render_num_gpus: float = Field(0.0, ge=0)
    render_resources: dict[str, float] | None = None
    stage_num_cpus: float = Field(0.25, ge=0)

    def pair_config(self, seed: int, **changes) -> PairDataConfig:
        """The stream config of this section (``image_size`` goes into the renderer options,
        ``train_identities`` becomes ``identities``), with ``changes`` applied; changed
        ``renderer_options`` without ``image_size`` keep this section's."""
        kw = self.model_dump(exclude={"image_size", "train_identities", "pool"})
        kw["renderer_options"] = {"image_size": self.image_size, **self.renderer_options}
        kw.update(identities=self.train_identities, seed=seed)
        if "renderer_options" in changes:
            changes = dict(changes)
            changes["renderer_options"] = {
                "image_size": self.image_size,
                **dict(changes["renderer_options"]),
            }
        kw.update(changes)
        return PairDataConfig(**kw)


class ModelSection(_Section):
    """Encoder (timm backbone + projection) and pose head."""

    backbone: str = "resnet10t"
    embedding_dim: int = Field(128, gt=0)
    projection_hidden: int = Field(512, gt=0)
    pretrained: str | None = Field(
        None, description="backbone weights: local path, s3:// path, 'hub', or None (random init)"
    )
    head_hidden: tuple[int, ...] = (512, 512)
    head_input: Literal["features", "feature_map", "embedding"] = Field(
        "feature_map",
        description="what the pose head reads from the frozen encoder: the last feature map "
        "before global pooling on a 2 x 2 grid (the default: it keeps where in the image the "
        "features lie; 5.70 -> 5.30 deg in the default job; needs a backbone with a spatial "
        "map), the pooled backbone features under the projection (features: 12.5 -> 9.9 deg "
        "against the embedding, one view, same encoder), or the L2-normalised embedding Circle "
        "Loss trains",
    )
    head_standardize: bool = Field(
        True, description="standardise the head's inputs with their training mean and std"
    )


class OptimSection(_Section):
    """One training stage: AdamW, linear warm-up then cosine decay."""

    epochs: int = Field(4, gt=0)
    batch_size: int = Field(
        64,
        gt=1,
        description="global batch (pairs, split across workers); the supervised baseline takes "
        "2 x this many images per step",
    )
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    num_workers: int = Field(1, gt=0, description="Ray Train workers (DDP ranks)")
    cpus_per_worker: float = Field(1.0, gt=0)
    worker_resources: dict[str, float] | None = Field(
        None,
        description="custom Ray resources per worker, e.g. {trainer: 1}: the workers (and the "
        "head's embedding actors) run only on nodes that offer them",
    )
    torch_threads: int | None = Field(
        2,
        ge=1,
        description=(
            "intra-op threads per worker; 2 suits the laptop default, where the renderer leaves "
            "spare cycles; None: Ray's choice (one per reserved CPU)"
        ),
    )
    augment_in: Literal["loop", "prefetch"] = Field(
        "loop",
        description="where a worker gives each batch its augmentation: 'loop', in the training "
        "thread between steps (the default: on 2 cores it leaves the step's intra-op threads "
        "their cores; pretraining 217 against 193 pairs/s in bench_train), or 'prefetch', in "
        "Ray Data's collate threads, overlapping the steps (for machines with cores to spare)",
    )
    use_gpu: bool | Literal["auto"] = "auto"
    amp: bool = Field(
        True,
        description="mixed precision: float16 on a GPU; bfloat16 on a CPU that computes it natively "
        "(AVX512-BF16 or AMX: up to twice the float32 speed), off on other CPUs; losses stay float32",
    )

    @field_validator("worker_resources")
    @classmethod
    def _custom_resources_only(cls, v):
        if v:
            builtin = sorted(k for k in v if k in ("CPU", "GPU", "memory", "object_store_memory"))
            if builtin:
                raise ValueError(
                    f"{', '.join(builtin)}: set CPUs with cpus_per_worker and GPUs with use_gpu; "
                    "worker_resources holds custom resources only"
                )
            bad = sorted(k for k, amount in v.items() if not amount > 0)
            if bad:
                raise ValueError(f"{', '.join(bad)}: amounts must be positive")
        return v

    max_failures: int = Field(2, ge=0, description="worker failures survived by resuming")
    time_limit_s: float | None = Field(
        None,
        gt=0,
        description="wall time of the epochs: from epoch 2 on, the run stops at the step where "
        "the time runs out; an epoch that crosses it stops the run after that epoch",
    )


class PretrainSection(OptimSection):
    """Contrastive pretraining with Circle Loss."""

    epochs: int = Field(
        12,
        gt=0,
        description="epochs over the pool (the laptop default: 7, 8, 9 and 10 epochs gave 5.23, "
        "5.08, 4.84-5.04 and 4.68-5.13 deg held-out median in the default job on one VM, 9 "
        "and 10 with head.passes=4; 12 is more than time_limit_s fits there in a slow spell: "
        "the run stops where the time runs out, and a fast spell spends its spare time on "
        "steps; README)",
    )
    lr: float = Field(
        4e-3,
        gt=0,
        description="peak AdamW learning rate; 3e-3 to 6e-3 trained the laptop default best, "
        "1e-3 about half as fast",
    )

    time_limit_s: float | None = Field(
        380.0,
        gt=0,
        description="wall time of the pretraining epochs: from epoch 2 on, the run stops at the "
        "step where the time runs out, inside an epoch if need be (the rest of the laptop "
        "default's job took 150-216 s on three VMs, about 200 s by the wall clock on the "
        "slowest with 16 test-time views: 380 s keeps the job within 10 minutes there); None: "
        "no limit",
    )

    m: float = Field(0.25, ge=0, le=1, description="Circle Loss relaxation margin")
    gamma: float = Field(64.0, gt=0, description="Circle Loss scale")
    negative_margin_deg: float = Field(
        5.0, ge=0, description="samples this close to the anchor's pose are not negatives"
    )


class HeadSection(OptimSection):
    """Pose head on the frozen encoder, geodesic loss, trained on cached embeddings (each
    augmentation draw of each labelled image is embedded once; ``clerf_ray.train.head``)."""

    epochs: int = Field(4, gt=0, description="checkpoint and report every epoch")
    passes: int = Field(
        4,
        gt=0,
        description="passes over the cached embeddings per epoch (4 instead of 6 since the head "
        "reads the feature map: 2,048 steps in about 45 s instead of 3,072 in 69 s, spent on a "
        "ninth pretraining epoch)",
    )
    batch_size: int = Field(256, gt=1, description="global batch (embeddings)")
    in_memory: bool = Field(
        True,
        description="hold each worker's shard of the cached embeddings in memory and draw every "
        "pass as a full random permutation (rows x width floats: 64 MB for the default); False: "
        "stream every pass through Ray Data with shuffle_buffer",
    )
    shuffle_buffer: int | None = Field(
        4096,
        gt=0,
        description="with in_memory=False, local shuffle buffer of each pass (rows); None: no "
        "shuffle",
    )
    num_samples: int = Field(8192, gt=0, description="labelled renders (half as many pairs)")
    draws: int = Field(
        4,
        gt=0,
        description="augmentation draws of each labelled image (render or labelled_path row), "
        "each embedded once: a draw costs an encoder forward, a new image a render as well; "
        "8,192 renders x 4 draws trained the head as well as 32,768 renders",
    )
    labelled_path: str | None = Field(None, description="labelled Parquet set instead of renders")
    reuse_pool: bool = Field(
        True,
        description="in the main job with data.pool, take the labelled images from the "
        "pretraining pool (with new augmentation draws) instead of rendering new ones: the "
        "encoder has seen those renders, and the head trained on them did as well (7.6 vs 7.7 "
        "deg, one view)",
    )
    lr: float = Field(2e-3, gt=0)
    amp: bool = Field(
        False,
        description="mixed precision for the head's MLP (as in pretrain); off by default: the head "
        "is small, its steps are cheap in float32, and its inputs are standardised features",
    )
    time_limit_s: float | None = Field(240.0, gt=0, description="as in pretrain")
    views: Literal[1, 2, 8, 16] = Field(
        16,
        description="test-time views of the registered model: 1 the image, 2 and its mirror, "
        "8 the quarter turns of both, 16 those of the image and of the image turned 45 deg; "
        "mapped back by the exact label transforms and averaged",
    )


class EvalSection(_Section):
    """Quick evaluation on held-out identities over all of SO(3)."""

    num_samples: int = Field(1024, gt=0)
    identities: tuple[int, int] = (2_000_000, 2_100_000)


class TrackingSection(_Section):
    """MLflow tracking and registry."""

    tracking_uri: str | None = Field(
        None, description="None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here"
    )
    experiment: str = "clerf"
    encoder_name: str = "clerf-encoder"
    head_name: str = "clerf-head"
    register_models: bool = True


class SearchDimension(_Section):
    """One searched field of ``tune.space``: a list of ``choices``, or a range ``low``..``high``
    (``log``: log-uniform; ``integer``: whole numbers)."""

    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _one_form(self):
        has_range = self.low is not None or self.high is not None
        if (self.choices is None) == (not has_range):
            raise ValueError("give either choices: [...] or low and high")
        if self.choices is not None and len(self.choices) == 0:
            raise ValueError("choices must not be empty")
        if has_range:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(f"a range needs low < high, got {self.low}, {self.high}")
            if self.log and self.low <= 0:
                raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self

    def values_to_check(self) -> list[Any]:
        """Values that must each make a valid config: every choice, or both ends of a range."""
        if self.choices is not None:
            return list(self.choices)
        ends = [self.low, self.high]
        return [int(v) for v in ends] if self.integer else ends


def _default_space() -> dict[str, SearchDimension]:
    return {
        "pretrain.batch_size": SearchDimension(choices=[32, 64]),
        "pretrain.epochs": SearchDimension(choices=[2, 4]),
        "model.backbone": SearchDimension(choices=["resnet10t", "mobilenetv3_small_100"]),
    }


class TuneSection(_Section):
    """Ray Tune search of the CLERF recipe (``jobs/tune.py``, ``clerf_ray.runs.search``).

    Each trial runs pretraining, the head on the frozen encoder and the error on validation
    renders, at the trial's values of ``space`` over the rest of the config, with
    ``trial_overrides`` applied first (the per-trial budget)."""

    space: dict[str, SearchDimension] = Field(
        default_factory=_default_space,
        description="dotted config field -> {choices: [...]} or {low, high, log, integer}",
    )
    trial_overrides: list[str] = Field(
        default_factory=lambda: [
            "data.num_pairs=4096",
            "pretrain.time_limit_s=300",
            "head.num_samples=4096",
            "head.draws=2",
            "head.epochs=2",
            "head.time_limit_s=120",
            "head.views=1",
        ],
        description="key=value overrides applied to every trial before its searched values: "
        "the per-trial budget (the default search fits 30 minutes on 2 cores)",
    )
    num_samples: int = Field(4, gt=0, description="trials (per grid point with grid search)")
    search_alg: Literal["random", "grid", "optuna"] = Field(
        "random",
        description="random or grid (Tune's own sampling), or optuna (Optuna's TPE sampler; "
        "the optional extra clerf_ray[optuna])",
    )
    metric: Literal["val/geodesic_median", "val/geodesic_mean"] = Field(
        "val/geodesic_median",
        description="ranks trials: the head's error on validation renders (degrees)",
    )
    mode: Literal["min", "max"] = "min"
    scheduler: Literal["asha", "none"] = "asha"
    asha_metric: str = Field(
        "val/retrieval_median",
        description="what ASHA compares after every pretraining epoch: median geodesic error "
        "of nearest-neighbour pose retrieval from validation queries to validation references",
    )
    grace_period: int = Field(1, gt=0, description="ASHA: epochs before a trial can be stopped")
    reduction_factor: int = Field(2, gt=1, description="ASHA: keep 1 in this many at a rung")
    max_concurrent_trials: int | None = Field(
        None, gt=0, description="None: as many as the cluster's CPUs hold at the trials' budget"
    )
    trial_cpus: float = Field(
        0.01,
        gt=0,
        description="CPUs the trial's own process holds (its Train workers and Ray Data "
        "stages ask for theirs); tiny so that it never starves them",
    )
    name: str = Field("clerf-search", description="experiment name under storage_path")
    val_identities: tuple[int, int] = Field(
        (3_000_000, 3_100_000),
        description="validation identities, disjoint from data.train_identities and "
        "eval.identities",
    )
    val_samples: int = Field(512, gt=0, description="validation renders the head is scored on")
    probe_queries: int = Field(128, gt=0, description="retrieval probe: query renders")
    probe_references: int = Field(512, gt=0, description="retrieval probe: reference renders")


class Config(_Section):
    """Everything a run needs; written to the run directory and logged to MLflow."""

    seed: int = 0
    run_name: str | None = None
    storage_path: str = Field(
        "runs", validate_default=True, description="Ray Train checkpoints: local dir or s3://"
    )
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    pretrain: PretrainSection = Field(default_factory=PretrainSection)
    head: HeadSection = Field(default_factory=HeadSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    tune: TuneSection = Field(default_factory=TuneSection)

    @model_validator(mode="after")
    def _check_search_space(self):
        # Every searched value must make a valid config itself: a bad choice fails at load, with
        # its dotted name, before any trial starts.
        if not self.tune.space:
            return self
        base = self.model_dump(mode="json", exclude={"tune"})
        for key, dim in self.tune.space.items():
            for value in dim.values_to_check():
                data = json.loads(json.dumps(base))
                data["tune"] = {"space": {}}  # the value alone, without searching again
                node = data
                parts = key.split(".")
                for part in parts[:-1]:
                    if not isinstance(node.get(part), dict):
                        raise ValueError(f"tune.space: {key!r} is not a config field")
                    node = node[part]
                if parts[-1] not in node:
                    raise ValueError(f"tune.space: {key!r} is not a config field")
                node[parts[-1]] = value
                try:
                    Config.model_validate(data)
                except ValidationError as e:
                    err = e.errors()[0]
                    raise ValueError(
                        f"tune.space.{key}: {value!r} is not a valid value ({err['msg']})"
                    ) from None
        lo, hi = self.tune.val_identities
        for name, (a, b) in (
            ("data.train_identities", self.data.train_identities),
            ("eval.identities", self.eval.identities),
        ):
            if lo < b and a < hi:
                raise ValueError(f"tune.val_identities {self.tune.val_identities} overlap {name}")
        return self

    @field_validator("storage_path")
    @classmethod
    def _absolute_storage(cls, v: str) -> str:
        # Ray Train wants an absolute local path (or a URI).
        return v if "://" in v else str(Path(v).expanduser().resolve())

    def flat(self) -> dict[str, Any]:
        """Dotted-key view for MLflow parameters."""
        out: dict[str, Any] = {}

        def walk(prefix, value):
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = value

        walk("", self.model_dump(mode="json"))
        return out


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def _parse_value(text: str) -> Any:
    # YAML scalars: numbers, booleans, null, lists "[1, 2]", plain strings.
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a nested dict (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r} must look like key=value (e.g. pretrain.epochs=2)"
            )
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = _parse_value(value)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then ``overrides``; validated."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded
    data = apply_overrides(data, overrides or [])
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            field = ".".join(str(p) for p in err["loc"])
            if field:
                lines.append(f"  {field}: {err['msg']} (got {err.get('input')!r})")
            else:  # a check across fields: its message names them
                lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
        where = f" in {path}" if path else ""
        raise ConfigError("invalid configuration" + where + ":\n" + "\n".join(lines)) from None


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (and return nothing)."""
    Path(path).write_text(yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))


def add_config_arguments(parser, example: str = "pretrain.epochs=2") -> None:
    """The jobs' shared command line: ``--config FILE`` and free ``key=value`` overrides."""
    parser.add_argument("--config", help="YAML config file layered over the defaults")
    parser.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {example}")
