"""Shared fixtures. Ray starts once per test session (local, 2 logical CPUs) and stops at the end;
MLflow stores are made fresh per module."""

import os

import pytest

# Keep test runs off the network and quiet.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance shared by every test that asks for it."""
    import ray

    if not ray.is_initialized():
        # address="local": always a new local instance, never a `ray start` cluster that another
        # process (a job-submission test, a user's session) left running on this machine.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _fresh_store(d):
    """A sqlite store in ``d`` with its artifacts there too (not ./mlruns), made current, with
    experiments ``train``, ``eval`` and ``clerf-eval``; returns its tracking URI.

    ``mlflow.set_registry_uri`` exports MLFLOW_REGISTRY_URI, which ``registry.setup`` then takes
    for a user's choice and keeps: drop it so this store's registry is the one used.
    """
    import mlflow

    from clerf_ray import registry

    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    uri = registry.setup(f"sqlite:///{d}/mlflow.db")
    for name in ("train", "eval", "clerf-eval"):
        mlflow.create_experiment(name, artifact_location=f"file://{d}/artifacts/{name}")
    mlflow.set_experiment("train")
    return uri


@pytest.fixture(scope="session")
def fresh_store():
    """``fresh_store(folder) -> tracking URI``: a new sqlite MLflow store in ``folder``, made
    current (a function, so module-scoped fixtures can make their own store)."""
    return _fresh_store
