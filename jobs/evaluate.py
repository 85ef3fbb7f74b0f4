"""Evaluate registered models on a labelled set and its SA/FA variants (same as ``clerf evaluate``).

python jobs/evaluate.py --model clerf-head@candidate --model clerf-baseline@candidate \\
    --data data/aflw2000 --aflw-protocol --out eval_aflw
python jobs/evaluate.py --model clerf-head@candidate --data synthetic --num-samples 1024
ray job submit --working-dir . -- python jobs/evaluate.py --model clerf-head@champion --data s3://b/aflw
"""

import sys

from clerf_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
