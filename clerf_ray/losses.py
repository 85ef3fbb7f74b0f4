"""Losses: Circle Loss with pose-aware negatives (encoder pretraining) and the geodesic loss
(pose head).

Circle Loss (Sun et al., CVPR 2020) comes from pytorch-metric-learning (PML); this module only
decides which pairs it sees. A batch of B anchor-positive pairs is 2B embeddings; pair i is one
class (its anchor and its positive are each other's positive), and every other sample is a
negative of both, except samples whose pose lies within ``negative_margin_deg`` of the anchor's
pose: they look like the anchor (same pose, other identity) and are not true negatives. The pairs
are handed to PML as an ``indices_tuple`` ``(a1, p, a2, n)``, PML's own format for mined pairs.

Across DDP ranks, ``distributed=True`` gathers embeddings with PML's ``DistributedLossWrapper`` so
negatives come from the global batch. The wrapper cannot carry poses, so poses (and pair labels)
are gathered here with PML's own ``gather`` helper, which orders the global batch exactly as the
wrapper does (this rank's samples first, then the other ranks in rank order); the pair indices
are then built on the gathered batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.reducers import DoNothingReducer
from pytorch_metric_learning.utils import distributed as pml_dist
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from clerf_ray import geometry

__all__ = [
    "ContrastivePoseLoss",
    "create_contrastive_loss",
    "geodesic_loss",
    "pose_aware_pair_indices",
]


def pose_aware_pair_indices(
    labels: torch.Tensor, R: torch.Tensor, negative_margin_rad: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PML pair indices with pose-near samples removed from the negatives.

    Args:
        labels: (N,) class of each sample (the pair index).
        R: (N, 3, 3) pose label of each sample (``clerf_ray.geometry`` convention).
        negative_margin_rad: samples j with ``geodesic_distance(R_i, R_j) < margin`` are not
            negatives of anchor i (0 disables the masking).

    Returns:
        ``(a1, p, a2, n)``: anchor-positive pairs (same label, i != j) and anchor-negative pairs
        (different label, pose at least the margin away), 1-D index tensors into the batch.
    """
    if labels.ndim != 1 or R.shape != (labels.shape[0], 3, 3):
        raise ValueError(
            f"labels must be (N,) and R (N, 3, 3), got {tuple(labels.shape)} and {tuple(R.shape)}"
        )
    with torch.no_grad():
        matches, diffs = lmu.get_matches_and_diffs(labels)
        if negative_margin_rad > 0:
            d = geometry.geodesic_distance(R.unsqueeze(1), R.unsqueeze(0))  # (N, N) radians
            diffs = diffs.bool() & (d >= negative_margin_rad)
        a1, p = torch.where(matches.bool())
        a2, n = torch.where(diffs.bool())
    return a1, p, a2, n


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ContrastivePoseLoss(torch.nn.Module):
    """Circle Loss over anchor-positive pairs with pose-aware negative masking.

    Args:
        m: Circle Loss relaxation margin (PML ``CircleLoss(m=...)``).
        gamma: Circle Loss scale. The defaults m=0.25, gamma=64 are those of
            ``clerf_ray.config.PretrainSection``; the CLERF paper does not state its values in
            the text we could find. PML's defaults are 0.4 / 80, the Circle Loss paper's face
            recognition setting 0.25 / 256.
        negative_margin_deg: samples whose pose is within this geodesic distance (degrees) of an
            anchor's pose are not negatives of that anchor. 0 disables the masking.
        distributed: gather embeddings, pair labels and poses across torch.distributed ranks so
            that negatives (and the pose mask) come from the global batch. Does nothing when
            torch.distributed is not initialised or has one process.

    On W > 1 ranks every rank must pass the same batch size (a ValueError otherwise). The value
    returned is the Circle Loss of the global batch (the same on every rank); its gradient is W
    times the gradient through this rank's embeddings, so that DDP's averaging of gradients over
    ranks yields exactly the gradient of the global-batch loss.
    """

    def __init__(
        self,
        m: float = 0.25,
        gamma: float = 64.0,
        negative_margin_deg: float = 5.0,
        distributed: bool = False,
    ):
        super().__init__()
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"m must lie in [0, 1], got {m}")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if not 0.0 <= negative_margin_deg <= 180.0:
            raise ValueError(f"negative_margin_deg must lie in [0, 180], got {negative_margin_deg}")
        self.m = float(m)
        self.gamma = float(gamma)
        self.negative_margin_deg = float(negative_margin_deg)
        self.distributed = bool(distributed)
        # Default reducer: mean over anchors with at least one positive and one negative.
        self.circle = pml_losses.CircleLoss(m=self.m, gamma=self.gamma)
        self._per_anchor = pml_losses.CircleLoss(
            m=self.m, gamma=self.gamma, reducer=DoNothingReducer()
        )
        # efficient=False: every rank computes the loss of all global anchors, so gradients
        # flowing into this rank's embeddings are complete (not only those of local anchors).
        self.wrapper = pml_dist.DistributedLossWrapper(self.circle, efficient=False)

    @property
    def negative_margin_rad(self) -> float:
        return math.radians(self.negative_margin_deg)

    def _local_batch(self, anchor_emb, positive_emb, R, label_offset: int = 0):
        if anchor_emb.ndim != 2 or anchor_emb.shape != positive_emb.shape:
            raise ValueError(
                "anchor_emb and positive_emb must both be (B, D), got "
                f"{tuple(anchor_emb.shape)} and {tuple(positive_emb.shape)}"
            )
        B = anchor_emb.shape[0]
        if R.shape != (B, 3, 3):
            raise ValueError(f"R must be (B, 3, 3) = ({B}, 3, 3), got {tuple(R.shape)}")
        emb = torch.cat([anchor_emb, positive_emb], dim=0)
        if emb.dtype in (torch.float16, torch.bfloat16):
            # Under autocast: similarities scaled by gamma want float32.
            emb = emb.float()
        pair = torch.arange(B, device=emb.device) + label_offset
        labels = torch.cat([pair, pair])
        pose_dtype = torch.float64 if R.dtype == torch.float64 else torch.float32
        poses = torch.cat([R, R], dim=0).to(device=emb.device, dtype=pose_dtype)
        return emb, labels, poses

    def forward(
        self, anchor_emb: torch.Tensor, positive_emb: torch.Tensor, R: torch.Tensor
    ) -> torch.Tensor:
        """Scalar loss.

        Args:
            anchor_emb: (B, D) anchor embeddings (cosine similarity is used: any norm).
            positive_emb: (B, D) embeddings of the positives; row i pairs with anchor row i.
            R: (B, 3, 3) pose label shared by anchor i and positive i.
        """
        rank, world = _dist_info() if self.distributed else (0, 1)
        if world == 1:
            emb, labels, poses = self._local_batch(anchor_emb, positive_emb, R)
            idx = pose_aware_pair_indices(labels, poses, self.negative_margin_rad)
            return self.circle(emb, labels, indices_tuple=idx)

        B = anchor_emb.shape[0]
        sizes = [torch.zeros(1, dtype=torch.long, device=anchor_emb.device) for _ in range(world)]
        torch.distributed.all_gather(
            sizes, torch.tensor([B], dtype=torch.long, device=anchor_emb.device)
        )
        sizes = [int(s.item()) for s in sizes]
        if len(set(sizes)) != 1:
            raise ValueError(
                f"ContrastivePoseLoss(distributed=True) needs the same batch size on every rank, "
                f"got {sizes} (drop the last incomplete batch)"
            )
        # Pair labels must be unique across ranks: offset by rank.
        emb, labels, poses = self._local_batch(anchor_emb, positive_emb, R, label_offset=rank * B)
        # PML's gather puts this rank's rows first, then the others in rank order: the same order
        # the wrapper gives the embeddings, so these indices address its gathered batch.
        all_labels, _, _ = pml_dist.gather(labels, None)
        all_poses, _, _ = pml_dist.gather(poses.reshape(-1, 9), None)
        idx = pose_aware_pair_indices(
            all_labels, all_poses.reshape(-1, 3, 3), self.negative_margin_rad
        )
        scaled = self.wrapper(emb, labels, indices_tuple=idx)  # = world * global loss
        # Value: the global loss; gradient: that of `scaled` (see the class docstring).
        return scaled - scaled.detach() * (1.0 - 1.0 / world)

    def per_anchor_losses(
        self, anchor_emb: torch.Tensor, positive_emb: torch.Tensor, R: torch.Tensor
    ) -> torch.Tensor:
        """Circle Loss of each of the 2B anchors (anchors first, then positives), (2B,).

        Local batch only (no gathering). An anchor with no positive or no negative left after
        masking gets 0 and is left out of the mean that :meth:`forward` returns.
        """
        emb, labels, poses = self._local_batch(anchor_emb, positive_emb, R)
        idx = pose_aware_pair_indices(labels, poses, self.negative_margin_rad)
        out = self._per_anchor(emb, labels, indices_tuple=idx)
        losses = out["loss"]["losses"]
        if not isinstance(losses, torch.Tensor):  # PML's zero_loss when no pair exists at all
            return emb.new_zeros(emb.shape[0])
        return losses.reshape(-1)


_LOSS_FIELDS = ("m", "gamma", "negative_margin_deg", "distributed")


def create_contrastive_loss(cfg: Any = None, **kwargs) -> ContrastivePoseLoss:
    """A :class:`ContrastivePoseLoss` from a config and/or keywords (keywords win).

    ``cfg`` is None, a mapping, or any object with some of the attributes ``m``, ``gamma``,
    ``negative_margin_deg``, ``distributed`` (e.g. ``clerf_ray.config.PretrainSection``; its other
    attributes are ignored). Unknown mapping keys or keywords are errors.
    """
    values: dict[str, Any] = {}
    if isinstance(cfg, Mapping):
        values = dict(cfg)
    elif cfg is not None:
        values = {k: getattr(cfg, k) for k in _LOSS_FIELDS if hasattr(cfg, k)}
    values.update(kwargs)
    unknown = sorted(set(values) - set(_LOSS_FIELDS))
    if unknown:
        raise TypeError(f"unknown ContrastivePoseLoss option(s) {unknown}; known: {_LOSS_FIELDS}")
    return ContrastivePoseLoss(**values)


def geodesic_loss(R_pred: torch.Tensor, R_true: torch.Tensor) -> torch.Tensor:
    """Mean geodesic distance in radians between predicted and true rotations.

    Args:
        R_pred, R_true: (..., 3, 3) rotation matrices (same convention).

    Uses ``geometry.geodesic_distance`` (atan2 form), whose gradient stays finite at 0 and pi.
    """
    if R_pred.shape != R_true.shape or R_pred.shape[-2:] != (3, 3):
        raise ValueError(
            f"R_pred and R_true must both be (..., 3, 3), got {tuple(R_pred.shape)} and "
            f"{tuple(R_true.shape)}"
        )
    return geometry.geodesic_distance(R_pred, R_true).mean()
