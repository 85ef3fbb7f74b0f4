"""Stage 2: the pose head on the frozen encoder, geodesic loss, on Ray Train.

Training data are labelled images: by default renders of training identities over all of SO(3)
(both images of each rendered pair, fresh each epoch), or a labelled Parquet set
(``head.labelled_path``, the shared schema of ``clerf_ray.data.schema``).
"""

from __future__ import annotations

from typing import Any

import torch

from clerf_ray.train import common


def head_loop(config: dict[str, Any]) -> dict[str, Any]:
    """``train_loop_per_worker`` of the head stage.

    ``config``: ``{"cfg": Config dict, "encoder_state": state dict of the trained encoder}``.
    """
    import ray.train
    import ray.train.torch

    from clerf_ray.config import Config
    from clerf_ray.losses import geodesic_loss
    from clerf_ray.models import create_encoder, create_head

    cfg = Config.model_validate(config["cfg"])
    h = cfg.head
    world = ray.train.get_context().get_world_size()
    common.seed_everything(cfg.seed + 1000 + ray.train.get_context().get_world_rank())
    device = ray.train.torch.get_device()

    encoder = create_encoder(cfg.model, image_size=cfg.data.image_size, pretrained=None)
    encoder.load_state_dict(config["encoder_state"])
    encoder.to(device).eval().requires_grad_(False)
    head = ray.train.torch.prepare_model(create_head(cfg.model))
    per_worker, steps = common.global_batches(num_head_samples(cfg), h.batch_size, world)
    optimizer = torch.optim.AdamW(head.parameters(), lr=h.lr, weight_decay=h.weight_decay)

    def loss_step(batch):
        with torch.no_grad():
            z = encoder(encoder.preprocess(batch["image"].to(device)))
        R = batch["R"].to(device)
        return geodesic_loss(head(z.float()).float(), R), len(R)

    return common.fit(
        stage="head",
        model=head,
        optimizer=optimizer,
        section=h,
        steps=steps,
        per_worker=per_worker,
        loss_step=loss_step,
    )


def num_head_samples(cfg) -> int:
    """Labelled images per epoch: two per rendered pair, or the labelled set's rows."""
    if cfg.head.labelled_path:
        from clerf_ray.data.schema import load_labelled

        return load_labelled(cfg.head.labelled_path).num_rows
    return 2 * (cfg.head.num_samples // 2)
