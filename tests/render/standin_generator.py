"""A stand-in for EG3D/PanoHead generators, for tests that cannot run the real ones.

The test copies this file into a fake checkout (``training/standin_generator.py``) and pickles an
instance, so the backend finds the class only through the checkout it puts on ``sys.path``.

It follows the real generators' calling convention (``z_dim``, ``c_dim = 25``, ``mapping(z, c,
truncation_psi=, truncation_cutoff=)``, ``synthesis(ws, c, noise_mode=)['image']`` NCHW in
[-1, 1]) and really renders the camera it is given: a head made of four spheres (head, nose,
two eyes) is projected through the cam2world matrix and normalised intrinsics of ``c`` with the
painter's algorithm. World frame as in EG3D: y up, the head at the origin facing +z. The eye at
world +x (the person's left eye) is green, the other blue, the nose red; the head's colour comes
from ``ws``, so it shows the identity and the truncation. Like EG3D's ray sampler it draws from
torch's global random generator during synthesis (a small pixel jitter). Every call is recorded
in ``calls`` so tests can check what the backend passed.
"""

from __future__ import annotations

import math

import torch

# (centre xyz in world units, radius, RGB in [-1, 1] or None for the identity colour)
HEAD_MODEL = (
    ((0.0, 0.0, 0.0), 0.25, None),
    ((0.0, -0.03, 0.28), 0.04, (1.0, -1.0, -1.0)),
    ((0.1, 0.07, 0.22), 0.035, (-1.0, 1.0, -1.0)),
    ((-0.1, 0.07, 0.22), 0.035, (-1.0, -1.0, 1.0)),
)
BACKGROUND = -0.8
JITTER = 0.03


class StandinGenerator(torch.nn.Module):
    """Projects coloured spheres through EG3D-style cameras; records its calls.

    Args:
        z_dim: latent size.
        img_resolution: side of the rendered images in pixels.
        num_ws: number of per-layer latents ``mapping`` returns.
        w_dim: latent width.
    """

    def __init__(self, z_dim: int = 16, img_resolution: int = 96, num_ws: int = 6, w_dim: int = 8):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = 25
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.img_resolution = img_resolution
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(z_dim, w_dim, generator=g) / math.sqrt(z_dim))
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.calls: list[dict] = []

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        self.calls.append(
            {
                "fn": "mapping",
                "z": z.detach().cpu().clone(),
                "c": c.detach().cpu().clone(),
                "truncation_psi": truncation_psi,
                "truncation_cutoff": truncation_cutoff,
            }
        )
        w = torch.tanh(3.0 * z.float() @ self.proj)
        ws = w[:, None, :].repeat(1, self.num_ws, 1)
        cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
        ws[:, :cut] = self.w_avg + truncation_psi * (ws[:, :cut] - self.w_avg)
        return ws

    def synthesis(self, ws, c, noise_mode="random", **kwargs):
        self.calls.append(
            {
                "fn": "synthesis",
                "ws": ws.detach().cpu().clone(),
                "c": c.detach().cpu().clone(),
                "noise_mode": noise_mode,
            }
        )
        n, res, dev = c.shape[0], self.img_resolution, c.device
        cam2world = c[:, :16].reshape(n, 4, 4).float()
        K = c[:, 16:25].reshape(n, 3, 3).float()
        rot, pos = cam2world[:, :3, :3], cam2world[:, :3, 3]
        # Pixel centres in normalised image coordinates (as EG3D's ray sampler: (i + 0.5) / res).
        grid = (torch.arange(res, device=dev, dtype=torch.float32) + 0.5) / res
        v, u = torch.meshgrid(grid, grid, indexing="ij")
        skin = ws[:, 0, :3].float()  # mid tones, far from the pure red/green/blue features
        skin = 0.35 * skin - 0.1

        blobs = []
        for centre, radius, colour in HEAD_MODEL:
            p = torch.tensor(centre, device=dev)
            p_cam = torch.einsum("nji,nj->ni", rot, p - pos)  # world -> camera: R^T (p - t)
            z = p_cam[:, 2]
            cu = K[:, 0, 0] * p_cam[:, 0] / z + K[:, 0, 2]
            cv = K[:, 1, 1] * p_cam[:, 1] / z + K[:, 1, 2]
            r = radius * K[:, 0, 0] / z
            rgb = skin if colour is None else torch.tensor(colour, device=dev).expand(n, 3)
            blobs.append((z, cu, cv, r, rgb))

        img = torch.full((n, 3, res, res), BACKGROUND, device=dev)
        depth = torch.stack([b[0] for b in blobs], 1)  # (n, blobs)
        order = torch.argsort(depth, dim=1, descending=True)  # far first
        for k in range(len(blobs)):
            idx = order[:, k]
            z, cu, cv, r, rgb = (
                torch.stack([b[j] for b in blobs], 1)[torch.arange(n), idx] for j in range(5)
            )
            dist = torch.sqrt((u - cu[:, None, None]) ** 2 + (v - cv[:, None, None]) ** 2)
            # Anti-aliased disc edge one pixel wide; nothing behind the camera.
            alpha = ((r[:, None, None] - dist) * res + 0.5).clamp(0, 1) * (z > 0)[:, None, None]
            img = img * (1 - alpha[:, None]) + rgb[:, :, None, None] * alpha[:, None]
        # EG3D's ray sampler draws from the global generator; so does this stand-in.
        img = img + JITTER * (2 * torch.rand_like(img) - 1)
        return {"image": img.clamp(-1, 1)}

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, **kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, c, **kwargs)
