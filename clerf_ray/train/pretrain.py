"""Stage 1: contrastive pretraining of the encoder with Circle Loss on Ray Train.

The driver's datasets come from :func:`clerf_ray.data.pairs.pretrain_inputs`: unaugmented pairs,
one dataset for the run when they come from a render pool or shards (read once per epoch), one
per epoch for live renders (fresh poses and identities; a resumed run renders exactly the epochs
it has not done). Each worker runs :func:`pretrain_loop`, which gives every batch its epoch's
augmentation (:func:`clerf_ray.data.pairs.augment_batch`, drawn per pair: exact on resume).
"""

from __future__ import annotations

from typing import Any

import torch

from clerf_ray.train import common


def pretrain_loop(config: dict[str, Any]) -> dict[str, Any]:
    """``train_loop_per_worker`` of the contrastive stage. ``config``: ``{"cfg": Config dict, "num_pairs": pairs per epoch}``, and optionally
    ``"probe"``: the retrieval probe's renders (a dict or an ObjectRef to one;
    :mod:`clerf_ray.train.probe`), and what :func:`clerf_ray.data.pairs.pretrain_inputs` adds:
    ``"augment"`` (preset and seed of the per-epoch augmentation), ``"dataset"`` (the run's one
    dataset, when there is one)."""
    import ray.train
    import ray.train.torch

    from clerf_ray.config import Config
    from clerf_ray.losses import ContrastivePoseLoss
    from clerf_ray.models import create_encoder

    cfg = Config.model_validate(config["cfg"])
    p = cfg.pretrain
    world = ray.train.get_context().get_world_size()
    common.seed_everything(cfg.seed + ray.train.get_context().get_world_rank())
    device = ray.train.torch.get_device()

    encoder = create_encoder(cfg.model, image_size=cfg.data.image_size)
    model = ray.train.torch.prepare_model(common.channels_last(encoder))
    loss_fn = ContrastivePoseLoss(
        m=p.m, gamma=p.gamma, negative_margin_deg=p.negative_margin_deg, distributed=world > 1
    )
    # Pairs per epoch, counted on the driver (clerf_ray.data.pairs.pairs_per_epoch: real anchors
    # in range, shard rows, data.num_pairs for synthetic pairs).
    num_pairs = int(config["num_pairs"])
    per_worker, steps = common.global_batches(num_pairs, p.batch_size, world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    preprocess = common.unwrap(model).preprocess

    def loss_step(batch):
        anchor = preprocess(batch["anchor"].to(device))
        positive = preprocess(batch["positive"].to(device))
        R = batch["R"].to(device)
        # One forward over both views: BatchNorm sees the whole batch and DDP one graph.
        emb = model(torch.cat([anchor, positive])).float()
        with common.full_precision(device):
            return loss_fn(emb[: len(R)], emb[len(R) :], R), len(R)

    # A search passes a retrieval probe (clerf_ray.train.probe) measured after every epoch, so
    # that its scheduler can stop poor trials early; the main job passes none.
    probe = config.get("probe")
    if probe is not None:
        import ray

        from clerf_ray.train.probe import retrieval_probe

        probe = retrieval_probe(ray.get(probe) if isinstance(probe, ray.ObjectRef) else probe)

    transform = None
    if config.get("augment") is not None:
        from clerf_ray.data.pairs import augment_batch

        a = config["augment"]

        def transform(batch, epoch):
            return augment_batch(batch, a["preset"], a["seed"], epoch)

    return common.fit(
        stage="pretrain",
        model=model,
        optimizer=optimizer,
        section=p,
        steps=steps,
        per_worker=per_worker,
        loss_step=loss_step,
        epoch_metrics=probe,
        dataset=config.get("dataset"),
        transform=transform,
    )
