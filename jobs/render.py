"""Render a pair set once and keep it as Parquet shards (local folder or s3://), so that GAN render
cost is paid once across epochs and tuning trials; train on it with ``data.source=shards``.
With ``--labelled``, render a labelled set instead (one image per row, in the labelled schema of
``prepare_data.py``): any consumer of labelled sets reads it (evaluation, ``head.labelled_path``,
``data.labelled_path``, coverage).

    python jobs/render.py --output data/pairs --num-pairs 4096 --image-size 64
    python jobs/render.py --labelled --num-images 2048 --identities 2000000 2100000 \\
        --output data/renders_test --image-format png
    python jobs/render.py --output s3://bucket/clerf/pairs --renderer eg3d \\
        data.renderer_options='{network_pkl: /models/ffhq512.pkl, checkout: /src/eg3d}' \\
        data.render_num_gpus=1 data.num_render_actors=4
    python jobs/render.py --output data/pairs_real --source real_anchor --labelled-path data/300w_lp
    ray job submit --working-dir . -- python jobs/render.py --output s3://bucket/clerf/pairs

Settings come from the typed config (defaults, ``--config`` YAML, ``data.*`` overrides); the
flags below are shorthands for the usual ones. Everything happens in
:func:`clerf_ray.data.pairs.write_pair_shards` (pairs) or
:func:`clerf_ray.data.renders.write_labelled_renders` (``--labelled``); this script parses, calls
one and reports.
"""

from __future__ import annotations

import argparse
import sys

from clerf_ray.data.shards import DEFAULT_SHARD_ROWS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output", required=True, help="local folder or s3://bucket/prefix")
    p.add_argument("--config", help="YAML config file layered over the defaults")
    p.add_argument("--num-pairs", type=int, help="pairs to render (data.num_pairs; synthetic)")
    p.add_argument("--renderer", help="registered renderer name (data.renderer)")
    p.add_argument("--image-size", type=int, help="image side in pixels (data.image_size)")
    p.add_argument("--seed", type=int, help="seed of every draw (seed)")
    p.add_argument("--source", choices=("synthetic", "real_anchor"), help="data.source")
    p.add_argument("--labelled-path", help="labelled set for real anchors (data.labelled_path)")
    p.add_argument("--poses", help="so3, ranges, or a labelled set's path (data.poses)")
    p.add_argument(
        "--identities",
        type=int,
        nargs=2,
        metavar=("LO", "HI"),
        help="identity seeds [LO, HI) to draw from (data.train_identities)",
    )
    p.add_argument(
        "--labelled",
        action="store_true",
        help="write a labelled set (prepare_data's schema: one render per row) instead of pairs",
    )
    p.add_argument("--num-images", type=int, help="renders to write (required with --labelled)")
    p.add_argument(
        "--image-format",
        choices=("jpeg", "png"),
        default="jpeg",
        help="encoding of --labelled images (png: lossless)",
    )
    p.add_argument(
        "--shard-rows", type=int, default=DEFAULT_SHARD_ROWS, help="pairs (or images) per shard"
    )
    p.add_argument(
        "--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL, else AWS)"
    )
    p.add_argument(
        "overrides", nargs="*", help="key=value config overrides, e.g. data.render_batch_size=32"
    )
    return p.parse_args(argv)


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    pairs = [
        ("data.num_pairs", args.num_pairs),
        ("data.renderer", args.renderer),
        ("data.image_size", args.image_size),
        ("seed", args.seed),
        ("data.source", args.source),
        ("data.labelled_path", args.labelled_path),
        ("data.poses", args.poses),
        ("data.train_identities", None if args.identities is None else list(args.identities)),
    ]
    return [f"{k}={v}" for k, v in pairs if v is not None]


def main(argv: list[str] | None = None) -> int:
    from clerf_ray.config import ConfigError
    from clerf_ray.data.pairs import write_pair_shards
    from clerf_ray.preflight import load_checked_config
    from clerf_ray.ray_init import init_ray

    args = parse_args(argv)
    usage = None
    if args.shard_rows < 1:
        usage = f"--shard-rows must be >= 1, got {args.shard_rows}"
    elif args.labelled and (args.num_images is None or args.num_images < 1):
        usage = f"--labelled needs --num-images N with N >= 1, got {args.num_images}"
    elif not args.labelled and args.num_images is not None:
        usage = "--num-images goes with --labelled (pairs: --num-pairs)"
    if usage:
        print(f"render: error: {usage}", file=sys.stderr)
        return 2
    try:
        # Flags last: they win over the file and the free-form overrides.
        cfg = load_checked_config(args.config, list(args.overrides) + _flag_overrides(args))
        pair_cfg = cfg.data.pair_config(seed=cfg.seed)
        if args.labelled and pair_cfg.source != "synthetic":
            raise ValueError(
                "data.source must be 'synthetic' with --labelled (poses come from data.poses)"
            )
        if pair_cfg.source == "shards":
            raise ValueError("data.source must be 'synthetic' or 'real_anchor' to render shards")
    except (ConfigError, ValueError) as e:
        print(f"render: error: {e}", file=sys.stderr)
        return 2
    init_ray()
    if args.labelled:
        return _labelled(args, pair_cfg)
    what = (
        f"{pair_cfg.num_pairs} pairs"
        if pair_cfg.source == "synthetic"
        else f"one pair per image of {pair_cfg.labelled_path}"
    )
    print(
        f"render: {what} with {pair_cfg.renderer} at {pair_cfg.renderer_options.get('image_size')} px "
        f"(seed {pair_cfg.seed}) -> {args.output}",
        flush=True,
    )
    return _write(
        args,
        "pairs",
        lambda log: write_pair_shards(
            pair_cfg,
            args.output,
            shard_rows=args.shard_rows,
            endpoint_url=args.endpoint_url,
            log=log,
        ),
    )


def _write(args: argparse.Namespace, kind: str, write) -> int:
    """Run ``write(log)`` (a shard writer), report its counts; exit status 2 on bad input."""
    try:
        report = write(lambda line: print(line, flush=True))
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"render: error: {e}", file=sys.stderr)
        return 2
    count = report["counts"]["pairs" if kind == "pairs" else "written"]
    print(
        f"render: {count} {kind} in {len(report['shards'])} shards at "
        f"{args.output} ({report['elapsed_s']:.1f} s)"
    )
    return 0


def _labelled(args: argparse.Namespace, pair_cfg) -> int:
    from clerf_ray.data.renders import write_labelled_renders

    print(
        f"render: {args.num_images} labelled images with {pair_cfg.renderer} at "
        f"{pair_cfg.renderer_options.get('image_size')} px, poses {pair_cfg.poses}, identities "
        f"{list(pair_cfg.identities)} (seed {pair_cfg.seed}) -> {args.output}",
        flush=True,
    )
    return _write(
        args,
        "labelled images",
        lambda log: write_labelled_renders(
            pair_cfg,
            args.output,
            num_images=args.num_images,
            image_format=args.image_format,
            shard_rows=args.shard_rows,
            endpoint_url=args.endpoint_url,
            log=log,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
