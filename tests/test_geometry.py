"""Property tests of the SO(3) core against independent references (scipy, projective geometry)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from clerf_ray import geometry as g

angle = st.floats(-math.pi, math.pi, allow_nan=False)
yaw_inner = st.floats(-math.pi / 2 + 1e-3, math.pi / 2 - 1e-3, allow_nan=False)
seeds = st.integers(0, 2**31)
degrees = st.floats(-720.0, 720.0, allow_nan=False)


def scipy_label(pitch, yaw, roll):
    # Rz(roll) Ry(yaw) Rx(pitch) is scipy's intrinsic 'ZYX' sequence with angles (roll, yaw, pitch).
    return Rotation.from_euler("ZYX", [roll, yaw, pitch]).as_matrix()


def random_rotations(seed, n=8):
    return Rotation.random(n, random_state=seed).as_matrix()


def is_rotation(R, tol=1e-9):
    R = np.asarray(R)
    eye = np.broadcast_to(np.eye(3), R.shape)
    return np.allclose(np.swapaxes(R, -1, -2) @ R, eye, atol=tol) and np.allclose(
        np.linalg.det(R), 1.0, atol=tol
    )


def head_points(seed, n=40):
    """A 3D point set in the head frame (camera frame of a frontal head: x right, y down, nose -z)."""
    return np.random.default_rng(seed).normal(size=(n, 3))


def project(R, P, depth=10.0, f=3.0):
    """Pinhole projection (principal point at the origin) of head points P under label R."""
    X = P @ g.to_camera(R).T + np.array([0.0, 0.0, depth])
    return f * X[:, :2] / X[:, 2:3]


# --------------------------------------------------------------------------- Euler


@given(angle, yaw_inner, angle)
def test_euler_to_matrix_matches_scipy(pitch, yaw, roll):
    np.testing.assert_allclose(
        g.euler_to_matrix(pitch, yaw, roll), scipy_label(pitch, yaw, roll), atol=1e-12
    )


@given(angle, yaw_inner, angle)
def test_matrix_to_euler_round_trip_angles(pitch, yaw, roll):
    R = scipy_label(pitch, yaw, roll)
    p2, y2, r2 = g.matrix_to_euler(R)
    wrap = lambda d: (d + math.pi) % (2 * math.pi) - math.pi  # noqa: E731
    # With |yaw| < 90 deg the triple is unique up to 2 pi.
    assert abs(wrap(p2 - pitch)) < 1e-6 and abs(y2 - yaw) < 1e-6 and abs(wrap(r2 - roll)) < 1e-6


@given(seeds)
def test_matrix_to_euler_reconstructs_any_rotation(seed):
    R = random_rotations(seed, 16)
    np.testing.assert_allclose(g.euler_to_matrix(*g.matrix_to_euler(R)), R, atol=1e-9)


@given(angle, st.sampled_from([-math.pi / 2, math.pi / 2]), angle)
def test_matrix_to_euler_gimbal_lock(pitch, yaw, roll):
    R = scipy_label(pitch, yaw, roll)
    p2, y2, r2 = g.matrix_to_euler(R)
    assert r2 == 0.0
    np.testing.assert_allclose(g.euler_to_matrix(p2, y2, r2), R, atol=1e-6)


def test_sign_conventions_through_the_camera():
    # DESIGN.md: yaw > 0 moves the nose toward the image's left, pitch > 0 up (y down), roll > 0
    # lowers the image-right eye. Nose at -z, image-right eye at +x in the frontal head frame.
    nose, eye_right = np.array([0, 0, -1.0]), np.array([1.0, 0, 0])
    a = 0.3
    assert (g.to_camera(g.euler_to_matrix(0, a, 0)) @ nose)[0] < 0
    assert (g.to_camera(g.euler_to_matrix(a, 0, 0)) @ nose)[1] < 0
    assert (g.to_camera(g.euler_to_matrix(0, 0, a)) @ eye_right)[1] > 0


def test_torch_and_numpy_agree():
    R = random_rotations(3, 5)
    Rt = torch.tensor(R)
    for fn in (g.matrix_to_euler,):
        for a, b in zip(fn(R), fn(Rt), strict=True):
            np.testing.assert_allclose(a, b.numpy(), atol=1e-12)
    np.testing.assert_allclose(
        g.geodesic_distance(R, R[::-1]), g.geodesic_distance(Rt, Rt.flip(0)).numpy(), atol=1e-12
    )
    np.testing.assert_allclose(
        g.rotate_label(R, 33.0), g.rotate_label(Rt, 33.0).numpy(), atol=1e-12
    )
    e = torch.tensor([0.1, 0.2]), torch.tensor([0.3, -0.2]), torch.tensor([1.0, 2.0])
    assert g.euler_to_matrix(*e).dtype == torch.float32


# --------------------------------------------------------------------------- 6D


@given(seeds)
def test_6d_round_trip(seed):
    R = random_rotations(seed)
    np.testing.assert_allclose(g.rotation_6d_to_matrix(g.matrix_to_rotation_6d(R)), R, atol=1e-12)


@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=6, max_size=6))
def test_6d_gives_rotation_with_first_column_along_a1(x):
    x = np.asarray(x)
    a1, a2 = x[:3], x[3:]
    if np.linalg.norm(a1) < 1e-3 or np.linalg.norm(np.cross(a1, a2)) <= 1e-3 * np.linalg.norm(
        a1
    ) * np.linalg.norm(a2):
        return  # degenerate input: no unique frame
    R = g.rotation_6d_to_matrix(x)
    assert is_rotation(R, 1e-9)
    np.testing.assert_allclose(R[:, 0], a1 / np.linalg.norm(a1), atol=1e-9)
    # The second column lies in the plane of a1 and a2, on a2's side.
    assert (
        abs(np.dot(np.cross(a1, a2), R[:, 1]))
        < 1e-6 * np.linalg.norm(a1) * np.linalg.norm(a2) + 1e-9
    )
    assert np.dot(R[:, 1], a2) > 0


def test_6d_torch_batched_and_differentiable():
    x = torch.randn(4, 7, 6, requires_grad=True)
    R = g.rotation_6d_to_matrix(x)
    assert R.shape == (4, 7, 3, 3)
    assert is_rotation(R.detach().double().numpy(), 1e-5)
    R.sum().backward()
    assert torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- geodesic


@given(seeds)
def test_geodesic_matches_scipy_and_range(seed):
    A, B = random_rotations(seed), random_rotations(seed + 1)
    d = g.geodesic_distance(A, B)
    expected = (Rotation.from_matrix(A).inv() * Rotation.from_matrix(B)).magnitude()
    np.testing.assert_allclose(d, expected, atol=1e-9)
    assert np.all((d >= 0) & (d <= math.pi))


@given(seeds, st.floats(0.0, math.pi))
def test_geodesic_of_known_angle(seed, t):
    A = random_rotations(seed, 1)[0]
    axis = np.random.default_rng(seed).normal(size=3)
    B = A @ Rotation.from_rotvec(t * axis / np.linalg.norm(axis)).as_matrix()
    assert abs(g.geodesic_distance(A, B) - t) < 1e-7
    assert abs(g.geodesic_error(A, B) - math.degrees(t)) < 1e-5


@pytest.mark.parametrize("t", [0.0, math.pi, math.pi - 1e-9, 1e-9])
def test_geodesic_gradient_finite_at_0_and_pi(t):
    A = torch.tensor(random_rotations(0, 3), requires_grad=True)
    B = (A.detach() @ torch.tensor(Rotation.from_rotvec([0, t, 0]).as_matrix())).requires_grad_(
        True
    )
    d = g.geodesic_distance(A, B)
    np.testing.assert_allclose(d.detach().numpy(), t, atol=1e-6)
    d.sum().backward()
    assert torch.isfinite(A.grad).all() and torch.isfinite(B.grad).all()


# --------------------------------------------------------------------------- label transforms


@given(seeds, degrees)
def test_rotate_label_matches_projected_points(seed, deg):
    R = random_rotations(seed, 1)[0]
    P = head_points(seed)
    uv = project(R, P)
    t = math.radians(deg)
    # Counterclockwise as displayed with y down: (x, y) -> (x cos t + y sin t, -x sin t + y cos t).
    rot2d = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    np.testing.assert_allclose(uv @ rot2d.T, project(g.rotate_label(R, deg), P), atol=1e-9)


@given(seeds)
def test_hflip_label_matches_projected_points(seed):
    R = random_rotations(seed, 1)[0]
    P = head_points(seed)
    mirrored = P * np.array([-1.0, 1.0, 1.0])  # the mirror twin of each point on a symmetric head
    uv = project(R, P) * np.array([-1.0, 1.0])
    np.testing.assert_allclose(uv, project(g.hflip_label(R), mirrored), atol=1e-9)


@given(seeds)
def test_vflip_label_matches_projected_points(seed):
    R = random_rotations(seed, 1)[0]
    P = head_points(seed)
    mirrored = P * np.array([-1.0, 1.0, 1.0])
    uv = project(R, P) * np.array([1.0, -1.0])
    np.testing.assert_allclose(uv, project(g.vflip_label(R), mirrored), atol=1e-9)


def test_label_transforms_on_euler_angles():
    # Independent expectations from the angle conventions: an image turned counterclockwise by t
    # has roll - t; a mirror negates yaw and roll.
    R = g.euler_to_matrix(0.0, 0.0, 0.4)
    np.testing.assert_allclose(
        g.matrix_to_euler(g.rotate_label(R, 30.0)), (0.0, 0.0, 0.4 - math.radians(30)), atol=1e-12
    )
    R = g.euler_to_matrix(0.2, 0.5, 0.3)
    np.testing.assert_allclose(g.matrix_to_euler(g.hflip_label(R)), (0.2, -0.5, -0.3), atol=1e-12)


@given(seeds, degrees)
def test_transforms_preserve_geodesic_distance(seed, deg):
    """CLERF Theorem 3.1: d(A, B) = d(H(A), H(B)) for every geometric augmentation H."""
    A, B = random_rotations(seed, 2)
    d = g.geodesic_distance(A, B)
    for H in (lambda R: g.rotate_label(R, deg), g.hflip_label, g.vflip_label):
        HA, HB = H(A), H(B)
        assert is_rotation(HA) and is_rotation(HB)
        assert abs(g.geodesic_distance(HA, HB) - d) < 1e-9


@given(seeds)
def test_involutions(seed):
    R = random_rotations(seed)
    np.testing.assert_allclose(g.hflip_label(g.hflip_label(R)), R, atol=1e-12)
    np.testing.assert_allclose(g.vflip_label(g.vflip_label(R)), R, atol=1e-12)
    np.testing.assert_allclose(g.rotate_label(g.rotate_label(R, 70.0), -70.0), R, atol=1e-12)


# --------------------------------------------------------------------------- metrics


def test_mae_euler_wraps_and_averages():
    pred = np.radians([[10.0, 179.0, -170.0], [0.0, 20.0, 5.0]])
    true = np.radians([[20.0, -179.0, 170.0], [0.0, 0.0, 0.0]])
    # By hand: pitch |10-20| = 10 and 0; yaw 179 vs -179 is 2 deg, then 20; roll -170 vs 170 is 20, then 5.
    np.testing.assert_allclose(g.euler_errors(pred, true), [[10, 2, 20], [0, 20, 5]], atol=1e-9)
    m = g.mae_euler(pred, true)
    assert m == pytest.approx(
        {"pitch": 5.0, "yaw": 11.0, "roll": 12.5, "mean": (5 + 11 + 12.5) / 3}
    )


def test_mae_euler_from_matrices():
    true = g.euler_to_matrix(np.radians([10.0]), np.radians([20.0]), np.radians([30.0]))
    pred = g.euler_to_matrix(np.radians([13.0]), np.radians([20.0]), np.radians([25.0]))
    np.testing.assert_allclose(g.euler_errors(pred, true), [[3.0, 0.0, 5.0]], atol=1e-9)


def test_maev_by_hand():
    # A turn about z by t moves the x and y axes by t and leaves z: MAEV = 2t/3.
    t = 30.0
    R = Rotation.from_euler("z", t, degrees=True).as_matrix()
    assert g.maev(R, np.eye(3)) == pytest.approx(2 * t / 3)
    assert g.maev(np.eye(3), np.eye(3)) == pytest.approx(0.0, abs=1e-9)


def test_geodesic_error_in_degrees():
    R = Rotation.from_euler("x", 90, degrees=True).as_matrix()
    assert g.geodesic_error(R, np.eye(3)) == pytest.approx(90.0)


# --------------------------------------------------------------------------- sampling


def test_sample_rotations_uniform_over_so3():
    R = g.sample_rotations(20000, seed=0)
    assert R.shape == (20000, 3, 3) and is_rotation(R, 1e-9)
    # Haar measure: the rotation angle t has density (1 - cos t) / pi, so E[t] = pi/2 + 2/pi and
    # every column is uniform on the sphere (mean 0, E[x^2] = 1/3).
    t = g.geodesic_distance(R, np.eye(3))
    assert abs(t.mean() - (math.pi / 2 + 2 / math.pi)) < 0.02
    assert np.abs(R.mean(axis=0)).max() < 0.02
    assert np.abs((R**2).mean(axis=0) - 1 / 3).max() < 0.01
    np.testing.assert_array_equal(g.sample_rotations(5, seed=1), g.sample_rotations(5, seed=1))


def test_sample_rotations_in_ranges():
    R = g.sample_rotations(
        2000, seed=2, yaw_range=(-60, 60), pitch_range=(-30, 10), roll_range=(5, 6)
    )
    p, y, r = (np.degrees(a) for a in g.matrix_to_euler(R))
    assert y.min() >= -60 and y.max() <= 60 and y.min() < -55 and y.max() > 55
    assert p.min() >= -30 and p.max() <= 10
    assert r.min() >= 5 and r.max() <= 6
    with pytest.raises(ValueError, match="yaw_range"):
        g.sample_rotations(3, seed=0, yaw_range=(10, -10))


# --------------------------------------------------------------------------- cameras


def test_frontal_camera_on_plus_z_looking_at_pivot():
    c, roll = g.camera_from_pose(np.eye(3))
    M = c[:16].reshape(4, 4)
    np.testing.assert_allclose(M[:3, 3], [0, 0, 0.2 + 2.7], atol=1e-6)
    np.testing.assert_allclose(M[:3, 2], [0, 0, -1], atol=1e-6)  # forward along -z
    np.testing.assert_allclose(M[:3, 1], [0, -1, 0], atol=1e-6)  # image down is world down
    np.testing.assert_allclose(
        c[16:].reshape(3, 3), [[4.2647, 0, 0.5], [0, 4.2647, 0.5], [0, 0, 1]], atol=1e-6
    )
    assert roll == 0.0
    np.testing.assert_allclose(g.frontal_camera(), c)


@given(seeds, st.floats(1.0, 5.0), st.tuples(*[st.floats(-0.5, 0.5)] * 3))
@settings(max_examples=50)
def test_camera_geometry(seed, radius, pivot):
    R = random_rotations(seed, 6)
    c, _ = g.camera_from_pose(R, radius=radius, pivot=pivot)
    M = c[:, :16].reshape(-1, 4, 4).astype(np.float64)
    rot, pos = M[:, :3, :3], M[:, :3, 3]
    assert is_rotation(rot, 1e-5)
    np.testing.assert_allclose(np.linalg.norm(pos - np.asarray(pivot), axis=-1), radius, rtol=1e-5)
    look = (np.asarray(pivot) - pos) / radius
    np.testing.assert_allclose(rot[:, :, 2], look, atol=1e-5)  # z axis points at the pivot
    # Look-at with world up: the image x axis stays horizontal (no camera roll).
    np.testing.assert_allclose(rot[:, 1, 0], 0.0, atol=1e-5)
    np.testing.assert_allclose(M[:, 3], np.broadcast_to([0, 0, 0, 1.0], (len(R), 4)), atol=0)


@given(seeds)
@settings(max_examples=50)
def test_camera_plus_roll_reproduces_label(seed):
    """Rendering the upright head with the camera, then rotating the image by -roll, must give the
    projection of the head under label R (checked by projecting actual points)."""
    R = random_rotations(seed, 1)[0]
    c, roll = g.camera_from_pose(R, pivot=(0.0, 0.0, 0.0))
    M = c[:16].reshape(4, 4).astype(np.float64)
    P = head_points(seed) * 0.1
    world = P @ g.C.T  # the upright head in the y-up world: frontal camera axes are C
    cam = (world - M[:3, 3]) @ M[:3, :3]  # world -> camera coordinates
    uv_cam = cam[:, :2] / cam[:, 2:3]
    t = -float(roll)  # counterclockwise image rotation
    rot2d = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    expected = project(R, P, depth=2.7, f=1.0)
    np.testing.assert_allclose(uv_cam @ rot2d.T, expected, atol=2e-5)


def test_camera_yaw_and_pitch_signs():
    # Camera for yaw > 0 sits on the world +x side; for pitch > 0 below the head (y-up world).
    c, _ = g.camera_from_pose(g.euler_to_matrix(0.0, 0.5, 0.0))
    assert c[3] > 0.5
    c, _ = g.camera_from_pose(g.euler_to_matrix(0.4, 0.0, 0.0))
    assert c[7] < -0.5
    # Roll-free labels within +-90 deg yaw: the orbit angles are the label's own.
    p, y, r = g.orbit_decomposition(g.euler_to_matrix(0.3, -0.8, 0.0))
    np.testing.assert_allclose([p, y, r], [0.3, -0.8, 0.0], atol=1e-12)


# --------------------------------------------------------------------------- torch inputs
# The same functions on tensors: values against scipy or geometry written out here, and the type,
# dtype, device and batch shape of the input kept.

S_MIRROR = np.diag([-1.0, 1.0, 1.0])  # a head point's mirror twin: x -> -x in the head frame
IMAGE_X_MIRROR = np.diag([-1.0, 1.0, 1.0])  # camera frame: image x -> -x
IMAGE_Y_MIRROR = np.diag([1.0, -1.0, 1.0])  # camera frame: image y -> -y
CV = np.diag([1.0, -1.0, -1.0])  # DESIGN.md's C: dataset head frame <-> OpenCV camera frame
dtypes = st.sampled_from([torch.float64, torch.float32])


def atol_for(dtype, float64=1e-12, float32=2e-6):
    return float64 if dtype == torch.float64 else float32


def mirrored_label(R, image_mirror):
    """The label of a mirrored image, from geometry alone (numpy).

    The head puts point p at R_cam p (camera frame, R_cam = C R^T C). Mirroring the image maps that
    to M R_cam p; the head is symmetric, so its point S p (the mirror twin) is where p was shown,
    and the new camera-frame rotation R_cam' satisfies R_cam' (S p) = M R_cam p for all p:
    R_cam' = M R_cam S (a proper rotation: two reflections). Back to the dataset frame: C R_cam'^T C.
    """
    R_cam = CV @ np.swapaxes(R, -1, -2) @ CV
    R_cam2 = image_mirror @ R_cam @ S_MIRROR
    return CV @ np.swapaxes(R_cam2, -1, -2) @ CV


def column_angles_deg(A, B):
    """Angles in degrees between matching columns of A and B (numpy, by arccos of the dot)."""
    A = A / np.linalg.norm(A, axis=-2, keepdims=True)
    B = B / np.linalg.norm(B, axis=-2, keepdims=True)
    return np.degrees(np.arccos(np.clip((A * B).sum(-2), -1.0, 1.0)))


def body_turn(axis, degrees_):
    """Rotation by ``degrees_`` about basis axis ``axis`` (0, 1, 2), from scipy."""
    return Rotation.from_rotvec(np.radians(degrees_) * np.eye(3)[axis]).as_matrix()


@given(seeds, dtypes)
@settings(max_examples=30)
def test_hflip_and_vflip_label_on_tensors(seed, dtype):
    R = random_rotations(seed, 8).reshape(2, 4, 3, 3)
    Rt = torch.tensor(R, dtype=dtype)
    for fn, mirror in ((g.hflip_label, IMAGE_X_MIRROR), (g.vflip_label, IMAGE_Y_MIRROR)):
        out = fn(Rt)
        assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.device == Rt.device
        assert out.shape == (2, 4, 3, 3)
        expected = mirrored_label(Rt.double().numpy(), mirror)
        np.testing.assert_allclose(
            out.double().numpy(), expected, atol=atol_for(dtype, 1e-12, 1e-6)
        )
    # The Euler reading of a horizontal mirror (scipy): pitch stays, yaw and roll change sign.
    roll, yaw, pitch = Rotation.from_matrix(R[0, 0]).as_euler("ZYX")
    flipped = g.hflip_label(torch.tensor(R[0, 0], dtype=dtype)).double().numpy()
    np.testing.assert_allclose(
        flipped, scipy_label(pitch, -yaw, -roll), atol=atol_for(dtype, 1e-12, 1e-6)
    )


@given(seeds, dtypes)
@settings(max_examples=30)
def test_geodesic_error_on_tensors_matches_scipy(seed, dtype):
    A, B = random_rotations(seed, 6), random_rotations(seed + 1, 6)
    # scipy: the angle of the relative rotation A^T B (A^-1 B), in degrees.
    expected = np.degrees((Rotation.from_matrix(A).inv() * Rotation.from_matrix(B)).magnitude())
    At, Bt = torch.tensor(A, dtype=dtype), torch.tensor(B, dtype=dtype)
    out = g.geodesic_error(At.reshape(2, 3, 3, 3), Bt.reshape(2, 3, 3, 3))
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == (2, 3)
    np.testing.assert_allclose(
        out.reshape(-1).double().numpy(), expected, atol=atol_for(dtype, 1e-9, 1e-3)
    )
    np.testing.assert_allclose(g.geodesic_error(A, B), expected, atol=1e-9)


@given(seeds, st.integers(0, 2), st.floats(-180.0, 180.0), st.booleans())
@settings(max_examples=60)
def test_maev_of_a_body_turn_is_two_thirds_of_the_angle(seed, axis, t, as_torch):
    """Turning R about its own axis k by t moves the two other axis vectors by |t| and leaves axis k:
    MAEV = 2|t|/3. Any common rotation Q on the left changes no angle between columns."""
    R = random_rotations(seed, 1)[0]
    Q = random_rotations(seed + 7, 1)[0]
    pred, true = Q @ R @ body_turn(axis, t), Q @ R
    if as_torch:
        pred, true = torch.tensor(pred), torch.tensor(true)
    out = g.maev(pred, true)
    assert isinstance(out, torch.Tensor) == as_torch
    assert abs(float(out) - 2 * abs(t) / 3) < 1e-6


@given(seeds, dtypes)
@settings(max_examples=30)
def test_maev_on_tensors_matches_arccos_of_columns(seed, dtype):
    A, B = random_rotations(seed, 8), random_rotations(seed + 1, 8)
    expected = column_angles_deg(A, B).mean(-1)
    out = g.maev(torch.tensor(A, dtype=dtype), torch.tensor(B, dtype=dtype))
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == (8,)
    # arccos near 1 loses about 1e-6 deg in float64: compare at 1e-5.
    np.testing.assert_allclose(out.double().numpy(), expected, atol=atol_for(dtype, 1e-5, 1e-2))


@given(
    st.lists(st.floats(-180.0, 180.0), min_size=3, max_size=3),
    st.lists(st.integers(-3, 3), min_size=3, max_size=3),
    st.lists(st.floats(-179.5, 179.5), min_size=3, max_size=3),
    st.booleans(),
)
def test_mae_wraps_whole_turns(a, k, d, as_torch):
    """Angles a and a + 360 k + d (degrees) are |d| apart for |d| < 180, whatever the whole turns k."""
    true = np.radians(a)
    pred = np.radians(np.asarray(a) + 360.0 * np.asarray(k) + np.asarray(d))
    if as_torch:
        pred, true = torch.tensor(pred)[None], torch.tensor(true)[None]
    e = g.euler_errors(pred, true)
    assert isinstance(e, torch.Tensor) == as_torch
    np.testing.assert_allclose(np.asarray(e).reshape(3), np.abs(d), atol=1e-9)
    m = g.mae_euler(pred, true)
    assert all(type(v) is float for v in m.values())
    assert m["mean"] == pytest.approx(np.abs(d).mean(), abs=1e-9)
    assert [m["pitch"], m["yaw"], m["roll"]] == pytest.approx(np.abs(d), abs=1e-9)


@given(seeds, dtypes)
@settings(max_examples=30)
def test_euler_errors_of_tensor_matrices(seed, dtype):
    rng = np.random.default_rng(seed)
    # Angles away from gimbal lock, where the Euler reading of a matrix is unique.
    ang_p = rng.uniform([-180, -85, -180], [180, 85, 180], size=(5, 3))
    ang_t = rng.uniform([-180, -85, -180], [180, 85, 180], size=(5, 3))
    pred = np.stack([scipy_label(*np.radians(x)) for x in ang_p])
    true = np.stack([scipy_label(*np.radians(x)) for x in ang_t])
    diff = np.abs(ang_p - ang_t) % 360.0
    expected = np.minimum(diff, 360.0 - diff)  # by hand: the shorter way round
    e = g.euler_errors(torch.tensor(pred, dtype=dtype), torch.tensor(true, dtype=dtype))
    assert isinstance(e, torch.Tensor) and e.dtype == dtype and e.shape == (5, 3)
    np.testing.assert_allclose(e.double().numpy(), expected, atol=atol_for(dtype, 1e-7, 5e-3))
    m = g.mae_euler(torch.tensor(pred, dtype=dtype), torch.tensor(true, dtype=dtype))
    assert all(type(v) is float for v in m.values())
    assert m["mean"] == pytest.approx(expected.mean(), abs=atol_for(dtype, 1e-7, 5e-3))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_camera_from_pose_on_tensors(dtype):
    """Tensors in, tensors out (c float32, roll in R's dtype, R's device); cameras written out:
    yaw t puts the camera at pivot + r (sin t, 0, cos t), pitch u at pivot + r (0, -sin u, cos u),
    both looking at the pivot; a pure roll label keeps the frontal camera and returns its roll."""
    t, u, rho = math.radians(30), math.radians(20), math.radians(-65)
    R = torch.tensor(
        np.stack([scipy_label(0, t, 0), scipy_label(u, 0, 0), scipy_label(0, 0, rho)]), dtype=dtype
    )
    pivot, r = (0.1, -0.2, 0.3), 2.5
    c, roll = g.camera_from_pose(R, radius=r, pivot=pivot)
    assert isinstance(c, torch.Tensor) and c.dtype == torch.float32 and c.shape == (3, 25)
    assert isinstance(roll, torch.Tensor) and roll.dtype == dtype and roll.shape == (3,)
    assert c.device == R.device and roll.device == R.device
    M = c[:, :16].reshape(3, 4, 4).double().numpy()
    p = np.asarray(pivot)
    # Columns of the rotation: camera x (right), y (down), z (forward, toward the pivot).
    want_rot = [
        np.array([[math.cos(t), 0, -math.sin(t)], [0, -1, 0], [-math.sin(t), 0, -math.cos(t)]]),
        np.stack([[1, 0, 0], [0, -math.cos(u), -math.sin(u)], [0, math.sin(u), -math.cos(u)]], 1),
        np.diag([1.0, -1.0, -1.0]),
    ]
    want_pos = [
        p + r * np.array([math.sin(t), 0, math.cos(t)]),
        p + r * np.array([0, -math.sin(u), math.cos(u)]),
        p + r * np.array([0, 0, 1.0]),
    ]
    for i in range(3):
        np.testing.assert_allclose(M[i, :3, :3], want_rot[i], atol=1e-6)
        np.testing.assert_allclose(M[i, :3, 3], want_pos[i], atol=1e-5)
        np.testing.assert_allclose(M[i, 3], [0, 0, 0, 1], atol=0)
        np.testing.assert_allclose(
            c[i, 16:].numpy(), [4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1], atol=1e-6
        )
    np.testing.assert_allclose(
        roll.double().numpy(), [0.0, 0.0, rho], atol=atol_for(dtype, 1e-12, 1e-6)
    )
