"""The search's shared renders (clerf_ray.runs.search._shared_renders): one render pass split
into probe queries, probe references and validation renders, of the validation identities."""

from __future__ import annotations

import numpy as np
import ray

from clerf_ray.config import load_config


def test_probe_and_validation_renders_are_one_pass_split_by_whole_pairs(ray_cluster, tmp_path):
    from clerf_ray.evaluate import heldout_renders
    from clerf_ray.runs.search import _shared_renders, base_trial_data, trial_config

    cfg = load_config(
        None,
        [
            "data.image_size=16",
            "data.num_pairs=8",
            "data.render_batch_size=8",
            "data.render_num_cpus=0.25",
            "data.stage_num_cpus=0.1",
            "tune.probe_queries=3",
            "tune.probe_references=5",
            "tune.val_samples=4",
            "data.pool=false",  # no pretraining pool: not what this test is about
            f"storage_path={tmp_path}",
        ],
    )
    base = trial_config(base_trial_data(cfg), {}, "base")
    shared = _shared_renders(cfg, base)
    probe, (val_images, val_R) = ray.get(shared["probe"]), ray.get(shared["val"])
    assert probe["query_images"].shape == (3, 16, 16, 3) and probe["ref_R"].shape == (5, 3, 3)
    assert val_images.shape == (4, 16, 16, 3) and val_R.shape == (4, 3, 3)
    parts = [probe["query_R"], probe["ref_R"], val_R]
    labels = np.concatenate(parts).reshape(-1, 9)
    # The 12 renders of the validation identities at the probe's seed (6 pairs: two identities
    # at each pose)...
    t = cfg.tune
    held = base.data.model_copy(update={"source": "synthetic"}).pair_config(
        seed=base.seed + 3, identities=t.val_identities, augment="fa"
    )
    _, R = heldout_renders(held, 12)
    R = R.reshape(-1, 9)
    assert sorted(r.tobytes() for r in R) == sorted(r.tobytes() for r in labels)
    assert len({r.tobytes() for r in R}) == 6
    # ...in a random order of whole pairs, not the order they are rendered and sorted in...
    assert not np.array_equal(R, labels)
    assert all(np.array_equal(labels[i], labels[i + 1]) for i in range(0, 12, 2))
    # ...so that only the pair cut by the 3 | 5 boundary has a pose in two parts.
    poses = [{row.tobytes() for row in part.reshape(-1, 9)} for part in parts]
    in_two = (poses[0] & poses[1]) | (poses[0] & poses[2]) | (poses[1] & poses[2])
    assert in_two == {labels[2].tobytes()}
    assert shared["pool"] is None
