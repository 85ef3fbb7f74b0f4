"""Procedural CPU head renderer: the project's embedded default backend (no downloads, no assets).

A head is a union of ten ellipsoids (cranium, lower face, nose, two ears, neck, two eyeballs, hair
volume, long hair) whose sizes, colours and styles come from the identity seed. Rays are cast
orthographically, batched in torch; the colour of a hit is a function of the hit point in the
head's own frame (eyes, brows, lips, beard, hairline, parting and glasses are decals), shaded by one
directional light: ambient plus Lambert diffuse, plus a Blinn-Phong specular highlight (stronger on
eyes and lenses, a little on hair), all times a light tint. With ``lighting="random"`` the light's
direction, strengths and tint are drawn per sample from identity and pose (or from
``background_seeds``); with ``"frontal"`` the light is fixed along the view axis. Pixels are
anti-aliased with a quincunx pattern by default (a ray at each pixel's centre, weighted 1/2, and
one at each corner, weighted 1/8 and shared with the neighbours: about 2 rays per pixel, 1.6
times the speed of the 2x2 grid, ``antialias="grid"``), and composited over a procedural
background (gradient, soft blobs, stripes, rectangles) seeded by identity and pose.

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
        # Primitives a sample's style uses; the others sit inside the cranium (see above).
        self.active = np.ones((n, N_PRIM), dtype=bool)
        self.active[no_vol, HAIR_VOL] = False
        self.active[no_long, HAIR_LONG] = False
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
    # In-place steps where the result is full size: a fresh multi-megabyte tensor costs about
    # twice the arithmetic in page faults. The rounding is that of the plain expression
    # ``(c0 u + c3) u + ((c1 v + c4) v + c5) + (c2 v) u`` (the 90 deg silhouette test needs it).
    d = (c[0] * u + c[3]) * u + ((c[1] * v + c[4]) * v + c[5])
    tmp = (c[2] * v) * u
    d += tmp
    hh = hc[0] * u + (hc[1] * v + hc[2])
    # Misses (d < 0) get a depth beyond any hit, by arithmetic only: sqrt of zero or negative
    # numbers and masked selects are far slower on the CPU than these elementwise ops.
    hh += torch.clamp_min(d, 1e-30, out=tmp).sqrt_()
    hh *= (-1.0 / a).reshape(shape)
    # min(d, 0) * -1e30 equals max(-d, 0) * 1e30 (or is -0.0, which adds nothing).
    return hh.add_(d.clamp_max_(0.0).mul_(-1e30))


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


class _Hit:
    """The hit rays of one primitive group in a chunk: table lookups and lazily computed surface
    quantities, each a contiguous (m,) float32 vector.

    Args:
        tables: from ``ProceduralRenderer._shading_tables``.
        b, bk, k: sample, (sample, primitive) row and primitive of each hit, int64 (m,).
        u, v, t: image-plane coordinates (head units) and depth of each hit.
    """

    def __init__(self, tables, b, bk, k, u, v, t):
        self.tables, self.b, self.bk, self.k = tables, b, bk, k
        self.u, self.v, self.t = u, v, t
        self._xyz = self._d = self._light = None

    def sample(self, names):
        """Per-sample table columns ``names``, one (m,) vector each."""
        index = self.tables["sample_index"]
        rows = self.tables["sample"][[index[name] for name in names]]
        return rows.index_select(1, self.b).unbind(0)

    def prim(self, lo, hi):
        """Per-(sample, primitive) table rows lo:hi (see ``_shading_tables``), (m,) each."""
        return self.tables["prim"][lo:hi].index_select(1, self.bk).unbind(0)

    @property
    def xyz(self):
        """Hit point in the head frame: u ex + v ey + t d, with ex, ey, d the rows of R_cam."""
        if self._xyz is None:
            u, v, t = self.u, self.v, self.t
            r = self.sample([f"r{i}" for i in range(9)])
            self._xyz = tuple(
                torch.addcmul(torch.addcmul(u * r[i], v, r[3 + i]), t, r[6 + i]) for i in range(3)
            )
        return self._xyz

    def _offset(self):
        """Hit point minus its primitive's centre, head frame."""
        if self._d is None:
            x, y, z = self.xyz
            cx, cy, cz = self.prim(6, 9)
            self._d = (x - cx, y - cy, z - cz)
        return self._d

    @property
    def q(self):
        """The hit on the unit sphere of its primitive: S (p - centre)."""
        dx, dy, dz = self._offset()
        s = self.prim(9, 18)
        return (
            s[0] * dx + s[1] * dy + s[2] * dz,
            s[3] * dx + s[4] * dy + s[5] * dz,
            s[6] * dx + s[7] * dy + s[8] * dz,
        )

    def _lighting(self):
        if self._light is None:
            dx, dy, dz = self._offset()
            g00, g01, g02, g11, g12, g22 = self.prim(0, 6)
            n0 = g00 * dx + g01 * dy + g02 * dz
            n1 = g01 * dx + g11 * dy + g12 * dz
            n2 = g02 * dx + g12 * dy + g22 * dz
            inv_norm = torch.rsqrt(n0 * n0 + n1 * n1 + n2 * n2)
            l0, l1, l2, h0, h1, h2, amb = self.sample(("l0", "l1", "l2", "h0", "h1", "h2", "amb"))
            # Ambient plus Lambert diffuse (the light is pre-scaled by the diffuse strength).
            shade = amb + ((n0 * l0 + n1 * l1 + n2 * l2) * inv_norm).clamp_min(0.0)
            n_dot_h = ((n0 * h0 + n1 * h1 + n2 * h2) * inv_norm).clamp_min(0.0)
            self._light = (shade, (n_dot_h * n_dot_h) ** 16)  # Blinn-Phong (n.h)^32
        return self._light

    @property
    def shade(self):
        return self._lighting()[0]

    @property
    def highlight(self):
        return self._lighting()[1]


def _box_filter(x: torch.Tensor, ss: int) -> torch.Tensor:
    """Mean over each ss x ss block of the last two dimensions of a contiguous tensor.

    Sums ss row slices, then ss column slices, of reshaped views: six times faster than
    ``avg_pool2d`` here, which gains nothing from its general kernel at these tiny windows.
    """
    if ss == 1:
        return x
    side = x.shape[-1]
    rows = x.reshape(-1, ss, side)  # (..., size, ss, side): ss consecutive subsample rows
    acc = rows[:, 0] + rows[:, 1]
    for i in range(2, ss):
        acc += rows[:, i]
    cols = acc.view(-1, side // ss, ss)
    out = cols[..., 0] + cols[..., 1]
    for i in range(2, ss):
        out += cols[..., i]
    # A division, not a product with 1/ss^2: full coverage must come out as exactly 1.
    return out.div_(ss * ss).view(*x.shape[:-2], side // ss, side // ss)


@register_renderer("procedural")
class ProceduralRenderer(Renderer):
    """Procedural head renderer on the CPU (see the module docstring for the model and frames).

    Args:
        image_size: side of the output images in pixels (>= 8).
        supersample: with ``antialias="grid"``, rays per pixel along each axis (>= 1; 1 is one
            ray per pixel, no anti-aliasing). Giving it selects the grid; default 2.
        lighting: ``"random"`` (direction, strength and tint drawn per sample from identity and
            pose) or ``"frontal"`` (a fixed light along the view axis: shading then does not change
            under in-plane rotation or mirroring, which the consistency tests need).
        background: ``"random"`` (procedural clutter seeded by identity and pose, or by
            ``background_seeds``) or ``"grey"`` (uniform mid grey, for figures).
        max_elements: work-chunk budget (samples x primitives x rays); bounds memory. The
            default renders a batch of 64 at 64 px in one chunk (about 1.6 M rays, tens of MB):
            each chunk costs about a thousand small tensor operations whose fixed overhead
            dominates smaller chunks.
        antialias: ``"quincunx"`` (the default unless ``supersample`` is given): one ray at each
            pixel's centre and one at each pixel corner, shared by the four pixels that meet
            there, weighted 1/2 and 1/8 x 4 (a 5-tap tent filter over about 2 rays per pixel);
            ``"grid"``: ``supersample`` x ``supersample`` rays per pixel, box filtered.
    """

    pose_range = PoseRange()

    def __init__(
        self,
        image_size: int = 64,
        supersample: int | None = None,
        lighting: str = "random",
        background: str = "random",
        max_elements: int = 1 << 24,
        antialias: str | None = None,
    ):
        if int(image_size) != image_size or image_size < 8:
            raise ValueError(
                f"procedural renderer: image_size must be an integer >= 8, got {image_size!r}"
            )
        if antialias is None:
            antialias = "quincunx" if supersample is None else "grid"
        if antialias not in ("quincunx", "grid"):
            raise ValueError(
                f"procedural renderer: antialias must be 'quincunx' or 'grid', got {antialias!r}"
            )
        if antialias == "quincunx" and supersample is not None:
            raise ValueError(
                "procedural renderer: supersample applies to antialias='grid' only (quincunx "
                f"traces its own pattern), got supersample={supersample!r}"
            )
        supersample = 2 if supersample is None else supersample
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
        self.antialias = antialias
        self.supersample = int(supersample) if antialias == "grid" else None
        self.lighting = lighting
        self.background = background
        self.max_elements = int(max_elements)
        n = self.image_size
        pixel = 2 * EXTENT / n  # head units per pixel
        if antialias == "grid":
            ss = self.supersample
            # Subsample centres, row-major over (row, sub-row, col, sub-col) so that averaging
            # over sub-rows and sub-columns is a reshape.
            sub = (torch.arange(n * ss, dtype=torch.float32) + 0.5) / ss
            coords = [(sub - n / 2) * pixel]
        else:
            # Pixel centres, then pixel corners (n + 1 per axis, shared between neighbours).
            centres = (torch.arange(n, dtype=torch.float32) + 0.5 - n / 2) * pixel
            corners = (torch.arange(n + 1, dtype=torch.float32) - n / 2) * pixel
            coords = [centres, corners]
        # Each ray grid is separable, coordinate ``coord[j]`` along both axes (head units, x
        # right, y down); a sample's rays are the grids' rows, row-major, one grid after the
        # other, starting at ray ``offset``.
        self._grids, offset, us, vs = [], 0, [], []
        for coord in coords:
            side = len(coord)
            self._grids.append((offset, side, coord))
            vv, uu = torch.meshgrid(coord, coord, indexing="ij")
            us.append(uu.reshape(-1))
            vs.append(vv.reshape(-1))
            offset += side * side
        self._u, self._v = torch.cat(us), torch.cat(vs)
        # Pixel centres in [-1, 1] for the background (x along columns, y along rows).
        self._pix = ((torch.arange(n, dtype=torch.float32) + 0.5) - n / 2) / (n / 2)

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
        heads = _Heads(identities)
        R_cam_np = geometry.to_camera(R)
        R_cam = torch.as_tensor(R_cam_np, dtype=torch.float32)
        S = torch.as_tensor(heads.S, dtype=torch.float32)
        centre = torch.as_tensor(heads.centre, dtype=torch.float32)
        t, prim = self._trace(S, centre, R_cam, heads.axes, heads.active)
        hit = t < _MISS
        flat = hit.view(-1).nonzero().squeeze(1)
        # Hits grouped by primitive, so that each group runs only the decals that can occur on
        # it (hair, 40 % of the hits, needs a handful of the shader's ~250 operations). The sort
        # is stable: within a primitive the rays keep their image order.
        k, order = torch.sort(prim.view(-1).index_select(0, flat), stable=True)
        flat = flat.index_select(0, order)
        colour = self._shade(heads, R_cam_np, flat, k, t.view(-1), bg_seeds)
        # Colour planes stay channel-first, (3, N, H, W), until the final uint8 conversion.
        n_rays = self._u.numel()
        fg = torch.zeros(3, n * n_rays)
        for c in range(3):
            fg[c].scatter_(0, flat, colour[c])
        fg = self._resolve(fg.view(3, n, n_rays))
        cov = self._resolve(hit.float().view(n, n_rays))
        img = self._background(bg_seeds).mul_(1.0 - cov).add_(fg)
        img = img.clamp_(0.0, 1.0).mul_(255.0).add_(0.5).to(torch.uint8)
        return img.permute(1, 2, 3, 0).numpy(), cov.numpy()

    def _resolve(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (..., H, W) from per-ray values (..., rays): the anti-aliasing filter."""
        size = self.image_size
        if self.antialias == "grid":
            _, side, _ = self._grids[0]
            return _box_filter(x.view(*x.shape[:-1], side, side), self.supersample)
        m = size * size
        centre = x[..., :m].view(*x.shape[:-1], size, size)
        corner = x[..., m:].view(*x.shape[:-1], size + 1, size + 1)
        # Sums of four 0/1 coverages times 1/8, plus 1/2: full coverage comes out as exactly 1.
        out = corner[..., :-1, :-1] + corner[..., 1:, :-1]
        out += corner[..., :-1, 1:]
        out += corner[..., 1:, 1:]
        return out.mul_(0.125).add_(centre, alpha=0.5)

    def _trace(self, S, centre, R_cam, axes, active):
        """Nearest hit of every subsample ray: ``t`` (N, P) (>= _MISS: background), primitive
        (N, P) uint8.

        Each small primitive is intersected only with the rays in a square window around its
        projection (an ellipsoid projects inside the circle of its largest semi-axis), which
        skips most ray-primitive pairs; large ones are intersected with every ray. A primitive is
        traced only for the samples whose style uses it (``active`` (N, K) bool): an unused one
        is shrunk inside the cranium, which is traced first and is always nearer, so skipping it
        changes neither ``t`` nor the primitive. Window sizes depend on the batch, but a ray's
        depth is computed elementwise from its own coordinates, so results do not.
        """
        n, n_rays = len(S), self._u.numel()
        disc, h, a = _quadric_coefficients(S, centre, R_cam)
        centre_cam = (R_cam @ centre.transpose(1, 2)).transpose(1, 2)  # (N, K, 3)
        t_best = torch.full((n, n_rays), _MISS)
        # uint8: the z-buffer's gathers, scatters and masked fills move an eighth of the bytes.
        k_best = torch.zeros((n, n_rays), dtype=torch.uint8)
        t_flat, k_flat = t_best.view(-1), k_best.view(-1)
        for k in range(N_PRIM):
            rows = np.flatnonzero(active[:, k])
            if len(rows) == 0:
                continue
            sub = None if len(rows) == n else torch.as_tensor(rows)
            dk, hk, ak, ck = disc[:, k], h[:, k], a[:, k], centre_cam[:, k, :2]
            if sub is not None:
                dk, hk, ak, ck = dk[sub], hk[sub], ak[sub], ck[sub]
            radius = float(axes[rows, k].max())
            for offset, side, coord in self._grids:
                c0, step = float(coord[0]), float(coord[1] - coord[0])
                w = min(side, int(math.ceil(2 * radius / step)) + 2)
                if w * w > _DENSE_FRACTION * side * side:
                    # A window nearly as large as the image: gathering and scattering would
                    # cost more than intersecting every ray.
                    tk = _depth(dk, hk, ak, coord.view(1, 1, side), coord.view(1, side, 1))
                    tk = tk.reshape(len(rows), -1)
                    t_grid = t_best[:, offset : offset + side * side]
                    k_grid = k_best[:, offset : offset + side * side]
                    if sub is None:
                        k_grid.masked_fill_(tk < t_grid, k)
                        torch.minimum(tk, t_grid, out=t_grid)
                    else:
                        cur, kc = t_grid.index_select(0, sub), k_grid.index_select(0, sub)
                        k_grid.index_copy_(0, sub, kc.masked_fill_(tk < cur, k))
                        t_grid.index_copy_(0, sub, torch.minimum(tk, cur))
                    continue
                # Index coordinate of the projected centre in this grid (ray j is at coord[j]).
                ctr = (ck - c0) / step
                start = torch.floor(ctr - (w - 1) / 2).long().clamp(0, side - w)  # (n, 2): x, y
                offs = torch.arange(w)
                cols = start[:, 0:1] + offs  # (n, w)
                rws = start[:, 1:2] + offs
                u = coord[cols][:, None, :]
                v = coord[rws][:, :, None]
                tk = _depth(dk, hk, ak, u, v).reshape(-1)
                base = torch.as_tensor(rows * n_rays + offset)[:, None, None]
                idx = (base + rws[:, :, None] * side + cols[:, None, :]).reshape(-1)
                # index_select and scatter_ on the flat buffers (a sample's window has distinct
                # indices, so the scatter is deterministic); index_copy_ is four times slower.
                cur = t_flat.index_select(0, idx)
                k_flat.scatter_(0, idx, k_flat.index_select(0, idx).masked_fill_(tk < cur, k))
                t_flat.scatter_(0, idx, torch.minimum(tk, cur))
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

    def _shade(self, heads, R_cam_np, flat, k, t_flat, bg_seeds):
        """Colours (3, M) of M hit rays ``flat`` (indices into the chunk's N x P rays), sorted by
        their primitive ``k`` (M,) uint8; ``t_flat`` (N * P,) holds the depths.

        Hits are shaded group by group (skull, nose, ears, neck, eyes, hair), each with only the
        decals that can occur on its primitives: a decal on primitives a group lacks would be
        masked out anyway, so the colours are those of shading every hit with every decal.
        Per-sample values are gathered from tables per hit, only those a group reads, so that
        each channel comes out as a contiguous (M,) vector; 3-vectors are handled as separate
        components, which is much faster than tiny batched matmuls.
        """
        n_rays = self._u.numel()
        tables = self._shading_tables(heads, R_cam_np, bg_seeds)
        b = torch.div(flat, n_rays, rounding_mode="floor")
        p = flat - b * n_rays
        u, v, t = (
            self._u.index_select(0, p),
            self._v.index_select(0, p),
            t_flat.index_select(0, flat),
        )
        kl = k.long()
        bk = b * N_PRIM + kl  # row of the per-(sample, primitive) table
        counts = np.bincount(k.numpy(), minlength=N_PRIM)
        starts = np.concatenate([[0], np.cumsum(counts)])
        out = torch.empty(3, len(flat))
        for shader, k0, k1 in (
            (self._shade_skull, CRANIUM, FACE + 1),
            (self._shade_nose, NOSE, NOSE + 1),
            (self._shade_ears, EAR_L, EAR_R + 1),
            (self._shade_neck, NECK, NECK + 1),
            (self._shade_eyes, EYE_L, EYE_R + 1),
            (self._shade_hair, HAIR_VOL, HAIR_LONG + 1),
        ):
            lo, hi = int(starts[k0]), int(starts[k1])
            if lo == hi:
                continue
            sl = slice(lo, hi)
            hit = _Hit(tables, b[sl], bk[sl], kl[sl], u[sl], v[sl], t[sl])
            mat, mult, gloss, lens_tint = shader(hit)
            # Final colour: albedo (already times the light's tint) x shading + highlight.
            ms = hit.shade if mult is None else hit.shade * mult
            gh = hit.highlight * gloss
            pal = tables["palette"].index_select(1, hit.b * N_MAT + mat.long())  # (3, m)
            if lens_tint is not None:
                lens, tint = lens_tint
                pal = torch.where(lens, pal * tint, pal)
            st = hit.sample(("st_r", "st_g", "st_b"))
            for c in range(3):
                torch.addcmul(gh * st[c], pal[c], ms, out=out[c, sl])
        return out

    def _shading_tables(self, heads, R_cam_np, bg_seeds):
        """Per-sample (C, N) and per-(sample, primitive) (C, N * K) float32 tables, and the
        palette (3, N * N_MAT) times each sample's light tint."""
        n = len(bg_seeds)
        L_cam, amb, dif, light_tint, spec = self._lights(bg_seeds)
        L_head = np.einsum("nji,nj->ni", R_cam_np, L_cam)  # R_cam^T L: the light in the head frame
        # Blinn-Phong half vector between the light and the view direction (toward the camera).
        H_cam = L_cam + np.array([0.0, 0.0, -1.0])
        H_cam /= np.linalg.norm(H_cam, axis=-1, keepdims=True).clip(1e-9)
        H_head = np.einsum("nji,nj->ni", R_cam_np, H_cam)
        f = heads.f
        cols = {f"r{i}": R_cam_np.reshape(n, 9)[:, i] for i in range(9)}
        # dif > 0, so dif * max(lambert, 0) = max(lambert with the light scaled by dif, 0).
        cols.update({f"l{i}": dif * L_head[:, i] for i in range(3)})
        cols.update({f"h{i}": H_head[:, i] for i in range(3)})
        cols["amb"] = amb
        cols.update(
            {name: spec * light_tint[:, i] for i, name in enumerate(("st_r", "st_g", "st_b"))}
        )
        cols.update({name: f[name] for name in _FEATURES})
        # Bald heads: skin where y < -0.24 + 0.06 (1 - w_back); -1e9 disables it for the rest.
        cols["bald_y"] = np.where(f["style"] == BALD, -0.24, -1e9)
        names = list(cols)
        sample = torch.as_tensor(np.stack([cols[c] for c in names]), dtype=torch.float32)
        S, c = heads.S.reshape(n * N_PRIM, 3, 3), heads.centre.reshape(n * N_PRIM, 3)
        # S^T S: the normal at p is along S^T S (p - centre) (the gradient of |S (p - c)|^2).
        G = np.einsum("mji,mjk->mik", S, S)
        prim = np.concatenate(
            [G[:, [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]], c, S.reshape(-1, 9)], -1
        )
        palette = heads.palette * light_tint[:, None, :]
        return {
            "sample": sample,
            "sample_index": {name: i for i, name in enumerate(names)},
            "prim": torch.as_tensor(np.ascontiguousarray(prim.T), dtype=torch.float32),
            "palette": torch.as_tensor(
                np.ascontiguousarray(palette.reshape(-1, 3).T), dtype=torch.float32
            ),
        }

    # Each group shader returns the material (m,) uint8, the shading multiplier (m,) or None,
    # the specular gloss factor (tensor or float) and (lens mask (m,), lens tint (3, m)) or None.

    @staticmethod
    def _hair_decals(hit, is_hair, mat, x, y, z):
        """Parting and strands on hair: updates ``mat`` in place; returns the strand multiplier."""
        part_x, freq = hit.sample(("part_x", "hair_freq"))
        part = ((x - part_x).abs() < 0.012) & (y < -0.2) & (z < 0.15)
        mat.masked_fill_(part if is_hair is None else part & is_hair, M_SCALP)
        # Strands fall from the crown: stripes across the azimuth, plus broader locks; |azimuth|
        # keeps the head mirror-symmetric (only the parting is not).
        az = torch.atan2(x, z - 0.06).abs()
        return 1.0 + 0.07 * torch.sin(freq * az) + 0.05 * torch.sin(9.0 * az + 6.0 * y)

    @staticmethod
    def _hairline(hit, x, y, z):
        """Skull and neck hits above the hairline (as a function of the azimuth around the
        head: 0 at the face, pi at the back), and the back-weight w_back."""
        front_h, back_h, bald_y = hit.sample(("front_h", "back_h", "bald_y"))
        zc = z - 0.06
        phi_c = zc / torch.sqrt(x * x + zc * zc + 1e-12)
        w_back = (1.0 + phi_c) / 2.0
        y_h = front_h * (1 - w_back) + back_h * w_back
        return (y < y_h) & ~(y < bald_y + 0.06 * (1 - w_back)), w_back

    @staticmethod
    def _glasses(hit, on_front, ax, y, dxe, dye):
        """Lens and frame masks of rims and bridge around the eyes (on_front: candidate hits)."""
        fw, lens_r, eye_x, eye_y = hit.sample(("frame_w", "lens_r", "eye_x", "eye_y"))
        on_front = on_front & (fw > 0)
        rr = torch.sqrt(dxe * dxe + (dye * 1.25) ** 2)
        lens = on_front & (rr < lens_r - fw)
        rim = on_front & ((rr - lens_r).abs() < fw)
        bridge = on_front & (ax < eye_x - lens_r + fw) & ((y - eye_y + 0.015).abs() < fw)
        return lens & ~rim, rim | bridge

    def _lens_tint(self, hit, lens):
        return lens[None], torch.stack(hit.sample(("lens_tr", "lens_tg", "lens_tb")))

    def _shade_hair(self, hit):
        x, y, z = hit.xyz
        mat = torch.full(x.shape, M_HAIR, dtype=torch.uint8)
        strands = self._hair_decals(hit, None, mat, x, y, z)
        return mat, strands, 1.5, None

    def _shade_neck(self, hit):
        x, y, z = hit.xyz
        is_hair, _ = self._hairline(hit, x, y, z)
        mat = torch.full(x.shape, M_SKIN, dtype=torch.uint8).masked_fill_(is_hair, M_HAIR)
        strands = self._hair_decals(hit, is_hair, mat, x, y, z)
        (collar,) = hit.sample(("collar",))
        shirt = y > collar - 0.06 * (z < 0.05) * (1 - (x / 0.2) ** 2).clamp_min(0)
        mat.masked_fill_(shirt, M_SHIRT)
        return mat, torch.where(is_hair, strands, 1.0), 1.0 + 0.5 * is_hair, None

    def _shade_ears(self, hit):
        q0, q1, q2 = hit.q
        # Ears: darker bowl on the outer side.
        side = torch.where(hit.k == EAR_L, 1.0, -1.0)
        ear_in = (q0 * side > 0.35) & (q1.abs() < 0.65) & (q2.abs() < 0.55)
        mat = torch.full(q0.shape, M_SKIN, dtype=torch.uint8).masked_fill_(ear_in, M_EAR_IN)
        return mat, None, 1.0, None

    def _shade_nose(self, hit):
        x, y, z = hit.xyz
        q0, q1, q2 = hit.q
        # Nostrils on the underside.
        aq0 = q0.abs()
        nostril = (q1 > 0.5) & (aq0 > 0.15) & (aq0 < 0.75) & (q2 > -0.55)
        mat = torch.full(x.shape, M_SKIN, dtype=torch.uint8).masked_fill_(nostril, M_NOSTRIL)
        eye_x, eye_y = hit.sample(("eye_x", "eye_y"))
        ax = x.abs()
        lens, frame = self._glasses(hit, z < -0.22, ax, y, ax - eye_x, y - eye_y)
        mat.masked_fill_(frame, M_FRAME)
        return mat, None, 1.0 + 5.0 * lens, self._lens_tint(hit, lens)

    def _shade_eyes(self, hit):
        x, y, z = hit.xyz
        _, q1, q2 = hit.q
        # Iris and pupil look along -z; lids cover the top and bottom.
        (iris,) = hit.sample(("iris",))
        mat = torch.full(x.shape, M_SCLERA, dtype=torch.uint8)
        mat.masked_fill_(-q2 > iris, M_IRIS)
        mat.masked_fill_(-q2 > 0.97, M_PUPIL)
        mat.masked_fill_(q1 < -0.28, M_LASH)
        mat.masked_fill_((q1 < -0.42) | (q1 > 0.55), M_SKIN)
        eye_x, eye_y = hit.sample(("eye_x", "eye_y"))
        ax = x.abs()
        lens, frame = self._glasses(hit, z < -0.22, ax, y, ax - eye_x, y - eye_y)
        mat.masked_fill_(frame, M_FRAME)
        return mat, None, 6.0, self._lens_tint(hit, lens)

    def _shade_skull(self, hit):
        """Cranium and lower face: hair, brows, eye sockets, facial hair, lips, glasses."""
        x, y, z = hit.xyz
        is_hair, _ = self._hairline(hit, x, y, z)
        mat = torch.full(x.shape, M_SKIN, dtype=torch.uint8).masked_fill_(is_hair, M_HAIR)
        strands = self._hair_decals(hit, is_hair, mat, x, y, z)
        not_hair = ~is_hair
        face = (z < -0.2) & not_hair
        ax = x.abs()
        eye_x, eye_y, brow_y, brow_t = hit.sample(("eye_x", "eye_y", "brow_y", "brow_t"))
        # Eye sockets: a soft shadow around each eye.
        dxe = ax - eye_x
        dye = y - eye_y
        socket = 1 - 0.22 * torch.exp(-(dxe * dxe + dye * dye) / 0.005)
        mult = torch.where(is_hair, strands, torch.where(face, socket, 1.0))
        # Brows: arcs above the eyes.
        arch = brow_y - 0.02 * (1 - (dxe / 0.075) ** 2)
        brow = face & (dxe.abs() < 0.075) & ((y - arch).abs() < brow_t)
        mat.masked_fill_(brow, M_BROW)
        # Facial hair.
        my, mw, stubble, full_beard, goatee_f, moustache_f = hit.sample(
            ("mouth_y", "mouth_w", "stubble", "full_beard", "goatee", "moustache")
        )
        beard_top = 0.17 - 0.16 * (x / 0.3) ** 2
        beard_zone = (z < 0.06) & not_hair & (y > beard_top)
        mat.masked_fill_(beard_zone & (stubble > 0), M_STUBBLE)
        mat.masked_fill_(beard_zone & (full_beard > 0), M_BEARD)
        goatee = face & (ax < 0.09) & (y > my + 0.025) & (goatee_f > 0)
        mat.masked_fill_(goatee, M_BEARD)
        moustache = face & (ax < mw + 0.01) & (y > my - 0.055) & (y < my - 0.012)
        mat.masked_fill_(moustache & (moustache_f > 0), M_BEARD)
        # Mouth.
        dym = y - my
        lips = face & ((x / mw) ** 2 + (dym / 0.03) ** 2 < 1)
        mat.masked_fill_(lips, M_LIP)
        mat.masked_fill_(lips & (dym.abs() < 0.006), M_MOUTH)
        # Glasses: rims around the eyes, a bridge and temple arms back to the ears.
        lens, frame = self._glasses(hit, z < -0.22, ax, y, dxe, dye)
        fw, lens_r = hit.sample(("frame_w", "lens_r"))
        temple = (fw > 0) & (ax > eye_x + 0.8 * lens_r) & (dye.abs() < 0.8 * fw + 0.003)
        temple = temple & (z > -0.36) & (z < 0.07)
        mat.masked_fill_(frame | temple, M_FRAME)
        gloss = 1.0 + 5.0 * lens + 0.5 * is_hair
        return mat, mult, gloss, self._lens_tint(hit, lens)

    def _background(self, bg_seeds) -> torch.Tensor:
        """(3, N, H, W) float backgrounds: gradient, soft blobs, stripes, rectangles, texture.

        Every layer is a function of x, of y, or of a linear combination of the two, so it is
        built from (N, 1, W) and (N, H, 1) factors and only their sums and products are formed
        on the full grid (a Gaussian blob is the product of two 1D Gaussians); each layer is
        blended in with one ``lerp_`` over the channel-first colour planes.
        """
        n = len(bg_seeds)
        size = self.image_size
        if self.background == "grey":
            return torch.full((3, n, size, size), 0.5)
        u = torch.as_tensor(_hashing.uniforms(bg_seeds, 64), dtype=torch.float32)
        px, py = self._pix.view(1, 1, size), self._pix.view(1, size, 1)

        def s(a):  # a per-sample value, broadcast over (N, H, W)
            return a[:, None, None]

        def col(j):  # a per-sample colour, (3, N, 1, 1)
            return (0.08 + 0.84 * u[:, j : j + 3]).T[:, :, None, None]

        ang = u[:, 0] * 2 * math.pi
        g = px * s(0.35 * torch.cos(ang)) + (py * s(0.35 * torch.sin(ang)) + 0.5)
        bg = torch.lerp(col(1), col(4), g).contiguous()  # (3, N, H, W)
        for j in range(3):  # soft blobs: lamps, windows, out-of-focus objects
            o = 7 + 6 * j
            cx, cy = u[:, o] * 2.4 - 1.2, u[:, o + 1] * 2.4 - 1.2
            r = 0.25 + 0.5 * u[:, o + 2]
            neg_inv_r2 = s(-1.0 / (r * r))
            wx = torch.exp((px - s(cx)) ** 2 * neg_inv_r2)
            wy = torch.exp((py - s(cy)) ** 2 * neg_inv_r2) * s(0.6 * u[:, o + 3])
            bg.lerp_(col(o + 3), wx * wy)
        # Stripes (blinds, wallpaper, shelves) in about half the images.
        sa = u[:, 26] * math.pi
        freq = 4 + 20 * u[:, 27]
        phase = px * s(torch.cos(sa) * freq) + (py * s(torch.sin(sa) * freq) + s(u[:, 28] * 6.3))
        stripe = phase.sin_().mul_(3).clamp_(-1, 1)
        half_amp = s(torch.where(u[:, 29] < 0.5, 0.25 * u[:, 30], torch.zeros_like(u[:, 30])))
        bg.lerp_(col(31), torch.addcmul(half_amp, stripe, half_amp))
        # Rectangles: doors, frames, furniture edges, partly off-frame; anti-aliased over one
        # pixel, with the local coordinates measured in pixels.
        k = size / 2.0  # pixels per unit of px, py
        for j in range(3):
            o = 34 + 8 * j
            cx, cy = u[:, o] * 2.6 - 1.3, u[:, o + 1] * 2.6 - 1.3
            hx, hy = 0.05 + 0.6 * u[:, o + 2], 0.05 + 0.6 * u[:, o + 3]
            c, sn = torch.cos(u[:, o + 4] * math.pi), torch.sin(u[:, o + 4] * math.pi)
            lx = px * s(k * c) + (py * s(k * sn) - s(k * (cx * c + cy * sn)))
            ly = py * s(k * c) + (px * s(-k * sn) + s(k * (cx * sn - cy * c)))
            kx = lx.abs_().neg_().add_(s(k * hx + 0.5)).clamp_(0, 1)
            ky = ly.abs_().neg_().add_(s(k * hy + 0.5)).clamp_(0, 1)
            alpha = torch.where(
                u[:, o + 5] < 0.7, 0.4 + 0.6 * u[:, o + 6], torch.zeros_like(u[:, o + 6])
            )
            bg.lerp_(col(o + 5), kx.mul_(ky).mul_(s(alpha)))
        # Fine texture so that no region is flat.
        f1, f2 = 10 + 30 * u[:, 58], 10 + 30 * u[:, 59]
        tx = torch.sin(px * s(f1) + s(6.3 * u[:, 60]))
        ty = torch.sin(py * s(f2) + s(6.3 * u[:, 61])) * 0.06
        return bg.mul_(torch.addcmul(torch.ones(()), tx, ty))
