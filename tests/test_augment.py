"""Image augmentations move pixels exactly as their label transforms move projected 3D points."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from clerf_ray import augment, geometry

SIZE = 65  # odd, so the rotation centre (SIZE / 2 in continuous coordinates) is a pixel centre


def dot_image(u, v, size=SIZE):
    """A black image with one white pixel whose centre is nearest to (u, v) (continuous coords)."""
    img = np.zeros((size, size, 3), np.uint8)
    img[int(math.floor(v)), int(math.floor(u))] = 255
    return img


def dot_position(img):
    """Intensity-weighted centroid of the image, in continuous coordinates (pixel centres i + .5)."""
    w = img[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    return np.array([(w * (xs + 0.5)).sum() / w.sum(), (w * (ys + 0.5)).sum() / w.sum()])


def project_px(R, p, size=SIZE, scale=12.0):
    """Orthographic projection of head point p under label R into pixel coordinates."""
    x = geometry.to_camera(R) @ p
    return np.array([size / 2 + scale * x[0], size / 2 + scale * x[1]])


def snap(uv):
    return np.floor(uv) + 0.5


def test_rotate_moves_pixels_counterclockwise():
    # A dot right of centre goes above the centre after +90 deg (counterclockwise on screen).
    c = SIZE / 2
    img = dot_image(c + 20, c)
    out, _ = augment.rotate(img, np.eye(3), 90.0, fill=(0, 0, 0))
    np.testing.assert_allclose(dot_position(out), [c, c - 20], atol=0.05)


@given(st.integers(0, 2**31), st.floats(-180, 180))
@settings(max_examples=30, deadline=None)
def test_rotate_image_agrees_with_rotate_label(seed, deg):
    R = Rotation.random(random_state=seed).as_matrix()
    p = np.random.default_rng(seed).uniform(-1.5, 1.5, size=3)
    uv = snap(project_px(R, p))
    out, R2 = augment.rotate(dot_image(*uv), R, deg, fill=(0, 0, 0))
    if out.max() == 0:
        return  # the dot was rotated out of the frame (corner)
    expected = project_px(R2, p)
    # The dot was snapped to a pixel centre: half a pixel, then bilinear spread.
    assert (
        np.linalg.norm(dot_position(out) - (expected + (uv - project_px(R, p)) @ _rot2d(deg).T))
        < 0.75
    )


def _rot2d(deg):
    t = math.radians(deg)
    return np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])


@pytest.mark.parametrize("op", ["hflip", "vflip"])
@given(seed=st.integers(0, 2**31))
@settings(max_examples=30, deadline=None)
def test_flips_agree_with_label_transforms(op, seed):
    R = Rotation.random(random_state=seed).as_matrix()
    # |p| <= 1.5 sqrt(3): the projection stays inside the 65-px frame.
    p = np.random.default_rng(seed).uniform(-1.5, 1.5, size=3)
    twin = p * np.array([-1.0, 1.0, 1.0])  # the same point on the other side of a symmetric head
    uv = snap(project_px(R, p))
    out, R2 = getattr(augment, op)(dot_image(*uv), R)
    # Flips are exact on pixel centres: the dot lands on the twin's projection under R2.
    np.testing.assert_allclose(dot_position(out), snap(project_px(R2, twin)), atol=1e-9)


def test_geometric_augment_applies_one_draw_to_all_images():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, size=(SIZE, SIZE, 3), dtype=np.uint8)
    b = rng.integers(0, 255, size=(SIZE, SIZE, 3), dtype=np.uint8)
    R = Rotation.random(random_state=1).as_matrix()
    aug = augment.GeometricAugment.preset("fa")
    draw = (37.0, True, False)
    (a2, b2), R2 = aug.apply([a, b], R, draw)
    # Compose the elementary operations by hand for each image.
    for img, out in ((a, a2), (b, b2)):
        ref, R_ref = augment.hflip(img, R)
        ref, R_ref = augment.rotate(ref, R_ref, 37.0)
        np.testing.assert_array_equal(out, ref)
    np.testing.assert_allclose(R2, R_ref, atol=1e-12)
    np.testing.assert_allclose(aug.label(R, draw), R_ref, atol=1e-12)


def test_geometric_augment_random_draws_and_presets():
    R = np.eye(3)
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    sa = augment.GeometricAugment.preset("sa")
    fa = augment.GeometricAugment.preset("fa")
    rng = np.random.default_rng(0)
    sa_angles = [sa.draw(rng) for _ in range(200)]
    assert all(abs(d) <= 15 and not h and not v for d, h, v in sa_angles)
    fa_draws = [fa.draw(rng) for _ in range(400)]
    assert max(d for d, _, _ in fa_draws) > 150 and min(d for d, _, _ in fa_draws) < -150
    assert 100 < sum(h for _, h, _ in fa_draws) < 300 and 100 < sum(v for _, _, v in fa_draws) < 300
    # Same seed, same draw: reproducible.
    (i1,), R1 = fa([img], R, np.random.default_rng(5))
    (i2,), R2 = fa([img], R, np.random.default_rng(5))
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(R1, R2)
    with pytest.raises(ValueError, match="preset"):
        augment.GeometricAugment.preset("xx")
    with pytest.raises(ValueError, match="hflip_p"):
        augment.GeometricAugment(hflip_p=1.5)


def test_fa_augmentation_covers_upside_down():
    # From upright frontal-ish labels, FA reaches upside-down heads (the face's up axis pointing down).
    aug = augment.GeometricAugment.preset("fa")
    rng = np.random.default_rng(0)
    R = geometry.sample_rotations(
        500, seed=1, yaw_range=(-60, 60), pitch_range=(-30, 30), roll_range=(-20, 20)
    )
    up = np.array([aug.label(r, aug.draw(rng)) for r in R])
    # Head's "up" direction in the camera frame: -y of the head frame mapped by R_cam.
    head_up = geometry.to_camera(up) @ np.array([0.0, -1.0, 0.0])
    assert (head_up[:, 1] > 0.5).mean() > 0.2  # pointing down in the image


def test_bad_image_is_rejected():
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        augment.rotate(np.zeros((4, 4)), np.eye(3), 10)
