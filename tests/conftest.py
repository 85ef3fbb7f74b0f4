"""Shared fixtures. Ray starts once per test session (local, 2 logical CPUs) and stops at the end."""

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
