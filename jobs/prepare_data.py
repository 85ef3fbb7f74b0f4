"""Prepare a real head-pose dataset as labelled Parquet shards (local folder or s3://).

    python jobs/prepare_data.py --dataset aflw2000 --source data/AFLW2000 --output data/aflw2000
    python jobs/prepare_data.py --dataset 300w_lp --source data/300W_LP \\
        --output s3://bucket/clerf/300w_lp --workers 8

Everything happens in :func:`clerf_ray.data.readers.prepare_dataset`; this script parses the
arguments, calls it and turns "nothing valid" into a non-zero exit with a message.
"""

from __future__ import annotations

import argparse
import sys

from clerf_ray.data.crop import BIWI_BOX_MM
from clerf_ray.data.readers import DATASETS, NoValidSamplesError, prepare_dataset
from clerf_ray.data.schema import IMAGE_FORMATS
from clerf_ray.data.shards import DEFAULT_SHARD_ROWS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--source", required=True, help="dataset folder (BIWI: hpdb or its parent)")
    p.add_argument("--output", required=True, help="local folder or s3://bucket/prefix")
    p.add_argument(
        "--split",
        choices=("train", "test"),
        default=None,
        help="train: crop factor k random in [0.2, 0.4); test: k = 0.2 "
        "(default: train for 300w_lp, test otherwise)",
    )
    p.add_argument(
        "--filter-99",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="drop samples with any |angle| > 99 deg (default: on for aflw2000 only)",
    )
    p.add_argument(
        "--include-invisible",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="AFLW2000: put invisible landmarks in the crop box, as the peers do (default: on)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the training crop factor")
    p.add_argument("--shard-rows", type=int, default=DEFAULT_SHARD_ROWS)
    p.add_argument("--image-size", type=int, default=None, help="resize crops to N x N pixels")
    p.add_argument("--image-format", choices=IMAGE_FORMATS, default="jpeg")
    p.add_argument("--biwi-box-mm", type=float, default=BIWI_BOX_MM)
    p.add_argument("--workers", type=int, default=1, help="decoding processes")
    p.add_argument(
        "--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL, else AWS)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = prepare_dataset(
            args.dataset,
            args.source,
            args.output,
            split=args.split,
            filter_99=args.filter_99,
            include_invisible=args.include_invisible,
            seed=args.seed,
            shard_rows=args.shard_rows,
            image_size=args.image_size,
            image_format=args.image_format,
            biwi_box_mm=args.biwi_box_mm,
            workers=args.workers,
            endpoint_url=args.endpoint_url,
        )
    except (NoValidSamplesError, FileNotFoundError) as e:
        print(f"prepare_data: error: {e}", file=sys.stderr)
        return 2
    c = report["counts"]
    print(
        f"{c['written']} rows in {len(report['shards'])} shards at {args.output} "
        f"(seen {c['seen']}, filtered {c['filtered']}, skipped {c['skipped']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
