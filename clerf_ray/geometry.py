"""SO(3) geometry: label convention, 6D representation, geodesic distance, label transforms
for image operations, metrics and EG3D-style camera vectors.

Conventions (see DESIGN.md, verified on AFLW2000):

* A label is a rotation matrix ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` with right-handed elementary
  rotations, angles in radians, as in 300W-LP / AFLW2000 ``Pose_Para[0:3] = (pitch, yaw, roll)``.
  yaw > 0 turns the nose toward the image's left, pitch > 0 tilts the head up, roll > 0 makes the
  eye line slope down toward the image's right (clockwise as displayed).
* The camera frame is OpenCV's (x right, y down, z into the scene). The head's rotation in that
  frame is ``R_cam = C @ R.T @ C`` with ``C = diag(1, -1, -1)``; a point ``p`` of the head model
  (given in the camera frame of a frontal, upright head: x to the image's right, y down, nose
  toward -z) lands at ``R_cam @ p + t``.
* Image coordinates are (x right, y down) about the image centre; "counterclockwise" always means
  as displayed on screen.

Every function that takes arrays accepts numpy arrays or torch tensors and is batched over
leading dimensions: matrices are ``(..., 3, 3)``, 6D vectors ``(..., 6)``, angles ``(...)``. The
result has the input's type (and, for torch, its device and floating dtype), with these exceptions:
:func:`mae_euler` returns Python floats; :func:`camera_from_pose` always returns its camera vectors
as float32 (tensors on the input's device for torch input) and is not differentiable;
:func:`sample_rotations` and :func:`frontal_camera`, which take no arrays, return numpy.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

Array = "np.ndarray | torch.Tensor"

# C maps the dataset's head frame to the OpenCV camera frame (and back: C is its own inverse).
C = np.diag([1.0, -1.0, -1.0])
# Mirror of the head frame through its sagittal plane (x -> -x); also the image's x-mirror.
S_X = np.diag([-1.0, 1.0, 1.0])

# Intrinsics of EG3D's FFHQ cameras, normalised by image size.
FFHQ_FOCAL = 4.2647


# --------------------------------------------------------------------------- backend helpers
# numpy and torch differ in a handful of names (stack/axis/dim, clip/clamp, atan2/arctan2); these
# helpers keep each formula below written once for both.


def _is_torch(x) -> bool:
    # torch is imported only once a tensor can exist: a tensor means torch is in sys.modules.
    # Data-side processes (Ray Data tasks and split coordinators, renderer actors) use this module
    # on numpy arrays only, and each new one of them is spared torch's import (2-3 s of CPU here).
    mod = sys.modules.get("torch")
    return mod is not None and isinstance(x, mod.Tensor)


class _Torch:
    """``torch``, imported at first use (see :func:`_is_torch`): only the tensor branches below
    reach it, and they run on tensors, so torch is already loaded by then."""

    def __getattr__(self, name: str):
        import torch as mod

        return getattr(mod, name)


torch = _Torch()  # noqa: F811


def _stack(xs: Sequence[Array], axis: int) -> Array:
    if _is_torch(xs[0]):
        return torch.stack(list(xs), dim=axis)
    return np.stack(xs, axis=axis)


def _atan2(y, x):
    return torch.atan2(y, x) if _is_torch(y) else np.arctan2(y, x)


def _sqrt(x):
    return torch.sqrt(x) if _is_torch(x) else np.sqrt(x)


def _norm(x, axis: int = -1, keepdims: bool = False):
    if _is_torch(x):
        return torch.linalg.vector_norm(x, dim=axis, keepdim=keepdims)
    return np.linalg.norm(x, axis=axis, keepdims=keepdims)


def _const(m: np.ndarray, like: Array) -> Array:
    """A constant matrix in the type, dtype and device of ``like``."""
    if _is_torch(like):
        return torch.as_tensor(m, dtype=like.dtype, device=like.device)
    return np.asarray(m, dtype=np.result_type(like.dtype, np.float32))


def _as_float(x) -> Array:
    if _is_torch(x):
        return x if x.is_floating_point() else x.float()
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def _swap(R: Array) -> Array:
    """Transpose of the last two dimensions."""
    return R.transpose(-1, -2) if _is_torch(R) else np.swapaxes(R, -1, -2)


def _trace(M: Array) -> Array:
    return M[..., 0, 0] + M[..., 1, 1] + M[..., 2, 2]


# --------------------------------------------------------------------------- elementary rotations


def _rot(axis: str, angle: Array) -> Array:
    """Right-handed rotation by ``angle`` (radians, shape (...)) about ``axis``: (..., 3, 3)."""
    angle = _as_float(angle)
    c, s = (
        (torch.cos(angle), torch.sin(angle)) if _is_torch(angle) else (np.cos(angle), np.sin(angle))
    )
    one, zero = c * 0 + 1, c * 0
    if axis == "x":
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == "y":
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    elif axis == "z":
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    else:
        raise ValueError(f"axis must be 'x', 'y' or 'z', got {axis!r}")
    return _stack([_stack(r, -1) for r in rows], -2)


def rot_x(angle: Array) -> Array:
    """Right-handed rotation about x by ``angle`` radians."""
    return _rot("x", angle)


def rot_y(angle: Array) -> Array:
    """Right-handed rotation about y by ``angle`` radians."""
    return _rot("y", angle)


def rot_z(angle: Array) -> Array:
    """Right-handed rotation about z by ``angle`` radians."""
    return _rot("z", angle)


# --------------------------------------------------------------------------- Euler angles


def euler_to_matrix(pitch: Array, yaw: Array, roll: Array) -> Array:
    """Dataset label from Euler angles: ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``.

    Args:
        pitch, yaw, roll: radians, broadcastable shapes (...).

    Returns:
        (..., 3, 3) rotation matrices.
    """
    if _is_torch(pitch) or _is_torch(yaw) or _is_torch(roll):
        ref = next(a for a in (pitch, yaw, roll) if _is_torch(a))
        pitch, yaw, roll = (
            torch.as_tensor(a, dtype=ref.dtype, device=ref.device) for a in (pitch, yaw, roll)
        )
        pitch, yaw, roll = torch.broadcast_tensors(
            _as_float(pitch), _as_float(yaw), _as_float(roll)
        )
    else:
        pitch, yaw, roll = np.broadcast_arrays(
            *(np.asarray(a, dtype=np.float64) for a in (pitch, yaw, roll))
        )
    return rot_z(roll) @ rot_y(yaw) @ rot_x(pitch)


def matrix_to_euler(R: Array) -> tuple[Array, Array, Array]:
    """Euler angles ``(pitch, yaw, roll)`` in radians of labels ``R = Rz(roll) Ry(yaw) Rx(pitch)``.

    yaw lies in [-pi/2, pi/2], pitch and roll in (-pi, pi]. At gimbal lock (|yaw| = pi/2) roll is
    set to 0 and the whole in-plane angle goes to pitch. Euler angles are for reporting only:
    labels whose |yaw| exceeds 90 deg come back as the equivalent triple with |yaw| < 90 deg.

    Args:
        R: (..., 3, 3) rotation matrices.
    """
    R = _as_float(R)
    cos_yaw = _sqrt(R[..., 0, 0] ** 2 + R[..., 1, 0] ** 2)
    yaw = _atan2(-R[..., 2, 0], cos_yaw)
    pitch = _atan2(R[..., 2, 1], R[..., 2, 2])
    roll = _atan2(R[..., 1, 0], R[..., 0, 0])
    # Gimbal lock: cos(yaw) ~ 0, then R01 = sin(yaw)... reduces to the pitch - sign(yaw) * roll
    # angle; with roll = 0, pitch = atan2(sign(sin yaw) * R01, R11).
    sign = (-R[..., 2, 0] >= 0) * 2.0 - 1.0
    pitch_lock = _atan2(sign * R[..., 0, 1], R[..., 1, 1])
    lock = cos_yaw < 1e-6
    if _is_torch(R):
        pitch = torch.where(lock, pitch_lock, pitch)
        roll = torch.where(lock, torch.zeros_like(roll), roll)
    else:
        pitch = np.where(lock, pitch_lock, pitch)
        roll = np.where(lock, 0.0, roll)
    return pitch, yaw, roll


# --------------------------------------------------------------------------- 6D representation


def rotation_6d_to_matrix(x: Array) -> Array:
    """Rotation from the 6D representation (Zhou et al., CVPR 2019) by Gram-Schmidt.

    Args:
        x: (..., 6): the first three numbers are a1, the last three a2, the unnormalised first and
            second columns of the matrix.

    Returns:
        (..., 3, 3) rotation matrices with columns b1 = a1/|a1|, b2 = the part of a2 orthogonal to
        b1, normalised, and b3 = b1 x b2.
    """
    x = _as_float(x)
    a1, a2 = x[..., 0:3], x[..., 3:6]
    if _is_torch(x):
        b1 = torch.nn.functional.normalize(a1, dim=-1)
        b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
        b3 = torch.linalg.cross(b1, b2, dim=-1)
    else:
        b1 = a1 / _norm(a1, keepdims=True)
        b2 = a2 - (b1 * a2).sum(-1, keepdims=True) * b1
        b2 = b2 / _norm(b2, keepdims=True)
        b3 = np.cross(b1, b2)
    return _stack([b1, b2, b3], -1)


def matrix_to_rotation_6d(R: Array) -> Array:
    """The 6D representation of rotations: first column then second column, (..., 6)."""
    if _is_torch(R):
        return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)
    return np.concatenate([R[..., :, 0], R[..., :, 1]], axis=-1)


# --------------------------------------------------------------------------- distances


def geodesic_distance(A: Array, B: Array) -> Array:
    """Angle of the rotation ``A^T B`` in radians, in [0, pi]; shape (...).

    Computed as ``atan2(|v|, tr(M) - 1)`` with ``M = A^T B`` and ``v`` the axial vector of
    ``M - M^T`` (``|v| = 2 sin t``, ``tr M - 1 = 2 cos t``). Unlike ``arccos((tr - 1) / 2)`` this is
    accurate across the range and has a finite gradient at 0 and at pi (the distance has a kink
    there, like |x|; the subgradient 0 is used for the norm).
    """
    A, B = _as_float(A), _as_float(B)
    M = _swap(A) @ B
    v = _stack(
        [M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0], M[..., 1, 0] - M[..., 0, 1]], -1
    )
    sq = (v * v).sum(-1)
    if _is_torch(sq):
        zero = sq <= 0
        n = torch.where(
            zero, torch.zeros_like(sq), torch.sqrt(torch.where(zero, torch.ones_like(sq), sq))
        )
    else:
        n = np.sqrt(sq)
    return _atan2(n, _trace(M) - 1.0)


def geodesic_error(R_pred: Array, R_true: Array) -> Array:
    """Geodesic error in degrees, per sample (...)."""
    return geodesic_distance(R_pred, R_true) * (180.0 / math.pi)


def _wrap_deg(d: Array) -> Array:
    """Absolute angle difference wrapped to [0, 180]: min over d, d + 360, d - 360."""
    w = (d + 180.0) % 360.0 - 180.0
    return w.abs() if _is_torch(w) else np.abs(w)


def euler_errors(pred: Array, true: Array) -> Array:
    """Per-angle absolute Euler errors in degrees, wrapped, (..., 3) ordered (pitch, yaw, roll).

    ``pred`` and ``true`` are each either rotation matrices (..., 3, 3), converted with
    :func:`matrix_to_euler`, or Euler angles (..., 3) in radians ordered (pitch, yaw, roll), used
    as given (the peers compare predictions with the dataset's own angles, which may have
    |yaw| > 90 deg).
    """

    def to_deg(x):
        x = _as_float(x)
        if x.shape[-2:] == (3, 3):
            x = _stack(list(matrix_to_euler(x)), -1)
        elif x.shape[-1] != 3:
            raise ValueError(
                f"expected (..., 3, 3) matrices or (..., 3) Euler angles, got {tuple(x.shape)}"
            )
        return x * (180.0 / math.pi)

    return _wrap_deg(to_deg(pred) - to_deg(true))


def mae_euler(pred: Array, true: Array) -> dict[str, float]:
    """Mean absolute Euler error in degrees: ``{'pitch', 'yaw', 'roll', 'mean'}``.

    Inputs as in :func:`euler_errors`; the mean runs over all samples.
    """
    e = euler_errors(pred, true)
    e = e.detach().cpu().numpy() if _is_torch(e) else np.asarray(e)
    e = e.reshape(-1, 3).mean(axis=0)
    return {"pitch": float(e[0]), "yaw": float(e[1]), "roll": float(e[2]), "mean": float(e.mean())}


def maev(R_pred: Array, R_true: Array) -> Array:
    """Mean angle, in degrees, between predicted and true axis vectors (the three columns), (...)."""
    R_pred, R_true = _as_float(R_pred), _as_float(R_true)
    pn = R_pred / _norm(R_pred, axis=-2, keepdims=True)
    tn = R_true / _norm(R_true, axis=-2, keepdims=True)
    # Angle between unit vectors via atan2(|u x v|, u . v): accurate near 0 and 180 deg.
    if _is_torch(pn):
        cross = torch.linalg.cross(pn, tn, dim=-2)
    else:
        cross = np.cross(pn, tn, axis=-2)
    ang = _atan2(_norm(cross, axis=-2), (pn * tn).sum(-2))
    return ang.mean(-1) * (180.0 / math.pi)


# --------------------------------------------------------------------------- label transforms


def to_camera(R: Array) -> Array:
    """The head's rotation in the OpenCV camera frame: ``R_cam = C R^T C``."""
    c = _const(C, R)
    return c @ _swap(R) @ c


def from_camera(R_cam: Array) -> Array:
    """Inverse of :func:`to_camera`: ``R = C R_cam^T C``."""
    return to_camera(R_cam)


def rotate_label(R: Array, degrees: float | Array) -> Array:
    """Label of an image rotated in-plane by ``degrees`` counterclockwise as displayed.

    Rotating the image about its centre rotates the scene about the optical axis:
    ``R_cam' = Rz(-t) R_cam``, hence ``R' = R Rz(-t)`` in the dataset frame.
    ``degrees`` is a scalar or broadcasts against R's leading dimensions.
    """
    R = _as_float(R)
    t = degrees * (math.pi / 180.0)
    if _is_torch(R):
        t = torch.as_tensor(t, dtype=R.dtype, device=R.device)
    else:
        t = np.asarray(t, dtype=R.dtype)
    return R @ rot_z(-t)


def hflip_label(R: Array) -> Array:
    """Label of a horizontally mirrored image (x -> -x): ``R' = S R S``, ``S = diag(-1, 1, 1)``.

    The mirror image of a head that is symmetric about its sagittal plane is the same head under
    another rotation: yaw and roll change sign, pitch stays.
    """
    s = _const(S_X, R)
    return s @ _as_float(R) @ s


def vflip_label(R: Array) -> Array:
    """Label of a vertically mirrored image (y -> -y): a horizontal mirror then a 180 deg turn."""
    return rotate_label(hflip_label(R), 180.0)


# --------------------------------------------------------------------------- sampling


def sample_rotations(
    n: int,
    seed: int | np.random.Generator | None = None,
    yaw_range: tuple[float, float] | None = None,
    pitch_range: tuple[float, float] | None = None,
    roll_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Sample ``n`` labels, (n, 3, 3) float64.

    With no range given, rotations are uniform over SO(3) (Haar measure). With any range given
    (degrees, inclusive bounds), pitch, yaw and roll are drawn independently and uniformly from
    their ranges (an unset range means (-180, 180) for pitch and roll, (-90, 90) for yaw).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if yaw_range is None and pitch_range is None and roll_range is None:
        from scipy.spatial.transform import Rotation

        return Rotation.random(n, random_state=rng).as_matrix().reshape(n, 3, 3)

    def draw(rng_, r, default, name):
        lo, hi = default if r is None else r
        if lo > hi:
            raise ValueError(f"{name}: low {lo} > high {hi}")
        return np.deg2rad(rng_.uniform(lo, hi, size=n))

    pitch = draw(rng, pitch_range, (-180.0, 180.0), "pitch_range")
    yaw = draw(rng, yaw_range, (-90.0, 90.0), "yaw_range")
    roll = draw(rng, roll_range, (-180.0, 180.0), "roll_range")
    return euler_to_matrix(pitch, yaw, roll)


# --------------------------------------------------------------------------- cameras


def orbit_decomposition(R: Array) -> tuple[Array, Array, Array]:
    """Split a label into an orbiting-camera view and an in-plane turn.

    An EG3D-style camera orbiting an upright head (look-at with world up) can only produce
    ``R_cam = Rx(-pitch_o) @ Ry(yaw_o)``; any label is that followed by an image rotation:
    ``R_cam = Rz(roll_o) @ Rx(-pitch_o) @ Ry(yaw_o)``.

    Returns:
        ``(pitch_o, yaw_o, roll_o)`` in radians. ``roll_o`` is the in-plane angle, clockwise as
        displayed: the label-R image is the orbit render rotated by ``-roll_o`` counterclockwise
        (``augment.rotate(img, R_o, -degrees(roll_o))``). pitch_o lies in [-pi/2, pi/2]. For
        labels with roll = 0 (and |yaw| < 90 deg) these are the label's own pitch and yaw.
    """
    M = to_camera(_as_float(R))
    # M = Rz(a) Rx(b) Ry(g): M21 = sin b, M01 = -sin a cos b, M11 = cos a cos b,
    # M20 = -cos b sin g, M22 = cos b cos g.
    cos_b = _sqrt(M[..., 0, 1] ** 2 + M[..., 1, 1] ** 2)
    b = _atan2(M[..., 2, 1], cos_b)
    a = _atan2(-M[..., 0, 1], M[..., 1, 1])
    g = _atan2(-M[..., 2, 0], M[..., 2, 2])
    # Looking straight up or down at the head: only a + g (or a - g) is defined; put it in yaw.
    g_lock = _atan2(M[..., 0, 2], M[..., 0, 0])
    lock = cos_b < 1e-6
    if _is_torch(M):
        a = torch.where(lock, torch.zeros_like(a), a)
        g = torch.where(lock, g_lock, g)
    else:
        a = np.where(lock, 0.0, a)
        g = np.where(lock, g_lock, g)
    return -b, g, a


def camera_from_pose(
    R: Array,
    radius: float = 2.7,
    pivot: Sequence[float] = (0.0, 0.0, 0.2),
    focal: float = FFHQ_FOCAL,
) -> tuple[np.ndarray, np.ndarray]:
    """EG3D-style camera vectors under which an upright head at the world origin shows label R.

    World axes are y-up; the head faces +z; the frontal camera sits at ``pivot + (0, 0, radius)``
    looking along -z. The camera orbits the pivot at the label's orbit yaw and pitch
    (:func:`orbit_decomposition`); the in-plane part cannot come from the camera and is returned
    separately for the backend to apply as an image rotation.

    Args:
        R: (..., 3, 3) labels, numpy or torch. Computed in float64 numpy either way (no gradient
            flows back to a tensor).
        radius: camera distance from the pivot.
        pivot: point the camera looks at (EG3D FFHQ: (0, 0, 0.2); PanoHead: (0, 0, 0)).
        focal: focal length normalised by image size; principal point at the image centre.

    Returns:
        ``(c, roll)``: ``c`` (..., 25) float32, the row-major 4x4 cam2world matrix (OpenCV axes:
        columns are the camera's x right, y down, z forward in world coordinates, then its
        position) followed by the row-major normalised 3x3 intrinsics; ``roll`` (...) radians, the
        in-plane angle clockwise as displayed (rotate the render by ``-degrees(roll)``
        counterclockwise to obtain label R). For numpy input both are numpy (``roll`` float64);
        for torch input both are tensors on R's device, ``c`` float32 and ``roll`` in R's
        floating dtype (float32 for an integer R).
    """
    if _is_torch(R):
        c, roll = camera_from_pose(
            R.detach().cpu().double().numpy(), radius=radius, pivot=pivot, focal=focal
        )
        roll_dtype = R.dtype if R.is_floating_point() else torch.float32
        return (
            torch.as_tensor(c, device=R.device),
            torch.as_tensor(roll, dtype=roll_dtype, device=R.device),
        )
    R = np.asarray(R, dtype=np.float64)
    pitch_o, yaw_o, roll_o = orbit_decomposition(R)
    # Camera orientation: the frontal camera's axes are C; orbiting by azimuth yaw_o about world y
    # after an elevation pitch_o about world x gives Rc = Ry(yaw_o) Rx(pitch_o) C, so the head
    # appears as Rc^T C = Rx(-pitch_o) Ry(yaw_o) (C conjugation flips the sign of a y turn).
    Rc = rot_y(yaw_o) @ rot_x(pitch_o) @ C
    position = np.asarray(pivot, dtype=np.float64) - radius * Rc[..., :, 2]
    lead = R.shape[:-2]
    cam2world = np.zeros(lead + (4, 4))
    cam2world[..., :3, :3] = Rc
    cam2world[..., :3, 3] = position
    cam2world[..., 3, 3] = 1.0
    K = np.array([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]])
    K = np.broadcast_to(K, lead + (3, 3))
    c = np.concatenate([cam2world.reshape(lead + (16,)), K.reshape(lead + (9,))], axis=-1)
    return c.astype(np.float32), roll_o


def frontal_camera(
    radius: float = 2.7, pivot: Sequence[float] = (0.0, 0.0, 0.2), focal: float = FFHQ_FOCAL
) -> np.ndarray:
    """The (25,) camera vector of the frontal pose, used to condition GAN mapping networks."""
    c, _ = camera_from_pose(np.eye(3), radius=radius, pivot=pivot, focal=focal)
    return c
