"""Fit a pose head on a registered encoder version, evaluate it, register it.

python jobs/train_head.py --encoder clerf-encoder@candidate
python jobs/train_head.py --encoder clerf-encoder/3 --config configs/paper.yaml head.epochs=4
ray job submit --working-dir . -- python jobs/train_head.py --encoder clerf-encoder@champion

The encoder's own config decides the model and image size; the head is registered as a new
version of ``tracking.head_name`` (alias candidate) tagged with the encoder version.
"""

import argparse
import sys

from clerf_ray.config import add_config_arguments
from clerf_ray.preflight import config_from_args
from clerf_ray.runs.head_on_registered import summary_table, train_head_on


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--encoder", required=True, help="registered encoder: name@alias or name/version"
    )
    add_config_arguments(parser, "head.epochs=2")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if cfg is None:
        return 2
    try:
        result = train_head_on(args.encoder, cfg)
    except LookupError as e:
        print(f"error: --encoder: {e}", file=sys.stderr)
        return 2
    print(summary_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
