"""Ray Tune search of the CLERF recipe: batch size, epochs and backbone by default (any config
field by its dotted name), ASHA early stopping on a per-epoch retrieval probe, the head's error on
validation identities to rank trials, MLflow parent and nested runs, the best trial registered as
``candidate``. Rerun the same command to resume an interrupted search. Same as ``clerf tune``.

python jobs/tune.py                                        # the default search (CPU, local Ray)
python jobs/tune.py tune.num_samples=8 'tune.space={pretrain.lr: {low: 1e-3, high: 1e-2, log: true}}'
ray job submit --working-dir . -- python jobs/tune.py --config configs/search.yaml
"""

import sys

from clerf_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
