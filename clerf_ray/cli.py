"""The ``clerf`` command line.

Each subcommand is a function decorated with :func:`command`, which names it and declares its
arguments; ``main`` builds the parser from the registry. To add a subcommand, write::

    @command("evaluate", help="...", args=[arg("--model", required=True), ...])
    def _evaluate(ns: argparse.Namespace) -> int:
        ...

Keep the logic in the library and only wire arguments to it here.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class _Arg:
    flags: tuple[str, ...]
    kwargs: dict


def arg(*flags: str, **kwargs) -> _Arg:
    """One ``add_argument`` call, recorded for a subcommand."""
    return _Arg(flags, kwargs)


@dataclass
class _Command:
    name: str
    help: str
    run: Callable[[argparse.Namespace], int | None]
    args: list[_Arg] = field(default_factory=list)


_COMMANDS: dict[str, _Command] = {}


def command(name: str, help: str, args: Sequence[_Arg] = ()):
    """Register the decorated ``run(namespace) -> exit code`` as subcommand ``name``."""

    def deco(fn):
        if name in _COMMANDS:
            raise ValueError(f"clerf subcommand {name!r} registered twice")
        _COMMANDS[name] = _Command(name, help, fn, list(args))
        return fn

    return deco


def _parse_option(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as a Python literal when it is one (else a string)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


@command(
    "render",
    help="render a contact sheet: identities (rows) by poses (columns)",
    args=[
        arg("--renderer", default="procedural", help="registered renderer name"),
        arg("--n", type=int, default=8, help="number of identities (rows)"),
        arg(
            "--first-id",
            type=int,
            default=0,
            help="first identity seed; rows use consecutive seeds",
        ),
        arg("--image-size", type=int, default=96, help="cell size in pixels"),
        arg("--out", default="contact_sheet.png", help="output PNG path"),
        arg("--colors", type=int, default=None, help="store a palette PNG with this many colours"),
        arg(
            "--option",
            type=_parse_option,
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="extra renderer option (repeatable), e.g. --option lighting='frontal'",
        ),
    ],
)
def _render(ns: argparse.Namespace) -> int:
    from clerf_ray.render import make_renderer
    from clerf_ray.render.contact_sheet import make_contact_sheet, save_contact_sheet

    if ns.n < 1:
        raise SystemExit(f"clerf render: --n must be >= 1, got {ns.n}")
    renderer = make_renderer(ns.renderer, image_size=ns.image_size, **dict(ns.option))
    sheet = make_contact_sheet(renderer, range(ns.first_id, ns.first_id + ns.n))
    out = save_contact_sheet(sheet, ns.out, colors=ns.colors)
    print(f"wrote {out} ({sheet.width}x{sheet.height} px, {ns.n} identities)")
    return 0


@command(
    "promote",
    help="point an alias (default champion) of a registered model at one of its versions",
    args=[
        arg("name", help="registered model name, e.g. clerf-head"),
        arg("version", help="model version number, e.g. 3"),
        arg("--alias", default="champion", help="alias to move (default: champion)"),
        arg(
            "--tracking-uri",
            default=None,
            help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)",
        ),
    ],
)
def _promote(ns: argparse.Namespace) -> int:
    from clerf_ray import registry

    uri = registry.setup(ns.tracking_uri)
    try:
        registry.promote(ns.name, ns.version, ns.alias)
    except LookupError as e:
        raise SystemExit(f"clerf promote: {e}") from None
    print(f"{ns.name}@{ns.alias} -> version {ns.version} (registry at {uri})")
    return 0


@command(
    "evaluate",
    help="evaluate registered models on a labelled set and its SA/FA variants (table, plots, MLflow)",
    args=[
        arg(
            "--model",
            action="append",
            required=True,
            help="registered model, name@alias or name/version (repeat to compare in one table)",
        ),
        arg(
            "--data",
            required=True,
            help="labelled Parquet set (folder or s3:// prefix), or 'synthetic' for held-out renders",
        ),
        arg("--variants", default="standard,sa,fa", help="comma-separated: standard, sa, fa"),
        arg(
            "--aflw-protocol",
            action="store_true",
            help="keep samples with all |angles| <= 99 deg (AFLW2000 protocol)",
        ),
        arg("--out", default="eval", help="folder for results.md, results.csv and the plots"),
        arg("--num-samples", type=int, default=None, help="at most this many samples"),
        arg("--seed", type=int, default=0, help="seed of synthetic poses and variant draws"),
        arg(
            "--renderer",
            default=None,
            help="renderer of --data synthetic and of the turn plot (default: the one the first "
            "model's training run logged, else procedural)",
        ),
        arg(
            "--renderer-option",
            type=_parse_option,
            action="append",
            default=None,
            metavar="KEY=VALUE",
            help="renderer option (repeatable; default: those the training run logged for the "
            "same renderer, else none)",
        ),
        arg(
            "--image-size",
            type=int,
            default=None,
            help="side in pixels of the --data synthetic renders (default: the model's input size)",
        ),
        arg(
            "--identities",
            type=int,
            nargs=2,
            default=None,
            metavar=("LO", "HI"),
            help="identity seeds [LO, HI) of --data synthetic and the turn plot (default: the "
            "held-out eval.identities the training run logged, else 2000000 2100000)",
        ),
        arg("--turn", choices=["yaw", "roll"], default="yaw", help="turn of the embedding plot"),
        arg(
            "--views",
            type=int,
            choices=[1, 2, 8, 16],
            default=None,
            help="test-time views of every model (default: each model's registered head.views)",
        ),
        arg("--no-plots", action="store_true", help="skip the figures"),
        arg("--tracking-uri", default=None, help="MLflow tracking URI"),
        arg("--experiment", default="clerf-eval", help="MLflow experiment of the evaluation runs"),
    ],
)
def _evaluate(ns: argparse.Namespace) -> int:
    from clerf_ray.evaluate import run_evaluation

    variants = [v.strip() for v in ns.variants.split(",") if v.strip()]
    if ns.data == "synthetic":
        from clerf_ray.ray_init import init_ray

        init_ray()
    try:
        report = run_evaluation(
            ns.model,
            ns.data,
            variants=variants,
            aflw_protocol=ns.aflw_protocol,
            out=ns.out,
            num_samples=ns.num_samples,
            seed=ns.seed,
            identities=tuple(ns.identities) if ns.identities else None,
            renderer=ns.renderer,
            renderer_options=dict(ns.renderer_option) if ns.renderer_option else None,
            image_size=ns.image_size,
            tracking_uri=ns.tracking_uri,
            experiment=ns.experiment,
            plots=not ns.no_plots,
            turn=ns.turn,
            views=ns.views,
        )
    except (LookupError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"clerf evaluate: {e}") from None
    print(report.table)
    print(f"wrote {report.out}/results.md, results.csv and {len(report.files) - 2} plot(s)")
    for ref, run_id in report.run_ids.items():
        print(f"MLflow run {run_id}: {ref}")
    return 0


@command(
    "predict",
    help="head pose of images: one JSON line per image (file, pitch, yaw, roll in degrees, R)",
    args=[
        arg("inputs", nargs="+", help="image files, directories or s3:// prefixes"),
        arg(
            "--model",
            default="clerf-head@champion",
            help="registered model, name@alias or name/version (default clerf-head@champion, "
            "which `clerf promote` sets; training registers clerf-head@candidate)",
        ),
        arg(
            "--out",
            default=None,
            help="folder for the images with the pose axes drawn (NAME_pose.png; inputs with "
            "the same name keep their parent folders, x__NAME_pose.png)",
        ),
        arg(
            "--boxes",
            default=None,
            help="JSON {file: [x0, y0, x1, y1]} or CSV file,x0,y0,x1,y1 of face boxes in whole "
            "images (keyed by path or base name); every input then needs a box, one without "
            "is reported as failed",
        ),
        arg("--tracking-uri", default=None, help="MLflow tracking URI"),
        arg("--num-actors", type=int, default=1, help="Ray Data predictor actors (directories)"),
        arg("--num-cpus", type=float, default=0.5, help="CPUs per predictor actor"),
        arg("--num-gpus", type=float, default=0.0, help="GPUs per predictor actor"),
    ],
)
def _predict(ns: argparse.Namespace) -> int:
    from clerf_ray.predict import run_predict

    try:
        return run_predict(
            ns.model,
            ns.inputs,
            out=ns.out,
            boxes_path=ns.boxes,
            tracking_uri=ns.tracking_uri,
            num_actors=ns.num_actors,
            num_cpus=ns.num_cpus,
            num_gpus=ns.num_gpus,
        )
    except (LookupError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"clerf predict: {e}") from None


@command(
    "coverage",
    help="pose coverage plot (CLERF Fig. 2): the labels' axis vectors before and after augmentation",
    args=[
        arg("--labelled", default=None, help="labelled Parquet set (local folder or s3://)"),
        arg("--poses", choices=("so3", "ranges"), default=None, help="a synthetic pose config"),
        arg("--num", type=int, default=2000, help="labels drawn for --poses"),
        arg("--yaw-range", type=float, nargs=2, default=(-90.0, 90.0), metavar=("LO", "HI")),
        arg("--pitch-range", type=float, nargs=2, default=(-90.0, 90.0), metavar=("LO", "HI")),
        arg("--roll-range", type=float, nargs=2, default=(-180.0, 180.0), metavar=("LO", "HI")),
        arg("--augment", choices=("none", "sa", "fa"), default="fa", help="augmentation preset"),
        arg(
            "--projection", choices=("3d", "hammer"), default="3d", help="sphere or equal-area map"
        ),
        arg(
            "--max-points", type=int, default=3000, help="plot a random subset of this many labels"
        ),
        arg("--seed", type=int, default=0),
        arg("--out", default="coverage.png", help="output PNG path"),
    ],
)
def _coverage(ns: argparse.Namespace) -> int:
    from clerf_ray.data import coverage

    if (ns.labelled is None) == (ns.poses is None):
        raise SystemExit(
            "clerf coverage: give exactly one of --labelled PATH or --poses so3|ranges"
        )
    if ns.num < 1 or ns.max_points < 1:
        raise SystemExit("clerf coverage: --num and --max-points must be >= 1")
    try:
        if ns.labelled is not None:
            R, title = coverage.labels_from_parquet(ns.labelled), ns.labelled.rstrip("/")
        else:
            R = coverage.labels_from_poses(
                ns.poses,
                ns.num,
                ns.seed,
                tuple(ns.yaw_range),
                tuple(ns.pitch_range),
                tuple(ns.roll_range),
            )
            title = ns.poses
        data = coverage.coverage_data(R, ns.augment, ns.seed, ns.max_points, title=title)
        coverage.plot_coverage(data, ns.out, projection=ns.projection)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"clerf coverage: {e}") from None
    print(f"wrote {ns.out} ({len(data.before)} labels, augment {ns.augment}, {ns.projection})")
    return 0


@command(
    "tune",
    help="Ray Tune search of the CLERF recipe (jobs/tune.py): the space, budget, scheduler and "
    "metric come from the config's tune section; rerun the same command to resume",
    args=[
        arg("--config", help="YAML config file layered over the defaults"),
        arg("overrides", nargs="*", help="key=value overrides, e.g. tune.num_samples=8"),
    ],
)
def _tune(ns: argparse.Namespace) -> int:
    from clerf_ray.preflight import config_from_args
    from clerf_ray.runs.search import run_search, summary_table

    cfg = config_from_args(ns)
    if cfg is None:
        return 2
    try:
        result = run_search(cfg)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary_table(cfg, result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clerf", description="CLERF head pose estimation on Ray")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in _COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        for a in cmd.args:
            p.add_argument(*a.flags, **a.kwargs)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    return int(ns._run(ns) or 0)


if __name__ == "__main__":
    sys.exit(main())
