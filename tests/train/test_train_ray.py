"""Ray Train stages on the CPU: 2-worker DDP, resume after a real worker kill, non-finite losses,
time limits and failures that run out.

Every run is tiny (32 px procedural renders, a few dozen pairs, batch 8, resnet10t with a small
projection) and uses the session's local Ray (``ray_cluster``, 2 logical CPUs) with fractional
CPU budgets. Each training function is wrapped by :func:`_recording`, which writes, per rank,
the worker's process id at every start and the loop's return value: what each rank did is read
from those files, not from the library's own report (Ray keeps only rank 0's return value).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from clerf_ray.config import Config, load_config
from clerf_ray.train import common
from clerf_ray.train.head import head_loop
from clerf_ray.train.pretrain import pretrain_loop
from clerf_ray.train.runner import run_stage


def tiny_config(tmp_path: Path, *overrides: str) -> Config:
    """The tiny CPU setting of these tests; ``overrides`` win."""
    base = [
        "data.image_size=32",
        "data.num_pairs=32",
        "data.render_batch_size=16",
        "data.render_num_cpus=0.25",
        "data.stage_num_cpus=0.1",
        "model.embedding_dim=32",
        "model.projection_hidden=64",
        "model.head_hidden=[32]",
        "pretrain.batch_size=8",
        "pretrain.epochs=2",
        "pretrain.num_workers=2",
        "pretrain.cpus_per_worker=0.5",
        "pretrain.torch_threads=1",
        "pretrain.use_gpu=false",
        "pretrain.max_failures=0",
        "head.batch_size=8",
        "head.epochs=2",
        "head.passes=2",
        "head.num_samples=16",
        "head.num_workers=1",
        "head.cpus_per_worker=0.5",
        "head.torch_threads=1",
        "head.use_gpu=false",
        "head.max_failures=0",
        f"storage_path={tmp_path / 'runs'}",
    ]
    return load_config(None, base + list(overrides))


def _recording(loop, out_dir: str):
    """``loop`` wrapped to write ``starts-rank{r}.txt`` (one line per start: the worker's pid
    and the checkpoint Ray Train handed it, or ``-``) and ``return-rank{r}.json`` (the loop's
    return value) under ``out_dir``."""

    def recorded(config):
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        ckpt = ray.train.get_checkpoint()
        with open(os.path.join(out_dir, f"starts-rank{rank}.txt"), "a") as f:
            f.write(f"{os.getpid()} {ckpt.path if ckpt is not None else '-'}\n")
        out = loop(config)
        with open(os.path.join(out_dir, f"return-rank{rank}.json"), "w") as f:
            json.dump(out, f)
        return out

    return recorded


def _starts(out_dir: Path, rank: int) -> list[int]:
    """Worker pids of ``rank``, one per start."""
    return [int(line.split()[0]) for line in _start_lines(out_dir, rank)]


def _resumed_from(out_dir: Path, rank: int) -> list[str | None]:
    """The checkpoint path each start of ``rank`` was handed (None: a fresh start)."""
    return [
        None if line.split()[1] == "-" else line.split()[1] for line in _start_lines(out_dir, rank)
    ]


def _start_lines(out_dir: Path, rank: int) -> list[str]:
    path = out_dir / f"starts-rank{rank}.txt"
    return [x for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _returned(out_dir: Path, rank: int) -> dict:
    return json.loads((out_dir / f"return-rank{rank}.json").read_text())


def _pretrain_inputs(cfg: Config, pool=None) -> dict:
    """``loop_config`` and ``datasets`` of a pretraining stage as the recipe builds them: on live
    renders (one dataset per epoch: ``epoch_0``, ``epoch_1``, ...), or with ``pool`` one dataset
    (``pairs``) that every epoch reads."""
    from clerf_ray.data.pairs import pretrain_inputs

    datasets, reading = pretrain_inputs(
        cfg.data.pair_config(seed=cfg.seed), cfg.pretrain.epochs, pool=pool
    )
    loop_config = {"cfg": cfg.model_dump(mode="json"), "num_pairs": cfg.data.num_pairs}
    return {"loop_config": {**loop_config, **reading}, "datasets": datasets}


@pytest.fixture(scope="module")
def pool(ray_cluster, tmp_path_factory):
    """The tiny setting's 32 pairs rendered once, for the failure tests below: what they check
    does not depend on where the pairs come from, and a pool spares each run the render actors
    and a split coordinator per epoch (the live-render path is run by the other tests here)."""
    from clerf_ray.data.pairs import render_pool

    cfg = tiny_config(tmp_path_factory.mktemp("pool"))
    return render_pool(cfg.data.pair_config(seed=cfg.seed))


def _checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories of a run, once the controller has registered one (its snapshot
    file exists)."""
    if not (run_dir / "checkpoint_manager_snapshot.json").exists():
        return []
    return sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())


def _registration_waiter():
    """``wait(run_dir)``: block until the controller has recorded a checkpoint in the run's
    snapshot, the file that ``ray.train.get_checkpoint()`` is restored from after a failure
    (reports are asynchronous: a worker that dies right after reporting can die before its
    checkpoint is registered). Made here, on the driver, so that the wrappers below capture it
    and cloudpickle sends it to the workers by value."""

    def wait(run_dir: str, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        snapshot = Path(run_dir) / "checkpoint_manager_snapshot.json"
        while time.monotonic() < deadline:
            text = snapshot.read_text() if snapshot.exists() else ""
            if any(p.name in text for p in Path(run_dir).glob("checkpoint_*")):
                return
            time.sleep(0.05)
        raise TimeoutError(f"no checkpoint registered under {run_dir} in {timeout_s:.0f}s")

    return wait


def _killed_once(loop, out_dir: str, run_dir: str, rank: int, shard: str):
    """``loop`` wrapped so that every rank logs the datasets it asks for (``shards-rank{r}.txt``:
    pid and dataset name, one line per request) and, on the first start only (no ``killed``
    marker file yet), ``rank`` SIGKILLs its own worker process when it asks for ``shard``, once
    the checkpoint of the epoch before is registered. The marker holds the killed pid.
    (What the workers run is defined in here: cloudpickle sends nested functions by value,
    module-level ones by reference to this test module.)"""
    wait_for_registered = _registration_waiter()

    def with_kill(config):
        import ray.train

        me = ray.train.get_context().get_world_rank()
        marker = os.path.join(out_dir, "killed")
        get_dataset_shard = ray.train.get_dataset_shard

        def logged(name):
            with open(os.path.join(out_dir, f"shards-rank{me}.txt"), "a") as f:
                f.write(f"{os.getpid()} {name}\n")
            if me == rank and name == shard and not os.path.exists(marker):
                wait_for_registered(run_dir)
                with open(marker, "w") as f:
                    f.write(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return get_dataset_shard(name)

        ray.train.get_dataset_shard = logged  # common.fit looks it up at every epoch
        try:
            return loop(config)
        finally:
            ray.train.get_dataset_shard = get_dataset_shard

    return with_kill


def _shards_by_start(out_dir: Path, rank: int) -> list[list[str]]:
    """The datasets ``rank`` asked for, one list per start (in the order of the starts)."""
    path = out_dir / f"shards-rank{rank}.txt"
    asked: dict[int, list[str]] = {pid: [] for pid in _starts(out_dir, rank)}
    for line in path.read_text().splitlines() if path.exists() else []:
        pid, name = line.split()
        asked[int(pid)].append(name)
    return list(asked.values())


def test_resume_after_worker_process_killed(ray_cluster, tmp_path):
    """Rank 1's worker process SIGKILLs itself as it starts epoch 2 of 2 (after epoch 1's
    checkpoint is registered, first start only): Ray Train restarts the group from the epoch-1
    checkpoint, both ranks train epoch 2 only, and the run ends with epochs exactly 1, 2."""
    # max_failures=2, not 1: Ray 2.60's PlacementGroupCleaner can take a missed State API
    # lookup for a dead controller and remove the live run's placement group once (seen here
    # with other Ray instances on the machine; ray-project/ray#65447 review). That costs one
    # more restart from the same checkpoint, which this test tolerates.
    cfg = tiny_config(tmp_path, "pretrain.epochs=2", "pretrain.max_failures=2")
    out = tmp_path / "record"
    out.mkdir()
    run_dir = Path(cfg.storage_path) / "killed"
    killing = _killed_once(pretrain_loop, str(out), str(run_dir), rank=1, shard="epoch_1")
    result = run_stage(
        stage="pretrain",
        loop=_recording(killing, str(out)),
        **_pretrain_inputs(cfg),
        section=cfg.pretrain,
        storage_path=cfg.storage_path,
        name="killed",
    )

    killed = int((out / "killed").read_text())
    # Both ranks restarted (Ray Train restarts the whole group); the killed process is gone.
    starts = [_starts(out, r) for r in (0, 1)]
    assert len(starts[0]) == len(starts[1]) >= 2
    assert starts[1][0] == killed and killed not in starts[1][1:]
    # No epoch lost or repeated: the first start trained epoch 1 (rank 1 died asking for epoch
    # 2's data), and every later start asked for epoch 2's data only.
    asked = [_shards_by_start(out, r) for r in (0, 1)]
    assert asked[1][0] == ["epoch_0", "epoch_1"]
    assert asked[0][0][:1] == ["epoch_0"]
    for r in (0, 1):
        assert all(later == ["epoch_1"] for later in asked[r][1:]), asked[r]
    assert result.status == "ok"
    assert [h["epoch"] for h in result.history] == [1, 2]
    # Both restarted ranks resumed from the checkpoint: epoch 1 comes from it, epoch 2 was
    # trained after the restart (all 4 steps), and the replicas agree at the end.
    ranks = [_returned(out, r) for r in (0, 1)]
    for r in ranks:
        assert [h["epoch"] for h in r["history"]] == [1, 2]
        assert [len(h["step_losses"]) for h in r["history"]] == [4, 4]
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]
    assert result.state["epoch"] == 1
    assert len(_checkpoints(run_dir)) == 2
    # The restart was handed epoch 1's checkpoint (the first start had none).
    import ray.train

    for r in (0, 1):
        first, *later = _resumed_from(out, r)
        assert first is None and later and None not in later
        assert common.load_state(ray.train.Checkpoint.from_directory(later[0]))["epoch"] == 0

    # README: running again with the same name resumes from the latest checkpoint, here with
    # one more epoch: the rerun asks for epoch 3's data only and ends with epochs 1, 2, 3 (1 and
    # 2 from the checkpoint, with the first run's losses).
    more = tiny_config(tmp_path, "pretrain.epochs=3")
    out3 = tmp_path / "rerun"
    out3.mkdir()
    rerun = run_stage(
        stage="pretrain",
        loop=_recording(_asking(pretrain_loop, str(out3)), str(out3)),
        **_pretrain_inputs(more),
        section=more.pretrain,
        storage_path=more.storage_path,
        name="killed",
    )
    assert rerun.status == "ok"
    assert [h["epoch"] for h in rerun.history] == [1, 2, 3]
    assert rerun.history[:2] == result.history
    for r in (0, 1):
        (handed,) = _resumed_from(out3, r)
        assert Path(handed).name == Path(result.checkpoint_path).name
        assert _shards_by_start(out3, r) == [["epoch_2"]]
    assert rerun.state["epoch"] == 2


def _labelled_dataset(n: int, size: int, seed: int, poison: int | None = None):
    """Random images with random rotation labels; row ``poison`` gets a NaN label."""
    import ray.data

    rng = np.random.default_rng(seed)
    R = Rotation.random(n, random_state=seed).as_matrix().astype(np.float32)
    if poison is not None:
        R[poison, 0, 0] = np.nan
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    return (
        ray.data.from_numpy(images)
        .zip(ray.data.from_numpy(R))
        .map_batches(lambda b: {"image": b["data"], "R": b["data_1"]}, batch_format="numpy")
    )


@pytest.mark.parametrize("head_input", ["features", "feature_map", "embedding"])
def test_head_embeddings_match_the_encoder_row_by_row(ray_cluster, tmp_path, head_input):
    """The encoder actors' outputs, with their labels, are what the encoder gives each image in
    this process: the backbone's pooled features, its feature map on the 2 x 2 grid (at 32 px
    resnet10t's map is 1 x 1, so each channel four times over) or the unit embedding, by
    ``model.head_input`` (rows are matched through their labels, whatever order Ray returns)."""
    from clerf_ray.models import create_encoder
    from clerf_ray.train.head import build_head_embeddings

    # float32 actors, so that rows match to 1e-5; bfloat16's agreement (the default on CPUs with
    # native bf16) is tested in test_precision.py.
    cfg = tiny_config(tmp_path, f"model.head_input={head_input}", "pretrain.amp=false")
    torch.manual_seed(3)
    encoder = create_encoder(cfg.model, image_size=cfg.data.image_size, pretrained=None).eval()
    n = 24
    images = _labelled_dataset(n, 32, seed=5)
    ds = build_head_embeddings(cfg, encoder.state_dict(), images=images)
    rows = ds.take_all()
    assert len(rows) == n
    src = images.take_all()
    by_label = {np.round(r["R"], 5).tobytes(): r["image"] for r in src}
    with torch.no_grad():
        for row in rows:
            image = by_label[np.round(row["R"], 5).tobytes()]
            x = encoder.preprocess(image)
            if head_input == "features":
                z = encoder.backbone(x).numpy()[0]
                assert row["z"].shape == (512,)  # resnet10t's pooled width
            elif head_input == "feature_map":
                fm = encoder.backbone.forward_features(x).numpy()[0]
                assert fm.shape == (512, 1, 1)
                z = np.repeat(fm.reshape(512), 4)
            else:
                z = encoder(x).numpy()[0]
                assert row["z"].shape == (cfg.model.embedding_dim,)
                assert np.linalg.norm(row["z"]) == pytest.approx(1.0, abs=1e-5)
            np.testing.assert_allclose(row["z"], z, atol=1e-5)


def test_head_images_are_draws_of_renders_made_once(ray_cluster, tmp_path):
    """``head.draws`` augmentation draws of each render: every pose appears once per image of
    its pair per draw, each draw with its own label, and all labels of one render share what
    in-plane rotations and flips leave unchanged: the absolute third column of R (the head's
    axes' components along the optical axis; the dataset and camera frames differ by axis signs
    only)."""
    from clerf_ray.train.head import head_images

    draws = 3
    cfg = tiny_config(tmp_path, "head.num_samples=12", f"head.draws={draws}", "data.augment=fa")
    rows = head_images(cfg).take_all()
    assert len(rows) == draws * 12
    groups: dict[bytes, list[np.ndarray]] = {}
    for row in rows:
        key = np.round(np.abs(np.asarray(row["R"], dtype=np.float64)[:, 2]), 4).tobytes()
        groups.setdefault(key, []).append(np.asarray(row["R"]))
    assert len(groups) == 6  # 6 pairs, 6 poses
    for labels in groups.values():
        assert len(labels) == 2 * draws  # anchor and positive, in every draw
        distinct = {np.round(R, 4).tobytes() for R in labels}
        assert len(distinct) == draws  # one label per draw, shared by the pair's two images

    # With the pretraining pool (head.reuse_pool), the images are the pool's own renders: the
    # first num_samples / 2 pairs, with new draws. Their poses are the pool's (un-augmented)
    # labels up to what the augmentations leave unchanged.
    from clerf_ray.data.pairs import render_pool

    pool = render_pool(cfg.data.pair_config(seed=cfg.seed))
    pool_rows = pool.take_all()
    pool_keys = {
        np.round(np.abs(np.asarray(r["R"], dtype=np.float64)[:, 2]), 4).tobytes() for r in pool_rows
    }
    reused = head_images(cfg, pool=pool).take_all()
    assert len(reused) == draws * 12
    keys = {
        np.round(np.abs(np.asarray(r["R"], dtype=np.float64)[:, 2]), 4).tobytes() for r in reused
    }
    assert len(keys) == 6 and keys <= pool_keys
    pool_images = {np.asarray(r["anchor"]).tobytes() for r in pool_rows}
    # No augmentation draw leaves an FA image unchanged, so compare through the un-augmented
    # pool: with augment=none the head's images are exactly pool images.
    plain = tiny_config(tmp_path, "head.num_samples=12", "head.draws=1", "data.augment=none")
    same = head_images(plain, pool=pool).take_all()
    assert sum(np.asarray(r["image"]).tobytes() in pool_images for r in same) == 6


def test_in_memory_passes_are_permutations_that_keep_rows_together(ray_cluster):
    """``head.in_memory``: each pass draws full batches from a permutation of the shard's rows,
    every row at most once per pass, with its columns kept together."""
    import ray.data

    n, batch, passes = 10, 4, 3
    rows = np.arange(n, dtype=np.float32)
    ds = ray.data.from_numpy(rows[:, None] * np.ones((1, 3), np.float32)).map_batches(
        lambda b: {"z": b["data"], "R": b["data"][:, 0] * 2}, batch_format="numpy", num_cpus=0.1
    )
    torch.manual_seed(0)
    columns = common._read_columns(ds, common.numeric_tensors)
    batches = list(common._memory_passes(columns, passes, batch))
    assert len(batches) == passes * (n // batch)
    per_pass = [torch.cat([b["R"] for b in batches[i : i + 2]]) for i in range(0, len(batches), 2)]
    for b in batches:
        assert b["z"].shape == (batch, 3)
        torch.testing.assert_close(b["R"], b["z"][:, 0] * 2)  # the row's columns stay together
    for drawn in per_pass:
        assert len(set(drawn.tolist())) == 2 * batch  # no row twice within a pass
        assert set(drawn.tolist()) <= set((rows * 2).tolist())
    assert len({tuple(d.tolist()) for d in per_pass}) == passes  # a new order every pass


def _augment_recorder(loop, out_dir: str):
    """``loop`` wrapped so that, in the worker, every call of
    ``clerf_ray.data.pairs.augment_batch`` (which ``pretrain_loop`` looks up when it starts)
    appends its epoch, pair ids and incoming labels to ``augment-rank{r}.jsonl``."""

    def recorded(config):
        import ray.train

        from clerf_ray.data import pairs

        rank = ray.train.get_context().get_world_rank()
        real = pairs.augment_batch

        def logged(batch, preset, seed, epoch):
            with open(os.path.join(out_dir, f"augment-rank{rank}.jsonl"), "a") as f:
                row = {
                    "epoch": epoch,
                    "pair_id": np.asarray(batch["pair_id"]).tolist(),
                    "R": np.asarray(batch["R"], dtype=np.float64).reshape(-1, 9).tolist(),
                }
                f.write(json.dumps(row) + "\n")
            return real(batch, preset, seed, epoch)

        pairs.augment_batch = logged
        try:
            return loop(config)
        finally:
            pairs.augment_batch = real

    return recorded


def _coordinator_pids() -> set[int]:
    """Live Ray Data split coordinator processes on this machine (Ray titles an actor's process
    ``ray::<class>``; the session's Ray runs without the dashboard that the state API needs)."""
    pids = set()
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and (d / "cmdline").read_bytes().startswith(
                b"ray::SplitCoordinator"
            ):
                pids.add(int(d.name))
        except OSError:  # gone meanwhile
            pass
    return pids


def _memory_counter(path: str, driver_pid: int, before: set[int]):
    """A Ray Train callback (it runs in the controller) that writes, at every report, the epoch,
    the number of live split coordinator processes started since ``before`` was taken (earlier
    tests' may still be alive), their summed resident memory, the Train workers' and the
    driver's (kB)."""
    from ray.train import UserCallback

    def rss_kb(d: Path) -> int:
        status = (d / "status").read_text().splitlines()
        return int(next(x for x in status if x.startswith("VmRSS")).split()[1])

    class Count(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            row = {"epoch": metrics[0]["epoch"], "alive": 0, "rss_kb": 0, "workers_kb": 0}
            for d in Path("/proc").iterdir():
                try:
                    title = (d / "cmdline").read_bytes().split(b"\0")[0]
                    if int(d.name) in before:
                        continue
                    if title.startswith(b"ray::SplitCoordinator"):
                        row["alive"] += 1
                        row["rss_kb"] += rss_kb(d)
                    elif title.startswith(b"ray::RayTrainWorker"):
                        row["workers_kb"] += rss_kb(d)
                except (OSError, StopIteration, ValueError):  # gone meanwhile, or not a process
                    pass
            row["driver_kb"] = rss_kb(Path(f"/proc/{driver_pid}"))
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")

    return Count()


@pytest.mark.parametrize("augment_in", ["loop", "prefetch"])
def test_pooled_pretraining_reads_one_dataset_and_augments_each_epoch_on_the_workers(
    ray_cluster, tmp_path, augment_in
):
    """A pooled run of many short epochs starts Ray Data once: one split coordinator is alive
    at every report, however many epochs have gone by (one per epoch, kept to the end of the
    run, used to add up to 0.2-0.7 GB each), memory stays flat, and every epoch gives each
    pooled pair once, unaugmented, to the workers, which draw epoch ``e``'s augmentation, in
    the training thread or in Ray Data's collate threads (``pretrain.augment_in``)."""
    from clerf_ray.data.pairs import pretrain_inputs, render_pool
    from clerf_ray.train.runner import build_trainer, fit_stage

    epochs = 8
    cfg = tiny_config(
        tmp_path,
        "data.num_pairs=16",
        "data.render_batch_size=4",
        f"pretrain.epochs={epochs}",
        f"pretrain.augment_in={augment_in}",
    )
    pair_cfg = cfg.data.pair_config(seed=cfg.seed)
    pool = render_pool(pair_cfg)
    pooled = pool.take_all()
    R_of = {int(r["pair_id"]): np.asarray(r["R"], dtype=np.float64).reshape(9) for r in pooled}
    datasets, reading = pretrain_inputs(pair_cfg, epochs, pool=pool)
    assert list(datasets) == ["pairs"]
    out = tmp_path / "record"
    out.mkdir()
    counts = tmp_path / "coordinators.jsonl"
    trainer = build_trainer(
        loop=_augment_recorder(pretrain_loop, str(out)),
        loop_config={"cfg": cfg.model_dump(mode="json"), "num_pairs": len(pooled), **reading},
        section=cfg.pretrain,
        datasets=datasets,
        storage_path=cfg.storage_path,
        name="pooled",
        callbacks=[_memory_counter(str(counts), os.getpid(), _coordinator_pids())],
    )
    result = fit_stage(trainer, stage="pretrain", name="pooled")
    assert result.status == "ok" and len(result.history) == epochs

    seen = [json.loads(x) for x in counts.read_text().splitlines()]
    assert [c["epoch"] for c in seen] == list(range(1, epochs + 1))
    assert all(c["alive"] == 1 for c in seen), seen
    # Nor does memory grow with the epochs: the coordinator's, the workers' or the driver's,
    # from epoch 2 (everything started) to the last (generous: 64 MB each; one coordinator per
    # epoch added about 200 MB each here).
    for key in ("rss_kb", "workers_kb", "driver_kb"):
        assert seen[-1][key] <= seen[1][key] + 64 * 1024, (key, seen)

    by_epoch: dict[int, list[int]] = {}
    for r in (0, 1):
        for line in (out / f"augment-rank{r}.jsonl").read_text().splitlines():
            call = json.loads(line)
            by_epoch.setdefault(call["epoch"], []).extend(call["pair_id"])
            for pid, R in zip(call["pair_id"], call["R"], strict=True):
                # What reaches the workers is the pool's pair before augmentation.
                np.testing.assert_allclose(R, R_of[pid], atol=1e-6)
    assert sorted(by_epoch) == list(range(epochs))
    for e, ids in by_epoch.items():
        assert sorted(ids) == sorted(R_of), e  # every pooled pair once per epoch
    # Ray Data's block order is drawn anew at each read of the one dataset.
    assert len({tuple(by_epoch[e]) for e in range(epochs)}) > 1


def test_nan_label_in_epoch_two_stops_head_and_keeps_epoch_one_checkpoint_on_s3(
    ray_cluster, s3, tmp_path
):
    """The head's run checkpoints to ``storage_path=s3://...`` (the session's loopback S3 server,
    reached by the workers through the AWS variables Ray runs with); a NaN label in epoch 2
    stops it, and the error names epoch 1's checkpoint by its ``s3://`` URI, which loads."""
    import boto3

    from clerf_ray.models import create_encoder, head_input_dim
    from clerf_ray.train.head import build_head_embeddings

    storage = f"s3://{s3['bucket']}/{tmp_path.name}/runs"
    cfg = tiny_config(tmp_path, "head.max_failures=2", f"storage_path={storage}")
    out = tmp_path / "record"
    out.mkdir()
    encoder = create_encoder(cfg.model, image_size=cfg.data.image_size, pretrained=None)
    width = head_input_dim(encoder, cfg.model.head_input)
    n = cfg.head.num_samples
    state = encoder.state_dict()
    with pytest.raises(common.NonFiniteLossError) as err:
        run_stage(
            stage="head",
            loop=_recording(head_loop, str(out)),
            loop_config={
                "cfg": cfg.model_dump(mode="json"),
                "num_samples": n,
                "in_dim": width,
                "input_mean": [0.0] * width,
                "input_std": [1.0] * width,
            },
            section=cfg.head,
            datasets={
                "epoch_0": build_head_embeddings(cfg, state, _labelled_dataset(n, 32, seed=1)),
                "epoch_1": build_head_embeddings(
                    cfg, state, _labelled_dataset(n, 32, seed=2, poison=n - 3)
                ),
            },
            storage_path=cfg.storage_path,
            name="nan-head",
        )
    msg = str(err.value)
    assert re.search(r"head: non-finite loss at epoch 2 step [12]\b", msg), msg
    kept = re.search(r"Last good checkpoint: (\S+)$", msg).group(1)
    assert kept.startswith(f"{storage}/nan-head/checkpoint_"), kept
    # Ray Train wrote it to the server (listed with boto3, independent of pyarrow; minus the
    # empty folder marker pyarrow creates).
    key = kept[len(f"s3://{s3['bucket']}/") :]
    listed = boto3.client("s3").list_objects_v2(Bucket=s3["bucket"], Prefix=f"{key}/")
    files = [o["Key"][len(key) + 1 :] for o in listed.get("Contents", [])]
    assert [f for f in files if f and not f.endswith("/")] == ["state.pt"]
    assert len(_starts(out, 0)) == 1
    # The kept checkpoint is epoch 1's, with finite weights that load without unpickling.
    import ray.train

    state = common.load_state(ray.train.Checkpoint(kept))
    assert state["epoch"] == 0
    assert [h["epoch"] for h in state["history"]] == [1]
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# ----------------------------------------------------------- what the README promises on failures


def _on_shard_request(loop, hook):
    """``loop`` wrapped so that ``hook(rank, name, epoch)`` runs in the worker each time the loop
    asks for the dataset shard ``name`` (``common.fit`` looks ``get_dataset_shard`` up every
    epoch); ``epoch`` (from 0) is the epoch the request is for: the one after the checkpoint's
    the start was handed (0 without one), plus the requests this start has made before (a pooled
    run asks for the same name every epoch). ``hook`` must be a nested function, so that
    cloudpickle sends it by value."""

    def hooked(config):
        import ray.train

        from clerf_ray.train import common as worker_common

        me = ray.train.get_context().get_world_rank()
        get_dataset_shard = ray.train.get_dataset_shard
        ckpt = ray.train.get_checkpoint()
        made = [0 if ckpt is None else int(worker_common.load_state(ckpt)["epoch"]) + 1]

        def asked(name):
            hook(me, name, made[0])
            made[0] += 1
            return get_dataset_shard(name)

        ray.train.get_dataset_shard = asked
        try:
            return loop(config)
        finally:
            ray.train.get_dataset_shard = get_dataset_shard

    return hooked


def _asking(loop, out_dir: str):
    """``loop`` wrapped so that each rank logs the datasets it asks for (``shards-rank{r}.txt``,
    as :func:`_killed_once` does, without the kill)."""

    def log(me, name, epoch):
        with open(os.path.join(out_dir, f"shards-rank{me}.txt"), "a") as f:
            f.write(f"{os.getpid()} {name}\n")

    return _on_shard_request(loop, log)


def _dies_at(loop, epoch: int, run_dir: str):
    """``loop`` wrapped so that its worker SIGKILLs itself whenever it asks for epoch ``epoch``'s
    data (from 0), on every start, once the checkpoint before is registered."""
    wait_for_registered = _registration_waiter()

    def die(me, name, asked_for):
        if asked_for == epoch:
            wait_for_registered(run_dir)
            os.kill(os.getpid(), signal.SIGKILL)

    return _on_shard_request(loop, die)


def test_max_failures_running_out_names_the_stage_and_the_kept_checkpoint(pool, tmp_path):
    """The worker dies as it starts epoch 2, on every start. With ``max_failures=1`` Ray Train
    restarts it once from epoch 1's checkpoint, then gives up: the error names the stage, the
    run, the number of failures and the checkpoint a rerun resumes from."""
    from clerf_ray.train.runner import WorkersFailedError

    cfg = tiny_config(
        tmp_path, "pretrain.epochs=2", "pretrain.num_workers=1", "pretrain.max_failures=1"
    )
    out = tmp_path / "record"
    out.mkdir()
    with pytest.raises(WorkersFailedError) as err:
        run_stage(
            stage="pretrain",
            loop=_recording(
                _dies_at(pretrain_loop, 1, str(Path(cfg.storage_path) / "doomed")),
                str(out),
            ),
            **_pretrain_inputs(cfg, pool),
            section=cfg.pretrain,
            storage_path=cfg.storage_path,
            name="doomed",
        )
    msg = str(err.value)
    assert "pretrain" in msg and "'doomed'" in msg and "max_failures=1" in msg, msg
    kept = re.search(r"Last checkpoint: (\S+?)[;.]?\s", msg + " ").group(1)
    assert Path(kept).parent.name == "doomed"
    import ray.train

    assert common.load_state(ray.train.Checkpoint.from_directory(kept))["epoch"] == 0
    # Two starts (the first and one restart, from the checkpoint), no third.
    assert len(_starts(out, 0)) == 2
    first, restart = _resumed_from(out, 0)
    assert first is None and Path(restart).name == Path(kept).name


def _fast_clock_on(loop, rank: int, factor: float):
    """``loop`` wrapped so that on ``rank`` the epoch loop's clock runs ``factor`` times fast
    (``common.time`` replaced in that worker only): that rank alone crosses a time limit."""

    def timed(config):
        import types

        import ray.train

        from clerf_ray.train import common as worker_common

        if ray.train.get_context().get_world_rank() == rank:
            real = worker_common.time
            worker_common.time = types.SimpleNamespace(monotonic=lambda: real.monotonic() * factor)
        return loop(config)

    return timed


def _scripted_clock_on(loop, seconds_per_step: dict[int, float]):
    """``loop`` wrapped so that the epoch loop's clock (``common.time``) stands still except
    that each training step advances it by ``seconds_per_step[rank]``: epochs take exactly
    steps x that, and every time-limit decision has one right answer."""

    def scripted(config):
        import types

        import ray.train

        from clerf_ray.train import common as worker_common

        cost = seconds_per_step[ray.train.get_context().get_world_rank()]
        now = [1000.0]
        worker_common.time = types.SimpleNamespace(monotonic=lambda: now[0])
        started = worker_common.EpochClock.step_started

        def step_started(self):
            now[0] += cost
            started(self)

        worker_common.EpochClock.step_started = step_started
        return loop(config)

    return scripted


def test_a_time_limit_stops_both_ranks_where_the_slowest_runs_out_of_time_inside_an_epoch(
    ray_cluster, tmp_path
):
    """Two ranks, 3 epochs of 4 steps (12 configured), a 130 s limit, on a scripted clock: a
    step takes 10 s on rank 0 and 20 s on rank 1. After epoch 1 the slowest rank has spent 80 s
    at 20 s a step, so 50 s fit 2 more steps: both ranks plan to stop at step 6, run 2 steps of
    epoch 2 and stop there with the time-limit status and the same weights, the learning rate
    still on the configured 12-step cosine. (A rank planning from its own clock would plan 12
    steps on rank 0 and leave the ranks in different collectives.)"""
    cfg = tiny_config(tmp_path, "pretrain.epochs=3", "pretrain.time_limit_s=130")
    assert cfg.pretrain.warmup_fraction == 0.05  # 1 warm-up step of 12, as computed below
    out = tmp_path / "record"
    out.mkdir()
    result = run_stage(
        stage="pretrain",
        loop=_recording(_scripted_clock_on(pretrain_loop, {0: 10.0, 1: 20.0}), str(out)),
        **_pretrain_inputs(cfg),
        section=cfg.pretrain,
        storage_path=cfg.storage_path,
        name="stopped",
    )
    ranks = [_returned(out, r) for r in (0, 1)]
    assert [r["status"] for r in ranks] == ["time_limit", "time_limit"]
    assert [[len(h["step_losses"]) for h in r["history"]] for r in ranks] == [[4, 2], [4, 2]]
    assert [h["elapsed_s"] for h in ranks[0]["history"]] == pytest.approx([40.0, 60.0])
    assert [h["elapsed_s"] for h in ranks[1]["history"]] == pytest.approx([80.0, 120.0])
    peak = cfg.pretrain.lr
    # After steps 4 and 6 of the configured 12 (1 warm-up step): 3/11 and 5/11 of the cosine.
    lrs = [h["lr"] for h in ranks[0]["history"]]
    assert lrs == pytest.approx([peak * 0.5 * (1 + math.cos(math.pi * k / 11)) for k in (3, 5)])
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]
    assert result.status == "time_limit"
    assert "stopped at step 6 of 12, in epoch 2" in result.message, result.message
    assert result.state["epoch"] == 1


def test_two_worker_ddp_on_live_renders_and_a_time_limit_crossed_on_one_rank_stops_both(
    ray_cluster, tmp_path
):
    """Two-worker DDP pretraining on live renders, whose rank 1's clock runs 10^5 times fast, so
    only rank 1 sees epoch 1 take longer than the 1000 s limit (rank 0's epoch takes seconds).
    Both ranks stop after epoch 1 of 3 with the time-limit status; neither waits for the other in
    a collective. Epoch 1 used the global batch and kept the replicas equal. (One run for both
    checks: every Ray Train run costs 15-20 s of process start-up here.)"""
    cfg = tiny_config(tmp_path, "pretrain.epochs=3", "pretrain.time_limit_s=1000")
    out = tmp_path / "record"
    out.mkdir()
    result = run_stage(
        stage="pretrain",
        loop=_recording(_fast_clock_on(pretrain_loop, rank=1, factor=1e5), str(out)),
        **_pretrain_inputs(cfg),
        section=cfg.pretrain,
        storage_path=cfg.storage_path,
        name="clock",
    )
    ranks = [_returned(out, r) for r in (0, 1)]
    assert [r["status"] for r in ranks] == ["time_limit", "time_limit"]
    assert [[h["epoch"] for h in r["history"]] for r in ranks] == [[1], [1]]
    assert ranks[0]["history"][0]["elapsed_s"] < 1000 < ranks[1]["history"][0]["elapsed_s"]
    assert result.status == "time_limit" and "after epoch 1" in result.message
    assert result.state["epoch"] == 0

    # DDP. One start per rank; 32 pairs, global batch 8 over 2 ranks: 4 per rank, 4 steps.
    assert [len(_starts(out, r)) for r in (0, 1)] == [1, 1]
    assert [len(r["history"][0]["step_losses"]) for r in ranks] == [4, 4]
    # The Circle Loss of the global batch is the same number on both ranks; a rank-local loss
    # would see different pairs on each rank and differ.
    losses = [r["history"][0]["step_losses"] for r in ranks]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    assert all(math.isfinite(x) and x > 0 for x in losses[0])
    # Same weights on both ranks at the end (ranks are seeded differently, so without the
    # initial broadcast and gradient averaging they would differ).
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]
    # The checkpoint holds the weights rank 0 ended with.
    from clerf_ray.models import create_encoder

    enc = create_encoder(cfg.model, image_size=cfg.data.image_size, pretrained=None)
    enc.load_state_dict(result.state["model"])
    assert common.parameter_checksum(enc) == ranks[0]["param_checksum"]
    assert Path(result.checkpoint_path).is_dir()


def _nan_loss_on(loop, rank: int, at_step: int):
    """``loop`` wrapped so that on ``rank`` the loss of its ``at_step``-th step (counted over
    epochs) is NaN; the other rank's losses stay finite."""

    def poisoned(config):
        import ray.train

        from clerf_ray.train import common as worker_common

        if ray.train.get_context().get_world_rank() == rank:
            real_fit = worker_common.fit

            def fit(**kw):
                real_step, count = kw["loss_step"], [0]

                def step(batch):
                    loss, n = real_step(batch)
                    count[0] += 1
                    return (loss * float("nan") if count[0] == at_step else loss), n

                return real_fit(**{**kw, "loss_step": step})

            worker_common.fit = fit
        return loop(config)

    return poisoned


def test_nonfinite_loss_on_one_rank_of_two_stops_both(pool, tmp_path):
    """Rank 1's loss is NaN at its 6th step (epoch 2 step 2; 4 steps per epoch), rank 0's is
    finite throughout. Both ranks stop at that step, neither retries (``max_failures=2``), and
    the error keeps epoch 1's checkpoint."""
    cfg = tiny_config(tmp_path, "pretrain.epochs=3", "pretrain.max_failures=2")
    out = tmp_path / "record"
    out.mkdir()
    with pytest.raises(common.NonFiniteLossError) as err:
        run_stage(
            stage="pretrain",
            loop=_recording(_nan_loss_on(pretrain_loop, rank=1, at_step=6), str(out)),
            **_pretrain_inputs(cfg, pool),
            section=cfg.pretrain,
            storage_path=cfg.storage_path,
            name="nan-rank1",
        )
    msg = str(err.value)
    # The error comes from rank 0's report, whose own loss was finite.
    assert re.search(r"pretrain: non-finite loss at epoch 2 step 2 \(rank 0: [0-9.]+\)", msg), msg
    ranks = [_returned(out, r) for r in (0, 1)]
    assert [r["status"] for r in ranks] == ["nonfinite", "nonfinite"]
    assert [[h["epoch"] for h in r["history"]] for r in ranks] == [[1], [1]]
    assert [len(_starts(out, r)) for r in (0, 1)] == [1, 1]
    kept = re.search(r"Last good checkpoint: (\S+)$", msg).group(1)
    import ray.train

    assert common.load_state(ray.train.Checkpoint.from_directory(kept))["epoch"] == 0
