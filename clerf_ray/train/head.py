"""Stage 2: the pose head on the frozen encoder, geodesic loss, on Ray Train.

The encoder is frozen, so an image's embedding never changes during this stage: each labelled
image is embedded once, by encoder actors in a Ray Data pipeline (:func:`build_head_embeddings`,
batch inference with ``map_batches`` and ``ActorPoolStrategy``), and the head then trains on the
cached embeddings for many passes (``head.passes`` per epoch). A head step costs a small MLP, not
a backbone forward, so the head sees thousands of steps in the time that one pass over images
would take.

Labelled images are, by default, ``head.num_samples`` renders of training identities over all of
SO(3) (both images of each rendered pair; in the main job, pairs of the pretraining pool, which
trained the head as well as new renders: 7.6 vs 7.7 deg held-out median, one view, one encoder),
or a labelled Parquet set (``head.labelled_path``, the shared schema of
``clerf_ray.data.schema``). Each image is embedded ``head.draws`` times, once per
augmentation draw (with its exact label transform): renders are made once and kept in Ray's object
store, so a draw costs one encoder forward. Draws of one render train the head about as well as new
renders (8,192 renders x 4 draws: 7.5 deg held-out median; 32,768 renders x 1: 7.7; one encoder).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch

from clerf_ray.train import common


class EmbedImages:
    """Ray Data callable class: ``image`` (B, H, W, 3) uint8 -> ``z`` (B, D) float32, what the
    head reads from the frozen encoder (``model.head_input``: pooled features, the feature
    map on its grid, or the embedding); ``R`` passes through."""

    def __init__(
        self,
        model_cfg: Any,
        image_size: int,
        encoder_state: dict[str, Any],
        torch_threads: int | None,
        device: str = "cpu",
        amp: bool = False,
    ):
        from clerf_ray.models import create_encoder
        from clerf_ray.models.head import read_head_input

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = torch.device(device)
        self.encoder = create_encoder(model_cfg, image_size=image_size, pretrained=None)
        self.encoder.load_state_dict(encoder_state)
        self.encoder.to(self.device).eval().requires_grad_(False)
        self.encoder = common.channels_last(self.encoder)
        self.read = partial(read_head_input, input=model_cfg.head_input)
        # The encoder's mixed precision (pretrain.amp; common.amp_enabled): on the 2-core Xeon
        # VM bfloat16 embedded 850 images/s against 430 in float32, and a head on bfloat16
        # features did as well (8.4 against 8.5 deg median, one view, the same encoder).
        self.amp = amp

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad(), common.autocast(self.device, self.amp):
            x = self.encoder.preprocess(batch["image"])
            z = self.read(self.encoder, x)
        return {
            "z": z.float().cpu().numpy(),
            "R": np.asarray(batch["R"], dtype=np.float32).reshape(-1, 3, 3),
        }


def head_images(cfg, pool=None):
    """The head stage's labelled images: ``head.draws`` augmentation draws (epochs 0, 1, ... of
    the augmentation seeds) of ``head.num_samples`` labelled images, as columns ``image``,
    ``R``, ``source``. The images are, in this order of preference: the rows of
    ``head.labelled_path``; the first ``head.num_samples / 2`` pairs of ``pool`` (the
    pretraining pool of :func:`clerf_ray.data.pairs.render_pool`, with ``head.reuse_pool``),
    drawn with augmentation seeds of their own; or new renders of training identities,
    rendered once."""
    from clerf_ray.data.labelled_images import build_labelled_image_dataset
    from clerf_ray.data.pairs import render_pool

    h = cfg.head
    num_pairs = max(1, h.num_samples // 2)
    head_data = cfg.data.pair_config(seed=cfg.seed + 1, num_pairs=num_pairs)
    path = h.labelled_path
    if path is None and pool is not None and h.reuse_pool:
        pool = pool.limit(num_pairs)
    elif path is None and h.draws > 1:
        pool = render_pool(head_data)
    else:
        pool = None
    draws = [
        build_labelled_image_dataset(head_data, epoch=e, labelled_path=path, pool=pool)
        for e in range(h.draws)
    ]
    return draws[0].union(*draws[1:]) if len(draws) > 1 else draws[0]


def build_head_embeddings(cfg, encoder_state: dict[str, Any], images=None, pool=None):
    """The head stage's training set: a materialised ``ray.data.Dataset`` with columns ``z``
    (the head's input: pooled features or embedding, by ``model.head_input``) and ``R`` (3x3
    label), one row per labelled image.

    Args:
        cfg: the run's :class:`clerf_ray.config.Config`.
        encoder_state: state dict of the trained encoder.
        images: a dataset with ``image`` and ``R`` columns; default: :func:`head_images`.
        pool: the pretraining pool, passed to :func:`head_images`.
    """
    import ray.data

    if images is None:
        images = head_images(cfg, pool=pool)
    gpu = common.use_gpu(cfg.head.use_gpu)
    return images.map_batches(
        EmbedImages,
        fn_constructor_kwargs={
            # create_encoder takes the encoder's fields from the model section itself.
            "model_cfg": cfg.model,
            "image_size": cfg.data.image_size,
            "encoder_state": encoder_state,
            "torch_threads": cfg.head.torch_threads,
            "device": "cuda" if gpu else "cpu",
            "amp": cfg.pretrain.amp,
        },
        batch_size=256,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=cfg.head.cpus_per_worker,
        num_gpus=1 if gpu else 0,
        resources=cfg.head.worker_resources or None,
    ).materialize()


def head_loop(config: dict[str, Any]) -> dict[str, Any]:
    """``train_loop_per_worker`` of the head stage, on embedding datasets (``z``, ``R``) from
    :func:`build_head_embeddings`.

    ``config``: ``{"cfg": Config dict, "num_samples": rows of the embedding dataset,
    "in_dim": width of ``z``, "input_mean"/"input_std": per-dimension statistics of ``z``
    (with ``model.head_standardize``), "dataset": the one dataset every epoch reads (absent:
    ``epoch_0``, ``epoch_1``, ...)}``.
    """
    import ray.train
    import ray.train.torch

    from clerf_ray.config import Config
    from clerf_ray.losses import geodesic_loss
    from clerf_ray.models import create_head

    cfg = Config.model_validate(config["cfg"])
    h = cfg.head
    world = ray.train.get_context().get_world_size()
    common.seed_everything(cfg.seed + 1000 + ray.train.get_context().get_world_rank())
    device = ray.train.torch.get_device()

    head = create_head(cfg.model, in_dim=int(config["in_dim"]))
    if head.config.standardize:
        head.set_input_stats(config["input_mean"], config["input_std"])
    head = ray.train.torch.prepare_model(head)
    per_worker, steps = common.global_batches(int(config["num_samples"]), h.batch_size, world)
    optimizer = torch.optim.AdamW(head.parameters(), lr=h.lr, weight_decay=h.weight_decay)

    def loss_step(batch):
        R = batch["R"].to(device)
        out = head(batch["z"].to(device).float()).float()
        with common.full_precision(device):
            return geodesic_loss(out, R), len(R)

    return common.fit(
        stage="head",
        model=head,
        optimizer=optimizer,
        section=h,
        steps=steps * h.passes,
        per_worker=per_worker,
        loss_step=loss_step,
        passes=h.passes,
        shuffle_buffer=h.shuffle_buffer,
        in_memory=h.in_memory,
        dataset=config.get("dataset"),
    )
