"""``tune.search_alg=optuna``: the searcher run_search hands to Tune, driven here through the
calls Tune's controller makes (suggest, a result per report, completion), without Ray: the
suggested values lie in the config's space, per-epoch probe reports (which lack the ranking
metric) are passed over, and Optuna's study receives each trial's final validation error, a
trial ASHA stopped as pruned and a failed one as failed."""

from __future__ import annotations

import pytest

from clerf_ray.config import ConfigError, load_config
from clerf_ray.preflight import check_config
from clerf_ray.runs.search import param_space, searcher

pytest.importorskip("optuna")


def _cfg(*extra):
    return load_config(None, ["tune.search_alg=optuna", *extra])


def test_random_and_grid_leave_sampling_to_tune():
    assert searcher(load_config(None, ["tune.search_alg=random"])) is None
    assert searcher(load_config(None, ["tune.search_alg=grid"])) is None


def test_optuna_suggests_from_the_space_and_ranks_by_the_final_report_only():
    from optuna.trial import TrialState

    cfg = _cfg(
        "tune.space={pretrain.lr: {low: 1.0e-3, high: 1.0e-2, log: true}, "
        "model.backbone: {choices: [resnet10t, resnet18]}, "
        "pretrain.batch_size: {low: 16, high: 64, integer: true}}"
    )
    s = searcher(cfg)
    assert s is not None and s.metric == "val/geodesic_median" and s.mode == "min"
    assert s.set_search_properties(None, None, param_space(cfg))
    suggested = {f"t{i}": s.suggest(f"t{i}") for i in range(4)}
    for values in suggested.values():
        assert set(values) == {"pretrain.lr", "model.backbone", "pretrain.batch_size"}
        assert 1e-3 <= values["pretrain.lr"] <= 1e-2
        assert values["model.backbone"] in ("resnet10t", "resnet18")
        assert isinstance(values["pretrain.batch_size"], int)
        assert 16 <= values["pretrain.batch_size"] <= 64
    # The same seed suggests the same first trial; another seed another one.
    again = searcher(cfg)
    again.set_search_properties(None, None, param_space(cfg))
    assert again.suggest("t0") == suggested["t0"]

    # What a trial reports: the probe after each epoch (no ranking metric), then the final row.
    for trial_id, final in (("t0", 12.5), ("t1", 7.25)):
        for epoch in (1, 2):
            probe = {
                "epoch": epoch,
                "val/retrieval_median": 40.0 / epoch,
                "training_iteration": epoch,
            }
            s.on_trial_result(trial_id, probe)  # Ray's OptunaSearch raises KeyError here
        last = {"epoch": 2, "val/geodesic_median": final, "training_iteration": 3}
        s.on_trial_result(trial_id, last)
        s.on_trial_complete(trial_id, last)
    # Stopped by ASHA after a probe report; failed with no report at all.
    s.on_trial_complete("t2", {"epoch": 1, "val/retrieval_median": 50.0})
    s.on_trial_complete("t3", None, error=True)

    trials = {t.number: t for t in s._ot_study.get_trials(deepcopy=False)}
    assert [trials[i].state for i in range(4)] == [
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.FAIL,
    ]
    assert trials[0].value == 12.5 and trials[1].value == 7.25
    # Only the report that carried the metric reached Optuna as an intermediate value.
    assert trials[0].intermediate_values == {3: 12.5}
    assert s._ot_study.best_trial.number == 1
    assert s._ot_study.best_trial.params["model.backbone"] == suggested["t1"]["model.backbone"]


def test_optuna_missing_is_named_before_ray_starts_faked_import(monkeypatch):
    # A fake: optuna is installed here, so its absence is simulated at the lookup the check uses.
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"tune\.search_alg: 'optuna' needs the optuna package"):
        check_config(_cfg(), data_sets=False)
    check_config(load_config(None, ["tune.search_alg=random"]), data_sets=False)
