"""The main job: contrastive pretraining, the pose head, a quick held-out evaluation, registration.

python jobs/pretrain.py                                  # embedded default (CPU, local Ray)
python jobs/pretrain.py --config configs/paper.yaml pretrain.epochs=16
ray job submit --working-dir . -- python jobs/pretrain.py  # on a running cluster
"""

import argparse
import sys

from clerf_ray.config import add_config_arguments
from clerf_ray.preflight import config_from_args
from clerf_ray.runs.clerf import run_recipe, summary_table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser, "pretrain.epochs=2")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if cfg is None:
        return 2
    result = run_recipe(cfg)
    print(summary_table(cfg, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
