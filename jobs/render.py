"""Render a pair set once and keep it as Parquet shards (local folder or s3://), so that GAN render
cost is paid once across epochs and tuning trials; train on it with ``data.source=shards``.

    python jobs/render.py --output data/pairs --num-pairs 4096 --image-size 64
    python jobs/render.py --output s3://bucket/clerf/pairs --renderer eg3d \\
        data.renderer_options='{network: /models/ffhq512.pkl, checkout: /src/eg3d}' \\
        data.render_num_gpus=1 data.num_render_actors=4
    python jobs/render.py --output data/pairs_real --source real_anchor --labelled-path data/300w_lp
    ray job submit --working-dir . -- python jobs/render.py --output s3://bucket/clerf/pairs

Settings come from the typed config (defaults, ``--config`` YAML, ``data.*`` overrides); the
flags below are shorthands for the usual ones. Everything happens in
:func:`clerf_ray.data.pairs.write_pair_shards`; this script parses, calls it and reports.
"""

from __future__ import annotations

import argparse
import sys


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
    p.add_argument("--shard-rows", type=int, default=1000, help="pairs per shard")
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
    ]
    return [f"{k}={v}" for k, v in pairs if v is not None]


def main(argv: list[str] | None = None) -> int:
    from clerf_ray.config import ConfigError, load_config
    from clerf_ray.data.pairs import write_pair_shards
    from clerf_ray.recipe import init_ray

    args = parse_args(argv)
    if args.shard_rows < 1:
        print(f"render: error: --shard-rows must be >= 1, got {args.shard_rows}", file=sys.stderr)
        return 2
    try:
        # Flags last: they win over the file and the free-form overrides.
        cfg = load_config(args.config, list(args.overrides) + _flag_overrides(args))
        pair_cfg = cfg.data.pair_config(seed=cfg.seed)
        if pair_cfg.source == "shards":
            raise ValueError("data.source must be 'synthetic' or 'real_anchor' to render shards")
    except (ConfigError, ValueError) as e:
        print(f"render: error: {e}", file=sys.stderr)
        return 2
    init_ray()
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
    try:
        report = write_pair_shards(
            pair_cfg,
            args.output,
            shard_rows=args.shard_rows,
            endpoint_url=args.endpoint_url,
            log=lambda line: print(line, flush=True),
        )
    except (FileNotFoundError, RuntimeError) as e:
        print(f"render: error: {e}", file=sys.stderr)
        return 2
    print(
        f"render: {report['counts']['pairs']} pairs in {len(report['shards'])} shards at "
        f"{args.output} ({report['elapsed_s']:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
