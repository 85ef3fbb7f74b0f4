"""Stage 1: contrastive pretraining of the encoder with Circle Loss on Ray Train.

The driver builds one lazy pair dataset per epoch (``epoch_0``, ``epoch_1``, ...; each with its
own draws, so every epoch sees fresh augmentations, and fresh poses and identities unless the
pairs come from a render pool or shards; a resumed run picks up exactly the epochs it has not
done). Each worker runs :func:`pretrain_loop`.
"""

from __future__ import annotations

from typing import Any

import torch

from clerf_ray.train import common


def pretrain_loop(config: dict[str, Any]) -> dict[str, Any]:
    """``train_loop_per_worker`` of the contrastive stage. ``config``: ``{"cfg": Config dict, "num_pairs": pairs per epoch}``, and optionally
    ``"probe"``: the retrieval probe's renders (a dict or an ObjectRef to one;
    :mod:`clerf_ray.train.probe`)."""
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
    model = ray.train.torch.prepare_model(encoder)
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
        return loss_fn(emb[: len(R)], emb[len(R) :], R), len(R)

    # A search passes a retrieval probe (clerf_ray.train.probe) measured after every epoch, so
    # that its scheduler can stop poor trials early; the main job passes none.
    probe = config.get("probe")
    if probe is not None:
        import ray

        from clerf_ray.train.probe import retrieval_probe

        probe = retrieval_probe(ray.get(probe) if isinstance(probe, ray.ObjectRef) else probe)

    return common.fit(
        stage="pretrain",
        model=model,
        optimizer=optimizer,
        section=p,
        steps=steps,
        per_worker=per_worker,
        loss_step=loss_step,
        epoch_metrics=probe,
    )
