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

    The head reads what CLERF's head reads (``cfg.model.head_input``). Parameters that input
    does not depend on (the projection, for ``"features"``; also layers after the last feature
    map, such as MobileNetV3's ``conv_head``, for ``"feature_map"``) are frozen
    (``requires_grad=False``) so that DDP does not wait for gradients that never come. Every
    other parameter trains.
    """
    from clerf_ray.models import PoseModel, create_encoder, create_head_for

    encoder = create_encoder(cfg.model, image_size=cfg.data.image_size)
    # Input standardisation holds fixed statistics of a frozen encoder's outputs; this encoder
    # trains, so the head takes its inputs as they come.
    head = create_head_for(encoder, cfg.model, standardize=False)
    _freeze_unused(encoder, head.config.input, cfg.data.image_size)
    # The same test-time views as CLERF's registered head, so evaluations compare like with like.
    return PoseModel(encoder, head, freeze_encoder=False, views=cfg.head.views)


def _freeze_unused(encoder, input: str, image_size: int) -> None:
    """Freeze the encoder parameters that the head's input does not depend on, found by one
    backward pass of two blank images (in eval mode, so BatchNorm's statistics stay as they
    are): written here because which layers a timm model runs after its last feature map
    differs by family, and DDP needs the unused ones marked."""
    import torch

    from clerf_ray.models.head import read_head_input

    was_training = encoder.training
    encoder.eval()
    read_head_input(encoder, torch.zeros(2, 3, image_size, image_size), input).sum().backward()
    for q in encoder.parameters():
        if q.grad is None:
            q.requires_grad_(False)
        q.grad = None
    encoder.train(was_training)


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


def baseline_pair_transform(preset: str, seed: int):
    """The worker-side transform of the baseline's pair stream: ``transform(batch, epoch)`` gives
    a batch of unaugmented pairs (from :func:`clerf_ray.data.pairs.pretrain_inputs`) epoch
    ``epoch``'s augmentation (:func:`clerf_ray.data.pairs.augment_batch`: the draws pretraining
    makes for the same pairs) and turns it into labelled images, the anchors then the positives
    (:func:`clerf_ray.data.labelled_images.pairs_to_images`)."""
    from clerf_ray.data.labelled_images import pairs_to_images
    from clerf_ray.data.pairs import augment_batch

    def transform(batch: dict[str, np.ndarray], epoch: int) -> dict[str, np.ndarray]:
        return pairs_to_images(augment_batch(batch, preset, seed, epoch))

    return transform


def baseline_labelled_transform(preset: str, seed: int):
    """The worker-side transform of a labelled set's rows (from
    :func:`clerf_ray.data.labelled_images.labelled_inputs`): epoch ``epoch``'s augmentation
    (:func:`clerf_ray.data.labelled_images.augment_labelled_rows`)."""
    from clerf_ray.data.labelled_images import augment_labelled_rows

    def transform(batch: dict[str, np.ndarray], epoch: int) -> dict[str, np.ndarray]:
        return augment_labelled_rows(batch, preset, seed, epoch)

    return transform


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
    out = model(x).float()
    with common.full_precision(device):
        return geodesic_loss(out, R)


def supervised_loop(config: dict[str, Any]) -> dict[str, Any]:
    """``train_loop_per_worker`` of the baseline.

    ``config``: ``{"cfg": Config dict, "num_samples": labelled images per epoch, "rows":
    "pairs" | "images"}`` and what :func:`clerf_ray.data.pairs.pretrain_inputs` or
    :func:`clerf_ray.data.labelled_images.labelled_inputs` add (``"augment"``: preset and seed;
    ``"dataset"``: the run's one dataset, when there is one). Every step holds
    :func:`baseline_batch_size` images, and each batch is augmented on the worker, as
    pretraining's are:

    * ``"pairs"``: pretraining's own pair stream (one dataset per run from a pool or shards, one
      per epoch for live renders), read in batches of ``pretrain.batch_size`` pairs, augmented
      and split into anchors and positives (:func:`baseline_pair_transform`);
    * ``"images"``: a labelled set's decoded rows
      (:func:`clerf_ray.data.labelled_images.labelled_inputs`), augmented row by row
      (:func:`baseline_labelled_transform`).
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

    model = ray.train.torch.prepare_model(common.channels_last(build_baseline_model(cfg)))
    n, a = int(config["num_samples"]), config["augment"]
    if config["rows"] == "pairs":
        # Two images per pair: steps of pretrain.batch_size pairs are the steps pretraining
        # takes on the same pairs.
        transform = baseline_pair_transform(a["preset"], a["seed"])
        per_worker, steps = common.global_batches(n // 2, section.batch_size, world)
    else:
        transform = baseline_labelled_transform(a["preset"], a["seed"])
        per_worker, steps = common.global_batches(n, baseline_batch_size(cfg), world)
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
        dataset=config.get("dataset"),
        transform=transform,
    )
