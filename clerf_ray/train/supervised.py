"""The supervised baseline's worker side (6DRepNet style: the same backbone and pose head as
CLERF, trained end to end by direct 6D regression with the geodesic loss): its model, its labelled
images, its loss and its ``train_loop_per_worker``. The run that drives it, with its budget, is
:mod:`clerf_ray.runs.baseline`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clerf_ray.train import common


def build_baseline_model(cfg):
    """A ``PoseModel`` (encoder + head, ``freeze_encoder=False``) built from ``cfg.model`` for
    ``cfg.data.image_size`` pixels, with ``cfg.head.views`` test-time views, as CLERF's.

    The head reads what CLERF's head reads (``cfg.model.head_input``). With ``"features"`` the
    encoder's projection is unused: it is frozen (``requires_grad=False``) so that DDP does not
    wait for gradients that never come. Every other parameter trains.
    """
    from clerf_ray.models import PoseModel, create_encoder, create_head_for

    encoder = create_encoder(cfg.model, image_size=cfg.data.image_size)
    # Input standardisation holds fixed statistics of a frozen encoder's outputs; this encoder
    # trains, so the head takes its inputs as they come.
    head = create_head_for(encoder, cfg.model, standardize=False)
    if head.config.input == "features":
        encoder.projection.requires_grad_(False)
    # The same test-time views as CLERF's registered head, so evaluations compare like with like.
    return PoseModel(encoder, head, freeze_encoder=False, views=cfg.head.views)


def baseline_batch_size(cfg) -> int:
    """Global batch of the baseline in images: ``2 * cfg.pretrain.batch_size``, because
    ``pretrain.batch_size`` counts pairs and a CLERF step reads both images of each pair."""
    return 2 * cfg.pretrain.batch_size


def num_baseline_samples(cfg, labelled_path: str | None) -> int:
    """Labelled images per epoch: the labelled set's rows, else two per pair of pretraining's
    pair stream (``clerf_ray.data.pairs.pairs_per_epoch``: real anchors in range, shard rows,
    or ``data.num_pairs``)."""
    if labelled_path:
        from clerf_ray.data.schema import load_labelled

        return load_labelled(labelled_path, columns=["R"]).num_rows
    from clerf_ray.data.pairs import pairs_per_epoch

    return 2 * pairs_per_epoch(cfg.data.pair_config(seed=cfg.seed))


def pair_images(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch of augmented pairs -> labelled images: the anchors, then the positives, each
    with its pair's label ``R`` (they show the same pose)."""
    return {
        "image": np.concatenate([batch["anchor"], batch["positive"]]),
        "R": np.concatenate([batch["R"], batch["R"]]).astype(np.float32),
        "source": np.concatenate([batch["source"], batch["source"]]),
    }


def build_baseline_dataset(pair_cfg, epoch: int = 0, pool=None, labelled_path: str | None = None):
    """The baseline's labelled images of one epoch as a lazy ``ray.data.Dataset``: ``image``
    (H, W, 3) uint8, ``R`` (3, 3) float32 after augmentation, ``source``.

    Args:
        pair_cfg: the pair stream (``PairDataConfig``) that pretraining reads.
        epoch: seeds this epoch's draws.
        pool: rendered pairs from ``render_pool(pair_cfg)``, reused every epoch with this
            epoch's augmentation (None: render this epoch's pairs).
        labelled_path: a labelled Parquet set to read instead of pairs.
    """
    from clerf_ray.data.labelled_images import build_labelled_image_dataset
    from clerf_ray.data.pairs import build_pair_dataset

    if labelled_path is not None:
        return build_labelled_image_dataset(pair_cfg, epoch, labelled_path)
    return build_pair_dataset(pair_cfg, epoch, pool=pool).map_batches(
        pair_images, batch_format="numpy", num_cpus=pair_cfg.stage_num_cpus
    )


def baseline_optimizer(model: torch.nn.Module, section) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters with the ``pretrain`` section's settings."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=section.lr, weight_decay=section.weight_decay)


def baseline_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], device) -> torch.Tensor:
    """Mean geodesic loss of ``model`` on a batch of ``image`` (B, H, W, 3) uint8 and ``R``
    (B, 3, 3) labels."""
    from clerf_ray.losses import geodesic_loss

    R = batch["R"].to(device)
    x = common.unwrap(model).preprocess(batch["image"].to(device))
    return geodesic_loss(model(x).float(), R)


def supervised_loop(config: dict[str, Any]) -> dict[str, Any]:
    """``train_loop_per_worker`` of the baseline.

    ``config``: ``{"cfg": Config dict, "num_samples": labelled images per epoch}``. Reads the
    ``epoch_{e}`` datasets (:func:`build_baseline_dataset`) in global batches of
    :func:`baseline_batch_size` images.
    """
    import ray.train
    import ray.train.torch

    from clerf_ray.config import Config

    cfg = Config.model_validate(config["cfg"])
    section = cfg.pretrain
    ctx = ray.train.get_context()
    world = ctx.get_world_size()
    common.seed_everything(cfg.seed + 2000 + ctx.get_world_rank())
    device = ray.train.torch.get_device()

    model = ray.train.torch.prepare_model(build_baseline_model(cfg))
    per_worker, steps = common.global_batches(
        int(config["num_samples"]), baseline_batch_size(cfg), world
    )
    optimizer = baseline_optimizer(model, section)

    def loss_step(batch):
        return baseline_loss(model, batch, device), len(batch["R"])

    return common.fit(
        stage="baseline",
        model=model,
        optimizer=optimizer,
        section=section,
        steps=steps,
        per_worker=per_worker,
        loss_step=loss_step,
    )
