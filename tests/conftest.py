"""Shared fixtures. Ray starts once per test session (local, 2 logical CPUs) and stops at the end;
MLflow stores are made fresh per module, and every test and module starts from the same MLflow
state (:func:`_restore_mlflow_per_test`). Hypothesis runs without deadlines (profile ``clerf``)."""

import os
import sys

import pytest
from hypothesis import settings

# Keep test runs off the network and quiet.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
# Ray Train's preemption watcher (an actor per run that watches cloud nodes for preemption
# notices) has nothing to watch on this one-machine cluster, and costs a process (3-4 s of CPU on
# 2 cores) per Train run. The local Ray these tests start, and the subprocesses they run, inherit
# the setting.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# Ray Train's controller polls its workers every 2 s, so a run is seen to have finished (or
# failed) up to 2 s after it did; at 0.5 s the suite's ~50 Train runs wait about a minute less.
# (A poll that takes longer only counts as a missed health check; a worker is declared hung
# after RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S, 10 minutes, either way.)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Tests never talk to the user's MLflow server, and start with no tracking or registry URI set.
for _name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
    os.environ.pop(_name, None)

# No per-example deadline: Hypothesis' 200 ms default fails examples at random when Ray workers
# share the machine's cores. HYPOTHESIS_PROFILE=default brings the deadline back.
settings.register_profile("clerf", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "clerf"))


def _mlflow_state():
    """MLFLOW_* environment variables and the process state that goes with them: MLflow's
    tracking URI, registry URI and active experiment, each of which it also exports as a
    variable, and ``clerf_ray.registry``'s record of the registry URI it exported (from modules
    already imported only)."""
    mods = sys.modules
    return (
        {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")},
        getattr(mods.get("mlflow.tracking._tracking_service.utils"), "_tracking_uri", None),
        getattr(mods.get("mlflow.tracking._model_registry.utils"), "_registry_uri", None),
        getattr(mods.get("mlflow.tracking.fluent"), "_active_experiment_id", None),
        getattr(mods.get("clerf_ray.registry"), "_exported_registry_uri", None),
    )


def _set_mlflow_state(state) -> None:
    env, tracking_uri, registry_uri, experiment_id, exported = state
    if "mlflow.tracking.fluent" in sys.modules:
        import mlflow
        import mlflow.tracking.fluent

        # These export (or, for None, unset) their variables; the environment is set after.
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(registry_uri)
        mlflow.tracking.fluent._active_experiment_id = experiment_id
    for k in [k for k in os.environ if k.startswith("MLFLOW_")]:
        if k not in env:
            del os.environ[k]
    os.environ.update(env)
    if "clerf_ray.registry" in sys.modules:
        sys.modules["clerf_ray.registry"]._exported_registry_uri = exported


@pytest.fixture(autouse=True)
def _restore_mlflow_per_test():
    """What a test does to MLflow's URIs and MLFLOW_* variables ends with it (a module's own
    store, set up by a module-scoped fixture before this snapshot, stays current)."""
    state = _mlflow_state()
    yield
    _set_mlflow_state(state)


@pytest.fixture(autouse=True, scope="module")
def _restore_mlflow_per_module():
    """The same for a module's fixtures: the next module starts from the session's state."""
    state = _mlflow_state()
    yield
    _set_mlflow_state(state)


S3_BUCKET = "clerf-session"

# What the session's S3 server replaces: any AWS setup of the machine stays out of the tests.
_AWS_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3 API server (moto's server mode) on loopback with the bucket ``S3_BUCKET``,
    exported through the standard AWS variables for the whole session, and before the session's
    Ray starts (``ray_cluster`` asks for it): Ray's workers then reach it as a deployment's reach
    S3, through the environment Ray runs in. Yields ``{"bucket", "endpoint", "env"}``; the
    variables are restored at the end. (Modules that need a server of their own start one and
    pass its variables to their Ray tasks.)"""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    nowhere = str(tmp_path_factory.mktemp("aws") / "none")
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_CONFIG_FILE": nowhere,
        "AWS_SHARED_CREDENTIALS_FILE": nowhere,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        for k in _AWS_UNSET:
            mp.delenv(k, raising=False)
        boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
        yield {"bucket": S3_BUCKET, "endpoint": env["AWS_ENDPOINT_URL"], "env": env}
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster(s3):
    """A local Ray instance shared by every test that asks for it (started with the session's
    S3 variables in its environment: ``s3``)."""
    import ray

    if ray.is_initialized():
        # Started by a test without this fixture (Ray Data starts Ray on first use), without
        # these settings or the S3 variables: start again as every other test expects.
        ray.shutdown()
    # address="local": always a new local instance, never a `ray start` cluster that another
    # process (a job-submission test, a user's session) left running on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _fresh_store(d):
    """A sqlite store in ``d`` with its artifacts there too (not ./mlruns), made current, with
    experiments ``train``, ``eval`` and ``clerf-eval``; returns its tracking URI."""
    import mlflow

    from clerf_ray import registry

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
