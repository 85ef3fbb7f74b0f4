"""The supervised baseline (6DRepNet style): the same backbone and head as CLERF trained end to end
with the geodesic loss, on CLERF's pretraining budget; registered as ``clerf-baseline@candidate``.

Budget (the same config as the CLERF run it is compared with):
  images   the pairs pretraining reads, both images of each pair as labelled samples
           (2 x data.num_pairs per epoch); with data.pool=true (default) rendered once and
           reused every epoch with fresh augmentation, as pretraining does
  steps    pretrain.batch_size counts pairs, so a baseline step holds 2 x pretrain.batch_size
           images: a CLERF step of 64 pairs embeds 128 images, and so does a baseline step;
           steps per epoch, epochs, learning rate, schedule and time limit are pretrain's
  not      CLERF's head stage (head.draws more draws of head.num_samples images, frozen encoder)

python jobs/train_baseline.py                                # with geometric augmentation (fa)
python jobs/train_baseline.py data.augment=none --name clerf-baseline-noaug
python jobs/train_baseline.py --config configs/paper.yaml --labelled data/300w_lp
ray job submit --working-dir . -- python jobs/train_baseline.py
"""

import argparse
import sys

from clerf_ray.config import add_config_arguments
from clerf_ray.preflight import config_from_args
from clerf_ray.runs.baseline import train_baseline


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
