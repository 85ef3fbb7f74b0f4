"""Image augmentations move pixels exactly as their label transforms move projected 3D points.

Every expected value here is computed independently of ``clerf_ray.augment``: pixels with numpy
(``rot90``/``flip`` at quarter turns, a bilinear resampler written out below for other angles) and
points rotated about the image centre; labels from the camera-frame convention of DESIGN.md
written out with explicit matrices (``R_cam = C R^T C``, ``C = diag(1, -1, -1)``).
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from clerf_ray import augment, geometry

SIZE = 65  # odd, so the rotation centre (SIZE / 2 in continuous coordinates) is a pixel centre

C = np.diag([1.0, -1.0, -1.0])  # dataset head frame <-> OpenCV camera frame (DESIGN.md)
FX = np.diag([-1.0, 1.0, 1.0])  # image x -> -x (and the head's mirror through its sagittal plane)
FY = np.diag([1.0, -1.0, 1.0])  # image y -> -y
I3 = np.eye(3)


# --------------------------------------------------------------------------- independent references


def screen_turn(deg):
    """(3, 3) map of camera-frame points (x right, y down) for an image turned ``deg`` CCW on screen.

    Counterclockwise as displayed takes the point right of centre (1, 0) to above it (0, -1).
    """
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def image_map(deg, h=False, v=False):
    """Map of image points about the centre: mirrors first, then the turn (GeometricAugment order)."""
    return screen_turn(deg) @ (FY if v else I3) @ (FX if h else I3)


def expected_label(R, deg=0.0, h=False, v=False):
    """Label after mirrors then a CCW turn, from the camera frame alone.

    The head point p lands at ``R_cam p`` (``R_cam = C R^T C``); the image map A moves that to
    ``A R_cam p``. With an odd number of mirrors the picture is of the head's mirror twin
    (``p -> FX p``, the same point on the other side of a symmetric head), so
    ``R_cam' = A R_cam FX`` and ``R' = C R_cam'^T C``.
    """
    R_cam = C @ np.asarray(R).T @ C
    R_cam2 = image_map(deg, h, v) @ R_cam @ (FX if h != v else I3)
    return C @ R_cam2.T @ C


def project(R, p, scale=12.0, size=SIZE):
    """Orthographic projection of head point p under label R, in continuous pixel coordinates."""
    x = C @ np.asarray(R).T @ C @ p
    return np.array([size / 2 + scale * x[0], size / 2 + scale * x[1]])


def move_point(uv, deg, h=False, v=False, size=SIZE):
    """Where an image point goes under mirrors then the turn about the centre."""
    c = np.array([size / 2, size / 2])
    return c + image_map(deg, h, v)[:2, :2] @ (np.asarray(uv) - c)


def ref_flip_rot(img, deg, h=False, v=False):
    """Mirrors then a quarter turn with numpy alone (``deg`` a multiple of 90)."""
    k = int(round(deg / 90.0))
    assert k * 90.0 == deg
    if h:
        img = np.fliplr(img)
    if v:
        img = np.flipud(img)
    return np.rot90(img, k % 4)  # np.rot90 turns counterclockwise as displayed


def ref_rotate(img, deg, fill="edge"):
    """Bilinear rotation by ``deg`` CCW as displayed about the centre, with numpy alone.

    Pixel centres are at i + 0.5. ``fill="edge"``: the image is continued by mirror reflection
    about its border pixels (the documented default: no constant-coloured corners). A colour:
    points whose source lies outside the image get that colour.

    Returns the float image and, per pixel, the distance of its source from the image border (the
    validity test of a constant fill is ill-conditioned where that is ~0).
    """
    h, w = img.shape[:2]
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    ys, xs = np.mgrid[0:h, 0:w]
    dx, dy = xs + 0.5 - w / 2, ys + 0.5 - h / 2
    # Source of an output point: the inverse (clockwise) turn.
    sx, sy = c * dx - s * dy + w / 2, s * dx + c * dy + h / 2
    ix, iy = sx - 0.5, sy - 0.5
    margin = np.full((h, w), np.inf)
    if fill == "edge":

        def mirror(i, n):
            i = np.mod(i, 2 * (n - 1))
            return np.minimum(i, 2 * (n - 1) - i)

        ix, iy = mirror(ix, w), mirror(iy, h)
    else:
        valid = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
        margin = np.minimum.reduce([np.abs(sx), np.abs(sx - w), np.abs(sy), np.abs(sy - h)])
    x0, y0 = np.floor(ix).astype(int), np.floor(iy).astype(int)
    fx, fy = (ix - x0)[..., None], (iy - y0)[..., None]
    f = img.astype(np.float64)

    def at(y, x):
        return f[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)]

    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    out = top * (1 - fy) + bottom * fy
    if fill != "edge":
        out = np.where(valid[..., None], out, np.asarray(fill, np.float64))
    return out, margin


def assert_close_to_reference(out, ref, margin):
    assert out.shape == ref.shape and out.dtype == np.uint8
    keep = margin > 1e-6
    err = np.abs(out.astype(np.float64) - ref)[keep]
    assert err.max() <= 1.0 + 1e-9, f"max error {err.max():.2f} (bilinear rounding is <= 1)"


def splat(img, channel, uv, value=240.0):
    """Add a dot whose intensity-weighted centroid is exactly uv (bilinear splat)."""
    ix, iy = uv[0] - 0.5, uv[1] - 0.5
    x0, y0 = int(math.floor(ix)), int(math.floor(iy))
    fx, fy = ix - x0, iy - y0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            img[y0 + dy, x0 + dx, channel] += np.uint8(round(value * wx * wy))
    return img


def centroid(img, channel):
    """Intensity-weighted centroid of one channel inside the inscribed disc (continuous coords).

    The disc excludes the corners, which the default fill fills with reflected image content.
    """
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    inside = (xs + 0.5 - w / 2) ** 2 + (ys + 0.5 - h / 2) ** 2 < (min(h, w) / 2 - 1) ** 2
    wt = img[..., channel].astype(np.float64) * inside
    return np.array([(wt * (xs + 0.5)).sum() / wt.sum(), (wt * (ys + 0.5)).sum() / wt.sum()])


def random_image(seed, shape=(SIZE, SIZE)):
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def test_references_follow_design_md():
    # The references above, checked against DESIGN.md and scipy rather than against augment.
    R = Rotation.random(random_state=3).as_matrix()
    # A CCW image turn is a turn about the camera's optical axis (z into the scene): R_cam' =
    # Rz(-t) R_cam, so R' = R Rz(-t) in the dataset frame.
    Rz = Rotation.from_euler("z", -37.0, degrees=True).as_matrix()
    np.testing.assert_allclose(expected_label(R, 37.0), R @ Rz, atol=1e-12)
    # roll > 0 tilts the eye line down toward the image's right (clockwise as displayed): for a
    # face seen from the front, more roll is a clockwise image turn.
    R1 = Rotation.from_euler("z", 0.3 + 0.25).as_matrix()
    Rf = Rotation.from_euler("z", 0.3).as_matrix()
    np.testing.assert_allclose(expected_label(Rf, -math.degrees(0.25)), R1, atol=1e-12)
    pitch, yaw, roll = 0.2, -0.4, 0.3
    R0 = Rotation.from_euler("ZYX", [roll, yaw, pitch]).as_matrix()  # Rz(roll) Ry(yaw) Rx(pitch)
    # A horizontal mirror negates yaw and roll and keeps pitch.
    Rm = Rotation.from_euler("ZYX", [-roll, -yaw, pitch]).as_matrix()
    np.testing.assert_allclose(expected_label(R0, h=True), Rm, atol=1e-12)
    # A vertical mirror is a horizontal mirror then a half turn; both mirrors are a half turn.
    Rz180 = Rotation.from_euler("z", 180.0, degrees=True).as_matrix()
    np.testing.assert_allclose(expected_label(R, v=True), FX @ R @ FX @ Rz180, atol=1e-12)
    np.testing.assert_allclose(expected_label(R, h=True, v=True), expected_label(R, 180.0))
    # numpy's rot90 is counterclockwise as displayed, like move_point.
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[32, 52] = 255  # right of centre
    np.testing.assert_allclose(np.argwhere(np.rot90(img)[..., 0])[0], [12, 32])
    np.testing.assert_allclose(move_point([52.5, 32.5], 90.0), [32.5, 12.5], atol=1e-12)


# --------------------------------------------------------------------------- rotate


@pytest.mark.parametrize("fill", ["default", (0, 0, 0), (10, 20, 30)])
@pytest.mark.parametrize("deg", [90.0, 180.0, 270.0, -90.0, 450.0, -540.0])
@pytest.mark.parametrize("size", [SIZE, 64])
def test_rotate_quarter_turns_match_numpy(fill, deg, size):
    img = random_image(int(deg) % 7 + size)
    R = Rotation.random(random_state=int(deg) % 11).as_matrix()
    kw = {} if fill == "default" else {"fill": fill}
    out, R2 = augment.rotate(img, R, deg, **kw)
    np.testing.assert_array_equal(out, ref_flip_rot(img, deg))
    np.testing.assert_allclose(R2, expected_label(R, deg), atol=1e-12)


@pytest.mark.parametrize("fill", ["default", (10, 20, 30)])
@pytest.mark.parametrize("shape", [(33, 65), (48, 32)])
def test_rotate_rectangular_half_turn_and_full_turns(fill, shape):
    img = random_image(1, shape)
    R = Rotation.random(random_state=2).as_matrix()
    kw = {} if fill == "default" else {"fill": fill}
    out, R2 = augment.rotate(img, R, 180.0, **kw)
    np.testing.assert_array_equal(out, img[::-1, ::-1])
    np.testing.assert_allclose(R2, expected_label(R, 180.0), atol=1e-12)
    for deg in (0.0, 360.0, -720.0):
        out, R2 = augment.rotate(img, R, deg, **kw)
        np.testing.assert_array_equal(out, img)
        assert out is not img
        np.testing.assert_allclose(R2, R, atol=1e-12)


@pytest.mark.parametrize("fill", ["edge", (10, 20, 30)])
@pytest.mark.parametrize("shape", [(SIZE, SIZE), (64, 64), (33, 65), (48, 32)])
@pytest.mark.parametrize("deg", [37.0, -121.3, 45.0, 3.0, 179.9, 90.0])
def test_rotate_matches_reference_resampling(fill, shape, deg):
    # Every pixel, corners included: default reflection or the given colour.
    img = random_image(shape[0] + abs(int(deg)), shape)
    kw = {} if fill == "edge" else {"fill": fill}  # the default is "edge"
    out, _ = augment.rotate(img, np.eye(3), deg, **kw)
    assert_close_to_reference(out, *ref_rotate(img, deg, fill))


@pytest.mark.parametrize(
    "shape", [(SIZE, SIZE), (64, 64), (33, 65), (65, 33), (20, 80), (3, 40), (3, 3), (1, 1)]
)
def test_default_fill_leaves_no_constant_corners(shape):
    # A uniform image stays uniform under any turn: the corners hold image content, never black.
    img = np.full((*shape, 3), (200, 120, 60), np.uint8)
    for deg in np.arange(-180.0, 180.0, 7.5):
        out, _ = augment.rotate(img, np.eye(3), deg)
        assert out.shape == img.shape
        bad = (out != img).any(-1)
        assert not bad.any(), f"{bad.sum()} pixels off the image colour at {deg} deg"


@pytest.mark.parametrize("fill", ["default", (0, 0, 0)])
def test_rotate_moves_pixels_counterclockwise(fill):
    # A square right of centre goes above the centre after +90 deg, and 30 deg around for +30.
    c = SIZE / 2
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[31:34, 49:52] = 255  # centre (c + 18, c)
    kw = {} if fill == "default" else {"fill": fill}
    for deg in (90.0, 30.0, -65.0):
        out, _ = augment.rotate(img, np.eye(3), deg, **kw)
        t = math.radians(deg)
        expected = [c + 18 * math.cos(t), c - 18 * math.sin(t)]  # y down: CCW goes up first
        np.testing.assert_allclose(centroid(out, 0), expected, atol=0.1)


@given(st.integers(0, 2**31), st.floats(-180, 180))
@settings(max_examples=30, deadline=None)
def test_rotate_image_agrees_with_label(seed, deg):
    # A projected head point, in the default fill: the dot lands where the returned label projects
    # the point, and that label is the camera-frame one.
    R = Rotation.random(random_state=seed).as_matrix()
    p = np.random.default_rng(seed).uniform(-1.0, 1.0, size=3)
    uv = project(R, p)
    img = splat(np.zeros((SIZE, SIZE, 3), np.uint8), 0, uv)
    out, R2 = augment.rotate(img, R, deg)
    np.testing.assert_allclose(R2, expected_label(R, deg), atol=1e-12)
    np.testing.assert_allclose(centroid(out, 0), project(R2, p), atol=0.3)
    np.testing.assert_allclose(centroid(out, 0), move_point(uv, deg), atol=0.3)


# --------------------------------------------------------------------------- flips


def test_flips_match_numpy_and_label_formula():
    img = random_image(4, (33, 48))
    R = Rotation.random(random_state=5).as_matrix()
    out, R2 = augment.hflip(img, R)
    np.testing.assert_array_equal(out, img[:, ::-1])
    np.testing.assert_allclose(R2, expected_label(R, h=True), atol=1e-12)
    out, R2 = augment.vflip(img, R)
    np.testing.assert_array_equal(out, img[::-1])
    np.testing.assert_allclose(R2, expected_label(R, v=True), atol=1e-12)


@pytest.mark.parametrize("op", ["hflip", "vflip"])
@given(seed=st.integers(0, 2**31))
@settings(max_examples=30, deadline=None)
def test_flips_agree_with_label_transforms(op, seed):
    R = Rotation.random(random_state=seed).as_matrix()
    p = np.random.default_rng(seed).uniform(-0.85, 0.85, size=3)  # within 18 px of the centre
    twin = FX @ p  # the same point on the other side of a symmetric head
    uv = project(R, p)
    out, R2 = getattr(augment, op)(splat(np.zeros((SIZE, SIZE, 3), np.uint8), 0, uv), R)
    # The mirrored picture shows the twin point where the new label projects it.
    np.testing.assert_allclose(centroid(out, 0), project(R2, twin), atol=0.01)


# --------------------------------------------------------------------------- GeometricAugment


ALL_FLIPS = [(False, False), (True, False), (False, True), (True, True)]


@pytest.mark.parametrize("fill", ["default", (0, 0, 0)])
@pytest.mark.parametrize("deg", [0.0, 90.0, 180.0, 270.0, -90.0, 37.5, -123.0])
@pytest.mark.parametrize(("h", "v"), ALL_FLIPS)
def test_apply_every_branch_to_every_image(fill, deg, h, v):
    aug = augment.GeometricAugment() if fill == "default" else augment.GeometricAugment(fill=fill)
    images = [random_image(10), random_image(11), random_image(12, (33, 65))]
    R = Rotation.random(random_state=13).as_matrix()
    outs, R2 = aug.apply(images, R, (deg, h, v))
    assert len(outs) == len(images)
    np.testing.assert_allclose(R2, expected_label(R, deg, h, v), atol=1e-12)
    np.testing.assert_allclose(aug.label(R, (deg, h, v)), expected_label(R, deg, h, v), atol=1e-12)
    for img, out in zip(images, outs, strict=True):
        square = img.shape[0] == img.shape[1]
        if deg % 90 == 0 and (square or deg % 180 == 0):
            np.testing.assert_array_equal(out, ref_flip_rot(img, deg, h, v))
        else:
            flipped = img[::-1] if v else img
            flipped = flipped[:, ::-1] if h else flipped
            assert_close_to_reference(out, *ref_rotate(flipped, deg, aug.fill))


# Head points for dots, |R_cam p| <= 1.5, so at scale 12 a dot stays within 18 px of the centre
# (inside the inscribed disc after any turn, and its reflections stay in the corners).
POINTS = np.array([[0.9, -0.6, -0.8], [-0.5, 0.9, 0.6], [0.3, 0.7, -1.0], [-0.8, -0.4, 0.5]])
SAGITTAL = np.array([[0.0, -1.0, -0.9], [0.0, 0.8, -0.5], [0.0, 0.3, 1.1], [0.0, -0.9, 0.2]])


def dotted_pair(R, points):
    """Anchor and positive sharing label R, two coloured dots each (points 0, 1 and 2, 3)."""
    images = []
    for k in (0, 2):
        img = np.zeros((SIZE, SIZE, 3), np.uint8)
        splat(img, 0, project(R, points[k]))
        splat(img, 1, project(R, points[k + 1]))
        images.append(img)
    return images


def test_enumerated_draws_move_images_and_label_together():
    # Many draws of the full preset: every branch occurs, and for each draw both images move like
    # a point under that draw and agree with the one returned label.
    aug = augment.GeometricAugment.preset("fa")
    rng = np.random.default_rng(0)
    R = Rotation.random(random_state=7).as_matrix()
    images = dotted_pair(R, POINTS)
    draws = [aug.draw(rng) for _ in range(48)]
    assert {(h, v) for _, h, v in draws} == set(ALL_FLIPS)
    for draw in draws:
        deg, h, v = draw
        outs, R2 = aug.apply(images, R, draw)
        np.testing.assert_allclose(R2, expected_label(R, deg, h, v), atol=1e-12)
        for i, out in enumerate(outs):
            for ch in (0, 1):
                p = POINTS[2 * i + ch]
                where = centroid(out, ch)
                np.testing.assert_allclose(where, move_point(project(R, p), *draw), atol=0.3)
                np.testing.assert_allclose(where, project(R2, FX @ p if h != v else p), atol=0.3)


def test_call_applies_one_draw_to_anchor_and_positive():
    # Whatever __call__ draws, both images must show their (sagittal, so mirror-invariant) points
    # where the one returned label projects them: one transform for all images and the label.
    aug = augment.GeometricAugment.preset("fa")
    labels = []
    for seed in range(24):
        R = Rotation.random(random_state=100 + seed).as_matrix()
        outs, R2 = aug(dotted_pair(R, SAGITTAL), R, np.random.default_rng(seed))
        labels.append(R2)
        for i, out in enumerate(outs):
            for ch in (0, 1):
                np.testing.assert_allclose(
                    centroid(out, ch), project(R2, SAGITTAL[2 * i + ch]), atol=0.3
                )
    # The draws differ from seed to seed (the rng is used).
    assert len({np.round(r, 6).tobytes() for r in labels}) == len(labels)


CONFIGS = {
    # name: (augmentation, documented rotation range, hflip_p, vflip_p); built inside the test so
    # that a constructor bug fails the test rather than the collection of the whole file.
    "custom": (lambda: augment.GeometricAugment((10.0, 50.0), 0.2, 0.7), (10.0, 50.0), 0.2, 0.7),
    "swapped": (
        lambda: augment.GeometricAugment((-90.0, -30.0), 0.8, 0.1),
        (-90.0, -30.0),
        0.8,
        0.1,
    ),
    "fixed": (lambda: augment.GeometricAugment((30.0, 30.0), 1.0, 0.0), (30.0, 30.0), 1.0, 0.0),
    "default": (lambda: augment.GeometricAugment(), (-180.0, 180.0), 0.5, 0.5),
    "none": (lambda: augment.GeometricAugment.preset("none"), (0.0, 0.0), 0.0, 0.0),
    "sa": (lambda: augment.GeometricAugment.preset("sa"), (-15.0, 15.0), 0.0, 0.0),
    "fa": (lambda: augment.GeometricAugment.preset("fa"), (-180.0, 180.0), 0.5, 0.5),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_draws_follow_the_configured_range_and_probabilities(name):
    make, (lo, hi), ph, pv = CONFIGS[name]
    aug = make()
    n = 4000
    rng = np.random.default_rng(1)
    draws = [aug.draw(rng) for _ in range(n)]
    deg = np.array([d for d, _, _ in draws])
    hf = np.array([h for _, h, _ in draws])
    vf = np.array([v for _, _, v in draws])
    assert all(isinstance(d, float) for d in deg)
    assert deg.min() >= lo and deg.max() <= hi
    if hi > lo:
        # Uniform over the whole range: ten equal bins each hold a tenth (5 sigma).
        counts = np.histogram(deg, bins=10, range=(lo, hi))[0]
        assert np.all(np.abs(counts - n / 10) < 5 * math.sqrt(n * 0.1 * 0.9)), counts
    else:
        assert np.all(deg == lo)

    def near(freq, p):
        return abs(freq - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12

    assert near(hf.mean(), ph), hf.mean()
    assert near(vf.mean(), pv), vf.mean()
    assert near((hf & vf).mean(), ph * pv)  # independent flips


def test_none_preset_is_the_identity():
    aug = augment.GeometricAugment.preset("none")
    images = [random_image(20), random_image(21, (33, 48))]
    R = Rotation.random(random_state=22).as_matrix()
    outs, R2 = aug(images, R, np.random.default_rng(0))
    for img, out in zip(images, outs, strict=True):
        np.testing.assert_array_equal(out, img)
    np.testing.assert_allclose(R2, R, atol=1e-12)


def test_fa_augmentation_covers_upside_down():
    # From upright frontal-ish labels, FA reaches upside-down heads (the face's up axis pointing down).
    aug = augment.GeometricAugment.preset("fa")
    rng = np.random.default_rng(0)
    R = geometry.sample_rotations(
        500, seed=1, yaw_range=(-60, 60), pitch_range=(-30, 30), roll_range=(-20, 20)
    )
    up = np.array([aug.label(r, aug.draw(rng)) for r in R])
    # Head's "up" direction in the camera frame: -y of the head frame mapped by R_cam.
    head_up = (C @ np.swapaxes(up, -1, -2) @ C) @ np.array([0.0, -1.0, 0.0])
    assert (head_up[:, 1] > 0.5).mean() > 0.2  # pointing down in the image


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        augment.rotate(np.zeros((4, 4)), np.eye(3), 10)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        augment.hflip(np.zeros((4, 4, 3), np.float32), np.eye(3))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        augment.GeometricAugment().apply([np.zeros((4, 4, 4), np.uint8)], np.eye(3), (0, 0, 0))
    with pytest.raises(ValueError, match="preset"):
        augment.GeometricAugment.preset("xx")
    with pytest.raises(ValueError, match="hflip_p"):
        augment.GeometricAugment(hflip_p=1.5)
    with pytest.raises(ValueError, match="vflip_p"):
        augment.GeometricAugment(vflip_p=-0.1)
    with pytest.raises(ValueError, match="rotation_deg"):
        augment.GeometricAugment(rotation_deg=(10.0, -10.0))
    augment.GeometricAugment(rotation_deg=(5.0, 5.0), hflip_p=0.0, vflip_p=1.0)  # bounds allowed
