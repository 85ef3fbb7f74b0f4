"""The main job: contrastive pretraining, the pose head, a quick held-out evaluation, registration.

python jobs/pretrain.py                                  # embedded default (CPU, local Ray)
python jobs/pretrain.py --config configs/paper.yaml pretrain.epochs=16
ray job submit --working-dir . -- python jobs/pretrain.py  # on a running cluster
"""

import argparse
import sys

from clerf_ray.config import ConfigError, load_config
from clerf_ray.recipe import run_recipe, summary_table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML config file layered over the defaults")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. pretrain.epochs=2")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = run_recipe(cfg)
    print(summary_table(cfg, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
