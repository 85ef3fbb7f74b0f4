"""Evaluate registered models on a labelled set and its SA/FA variants (same as ``clerf evaluate``).

python jobs/evaluate.py --model clerf-head@candidate --model clerf-baseline@candidate \\
    --data data/aflw2000 --aflw-protocol --out eval_aflw
python jobs/evaluate.py --model clerf-head@candidate --data synthetic --num-samples 1024
python jobs/evaluate.py --model clerf-head@candidate --data synthetic --renderer procedural \
    --image-size 64 --identities 3000000 3001000 --renderer-option lighting=frontal

--data synthetic renders held-out identities with the renderer, options and eval.identities the
first model's training run logged (else procedural and 2000000 2100000) at the models' input
size; --renderer, --renderer-option, --image-size and --identities override them, and
results.md says where each value came from.
ray job submit --working-dir . -- python jobs/evaluate.py --model clerf-head@champion --data s3://b/aflw
"""

import sys

from clerf_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
