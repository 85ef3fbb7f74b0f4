"""The supervised baseline (6DRepNet style): the same backbone and head as CLERF trained end to end
with the geodesic loss, on CLERF's pretraining budget; registered as ``clerf-baseline@candidate``.

python jobs/train_baseline.py                                # with geometric augmentation (fa)
python jobs/train_baseline.py data.augment=none --name clerf-baseline-noaug
python jobs/train_baseline.py --config configs/paper.yaml --labelled data/300w_lp
ray job submit --working-dir . -- python jobs/train_baseline.py
"""

import argparse
import sys

from clerf_ray.config import add_config_arguments, config_from_args
from clerf_ray.train.supervised import train_baseline


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", default="clerf-baseline", help="registered model name")
    parser.add_argument(
        "--labelled", default=None, help="labelled Parquet set (local or s3://) instead of renders"
    )
    parser.add_argument("--no-register", action="store_true", help="log the model, do not register")
    add_config_arguments(parser, "pretrain.epochs=2")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if cfg is None:
        return 2
    r = train_baseline(
        cfg, model_name=args.name, labelled_path=args.labelled, register=not args.no_register
    )
    m = r.metrics
    print(
        f"baseline ({cfg.model.backbone}, augment={cfg.data.augment}): held-out geodesic error "
        f"median {m['geodesic_median']:.2f} deg, mean {m['geodesic_mean']:.2f} deg, "
        f"within 30 deg {m['within_30']:.1%}; {r.timings['total_s']:.0f}s"
    )
    print(f"MLflow run {r.run_id} at {r.tracking_uri}")
    if r.version:
        print(f"registered models:/{r.model_name}/{r.version} (alias candidate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
