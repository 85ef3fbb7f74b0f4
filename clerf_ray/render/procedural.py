"""Procedural CPU head renderer: the project's embedded default backend (no downloads, no assets).

A head is a union of ten ellipsoids (cranium, lower face, nose, two ears, neck, two eyeballs, hair
volume, long hair) whose sizes, colours and styles come from the identity seed. Rays are cast
orthographically, batched in torch; the colour of a hit is a function of the hit point in the
head's own frame (eyes, brows, lips, beard, hairline, parting and glasses are decals), shaded by one
directional light: ambient plus Lambert diffuse, plus a Blinn-Phong specular highlight (stronger on
eyes and lenses, a little on hair), all times a light tint. With ``lighting="random"`` the light's
direction, strengths and tint are drawn per sample from identity and pose (or from
``background_seeds``); with ``"frontal"`` the light is fixed along the view axis. Pixels are
supersampled (``supersample`` x ``supersample`` rays each) for anti-aliasing, and composited over
a procedural background (gradient, soft blobs, stripes, rectangles) seeded by identity and pose.

Frames (see ``clerf_ray.geometry``): the head model is given in the camera frame of a frontal,
upright head, x to the image's right, y down, nose toward -z. A model point ``p`` lands at
``to_camera(R) @ p`` and is projected orthographically: pixel ``x = W/2 + X * W / (2 * extent)``,
``y = H/2 + Y * H / (2 * extent)``, in continuous pixel coordinates where pixel ``(row i, col j)``
covers ``[j, j + 1) x [i, i + 1)`` (its centre is ``(j + 0.5, i + 0.5)``). The head frame's origin
(the centre of the head) is therefore always at the image centre, which makes in-plane rotation
of the label exactly an image rotation about the centre.

Landmark names use the subject's own left and right: ``eye_left`` is the subject's left eye, which
a frontal, upright head shows on the image's right.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from clerf_ray import geometry
from clerf_ray.render import _hashing
from clerf_ray.render.base import PoseRange, Renderer, register_renderer

# Primitive indices.
CRANIUM, FACE, NOSE, EAR_L, EAR_R, NECK, EYE_L, EYE_R, HAIR_VOL, HAIR_LONG = range(10)
N_PRIM = 10

# Material indices into each identity's palette.
(
    M_SKIN,
    M_HAIR,
    M_LIP,
    M_MOUTH,
    M_BROW,
    M_SCLERA,
    M_IRIS,
    M_PUPIL,
    M_FRAME,
    M_BEARD,
    M_SHIRT,
    M_NOSTRIL,
    M_EAR_IN,
    M_SCALP,
    M_STUBBLE,
    M_LASH,
) = range(16)
N_MAT = 16

# Hair styles.
SHORT, MEDIUM, LONG, BALD, BUZZ, BANGS = range(6)

# Half-width of the visible square in head units: the head (about 1.05 units from crown to chin)
# fills about two thirds of the frame, like a loose face crop.
EXTENT = 0.76

LANDMARK_NAMES = ("nose_tip", "eye_left", "eye_right", "mouth", "chin", "ear_left", "ear_right")

_SKIN_TONES = np.array(
    [
        [0.98, 0.86, 0.76],
        [0.95, 0.77, 0.66],
        [0.88, 0.67, 0.53],
        [0.76, 0.53, 0.38],
        [0.55, 0.35, 0.22],
        [0.36, 0.23, 0.15],
    ]
)
_HAIR_COLOURS = np.array(
    [
        [0.08, 0.06, 0.05],  # black
        [0.22, 0.14, 0.09],  # dark brown
        [0.40, 0.26, 0.15],  # brown
        [0.52, 0.24, 0.10],  # auburn
        [0.80, 0.64, 0.38],  # blond
        [0.58, 0.57, 0.55],  # grey
        [0.86, 0.85, 0.82],  # white
        [0.20, 0.30, 0.70],  # dyed blue
        [0.75, 0.30, 0.55],  # dyed pink
    ]
)
_HAIR_WEIGHTS = np.array([0.24, 0.22, 0.16, 0.07, 0.12, 0.08, 0.04, 0.035, 0.035])
_EYE_COLOURS = np.array(
    [
        [0.25, 0.15, 0.08],  # brown
        [0.12, 0.08, 0.05],  # dark brown
        [0.30, 0.50, 0.75],  # blue
        [0.30, 0.50, 0.30],  # green
        [0.45, 0.35, 0.18],  # hazel
        [0.50, 0.55, 0.60],  # grey
    ]
)


def _pick(u: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Categorical draw from uniforms u (N,) with the given weights: indices (N,)."""
    cdf = np.cumsum(weights) / np.sum(weights)
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(weights) - 1)


def _lerp(a, b, t):
    return a + (b - a) * t


def _support_point(c: np.ndarray, Q: np.ndarray, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Point of the ellipsoid ``{c + Q diag(a) w : |w| = 1}`` farthest along direction ``g``.

    Shapes: c (N, 3), Q (N, 3, 3), a (N, 3), g (3,) or (N, 3); returns (N, 3).
    """
    m = a * np.einsum("nji,nj->ni", Q, np.broadcast_to(g, c.shape))
    w = m / np.linalg.norm(m, axis=-1, keepdims=True)
    return c + np.einsum("nij,nj->ni", Q, a * w)


class _Heads:
    """Per-identity head parameters, all numpy arrays with leading dimension N.

    Attributes:
        centre: (N, 10, 3) ellipsoid centres in the head frame.
        S: (N, 10, 3, 3) maps a head-frame offset from the centre to the unit sphere:
            ``q = S (p - centre)``; ``S = diag(1/a) Q^T`` for semi-axes ``a`` and orientation ``Q``.
        Q, axes: (N, 10, 3, 3) and (N, 10, 3).
        palette: (N, 16, 3) material colours in [0, 1].
        f: (N, F) float scalars read by the shader (see ``_FEATURES``).
    """

    def __init__(self, identities: np.ndarray):
        n = len(identities)
        u = _hashing.uniforms(_hashing.seeds_from_ints(identities, salt=0x1D), 48)
        self.n = n

        def rng(j, lo, hi):
            return lo + (hi - lo) * u[:, j]

        wc, hc, dc = rng(0, 0.92, 1.08), rng(1, 0.95, 1.05), rng(2, 0.95, 1.05)
        wj, fl = rng(3, 0.85, 1.08), rng(4, 0.92, 1.08)
        nw, nl, npj = rng(5, 0.8, 1.3), rng(6, 0.85, 1.2), rng(7, 0.8, 1.3)
        es, esp, ez = rng(8, 0.85, 1.2), rng(9, 0.94, 1.06), rng(10, 0.9, 1.1)
        nk = rng(11, 0.85, 1.15)
        style = _pick(u[:, 12], np.array([0.28, 0.18, 0.22, 0.12, 0.10, 0.10]))
        hv = rng(13, 1.0, 1.07)
        ll = rng(14, 0.8, 1.2)

        centre = np.zeros((n, N_PRIM, 3))
        axes = np.ones((n, N_PRIM, 3))
        rx = np.zeros((n, N_PRIM))
        ry = np.zeros((n, N_PRIM))

        def put(k, c, a, tx=0.0, ty=0.0):
            centre[:, k] = np.stack(np.broadcast_arrays(*c), -1)
            axes[:, k] = np.stack(np.broadcast_arrays(*a), -1)
            rx[:, k], ry[:, k] = tx, ty

        zeros = np.zeros(n)
        put(CRANIUM, (zeros, -0.10 * hc, 0.06), (0.37 * wc, 0.43 * hc, 0.47 * dc))
        put(FACE, (zeros, 0.10, -0.05), (0.30 * wj, 0.40 * fl, 0.35), tx=-0.20)
        put(NOSE, (zeros, 0.05 + 0.02 * nl, -0.38), (0.05 * nw, 0.12 * nl, 0.11 * npj), tx=-0.45)
        ear_c = (0.355 * wc, 0.0 * zeros, 0.07)
        put(EAR_L, ear_c, (0.035, 0.11 * es, 0.07 * es), ty=0.45)
        put(EAR_R, (-ear_c[0], ear_c[1], ear_c[2]), (0.035, 0.11 * es, 0.07 * es), ty=-0.45)
        put(NECK, (zeros, 0.62, 0.12), (0.19 * nk, 0.50, 0.20 * nk), tx=0.1)
        # Hair volume sits a little above and behind the cranium so that it shows on top and at the
        # back but stays behind the forehead.
        put(
            HAIR_VOL,
            (zeros, -0.10 * hc - 0.05, 0.10),
            (0.385 * wc * hv, 0.43 * hc * hv, 0.47 * dc * hv),
        )
        put(HAIR_LONG, (zeros, 0.20, 0.20), (0.37 * wc, 0.50 * ll, 0.26))
        Q = geometry.rot_y(ry) @ geometry.rot_x(rx)

        # Eyeballs: spheres that bulge 0.02 units out of the surface in front of them.
        eye_x, eye_y, eye_r = 0.125 * esp, -0.04 + zeros, 0.05 * ez
        zf = np.minimum(
            self._front_z(centre[:, CRANIUM], Q[:, CRANIUM], axes[:, CRANIUM], eye_x, eye_y),
            self._front_z(centre[:, FACE], Q[:, FACE], axes[:, FACE], eye_x, eye_y),
        )
        eye_z = zf + eye_r - 0.02
        put(EYE_L, (eye_x, eye_y, eye_z), (eye_r, eye_r, eye_r))
        put(EYE_R, (-eye_x, eye_y, eye_z), (eye_r, eye_r, eye_r))
        Q[:, EYE_L] = Q[:, EYE_R] = np.eye(3)

        # A primitive a style does not use shrinks inside the cranium, where no ray sees it.
        no_vol = np.isin(style, (BALD, BUZZ))
        no_long = style != LONG
        for k, off in ((HAIR_VOL, no_vol), (HAIR_LONG, no_long)):
            centre[off, k] = centre[off, CRANIUM]
            axes[off, k] = 0.05

        self.centre, self.axes, self.Q = centre, axes, Q
        self.S = (1.0 / axes)[..., :, None] * np.swapaxes(Q, -1, -2)

        # Colours.
        tone = rng(15, 0.0, 1.0) * (len(_SKIN_TONES) - 1)
        i0 = np.floor(tone).astype(int).clip(0, len(_SKIN_TONES) - 2)
        skin = _lerp(_SKIN_TONES[i0], _SKIN_TONES[i0 + 1], (tone - i0)[:, None])
        skin = skin * (1.0 + 0.06 * (u[:, 16:19] - 0.5))
        hair_kind = _pick(u[:, 19], _HAIR_WEIGHTS)
        hair = _HAIR_COLOURS[hair_kind] * rng(20, 0.85, 1.15)[:, None]
        # Brows and beards keep a natural colour under dyed hair.
        body_hair = np.where((hair_kind >= 7)[:, None], _HAIR_COLOURS[1], hair)
        eye = _EYE_COLOURS[_pick(u[:, 21], np.ones(len(_EYE_COLOURS)))]
        lip = skin * np.array([0.78, 0.50, 0.50]) * rng(22, 0.9, 1.1)[:, None]
        shirt = 0.1 + 0.8 * u[:, 23:26]
        frame = np.where(u[:, 26:27] < 0.5, 0.08, 0.1 + 0.6 * u[:, 27:30])
        pal = np.zeros((n, N_MAT, 3))
        pal[:, M_SKIN] = skin
        buzz = (style == BUZZ)[:, None]
        pal[:, M_HAIR] = np.where(buzz, 0.55 * hair + 0.45 * skin, hair)
        pal[:, M_LIP] = lip
        pal[:, M_MOUTH] = skin * 0.3
        pal[:, M_BROW] = 0.7 * body_hair + 0.3 * skin * 0.5
        pal[:, M_SCLERA] = np.array([0.93, 0.91, 0.88])
        pal[:, M_IRIS] = eye
        pal[:, M_PUPIL] = 0.03
        pal[:, M_FRAME] = frame
        pal[:, M_BEARD] = body_hair * 0.9
        pal[:, M_SHIRT] = shirt
        pal[:, M_NOSTRIL] = skin * 0.35
        pal[:, M_EAR_IN] = skin * np.array([0.80, 0.68, 0.66])
        pal[:, M_SCALP] = 0.5 * skin + 0.5 * hair
        pal[:, M_STUBBLE] = 0.6 * skin + 0.4 * body_hair
        pal[:, M_LASH] = 0.06
        self.palette = pal.clip(0.0, 1.0)

        facial_hair = _pick(u[:, 30], np.array([0.58, 0.12, 0.10, 0.08, 0.12]))  # none, stubble,
        # moustache, goatee, full beard
        glasses = _pick(u[:, 31], np.array([0.64, 0.14, 0.12, 0.10]))  # none, thin, thick, sun
        parting = _pick(u[:, 32], np.array([0.3, 0.3, 0.25, 0.15]))  # none, left, right, centre
        part_x = np.select([parting == 1, parting == 2, parting == 3], [0.12, -0.12, 0.0], 9.0)
        part_x = part_x + rng(33, -0.03, 0.03)
        part_x = np.where(np.isin(style, (BALD, BUZZ)), 9.0, part_x)
        front_h = np.select([style == BANGS, style == BALD], [-0.15, -0.20], -0.30) + rng(
            34, -0.03, 0.03
        )
        back_h = rng(35, 0.18, 0.26)
        lens_tint = np.where(
            (glasses == 3)[:, None], 0.15 + 0.2 * u[:, 36:39], 0.92 + 0.08 * u[:, 36:39]
        )
        frame_w = np.select([glasses == 1, glasses == 2, glasses == 3], [0.008, 0.016, 0.014], 0.0)
        beard = facial_hair >= 2
        self.f = {
            "style": style.astype(np.float64),
            "front_h": front_h,
            "back_h": back_h,
            "part_x": part_x,
            "eye_x": eye_x,
            "eye_y": eye_y,
            "brow_t": rng(40, 0.010, 0.020),
            "brow_y": -0.125 + rng(41, -0.01, 0.01),
            "mouth_y": 0.255 * fl,
            "mouth_w": rng(42, 0.075, 0.10),
            "stubble": (facial_hair == 1).astype(np.float64),
            "moustache": (beard & (facial_hair != 3)).astype(np.float64),
            "goatee": beard.astype(np.float64),
            "full_beard": (facial_hair == 4).astype(np.float64),
            "frame_w": frame_w,
            "lens_r": rng(43, 0.075, 0.095),
            "lens_tr": lens_tint[:, 0],
            "lens_tg": lens_tint[:, 1],
            "lens_tb": lens_tint[:, 2],
            "collar": rng(44, 0.68, 0.76),
            "iris": np.cos(rng(45, 0.55, 0.68)),
            "hair_freq": rng(46, 30.0, 60.0),
            "ear_x": ear_c[0],
        }

    @staticmethod
    def _front_z(c, Q, a, x, y):
        """z of the front (smallest z) intersection of the line through (x, y) along z, (N,)."""
        S = (1.0 / a)[:, :, None] * np.swapaxes(Q, -1, -2)
        o = np.stack([x, y, np.zeros_like(x)], -1) - c
        qo = np.einsum("nij,nj->ni", S, o)
        qd = S[:, :, 2]
        A = (qd * qd).sum(-1)
        B = (qo * qd).sum(-1)
        Cc = (qo * qo).sum(-1) - 1.0
        disc = np.maximum(B * B - A * Cc, 0.0)
        return (-B - np.sqrt(disc)) / A

    def landmarks_3d(self) -> dict[str, np.ndarray]:
        """Named landmarks in the head frame, each (N, 3)."""
        c, Q, a = self.centre, self.Q, self.axes
        chin_dir = np.array([0.0, math.cos(0.6), -math.sin(0.6)])
        mouth = np.stack([np.zeros(self.n), self.f["mouth_y"], np.zeros(self.n)], -1)
        mouth[:, 2] = np.minimum(
            self._front_z(c[:, FACE], Q[:, FACE], a[:, FACE], mouth[:, 0], mouth[:, 1]),
            self._front_z(c[:, CRANIUM], Q[:, CRANIUM], a[:, CRANIUM], mouth[:, 0], mouth[:, 1]),
        )
        return {
            "nose_tip": _support_point(c[:, NOSE], Q[:, NOSE], a[:, NOSE], np.array([0, 0, -1.0])),
            "eye_left": c[:, EYE_L] - np.array([0, 0, 1.0]) * a[:, EYE_L, 2:3],
            "eye_right": c[:, EYE_R] - np.array([0, 0, 1.0]) * a[:, EYE_R, 2:3],
            "mouth": mouth,
            "chin": _support_point(c[:, FACE], Q[:, FACE], a[:, FACE], chin_dir),
            "ear_left": _support_point(
                c[:, EAR_L], Q[:, EAR_L], a[:, EAR_L], np.array([1.0, 0, 0])
            ),
            "ear_right": _support_point(
                c[:, EAR_R], Q[:, EAR_R], a[:, EAR_R], np.array([-1.0, 0, 0])
            ),
        }


_FEATURES = (
    "style",
    "front_h",
    "back_h",
    "part_x",
    "eye_x",
    "eye_y",
    "brow_t",
    "brow_y",
    "mouth_y",
    "mouth_w",
    "stubble",
    "moustache",
    "goatee",
    "full_beard",
    "frame_w",
    "lens_r",
    "lens_tr",
    "lens_tg",
    "lens_tb",
    "collar",
    "iris",
    "hair_freq",
    "ear_x",
)
_FI = {name: i for i, name in enumerate(_FEATURES)}


def _quadric_coefficients(S, centre, R_cam):
    """Per-sample, per-primitive coefficients of the ray-ellipsoid quadratic.

    A camera ray through image-plane point (u, v) (head units, x right, y down) is, in the head
    frame, ``p(t) = u ex + v ey + t d`` where ex, ey, d are the rows of ``R_cam``. With
    ``q = S (p - c) = u A + v B + t D + E``, ``|q|^2 = 1`` reads ``a t^2 + 2 h t + c0 = 0``;
    ``h`` is linear and the discriminant ``h^2 - a c0`` quadratic in (u, v).

    Args:
        S: (N, K, 3, 3), centre: (N, K, 3), R_cam: (N, 3, 3); torch float32.

    Returns:
        ``disc`` (N, K, 6): the discriminant's coefficients of ``(u^2, v^2, uv, u, v, 1)``;
        ``h`` (N, K, 3): h's coefficients of ``(u, v, 1)``; ``a`` (N, K).
    """
    ex, ey, d = R_cam[:, None, 0, :], R_cam[:, None, 1, :], R_cam[:, None, 2, :]
    A = (S @ ex.unsqueeze(-1)).squeeze(-1)
    B = (S @ ey.unsqueeze(-1)).squeeze(-1)
    D = (S @ d.unsqueeze(-1)).squeeze(-1)
    E = -(S @ centre.unsqueeze(-1)).squeeze(-1)

    def dot(x, y):
        return (x * y).sum(-1)

    a = dot(D, D)
    da, db, de = dot(D, A), dot(D, B), dot(D, E)
    disc = torch.stack(
        [
            da * da - a * dot(A, A),
            db * db - a * dot(B, B),
            2 * (da * db - a * dot(A, B)),
            2 * (da * de - a * dot(A, E)),
            2 * (db * de - a * dot(B, E)),
            de * de - a * (dot(E, E) - 1.0),
        ],
        -1,
    )
    return disc, torch.stack([da, db, de], -1), a


def _depth(disc, h, a, u, v):
    """Depth of the front intersection of rays (u, v) with one ellipsoid; > 1e4 where missed.

    Elementwise only (no reductions), so a ray's result never depends on the batch around it.

    Args:
        disc (N, 6), h (N, 3), a (N,): coefficients of one primitive per sample.
        u: (N, 1, W) or (N, P); v: (N, H, 1) or (N, P): image-plane coordinates in head units.
    """
    shape = [-1] + [1] * (u.dim() - 1)
    c = [disc[:, i].reshape(shape) for i in range(6)]
    hc = [h[:, i].reshape(shape) for i in range(3)]
    d = (c[0] * u + c[3]) * u + ((c[1] * v + c[4]) * v + c[5]) + (c[2] * v) * u
    hh = hc[0] * u + (hc[1] * v + hc[2])
    # Misses (d < 0) get a depth beyond any hit, by arithmetic only: sqrt of zero or negative
    # numbers and masked selects are far slower on the CPU than these elementwise ops.
    root = torch.sqrt(d.clamp_min(1e-30))
    return (hh + root) * (-1.0 / a).reshape(shape) + (-d).clamp_min(0.0) * 1e30


# Primitives whose window would cover more than this fraction of the image are traced densely.
_DENSE_FRACTION = 0.5

# Depth threshold beyond which a ray counts as a miss (the head lies within |t| < 2).
_MISS = 1e4


def _first_hit(disc, h, a, u, v):
    """Nearest intersection over all primitives for per-sample rays u, v (N, P).

    Returns ``t`` (N, P) (>= ``_MISS`` where nothing is hit) and the primitive index ``k`` (N, P).
    """
    t = torch.full(u.shape, _MISS)
    k = torch.zeros(u.shape, dtype=torch.long)
    for j in range(disc.shape[1]):
        tj = _depth(disc[:, j], h[:, j], a[:, j], u, v)
        k.masked_fill_(tj < t, j)
        t = torch.minimum(tj, t)
    return t, k


def _gather_columns(table: np.ndarray, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (M,) of a (items, channels) table, laid out (channels, M) float32.

    ``torch.gather`` on the transposed table is several times faster than advanced indexing or
    ``index_select`` followed by a transpose, and leaves each channel contiguous.
    """
    t = torch.as_tensor(np.ascontiguousarray(table.T), dtype=torch.float32)
    return torch.gather(t, 1, index.expand(t.shape[0], -1))


def _smooth_rect(px, py, cx, cy, hx, hy, ang, px_size):
    """Coverage in [0, 1] of an oriented rectangle, anti-aliased over one pixel."""
    c, s = torch.cos(ang), torch.sin(ang)
    lx = (px - cx) * c + (py - cy) * s
    ly = -(px - cx) * s + (py - cy) * c
    kx = ((hx - lx.abs()) / px_size + 0.5).clamp(0, 1)
    ky = ((hy - ly.abs()) / px_size + 0.5).clamp(0, 1)
    return kx * ky


@register_renderer("procedural")
class ProceduralRenderer(Renderer):
    """Procedural head renderer on the CPU (see the module docstring for the model and frames).

    Args:
        image_size: side of the output images in pixels (>= 8).
        supersample: rays per pixel along each axis (anti-aliasing), >= 1.
        lighting: ``"random"`` (direction, strength and tint drawn per sample from identity and
            pose) or ``"frontal"`` (a fixed light along the view axis: shading then does not change
            under in-plane rotation or mirroring, which the consistency tests need).
        background: ``"random"`` (procedural clutter seeded by identity and pose, or by
            ``background_seeds``) or ``"grey"`` (uniform mid grey, for figures).
        max_elements: work-chunk budget (samples x primitives x rays); bounds memory.
    """

    pose_range = PoseRange()

    def __init__(
        self,
        image_size: int = 64,
        supersample: int = 2,
        lighting: str = "random",
        background: str = "random",
        max_elements: int = 1 << 22,
    ):
        if int(image_size) != image_size or image_size < 8:
            raise ValueError(
                f"procedural renderer: image_size must be an integer >= 8, got {image_size!r}"
            )
        if int(supersample) != supersample or supersample < 1:
            raise ValueError(
                f"procedural renderer: supersample must be an integer >= 1, got {supersample!r}"
            )
        if lighting not in ("random", "frontal"):
            raise ValueError(
                f"procedural renderer: lighting must be 'random' or 'frontal', got {lighting!r}"
            )
        if background not in ("random", "grey"):
            raise ValueError(
                f"procedural renderer: background must be 'random' or 'grey', got {background!r}"
            )
        self.image_size = int(image_size)
        self.supersample = int(supersample)
        self.lighting = lighting
        self.background = background
        self.max_elements = int(max_elements)
        n, ss = self.image_size, self.supersample
        # Subsample centres in head units (x right, y down), row-major over (row, sub-row, col,
        # sub-col) so that averaging over sub-rows and sub-columns is a reshape.
        sub = (torch.arange(n * ss, dtype=torch.float32) + 0.5) / ss
        coord = (sub - n / 2) * (2 * EXTENT / n)
        self._coord, self._side = coord, n * ss
        vv, uu = torch.meshgrid(coord, coord, indexing="ij")
        self._u, self._v = uu.reshape(-1), vv.reshape(-1)
        pix = ((torch.arange(n, dtype=torch.float32) + 0.5) - n / 2) / (n / 2)
        self._py, self._px = torch.meshgrid(pix, pix, indexing="ij")

    # ------------------------------------------------------------------ public API

    def render(
        self,
        identities,
        R,
        *,
        background_seeds=None,
        return_mask: bool = False,
    ):
        """Render identity ``identities[i]`` at label ``R[i]``.

        Args:
            identities: (N,) integer identity seeds.
            R: (N, 3, 3) labels in the dataset convention.
            background_seeds: optional (N,) integers seeding background and light; by default
                they derive from identity and pose.
            return_mask: also return the head's coverage.

        Returns:
            (N, H, W, 3) uint8 images; with ``return_mask``, also (N, H, W) float32 coverage of
            the head in [0, 1] (1 inside the head, fractional on anti-aliased edges).
        """
        identities, R = self.check_inputs(identities, R)
        n_img = len(identities)
        if background_seeds is None:
            bg_seeds = _hashing.combine(
                _hashing.seeds_from_ints(identities, salt=0xB6), _hashing.pose_hash(R)
            )
        else:
            bs = np.asarray(background_seeds)
            if bs.shape != (n_img,) or not np.issubdtype(bs.dtype, np.integer):
                raise ValueError(
                    f"background_seeds must be (N,) = ({n_img},) integers, got {bs.shape} {bs.dtype}"
                )
            bg_seeds = _hashing.seeds_from_ints(bs, salt=0xB7)
        size = self.image_size
        images = np.empty((n_img, size, size, 3), dtype=np.uint8)
        masks = np.empty((n_img, size, size), dtype=np.float32)
        chunk = max(1, self.max_elements // (N_PRIM * self._u.numel()))
        with torch.no_grad():
            for s in range(0, n_img, chunk):
                sl = slice(s, s + chunk)
                img, cov = self._render_chunk(identities[sl], R[sl], bg_seeds[sl])
                images[sl] = img
                masks[sl] = cov
        return (images, masks) if return_mask else images

    def landmarks(self, identities, R, return_visibility: bool = False):
        """Pixel positions of named 3D landmarks, projected as :meth:`render` projects the head.

        Args:
            identities: (N,) integer identity seeds; R: (N, 3, 3) labels.
            return_visibility: also return, per landmark, whether it faces the camera and is the
                first surface on its camera ray.

        Returns:
            ``{name: (N, 2) float64}`` with (x right, y down) in continuous pixel coordinates
            (pixel (i, j) spans [j, j+1) x [i, i+1)); names in ``LANDMARK_NAMES``, left/right as
            the subject's own. With ``return_visibility``, ``(points, {name: (N,) bool})``.
        """
        identities, R = self.check_inputs(identities, R)
        heads = _Heads(identities)
        R_cam = geometry.to_camera(R)
        pts3 = heads.landmarks_3d()
        scale = self.image_size / (2 * EXTENT)
        out, cam = {}, {}
        for name in LANDMARK_NAMES:
            pc = np.einsum("nij,nj->ni", R_cam, pts3[name])
            cam[name] = pc
            out[name] = self.image_size / 2 + pc[:, :2] * scale
        if not return_visibility:
            return out
        disc, h, a = _quadric_coefficients(
            torch.as_tensor(heads.S, dtype=torch.float32),
            torch.as_tensor(heads.centre, dtype=torch.float32),
            torch.as_tensor(R_cam, dtype=torch.float32),
        )
        uv = torch.as_tensor(
            np.stack([cam[k][:, :2] for k in LANDMARK_NAMES], 1), dtype=torch.float32
        )
        t, _ = _first_hit(disc, h, a, uv[..., 0], uv[..., 1])
        depth = np.stack([cam[k][:, 2] for k in LANDMARK_NAMES], 1)
        vis = depth <= t.double().numpy() + 0.02
        return out, {k: vis[:, i] for i, k in enumerate(LANDMARK_NAMES)}

    # ------------------------------------------------------------------ internals

    def _render_chunk(self, identities, R, bg_seeds):
        n = len(identities)
        size, ss = self.image_size, self.supersample
        heads = _Heads(identities)
        R_cam_np = geometry.to_camera(R)
        R_cam = torch.as_tensor(R_cam_np, dtype=torch.float32)
        S = torch.as_tensor(heads.S, dtype=torch.float32)
        centre = torch.as_tensor(heads.centre, dtype=torch.float32)
        t, prim = self._trace(S, centre, R_cam, heads.axes)
        hit = t < _MISS
        b, p = hit.nonzero(as_tuple=True)
        colour = self._shade(heads, R_cam, b, p, t[b, p], prim[b, p], bg_seeds)
        n_rays = self._u.numel()
        fg = torch.zeros(n * n_rays, 3)
        fg.index_put_((b * n_rays + p,), colour)
        side = size * ss
        # Box filter over each pixel's subsamples (avg_pool2d is far faster than a strided mean).
        fg = torch.nn.functional.avg_pool2d(fg.reshape(n, side, side, 3).permute(0, 3, 1, 2), ss)
        fg = fg.permute(0, 2, 3, 1)
        cov = torch.nn.functional.avg_pool2d(hit.float().reshape(n, 1, side, side), ss)[:, 0]
        bg = self._background(bg_seeds)
        img = fg + (1.0 - cov[..., None]) * bg
        img = (img.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)
        return img.numpy(), cov.numpy()

    def _trace(self, S, centre, R_cam, axes):
        """Nearest hit of every subsample ray: ``t`` (N, P) (>= _MISS: background), primitive.

        Each small primitive is intersected only with the rays in a square window around its
        projection (an ellipsoid projects inside the circle of its largest semi-axis), which
        skips most ray-primitive pairs; large ones are intersected with every ray. Window sizes
        depend on the batch, but a ray's depth is computed elementwise from its own
        coordinates, so results do not.
        """
        n, side = len(S), self._side
        disc, h, a = _quadric_coefficients(S, centre, R_cam)
        scale = side / (2 * EXTENT)  # subsamples per head unit
        centre_cam = (R_cam @ centre.transpose(1, 2)).transpose(1, 2)  # (N, K, 3)
        t_best = torch.full((n, side * side), _MISS)
        k_best = torch.zeros((n, side * side), dtype=torch.long)
        radius = axes.max(-1).max(0)  # (K,) largest semi-axis over the batch
        u_full = self._u.view(1, side, side)[:, :1, :]  # (1, 1, side): u varies along columns
        v_full = self._v.view(1, side, side)[:, :, :1]
        for k in range(N_PRIM):
            w = min(side, int(math.ceil(2 * radius[k] * scale)) + 2)
            if w * w > _DENSE_FRACTION * side * side:
                # A window nearly as large as the image: gathering and scattering would cost
                # more than intersecting every ray.
                tk = _depth(disc[:, k], h[:, k], a[:, k], u_full, v_full).reshape(n, -1)
                k_best.masked_fill_(tk < t_best, k)
                t_best = torch.minimum(tk, t_best)
                continue
            # Index coordinate of the projected centre (subsample j has coordinate j + 0.5).
            ctr = centre_cam[:, k, :2] * scale + side / 2 - 0.5
            start = torch.floor(ctr - (w - 1) / 2).long().clamp(0, side - w)  # (N, 2): x, y
            offs = torch.arange(w)
            cols = start[:, 0:1] + offs  # (N, w)
            rows = start[:, 1:2] + offs
            u = self._coord[cols][:, None, :]
            v = self._coord[rows][:, :, None]
            tk = _depth(disc[:, k], h[:, k], a[:, k], u, v).reshape(n, -1)
            idx = (rows[:, :, None] * side + cols[:, None, :]).reshape(n, -1)
            cur = t_best.gather(1, idx)
            k_best.scatter_(1, idx, k_best.gather(1, idx).masked_fill_(tk < cur, k))
            t_best.scatter_(1, idx, torch.minimum(tk, cur))
        return t_best, k_best

    def _lights(self, bg_seeds):
        """Light direction in the camera frame (toward the light), ambient, diffuse, colour tint
        and specular strength, per sample."""
        n = len(bg_seeds)
        if self.lighting == "frontal":
            L = np.tile([0.0, 0.0, -1.0], (n, 1))
            return L, np.full(n, 0.45), np.full(n, 0.62), np.ones((n, 3)), np.full(n, 0.08)
        u = _hashing.uniforms(_hashing.combine(bg_seeds, np.full(n, 7, np.uint64)), 8)
        az = (u[:, 0] - 0.5) * math.radians(140)
        el = -math.radians(25) + u[:, 1] * math.radians(85)
        L = np.stack([np.sin(az) * np.cos(el), -np.sin(el), -np.cos(az) * np.cos(el)], -1)
        amb = 0.30 + 0.22 * u[:, 2]
        dif = 0.55 + 0.30 * u[:, 3]
        tint = 1.0 + 0.16 * (u[:, 4:7] - 0.5)
        spec = 0.03 + 0.12 * u[:, 7]
        return L, amb, dif, tint, spec

    def _shade(self, heads, R_cam, b, p, t, k, bg_seeds):
        """Colours (M, 3) of M hit rays: sample b, ray p, depth t, primitive k (all (M,)).

        Per-sample and per-primitive values are gathered from tables so that each channel comes
        out as a contiguous (M,) vector; 3-vectors are handled as separate components, which is
        much faster than tiny batched matmuls.
        """
        u, v = self._u.index_select(0, p), self._v.index_select(0, p)
        L_cam, amb, dif, light_tint, spec = self._lights(bg_seeds)
        R_np = R_cam.double().numpy()
        L_head = np.einsum("nji,nj->ni", R_np, L_cam)  # R_cam^T L: the light in the head frame
        # Blinn-Phong half vector between the light and the view direction (toward the camera).
        H_cam = L_cam + np.array([0.0, 0.0, -1.0])
        H_cam /= np.linalg.norm(H_cam, axis=-1, keepdims=True).clip(1e-9)
        H_head = np.einsum("nji,nj->ni", R_np, H_cam)
        table = np.concatenate(
            [
                R_np.reshape(-1, 9),
                L_head,
                amb[:, None],
                dif[:, None],
                light_tint,
                np.stack([heads.f[name] for name in _FEATURES], -1),
                H_head,
                spec[:, None],
            ],
            -1,
        )
        g = _gather_columns(table, b)
        # Hit point in the head frame: u ex + v ey + t d, with ex, ey, d the rows of R_cam.
        x = u * g[0] + v * g[3] + t * g[6]
        y = u * g[1] + v * g[4] + t * g[7]
        z = u * g[2] + v * g[5] + t * g[8]
        ptab = np.concatenate([heads.S.reshape(-1, 9), heads.centre.reshape(-1, 3)], -1)
        gp = _gather_columns(ptab, b * N_PRIM + k)
        dx, dy, dz = x - gp[9], y - gp[10], z - gp[11]
        # q: the hit on the unit sphere of its primitive; S^T q is along the surface normal.
        q0 = gp[0] * dx + gp[1] * dy + gp[2] * dz
        q1 = gp[3] * dx + gp[4] * dy + gp[5] * dz
        q2 = gp[6] * dx + gp[7] * dy + gp[8] * dz
        n0 = gp[0] * q0 + gp[3] * q1 + gp[6] * q2
        n1 = gp[1] * q0 + gp[4] * q1 + gp[7] * q2
        n2 = gp[2] * q0 + gp[5] * q1 + gp[8] * q2
        inv_norm = torch.rsqrt(n0 * n0 + n1 * n1 + n2 * n2)
        lambert = (n0 * g[9] + n1 * g[10] + n2 * g[11]) * inv_norm
        shade = g[12] + g[13] * lambert.clamp_min(0.0)
        f0 = 17
        fh = f0 + len(_FEATURES)
        n_dot_h = ((n0 * g[fh] + n1 * g[fh + 1] + n2 * g[fh + 2]) * inv_norm).clamp_min(0.0)
        highlight = (n_dot_h * n_dot_h) ** 16  # (n.h)^32

        def F(name):
            return g[f0 + _FI[name]]

        q = (q0, q1, q2)
        mat = torch.full_like(k, M_SKIN)
        mult = torch.ones_like(u)
        is_skull = (k == CRANIUM) | (k == FACE)
        front = z < -0.2

        # Hairline: height of the hair edge as a function of the azimuth around the head (0 at
        # the face, pi at the back); hair lies above it.
        phi_c = (z - 0.06) / torch.sqrt(x * x + (z - 0.06) ** 2 + 1e-12)
        w_back = (1.0 + phi_c) / 2.0
        y_h = F("front_h") * (1 - w_back) + F("back_h") * w_back
        style = F("style")
        hair_skin = (is_skull | (k == NECK)) & (y < y_h)
        bald = style == BALD
        hair_skin = hair_skin & ~(bald & (y < -0.24 + 0.06 * (1 - w_back)))
        is_hair = hair_skin | (k == HAIR_VOL) | (k == HAIR_LONG)
        mat.masked_fill_(is_hair, M_HAIR)
        part = is_hair & ((x - F("part_x")).abs() < 0.012) & (y < -0.2) & (z < 0.15)
        mat.masked_fill_(part, M_SCALP)
        # Strands fall from the crown: stripes across the azimuth, plus broader locks; |azimuth|
        # keeps the head mirror-symmetric (only the parting is not).
        az = torch.atan2(x, z - 0.06).abs()
        strands = 1.0 + 0.07 * torch.sin(F("hair_freq") * az) + 0.05 * torch.sin(9.0 * az + 6.0 * y)
        mult = torch.where(is_hair, mult * strands, mult)

        face = is_skull & front & ~is_hair
        ax = x.abs()
        # Eye sockets: a soft shadow around each eye.
        dxe = ax - F("eye_x")
        dye = y - F("eye_y")
        mult = torch.where(
            face, mult * (1 - 0.22 * torch.exp(-(dxe * dxe + dye * dye) / 0.005)), mult
        )
        # Brows: arcs above the eyes.
        arch = F("brow_y") - 0.02 * (1 - (dxe / 0.075) ** 2)
        brow = face & (dxe.abs() < 0.075) & ((y - arch).abs() < F("brow_t"))
        mat.masked_fill_(brow, M_BROW)
        # Facial hair.
        my, mw = F("mouth_y"), F("mouth_w")
        beard_top = 0.17 - 0.16 * (x / 0.3) ** 2
        lower = is_skull & (z < 0.06) & ~is_hair
        beard_zone = lower & (y > beard_top)
        mat.masked_fill_(beard_zone & (F("stubble") > 0), M_STUBBLE)
        mat.masked_fill_(beard_zone & (F("full_beard") > 0), M_BEARD)
        goatee = face & (ax < 0.09) & (y > my + 0.025) & (F("goatee") > 0)
        mat.masked_fill_(goatee, M_BEARD)
        moustache = face & (ax < mw + 0.01) & (y > my - 0.055) & (y < my - 0.012)
        mat.masked_fill_(moustache & (F("moustache") > 0), M_BEARD)
        # Mouth.
        lips = face & ((x / mw) ** 2 + ((y - my) / 0.03) ** 2 < 1)
        mat.masked_fill_(lips, M_LIP)
        mat.masked_fill_(lips & ((y - my).abs() < 0.006), M_MOUTH)
        # Nose: nostrils on the underside.
        is_nose = k == NOSE
        nostril = (
            is_nose & (q[1] > 0.5) & (q[0].abs() > 0.15) & (q[0].abs() < 0.75) & (q[2] > -0.55)
        )
        mat.masked_fill_(nostril, M_NOSTRIL)
        # Ears: darker bowl on the outer side.
        is_ear = (k == EAR_L) | (k == EAR_R)
        side = torch.where(k == EAR_L, 1.0, -1.0)
        ear_in = is_ear & (q[0] * side > 0.35) & (q[1].abs() < 0.65) & (q[2].abs() < 0.55)
        mat.masked_fill_(ear_in, M_EAR_IN)
        # Eyeballs: iris and pupil look along -z; lids cover the top and bottom.
        is_eye = (k == EYE_L) | (k == EYE_R)
        mat.masked_fill_(is_eye, M_SCLERA)
        mat.masked_fill_(is_eye & (-q[2] > F("iris")), M_IRIS)
        mat.masked_fill_(is_eye & (-q[2] > 0.97), M_PUPIL)
        mat.masked_fill_(is_eye & (q[1] < -0.28), M_LASH)
        mat.masked_fill_(is_eye & ((q[1] < -0.42) | (q[1] > 0.55)), M_SKIN)
        # Neck: collar of the shirt.
        shirt = (k == NECK) & (
            y > F("collar") - 0.06 * (z < 0.05) * (1 - (x / 0.2) ** 2).clamp_min(0)
        )
        mat.masked_fill_(shirt, M_SHIRT)
        # Glasses: rims around the eyes, a bridge and temple arms back to the ears.
        fw = F("frame_w")
        has = fw > 0
        lens_r = F("lens_r")
        rr = torch.sqrt(dxe * dxe + (dye * 1.25) ** 2)
        on_front = (is_skull | is_nose | is_eye) & (z < -0.22) & has
        lens = on_front & (rr < lens_r - fw)
        rim = on_front & ((rr - lens_r).abs() < fw)
        bridge = on_front & (ax < F("eye_x") - lens_r + fw) & ((y - F("eye_y") + 0.015).abs() < fw)
        temple = is_skull & has & (ax > F("eye_x") + 0.8 * lens_r) & (dye.abs() < 0.8 * fw + 0.003)
        temple = temple & (z > -0.36) & (z < 0.07)
        mat.masked_fill_(rim | bridge | temple, M_FRAME)

        albedo = (
            torch.as_tensor(heads.palette, dtype=torch.float32)
            .reshape(-1, 3)
            .index_select(0, b * N_MAT + mat)
        )
        tint = torch.stack([F("lens_tr"), F("lens_tg"), F("lens_tb")], -1)
        albedo = torch.where((lens & ~rim)[:, None], albedo * tint, albedo)

        # Wet or glossy parts shine more than skin; skin gloss varies with the light.
        gloss = g[fh + 3] * (1.0 + 5.0 * (is_eye | lens).float() + 0.5 * is_hair.float())
        return (albedo * (mult * shade)[:, None] + (gloss * highlight)[:, None]) * g[14:17].T

    def _background(self, bg_seeds) -> torch.Tensor:
        """(N, H, W, 3) float backgrounds: gradient, soft blobs, stripes, rectangles, texture."""
        n = len(bg_seeds)
        size = self.image_size
        if self.background == "grey":
            return torch.full((n, size, size, 3), 0.5)
        u = torch.as_tensor(_hashing.uniforms(bg_seeds, 64), dtype=torch.float32)
        px, py = self._px[None], self._py[None]  # (1, H, W) in [-1, 1]

        def col(j):
            return (0.08 + 0.84 * u[:, j : j + 3])[:, None, None, :]

        ang = u[:, 0] * 2 * math.pi
        g = (px * torch.cos(ang)[:, None, None] + py * torch.sin(ang)[:, None, None]) * 0.35 + 0.5
        bg = col(1) + (col(4) - col(1)) * g[..., None]
        for j in range(3):  # soft blobs: lamps, windows, out-of-focus objects
            o = 7 + 6 * j
            cx, cy = u[:, o] * 2.4 - 1.2, u[:, o + 1] * 2.4 - 1.2
            r = 0.25 + 0.5 * u[:, o + 2]
            d2 = (px - cx[:, None, None]) ** 2 + (py - cy[:, None, None]) ** 2
            w = (0.6 * u[:, o + 3])[:, None, None] * torch.exp(-d2 / (r * r)[:, None, None])
            bg = bg + (col(o + 3) - bg) * w[..., None]
        # Stripes (blinds, wallpaper, shelves) in about half the images.
        sa = u[:, 26] * math.pi
        freq = 4 + 20 * u[:, 27]
        phase = (px * torch.cos(sa)[:, None, None] + py * torch.sin(sa)[:, None, None]) * freq[
            :, None, None
        ]
        stripe = (torch.sin(phase + (u[:, 28] * 6.3)[:, None, None]) * 3).clamp(-1, 1) * 0.5 + 0.5
        amp = torch.where(u[:, 29] < 0.5, 0.5 * u[:, 30], torch.zeros_like(u[:, 30]))[:, None, None]
        bg = bg + (col(31) - bg) * (stripe * amp)[..., None]
        # Rectangles: doors, frames, furniture edges, partly off-frame.
        pxs = 2.0 / size
        for j in range(3):
            o = 34 + 8 * j
            cover = _smooth_rect(
                px,
                py,
                (u[:, o] * 2.6 - 1.3)[:, None, None],
                (u[:, o + 1] * 2.6 - 1.3)[:, None, None],
                (0.05 + 0.6 * u[:, o + 2])[:, None, None],
                (0.05 + 0.6 * u[:, o + 3])[:, None, None],
                (u[:, o + 4] * math.pi)[:, None, None],
                pxs,
            )
            alpha = torch.where(
                u[:, o + 5] < 0.7, 0.4 + 0.6 * u[:, o + 6], torch.zeros_like(u[:, o + 6])
            )
            bg = bg + (col(o + 5) - bg) * (cover * alpha[:, None, None])[..., None]
        # Fine texture so that no region is flat.
        f1, f2 = 10 + 30 * u[:, 58], 10 + 30 * u[:, 59]
        tex = torch.sin(px * f1[:, None, None] + 6.3 * u[:, 60, None, None]) * torch.sin(
            py * f2[:, None, None] + 6.3 * u[:, 61, None, None]
        )
        return bg * (1 + 0.06 * tex)[..., None]
