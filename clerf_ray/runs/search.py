"""A Ray Tune search of the CLERF recipe (``jobs/tune.py``, ``clerf tune``).

Each trial runs the recipe at its values of ``tune.space``: Circle Loss pretraining, the pose
head on the frozen encoder, and the head's error on renders of *validation* identities
(``tune.val_identities``, disjoint from the training and the held-out test identities, so the
best trial is not chosen on the set its test figure comes from). After every pretraining epoch a
retrieval probe (:mod:`clerf_ray.train.probe`) reports ``val/retrieval_median``, which ASHA
compares with ``epoch`` as its time attribute; the final report carries the head's validation
error, which ranks the trials.

Ray 2.60 runs Train V2, which refuses ``Tuner(trainer)``: a trial is a function trainable that
builds the stage trainers (:func:`clerf_ray.train.runner.build_trainer`) with
``TuneReportCallback`` and fits them. Run names come from the trial id (never shared, never
timestamps: a Train run whose name and storage already hold a checkpoint resumes it), paths are
absolute (Tune changes each trial's working directory), and a trial holds only
``tune.trial_cpus`` so that its own Train workers and Ray Data stages get the CPUs.

Render once: the base render pool and the probe and validation renders are made on the driver
and shared through the object store; trials at another render setting render their own.

MLflow: one parent run holds the space, the scheduler, the results table (CSV and markdown) and
plots; each trial has a nested run (FINISHED, KILLED when ASHA stopped it, FAILED with the
error). The best trial's encoder and head are registered with alias ``candidate`` and tagged
with the search's run id. An interrupted search resumes from its storage path with the same
command (``Tuner.restore``); finished trials are not run again. Ray does not restore ASHA's rungs:
a resumed search's scheduler starts with empty rungs.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clerf_ray.config import Config, apply_overrides
from clerf_ray.data.shard_files import resolve
from clerf_ray.ray_init import init_ray
from clerf_ray.runs.common import (
    log_history,
    log_run_config,
    pretrain_pool,
    pretraining_cpus,
    train_head_stage,
)

META_FILE = "clerf_search.json"
FINAL = "final"


def say(msg: str) -> None:
    print(f"[tune] {msg}", file=sys.stderr, flush=True)


@dataclass
class SearchResult:
    """Where a search left its results.

    Attributes:
        parent_run_id, tracking_uri: the search's MLflow run and store.
        rows: one dict per trial (``trial_id``, ``status``, the searched values, metrics), sorted
            by ``tune.metric``.
        best: the best finished trial's row (None when none finished).
        encoder_version, head_version: registered versions of the best trial's models.
        path: the Tune experiment folder (resume from it with the same command).
    """

    parent_run_id: str
    tracking_uri: str
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    encoder_version: str | None
    head_version: str | None
    path: str
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- configs


def param_space(cfg: Config) -> dict[str, Any]:
    """The Tune search space of ``cfg.tune.space`` (keys are dotted config names)."""
    from ray import tune

    t = cfg.tune
    out = {}
    for key, dim in t.space.items():
        if dim.choices is not None:
            out[key] = (
                tune.grid_search(list(dim.choices))
                if t.search_alg == "grid"
                else tune.choice(list(dim.choices))
            )
        elif t.search_alg == "grid":
            raise ValueError(f"tune.space.{key}: grid search needs choices, not a range")
        elif dim.integer:
            lo, hi = int(dim.low), int(dim.high) + 1  # randint's upper bound is exclusive
            out[key] = tune.lograndint(lo, hi) if dim.log else tune.randint(lo, hi)
        else:
            out[key] = (
                tune.loguniform(dim.low, dim.high) if dim.log else tune.uniform(dim.low, dim.high)
            )
    return out


def searcher(cfg: Config):
    """The searcher of ``cfg.tune.search_alg``: None for ``random`` and ``grid`` (Tune's own
    variant generator samples :func:`param_space`, or walks its grid), Optuna's TPE sampler for
    ``optuna`` (:mod:`clerf_ray.runs.optuna_searcher`), seeded with ``cfg.seed``."""
    t = cfg.tune
    if t.search_alg != "optuna":
        return None
    from clerf_ray.runs.optuna_searcher import optuna_searcher

    return optuna_searcher(t.metric, t.mode, cfg.seed)


def base_trial_data(cfg: Config) -> dict[str, Any]:
    """The config every trial starts from: ``cfg`` with ``tune.trial_overrides`` applied."""
    data = cfg.model_dump(mode="json")
    return apply_overrides(data, list(cfg.tune.trial_overrides))


def trial_config(base: dict[str, Any], values: dict[str, Any], run_name: str) -> Config:
    """A trial's config: ``base`` (:func:`base_trial_data`) with the trial's searched
    ``values`` (dotted keys) and its run name."""
    data = json.loads(json.dumps(base))
    for key, value in values.items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    data["run_name"] = run_name
    data["tune"]["space"] = {}  # checked once, on the driver
    return Config.model_validate(data)


def _render_key(cfg: Config) -> dict[str, Any]:
    # What a render pool depends on: everything of the pair stream but its augmentation and
    # CPU budgets (drawn fresh or spent per epoch).
    pc = cfg.data.pair_config(seed=cfg.seed)
    skip = {"augment", "stage_num_cpus", "render_num_cpus", "render_num_gpus", "render_resources"}
    return {k: v for k, v in vars(pc).items() if k not in skip}


def trials_at_once(cfg: Config) -> int:
    """Trials side by side: ``tune.max_concurrent_trials``, else as many as the cluster's CPUs
    hold at one trial's budget (Train workers, renderer actors, light stages, the trial)."""
    import ray

    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    need = sum(pretraining_cpus(cfg, live_renders=True).values()) + cfg.tune.trial_cpus
    return max(1, int(ray.cluster_resources().get("CPU", 1) // need))


# --------------------------------------------------------------------------- the trial


def epoch_logger(uri: str, run_id: str):
    """A Ray Train callback (it runs in the Train controller) that sends each pretraining report
    to the trial's nested MLflow run at once, so a trial that ASHA stops keeps its curve."""
    from ray.train import UserCallback

    class EpochLogger(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            from mlflow import MlflowClient
            from mlflow.entities import Metric

            m = metrics[0]
            step, now = int(m["epoch"]), int(time.time() * 1000)
            values = [
                Metric(k if "/" in k else f"pretrain/{k}", float(v), now, step)
                for k, v in m.items()
                if k != "epoch" and isinstance(v, int | float)
            ]
            MlflowClient(uri).log_batch(run_id, metrics=values)

    return EpochLogger()


def _nested_run(client, experiment_id: str, parent: str, trial_id: str) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.search_run_id = '{parent}' and tags.trial_id = '{trial_id}'",
    )
    return runs[0].info.run_id if runs else None


def run_trial(config: dict[str, Any], *, meta: dict[str, Any], shared: dict[str, Any]) -> None:
    """The Tune function trainable: one CLERF recipe at the trial's values (module docstring)."""
    import mlflow
    import ray
    from mlflow import MlflowClient
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from clerf_ray import registry
    from clerf_ray.data.pairs import pairs_per_epoch, pretrain_inputs
    from clerf_ray.evaluate import evaluate_model
    from clerf_ray.models import create_encoder
    from clerf_ray.train.pretrain import pretrain_loop
    from clerf_ray.train.runner import build_trainer, fit_stage

    trial_id = tune.get_context().get_trial_id()
    name = f"{meta['name']}-{trial_id}"
    cfg = trial_config(meta["base"], config, name)
    uri = registry.setup(meta["tracking_uri"], meta["experiment"])
    client = MlflowClient()
    existing = _nested_run(client, meta["experiment_id"], meta["parent_run_id"], trial_id)
    tags = {"search_run_id": meta["parent_run_id"], "trial_id": trial_id}
    with mlflow.start_run(
        run_id=existing,
        run_name=None if existing else name,
        parent_run_id=meta["parent_run_id"],
        tags=None if existing else tags,
    ) as run:
        try:
            if existing is None:
                log_run_config(cfg)
                mlflow.log_params({f"search.{k}": v for k, v in config.items()})
            pair_cfg = cfg.data.pair_config(seed=cfg.seed)
            shared_pool = shared["pool"] if _render_key(cfg) == meta["render_key"] else None
            pool = shared_pool if shared_pool is not None else pretrain_pool(cfg, pair_cfg)
            num_pairs = pool.count() if pool is not None else pairs_per_epoch(pair_cfg)
            datasets, reading = pretrain_inputs(pair_cfg, cfg.pretrain.epochs, pool=pool)
            trainer = build_trainer(
                loop=pretrain_loop,
                loop_config={
                    "cfg": cfg.model_dump(mode="json"),
                    "num_pairs": num_pairs,
                    "probe": shared["probe"],
                    **reading,
                },
                section=cfg.pretrain,
                datasets=datasets,
                storage_path=cfg.storage_path,
                name=f"{name}-pretrain",
                # The logger first: once Tune has the report, ASHA may end the trial at once.
                callbacks=[epoch_logger(uri, run.info.run_id), TuneReportCallback()],
            )
            pre = fit_stage(trainer, stage="pretrain", name=f"{name}-pretrain")
            log_history("pretrain", pre.history, epochs=False)
            encoder = create_encoder(cfg.model, image_size=cfg.data.image_size, pretrained=None)
            encoder.load_state_dict(pre.state["model"])
            model, _ = train_head_stage(cfg, encoder, name, pool=pool)
            images, R = ray.get(shared["val"])
            metrics = evaluate_model(model, images, R)
            mlflow.log_metrics({f"val/{k}": float(v) for k, v in metrics.items()})
            enc_uri = registry.log_model(encoder, "encoder")
            head_uri = registry.log_model(model, "pose_model")
            last = pre.history[-1]
            # The last epoch's measures (the scheduler's among them: Tune checks that every
            # result carries it), then the head's validation error that ranks the trials.
            final = {k: float(v) for k, v in last.items() if isinstance(v, int | float)}
            final.update(
                {
                    # One past the last pretraining epoch: ASHA stops a trial whose time reaches
                    # max_t (the most epochs searched, plus this report), so the head stage
                    # still runs after the last epoch.
                    "epoch": int(last["epoch"]) + 1,
                    "val/geodesic_median": float(metrics["geodesic_median"]),
                    "val/geodesic_mean": float(metrics["geodesic_mean"]),
                    FINAL: 1,
                    "encoder_uri": enc_uri,
                    "head_uri": head_uri,
                    "mlflow_run_id": run.info.run_id,
                }
            )
            final.setdefault("val/retrieval_median", float("nan"))
            tune.report(final)
        except Exception as e:
            # A trial that ASHA stopped dies with its Ray Train controller, and this handler can
            # run after the driver has closed the trial's run as KILLED (its on_trial_complete,
            # and again when the search ends: a stopped last trial tears down after fit()
            # returns). Keep that verdict rather than closing the run as FAILED with the
            # teardown as its error.
            if client.get_run(run.info.run_id).info.status == "KILLED":
                mlflow.end_run("KILLED")
            else:
                mlflow.set_tag("error", f"{type(e).__name__}: {e}"[:4000])
            raise


# --------------------------------------------------------------------------- driver side


def close_nested_run(meta: dict[str, Any], trial_id: str, status: str, error: str | None):
    """End the nested MLflow run of trial ``trial_id`` with ``status`` (and ``error`` as its
    tag, unless the trial recorded its own)."""
    from mlflow import MlflowClient

    client = MlflowClient(meta["tracking_uri"])
    run_id = _nested_run(client, meta["experiment_id"], meta["parent_run_id"], trial_id)
    if run_id is None:
        return
    recorded = client.get_run(run_id).data.tags.get("error")
    if status == "KILLED" and recorded:
        # The stop's own teardown: the trial's Ray Train controller is killed with the trial,
        # and the trial's handler records that as its error.
        client.delete_tag(run_id, "error")
    elif error and not recorded:
        client.set_tag(run_id, "error", error)
    client.set_terminated(run_id, status)


def progress_callback(meta: dict[str, Any]):
    """A Tune callback on the driver: a line when a trial starts or stops; it closes the nested
    MLflow runs of trials that ASHA stopped (KILLED) or that died without closing their run
    (FAILED, with the error)."""
    from ray import tune

    class SearchProgress(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            say(f"trial {trial.trial_id} started: {json.dumps(trial.config, default=str)}")

        def on_trial_recover(self, iteration, trials, trial, **info):
            say(f"trial {trial.trial_id} is retried after a failure")

        def on_trial_complete(self, iteration, trials, trial, **info):
            last = trial.last_result or {}
            if last.get(FINAL):
                value = last.get(meta["metric"], float("nan"))
                say(f"trial {trial.trial_id} finished: {meta['metric']} {value:.2f}")
                return
            say(
                f"trial {trial.trial_id} stopped early by ASHA after epoch "
                f"{last.get('epoch', 0)} (retrieval median "
                f"{last.get('val/retrieval_median', float('nan')):.1f} deg)"
            )
            close_nested_run(meta, trial.trial_id, "KILLED", None)

        def on_trial_error(self, iteration, trials, trial, **info):
            error = str(getattr(trial, "error_msg", None) or "see the trial's error file")
            say(f"trial {trial.trial_id} failed: {error.strip().splitlines()[-1][:300]}")
            close_nested_run(meta, trial.trial_id, "FAILED", error[:4000])

    return SearchProgress()


def _trial_config_and_id(result) -> tuple[dict[str, Any], str]:
    """A trial's config and id. Tune keeps both in the trial's reports, but a trial that failed
    before its first report, restored by a resumed search, comes back with no metrics: then
    from the ``params.json`` Tune writes in the trial's folder, and the id from the folder's
    name (``run_trial_<id>_<index>_...``)."""
    m = result.metrics or {}
    folder = result.path.rstrip("/").rsplit("/", 1)[-1]
    match = re.match(r"run_trial_([0-9a-f]+_\d+)_", folder)
    trial_id = m.get("trial_id") or (match.group(1) if match else folder)
    if m.get("config") is not None:
        return m["config"], trial_id
    try:
        with result.filesystem.open_input_stream(f"{result.path}/params.json") as f:
            return json.loads(f.read().decode()), trial_id
    except (OSError, ValueError):
        return {}, trial_id


def _rows(results, cfg: Config) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        m = r.metrics or {}
        status = "FINISHED" if m.get(FINAL) else ("FAILED" if r.error else "KILLED")
        config, trial_id = _trial_config_and_id(r)
        row = {
            "trial_id": trial_id,
            "status": status,
            **{k: config.get(k) for k in cfg.tune.space},
            # The final report comes one past the last pretraining epoch (run_trial).
            "epochs_done": (m.get("epoch") or 0) - (1 if m.get(FINAL) else 0),
            "val/retrieval_median": m.get("val/retrieval_median"),
            cfg.tune.metric: m.get(cfg.tune.metric) if m.get(FINAL) else None,
            "error": (str(r.error).strip().splitlines() or [""])[-1][:200] if r.error else "",
            "mlflow_run_id": m.get("mlflow_run_id"),
            "encoder_uri": m.get("encoder_uri"),
            "head_uri": m.get("head_uri"),
            "_curve": _curve(r),
        }
        rows.append(row)
    sign = 1 if cfg.tune.mode == "min" else -1

    rank = {"FINISHED": 0, "KILLED": 1, "FAILED": 2}

    def order(row):
        # Finished trials by the metric, then those stopped early (by how far they got), then
        # the failed ones.
        v = row[cfg.tune.metric]
        ok = v is not None and math.isfinite(v)
        return (not ok, rank[row["status"]], sign * v if ok else -(row["epochs_done"] or 0))

    return sorted(rows, key=order)


def _curve(result) -> list[tuple[int, float]]:
    df = result.metrics_dataframe
    if df is None or "epoch" not in df or "val/retrieval_median" not in df:
        return []
    if FINAL in df:
        df = df[df[FINAL] != 1]  # the final report repeats the last epoch's probe
    pts = df[["epoch", "val/retrieval_median"]].dropna()
    return [
        (int(e), float(v)) for e, v in zip(pts["epoch"], pts["val/retrieval_median"], strict=True)
    ]


def results_table(rows: list[dict[str, Any]], cfg: Config) -> str:
    """The results as a markdown table, sorted by the metric."""
    cols = ["trial_id", "status", *cfg.tune.space, "epochs_done", "val/retrieval_median"]
    cols += [cfg.tune.metric, "error"]

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.2f}" if math.isfinite(v) else "nan"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _write_csv(rows: list[dict[str, Any]], cfg: Config, path: Path) -> None:
    import csv

    cols = ["trial_id", "status", *cfg.tune.space, "epochs_done", "val/retrieval_median"]
    cols += [cfg.tune.metric, "error", "mlflow_run_id"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _plots(rows: list[dict[str, Any]], cfg: Config, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    done = [r for r in rows if r["status"] == "FINISHED"]
    for key in cfg.tune.space:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        values = [r[key] for r in done]
        numeric = all(isinstance(v, int | float) for v in values)
        labels = sorted({str(v) for v in values}) if not numeric else None
        xs = values if numeric else [labels.index(str(v)) for v in values]
        ax.scatter(xs, [r[cfg.tune.metric] for r in done])
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=7)
        ax.set_xlabel(key)
        ax.set_ylabel(f"{cfg.tune.metric} (deg)")
        ax.set_title("validation error by searched value", fontsize=9)
        fig.tight_layout()
        path = folder / f"error_vs_{key.replace('.', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for r in rows:
        if r["_curve"]:
            e, v = zip(*r["_curve"], strict=True)
            ax.plot(e, v, marker="o", label=f"{r['trial_id']} ({r['status'].lower()})")
    ax.set_xlabel("pretraining epoch")
    ax.set_ylabel("retrieval median (deg)")
    ax.set_title("learning curves of all trials", fontsize=9)
    if rows:
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = folder / "learning_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path)
    return files


def _shared_renders(cfg: Config, base: Config) -> dict[str, Any]:
    """The probe's and the validation renders (validation identities, all of SO(3)) and the
    base render pool, made once on the driver."""
    import ray

    from clerf_ray.evaluate import heldout_renders

    t = cfg.tune
    data = base.data.model_copy(update={"source": "synthetic"})
    held_cfg = data.pair_config(seed=base.seed + 3, identities=t.val_identities, augment="fa")
    q, r = t.probe_queries, t.probe_references
    # One render pass for the probe and the validation set (each pass starts its own render
    # actors). The renders come in pairs (two identities at one pose) and in a fixed order
    # (sorted by label): whole pairs in a seeded random order, then split into probe queries,
    # probe references and validation renders, so that a pose is in two parts only where a
    # boundary falls inside a pair.
    images, R = heldout_renders(held_cfg, q + r + t.val_samples)
    _, pair = np.unique(R.reshape(len(R), 9), axis=0, return_inverse=True)
    pair = pair.reshape(-1)
    rank = np.random.default_rng(base.seed + 4).permutation(pair.max() + 1)
    order = np.argsort(rank[pair], kind="stable")
    images, R = images[order], R[order]
    probe = {
        "query_images": images[:q],
        "query_R": R[:q],
        "ref_images": images[q : q + r],
        "ref_R": R[q : q + r],
    }
    val = images[q + r :], R[q + r :]
    pool = pretrain_pool(base, base.data.pair_config(seed=base.seed))
    return {"probe": ray.put(probe), "val": ray.put(val), "pool": pool}


def run_search(cfg: Config) -> SearchResult:
    """Run (or resume) the search of ``cfg.tune`` and return its results (module docstring).

    Raises:
        RuntimeError: every trial failed (the message gives each trial's error).
    """
    import mlflow
    from mlflow import MlflowClient
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from clerf_ray import registry

    t0 = time.monotonic()
    t = cfg.tune
    init_ray()
    uri = registry.setup(cfg.tracking.tracking_uri, cfg.tracking.experiment)
    experiment_id = mlflow.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    path = f"{cfg.storage_path.rstrip('/')}/{t.name}"  # local or s3://, as Tune's storage
    fs, meta_file = resolve(f"{path}/{META_FILE}")
    resuming = tune.Tuner.can_restore(path) and fs.get_file_info(meta_file).type.name == "File"
    client = MlflowClient()
    base_data = base_trial_data(cfg)
    base = trial_config(base_data, {}, f"{t.name}-base")
    if resuming:
        with fs.open_input_stream(meta_file) as f:
            meta = json.loads(f.read().decode())
        say(f"resuming the search in {path} (MLflow run {meta['parent_run_id']})")
    else:
        parent = client.create_run(experiment_id, run_name=t.name, tags={"kind": "search"})
        meta = {
            "name": t.name,
            "parent_run_id": parent.info.run_id,
            "tracking_uri": uri,
            "experiment": cfg.tracking.experiment,
            "experiment_id": experiment_id,
        }
        with mlflow.start_run(run_id=parent.info.run_id):
            log_run_config(cfg)
            mlflow.log_dict(
                {
                    "space": {k: v.model_dump() for k, v in t.space.items()},
                    "search_alg": t.search_alg,
                    "num_samples": t.num_samples,
                    "scheduler": t.scheduler,
                    "asha": {
                        "metric": t.asha_metric,
                        "time_attr": "epoch",
                        "grace_period": t.grace_period,
                        "reduction_factor": t.reduction_factor,
                    },
                    "trial_overrides": list(t.trial_overrides),
                },
                "search.json",
            )
    meta.update(base=base_data, render_key=_render_key(base), metric=t.metric)
    fs.create_dir(meta_file.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(meta_file) as f:
        f.write(json.dumps(meta, default=str).encode())

    shared = _shared_renders(cfg, base)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, meta=meta, shared=shared), {"CPU": t.trial_cpus}
    )
    epochs = t.space["pretrain.epochs"].values_to_check() if "pretrain.epochs" in t.space else []
    max_t = max(int(v) for v in epochs or [base.pretrain.epochs]) + 1
    scheduler = (
        ASHAScheduler(
            time_attr="epoch",
            metric=t.asha_metric,
            mode="min",
            max_t=max_t,
            grace_period=t.grace_period,
            reduction_factor=t.reduction_factor,
        )
        if t.scheduler == "asha"
        else FIFOScheduler()
    )
    run_config = tune.RunConfig(
        name=t.name,
        storage_path=cfg.storage_path,
        callbacks=[progress_callback(meta)],
        failure_config=tune.FailureConfig(max_failures=0),
    )
    at_once = trials_at_once(base)
    say(
        f"search {t.name}: {t.num_samples} trial(s) of {t.search_alg} search over "
        f"{', '.join(t.space)}, {at_once} at a time, ASHA on {t.asha_metric} "
        f"(from epoch {t.grace_period}); state in {path}"
    )
    if resuming:
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(cfg),
            tune_config=tune.TuneConfig(
                num_samples=t.num_samples,
                search_alg=searcher(cfg),
                scheduler=scheduler,
                max_concurrent_trials=at_once,
            ),
            run_config=run_config,
        )
    # Tune writes its experiment state (which trials have finished) at most every 10 s by default,
    # so a driver killed within 10 s of a trial finishing would run that trial again on resume.
    # The state is a few KB per trial and trials last minutes: write it every second instead,
    # unless the user chose a period. The controller reads the variable when fit() builds it.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    results = tuner.fit()
    rows = _rows(results, cfg)
    # A trial ASHA stopped is closed as KILLED when the stop comes, but its own process, torn
    # down after the stop, can then close the run as FAILED: once every trial has ended, mark
    # them KILLED again (from the results, which a resumed search has too).
    for row in rows:
        if row["status"] == "KILLED":
            close_nested_run(meta, row["trial_id"], "KILLED", None)
    best = next((r for r in rows if r["status"] == "FINISHED"), None)

    enc_version = head_version = None
    with mlflow.start_run(run_id=meta["parent_run_id"]):
        with tempfile.TemporaryDirectory() as d:
            folder = Path(d)
            (folder / "results.md").write_text(results_table(rows, cfg) + "\n")
            _write_csv(rows, cfg, folder / "results.csv")
            _plots(rows, cfg, folder)
            mlflow.log_artifacts(d, artifact_path="search")
        counts = {s: sum(r["status"] == s for r in rows) for s in ("FINISHED", "KILLED", "FAILED")}
        mlflow.log_metrics({f"trials_{k.lower()}": v for k, v in counts.items()})
        if best is None:
            errors = "; ".join(f"{r['trial_id']}: {r['error']}" for r in rows)
            mlflow.set_tag("error", "every trial failed")
            raise RuntimeError(f"search {t.name}: every trial failed ({errors})")
        mlflow.log_metric(f"best/{t.metric.split('/')[-1]}", best[t.metric])
        mlflow.set_tag("best_trial", best["trial_id"])
        if cfg.tracking.register_models:
            tags = {
                "search_run_id": meta["parent_run_id"],
                "trial_id": best["trial_id"],
                **{f"search.{k}": best[k] for k in t.space},
            }
            enc_version = registry.register(
                cfg.tracking.encoder_name, best["encoder_uri"], best["mlflow_run_id"], tags=tags
            )
            head_version = registry.register(
                cfg.tracking.head_name,
                best["head_uri"],
                best["mlflow_run_id"],
                tags={
                    **tags,
                    "encoder_name": cfg.tracking.encoder_name,
                    "encoder_version": enc_version,
                    t.metric: f"{best[t.metric]:.3f}",
                },
            )
    return SearchResult(
        parent_run_id=meta["parent_run_id"],
        tracking_uri=uri,
        rows=rows,
        best=best,
        encoder_version=enc_version,
        head_version=head_version,
        path=path,
        timings={"total_s": time.monotonic() - t0},
    )


def summary_table(cfg: Config, result: SearchResult) -> str:
    """The closing summary of ``jobs/tune.py``: trials sorted by the metric, the best trial's
    registered versions."""
    lines = ["", f"CLERF search {cfg.tune.name}: trials sorted by {cfg.tune.metric}", ""]
    lines.append(results_table(result.rows, cfg))
    lines.append("")
    if result.best is not None:
        lines.append(
            f"best trial: {result.best['trial_id']} ({result.best[cfg.tune.metric]:.2f} deg)"
        )
    if result.encoder_version:
        lines.append(
            f"encoder: models:/{cfg.tracking.encoder_name}/{result.encoder_version} (alias candidate)"
        )
        lines.append(
            f"head:    models:/{cfg.tracking.head_name}/{result.head_version} (alias candidate)"
        )
    lines.append(f"MLflow run {result.parent_run_id} at {result.tracking_uri}")
    lines.append(f"state: {result.path} (rerun the same command to resume)")
    lines.append(f"time: {result.timings.get('total_s', 0):.0f}s")
    return "\n".join(lines)
