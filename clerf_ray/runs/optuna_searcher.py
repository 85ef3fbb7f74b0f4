"""Optuna's TPE sampler as the search's searcher (``tune.search_alg=optuna``), through Ray Tune's
own ``OptunaSearch``. Imported only when that searcher is chosen: Optuna is an optional extra
(``pip install -e '.[optuna]'``).

Ray's ``OptunaSearch`` reads the ranking metric from *every* report a trial makes and fails with a
``KeyError`` on a report without it. A trial of this search reports a cheap retrieval probe after
each pretraining epoch (for ASHA) and the ranking metric, the head's validation error, only in its
final report, so :class:`FinalMetricOptunaSearch` passes on to Optuna only the reports that carry
the ranking metric. Optuna then ranks by the same value as the rest of the search; a trial that
ASHA stopped is told to Optuna as pruned (Ray does this when its last report lacks the metric).
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch


class FinalMetricOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that ignores reports without its metric (module docstring)."""

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)


def optuna_searcher(metric: str, mode: str, seed: int) -> FinalMetricOptunaSearch:
    """Optuna's default sampler (TPE; its first 10 trials are drawn at random, as Optuna's
    ``n_startup_trials`` says), seeded, ranking by ``metric`` in ``mode``. The search space is
    the Tuner's ``param_space``, which Ray converts to Optuna distributions."""
    return FinalMetricOptunaSearch(metric=metric, mode=mode, seed=seed)
