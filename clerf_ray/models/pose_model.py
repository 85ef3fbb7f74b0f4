"""Images -> rotation: an encoder followed by a pose head, with test-time views."""

from __future__ import annotations

import torch
from torch import nn

from clerf_ray import geometry
from clerf_ray.models.encoder import Encoder
from clerf_ray.models.head import PoseHead, head_input_dim, head_input_name, read_head_input

VIEWS = (1, 2, 8)


def _view_ops(views: int) -> list[tuple[int, bool]]:
    """(quarter turns counterclockwise, horizontal mirror first) of each test-time view."""
    turns = (0, 1, 2, 3) if views == 8 else (0,)
    mirrors = (False, True) if views >= 2 else (False,)
    return [(k, h) for k in turns for h in mirrors]


def mean_rotation(R: torch.Tensor) -> torch.Tensor:
    """Chordal L2 mean of rotations stacked on dim 0, (V, B, 3, 3) -> (B, 3, 3): the rotation
    nearest (Frobenius) to their arithmetic mean, by SVD with the determinant fixed to +1."""
    # float64: when views disagree the mean is ill-conditioned, and float32 rounding would move
    # the result by a fraction of a degree depending on the order of the views.
    M = R.double().mean(0)
    U, _, Vh = torch.linalg.svd(M)
    D = torch.ones_like(M[..., 0])
    D[..., 2] = torch.sign(torch.linalg.det(U @ Vh))
    return (U @ (D.unsqueeze(-1) * Vh)).to(R.dtype)


class PoseModel(nn.Module):
    """Images -> rotation: an encoder followed by a pose head.

    Args:
        encoder: the (pretrained) :class:`Encoder`.
        head: the :class:`PoseHead`.
        freeze_encoder: keep the encoder in eval mode, with ``requires_grad=False`` and run under
            ``torch.no_grad()`` (the CLERF head stage); ``model.train()`` then trains only the
            head, and DDP sees only the head's parameters as trainable.
        views: test-time views, in eval mode only: 1 (the image), 2 (and its mirror image) or 8
            (the four quarter turns of each). Every view's prediction is mapped back through the
            exact label transform of its image operation (``geometry.hflip_label``,
            ``geometry.rotate_label``) and the predictions are averaged on SO(3)
            (:func:`mean_rotation`). Quarter turns and mirrors move pixels without
            interpolation, and the set of views is closed under them, so with 8 views the
            prediction is equivariant to those operations (up to float rounding).
    """

    def __init__(
        self, encoder: Encoder, head: PoseHead, freeze_encoder: bool = True, views: int = 1
    ):
        super().__init__()
        want = head_input_dim(encoder, head.config.input)
        if head.config.in_dim != want:
            what = head_input_name(head.config.input)
            raise ValueError(
                f"head in_dim {head.config.in_dim} != encoder {what} {want} "
                f"(the head reads the encoder's {head.config.input})"
            )
        if views not in VIEWS:
            raise ValueError(f"views must be one of {VIEWS}, got {views!r}")
        self.encoder = encoder
        self.head = head
        self.freeze_encoder = bool(freeze_encoder)
        self.views = int(views)
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def preprocess(self, images) -> torch.Tensor:
        """See :meth:`Encoder.preprocess`."""
        return self.encoder.preprocess(images)

    def head_input(self, images: torch.Tensor) -> torch.Tensor:
        """What the head reads: the encoder's embedding, its pooled features or its feature map
        (``head.config.input``; :func:`clerf_ray.models.head.read_head_input`)."""
        return read_head_input(self.encoder, images, self.head.config.input)

    def _single(self, images: torch.Tensor) -> torch.Tensor:
        if self.freeze_encoder:
            with torch.no_grad():
                z = self.head_input(images)
        else:
            z = self.head_input(images)
        return self.head(z)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, 3, 3) labels."""
        if self.training or self.views == 1:
            return self._single(images)
        preds = []
        for turns, mirror in _view_ops(self.views):
            x = torch.flip(images, dims=(-1,)) if mirror else images
            # rot90 from the row axis toward the column axis: counterclockwise as displayed.
            x = torch.rot90(x, turns, dims=(-2, -1)) if turns else x
            R = geometry.rotate_label(self._single(x.contiguous()), -90.0 * turns)
            preds.append(geometry.hflip_label(R) if mirror else R)
        return mean_rotation(torch.stack(preds))


# --------------------------------------------------------------------------- factories
