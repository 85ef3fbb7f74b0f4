"""Images -> rotation: an encoder followed by a pose head, with test-time views."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clerf_ray import geometry
from clerf_ray.models.encoder import Encoder
from clerf_ray.models.head import PoseHead, head_input_dim, head_input_name, read_head_input

VIEWS = (1, 2, 8, 16)
# views=16: the 8 views of the image and the 8 of the image turned by this angle.
EIGHTH_TURN_DEG = 45.0


def _view_ops(views: int) -> list[tuple[int, bool]]:
    """(quarter turns counterclockwise, horizontal mirror first) of each test-time view of one
    image (for views=16, of each of the two images, see :class:`PoseModel`)."""
    turns = (0, 1, 2, 3) if views >= 8 else (0,)
    mirrors = (False, True) if views >= 2 else (False,)
    return [(k, h) for k in turns for h in mirrors]


def rotate_images(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Turn (B, C, H, W) square images about their centre by ``degrees``, counterclockwise as
    displayed (the sense of ``geometry.rotate_label`` and ``clerf_ray.augment.rotate``):
    bilinear, with the corners the turn uncovers filled by reflecting the image at its border,
    so that no constant-coloured corner tells the angle.

    In torch rather than with ``augment.rotate`` (PIL, uint8 HWC): the model's input is already a
    normalised float tensor, and it may sit on a GPU. Written on ``affine_grid``/``grid_sample``
    because torchvision's ``rotate`` fills the corners with a constant. ``grid_sample`` reflects about the border
    itself, where ``augment.rotate`` reflects about the edge pixels' centres, which moves the
    outermost corner pixels a little; the rest agree to a grey level (tests/models).
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotate_images needs square images, got {tuple(images.shape[-2:])}")
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    # affine_grid maps each output pixel's normalised (x right, y down) to where it samples the
    # input: the inverse of the counterclockwise turn, which in y-down coordinates is
    # (x, y) -> (c x + s y, -s x + c y).
    theta = images.new_tensor([[c, -s, 0.0], [s, c, 0.0]]).expand(len(images), 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )


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
        views: test-time views, in eval mode only: 1 (the image), 2 (and its mirror image), 8
            (the four quarter turns of each) or 16 (those 8, and the 8 of the image turned by
            45 deg with :func:`rotate_images`). Every view's prediction is mapped back through
            the exact label transform of its image operation (``geometry.hflip_label``,
            ``geometry.rotate_label``) and the predictions are averaged on SO(3)
            (:func:`mean_rotation`), all views with equal weight. Quarter turns and mirrors move
            pixels without interpolation, and the set of views is closed under them, so with 8
            or 16 views the prediction is equivariant to those operations (up to float
            rounding; the 45 deg turn commutes with them on a square pixel grid).
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
        # Each view keeps the input's memory format: preprocess hands over channels-last
        # tensors, and a view made plainly contiguous ran the encoder 1.5x slower on the CPU.
        fmt = (
            torch.channels_last
            if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )
        bases = [(images, 0.0)]
        if self.views == 16:
            bases.append((rotate_images(images, EIGHTH_TURN_DEG), EIGHTH_TURN_DEG))
        preds = []
        for base, base_deg in bases:
            for turns, mirror in _view_ops(self.views):
                x = torch.flip(base, dims=(-1,)) if mirror else base
                # rot90 from the row axis toward the column axis: counterclockwise as displayed.
                x = torch.rot90(x, turns, dims=(-2, -1)) if turns else x
                R = geometry.rotate_label(
                    self._single(x.contiguous(memory_format=fmt)), -90.0 * turns
                )
                R = geometry.hflip_label(R) if mirror else R
                preds.append(geometry.rotate_label(R, -base_deg) if base_deg else R)
        return mean_rotation(torch.stack(preds))


# --------------------------------------------------------------------------- factories
