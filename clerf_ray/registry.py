"""MLflow: tracking URI, run logging, model registration with aliases, loading by alias.

Models are stored as MLflow artifacts in our own format (``model.safetensors`` + ``config.json``,
``clerf_ray.models.save_model``) and registered as model versions pointing at those artifacts, so
loading never unpickles anything. Names and aliases:

* ``clerf-encoder``: the contrastively trained encoder.
* ``clerf-head``: the full predictor (frozen encoder + pose head, a ``PoseModel``); the version
  records the encoder version it was trained on (tags ``encoder_name``, ``encoder_version``).
* alias ``candidate`` on registration; ``promote(...)`` moves ``champion``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

# The registry URI that setup() last exported (MLflow writes it to MLFLOW_REGISTRY_URI).
_exported_registry_uri: str | None = None


def tracking_uri(configured: str | None = None) -> str:
    """The tracking URI: the config's, else ``$MLFLOW_TRACKING_URI``, else ``mlflow.db`` in the
    working directory (made absolute, so Ray workers and later commands find the same store)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def artifact_location(uri: str) -> str | None:
    """Where a new experiment in the store ``uri`` keeps its artifacts: ``mlartifacts/`` next to
    a local sqlite file, None (the server's choice) for any other store.

    MLflow's own default for a sqlite store is ``./mlruns`` relative to the current directory; a
    job run by ``ray job submit`` works in a temporary copy of its working directory, so its
    models would vanish with the cluster while the registry kept pointing at them.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return (Path(uri[len(prefix) :]).parent / "mlartifacts").as_uri()


def setup(configured: str | None = None, experiment: str | None = None) -> str:
    """Point MLflow (tracking and registry) at :func:`tracking_uri` and, when given, make
    ``experiment`` the active experiment (created with :func:`artifact_location`). Returns the
    tracking URI."""
    import mlflow

    global _exported_registry_uri

    uri = tracking_uri(configured)
    mlflow.set_tracking_uri(uri)
    # The registry lives in the same store unless the user says otherwise. MLflow exports
    # MLFLOW_REGISTRY_URI itself when we set it, so only a value we did not set is the user's.
    user_registry = os.environ.get("MLFLOW_REGISTRY_URI")
    if not user_registry or user_registry == _exported_registry_uri:
        mlflow.set_registry_uri(uri)
        _exported_registry_uri = uri
    if experiment:
        if mlflow.get_experiment_by_name(experiment) is None:
            from mlflow.exceptions import MlflowException

            try:
                mlflow.create_experiment(experiment, artifact_location=artifact_location(uri))
            except MlflowException:
                pass  # created meanwhile by another process
        mlflow.set_experiment(experiment)
    return uri


def log_model(model, artifact_path: str) -> str:
    """Save ``model`` (``save_model`` format) as artifacts of the active run; returns their URI."""
    import mlflow

    from clerf_ray.models import save_model

    with tempfile.TemporaryDirectory() as d:
        save_model(model, None, d)
        mlflow.log_artifacts(d, artifact_path=artifact_path)
    return mlflow.get_artifact_uri(artifact_path)


def register(
    name: str,
    source: str,
    run_id: str,
    tags: dict[str, Any] | None = None,
    alias: str | None = "candidate",
) -> str:
    """Register artifacts at ``source`` as a new version of ``name``; set ``alias`` on it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    mv = client.create_model_version(
        name, source=source, run_id=run_id, tags={k: str(v) for k, v in (tags or {}).items()}
    )
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def promote(name: str, version: str | int, alias: str = "champion") -> None:
    """Point ``alias`` (default ``champion``) of model ``name`` at ``version``.

    Raises:
        LookupError: no version ``version`` of ``name`` in the registry (named in the message).
    """
    from mlflow import MlflowClient

    model_version(f"{name}/{version}")  # a clear LookupError before touching the alias
    MlflowClient().set_registered_model_alias(name, alias, str(version))


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``name@alias`` / ``name/version`` / ``models:/...`` -> (name, alias, version)."""
    ref = ref.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, alias, None
    if "/" in ref:
        name, version = ref.rsplit("/", 1)
        return name, None, version
    return ref, "champion", None


def model_version(ref: str):
    """The ``ModelVersion`` a reference points at (clear error when it does not exist)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_ref(ref)
    client = MlflowClient()
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as e:
        import mlflow

        # The registry this process uses (set by setup()), not only the environment's default.
        raise LookupError(
            f"model {ref!r} not found in the MLflow registry at {mlflow.get_registry_uri()}: "
            f"{e.message}"
        ) from None


def load_registered(ref: str, map_location: str = "cpu"):
    """Load a registered model (``clerf-head@champion``, ``clerf-encoder/3``, ...)."""
    import mlflow

    from clerf_ray.models import load_model

    mv = model_version(ref)
    with tempfile.TemporaryDirectory() as d:
        path = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=d)
        return load_model(path, map_location=map_location)
