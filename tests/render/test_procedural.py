"""The procedural renderer draws heads whose pixels and landmarks move exactly as the labels say.

Expected values come from geometry (label transforms, Euler signs, 2D rotations about the image
centre) and from the rendered silhouette, never from a second call of the function under test.

The equivariance tests (render at a transformed label vs transformed render) use
``lighting="frontal"``. The default ``lighting="random"`` draws the light per sample from identity
and pose (the seed includes a hash of R), so the render at a rotated or mirrored label is lit by
another light and is not the rotated or mirrored image; and any light off the view axis is fixed
in the camera frame, so it would not turn with the image either. A light along the view axis
gives Lambert and Blinn-Phong terms (the half vector is then the view axis too) that in-plane
rotation and mirroring leave unchanged. Backgrounds, also seeded by pose, are masked out.
"""

import math

import numpy as np
import pytest
from scipy import ndimage

from clerf_ray import augment, geometry
from clerf_ray.render import make_renderer
from clerf_ray.render.procedural import LANDMARK_NAMES, ProceduralRenderer

SIZE = 64


def euler_deg(pitch, yaw, roll):
    return geometry.euler_to_matrix(*np.radians([pitch, yaw, roll]))


@pytest.fixture(scope="module")
def frontal():
    """Light along the view axis: shading is invariant under in-plane rotation and mirroring
    (the default random light is drawn from identity and pose, so it changes with the label; see
    the module docstring)."""
    return make_renderer("procedural", image_size=SIZE, lighting="frontal")


@pytest.fixture(scope="module")
def default():
    return make_renderer("procedural", image_size=SIZE)


POSES = [(0, 0, 0), (10, 35, -5), (-30, 120, 20), (60, -20, 150), (-170, 10, 40)]
IDS = [3, 11, 42, 7, 1234567]


def interior(mask_a, mask_b, margin=3):
    """Pixels fully inside the head in both masks, 2 px away from silhouettes and the border."""
    inside = (mask_a > 0.999) & (mask_b > 0.999)
    inside = ndimage.binary_erosion(inside, iterations=2)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    # augment.rotate reflects the image into the corners: keep a disc that stays inside.
    return inside & ((xx - SIZE / 2) ** 2 + (yy - SIZE / 2) ** 2 < (SIZE / 2 - margin) ** 2)


def rotate_mask(mask, degrees):
    img = np.repeat((mask * 255).round().astype(np.uint8)[..., None], 3, -1)
    out, _ = augment.rotate(img, np.eye(3), degrees, fill=(0, 0, 0))
    return out[..., 0] / 255.0


def mad(a, b, where):
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64))[where].mean())


# ----------------------------------------------------------------------------- (a) image transforms


@pytest.mark.parametrize("degrees", [90.0, 30.0, -137.0])
def test_render_at_rotated_label_matches_rotated_render(frontal, degrees):
    R = np.stack([euler_deg(*p) for p in POSES])
    ids = np.array(IDS)
    img, mask = frontal.render(ids, R, return_mask=True)
    img_t, mask_t = frontal.render(ids, geometry.rotate_label(R, degrees), return_mask=True)
    diffs, controls = [], []
    for i in range(len(ids)):
        rotated, _ = augment.rotate(img[i], R[i], degrees)
        m = interior(mask_t[i], rotate_mask(mask[i], degrees))
        assert m.sum() > 300, "too few comparable head pixels"
        diffs.append(mad(img_t[i], rotated, m))
        # Control: the unrotated render compared on the same pixels is far off.
        controls.append(mad(img_t[i], img[i], m))
    # Bilinear resampling blurs decal edges (eyes, rims) by under a pixel: a few grey levels.
    limit = 1.0 if degrees == 90.0 else 7.0
    assert max(diffs) < limit, diffs
    assert all(c > 3 * d and c > 10.0 for c, d in zip(controls, diffs, strict=True)), (
        diffs,
        controls,
    )


def test_silhouette_of_rotated_label_is_rotated_silhouette(frontal):
    R = np.stack([euler_deg(*p) for p in POSES])
    ids = np.array(IDS)
    _, mask = frontal.render(ids, R, return_mask=True)
    _, mask_t = frontal.render(ids, geometry.rotate_label(R, 90.0), return_mask=True)
    # 90 deg counterclockwise as displayed is an exact pixel permutation: np.rot90.
    for i in range(len(ids)):
        np.testing.assert_allclose(mask_t[i], np.rot90(mask[i]), atol=1e-6)


def test_render_at_hflipped_label_matches_mirrored_render(frontal):
    R = np.stack([euler_deg(*p) for p in POSES])
    ids = np.array(IDS)
    img, mask = frontal.render(ids, R, return_mask=True)
    img_f, mask_f = frontal.render(ids, geometry.hflip_label(R), return_mask=True)
    for i in range(len(ids)):
        mirrored, _ = augment.hflip(img[i], R[i])
        # Geometry is mirror-symmetric: the silhouettes agree to rounding.
        np.testing.assert_allclose(mask_f[i], mask[i][:, ::-1], atol=1e-5)
        m = interior(mask_f[i], mask[i][:, ::-1])
        # Only the hair parting is asymmetric; it covers a few pixels at most.
        d = mad(img_f[i], mirrored, m)
        ctrl = mad(img_f[i], img[i], m)
        assert d < 4.0, (i, d)
        if abs(geometry.matrix_to_euler(R[i])[1]) > 0.2:  # the control needs an asymmetric view
            assert ctrl > 5 * d and ctrl > 8.0, (i, d, ctrl)


def test_distant_poses_look_different(frontal):
    """Front vs back, upright vs upside-down, left vs right profile: the images tell them apart."""
    ident = np.array([5, 5])
    pairs = [
        (euler_deg(0, 0, 0), euler_deg(0, 180, 0)),
        (euler_deg(0, 0, 0), euler_deg(0, 0, 180)),
        (euler_deg(0, 90, 0), euler_deg(0, -90, 0)),
        (euler_deg(-80, 0, 0), euler_deg(80, 0, 0)),  # top of the head vs under the chin
    ]
    for a, b in pairs:
        img, mask = frontal.render(ident, np.stack([a, b]), return_mask=True)
        m = (mask[0] > 0.5) | (mask[1] > 0.5)
        assert mad(img[0], img[1], m) > 20.0


# ----------------------------------------------------------------------------- (b) landmarks


def test_landmark_directions_follow_label_signs(default):
    ident = np.array([9, 9, 9, 9])
    R = np.stack(
        [euler_deg(0, 0, 0), euler_deg(0, 25, 0), euler_deg(25, 0, 0), euler_deg(0, 0, 20)]
    )
    lm = default.landmarks(ident, R)
    nose = lm["nose_tip"]
    assert nose[1, 0] < nose[0, 0] - 3, "yaw > 0 must move the nose toward the image's left"
    assert nose[2, 1] < nose[0, 1] - 3, "pitch > 0 must move the nose up"
    # Frontal: the subject's left eye is on the image's right, at the same height.
    assert lm["eye_left"][0, 0] > lm["eye_right"][0, 0]
    assert abs(lm["eye_left"][0, 1] - lm["eye_right"][0, 1]) < 1e-9
    # roll > 0: the eye line turns clockwise as displayed, by the roll angle.
    d = lm["eye_left"][3] - lm["eye_right"][3]
    assert d[1] > 0, "roll > 0 must put the image-right eye lower"
    assert math.degrees(math.atan2(d[1], d[0])) == pytest.approx(20.0, abs=1e-6)
    # The head centre is the image centre: nose tip below, mouth below the nose, chin lowest.
    assert lm["nose_tip"][0, 1] > SIZE / 2 - 4
    assert lm["nose_tip"][0, 1] < lm["mouth"][0, 1] < lm["chin"][0, 1]


def rotate_points(xy, degrees, size=SIZE):
    """Rotate (..., 2) continuous pixel coordinates about the image centre, counterclockwise as
    displayed (y points down)."""
    t = math.radians(degrees)
    d = xy - size / 2
    return size / 2 + np.stack(
        [
            d[..., 0] * math.cos(t) + d[..., 1] * math.sin(t),
            -d[..., 0] * math.sin(t) + d[..., 1] * math.cos(t),
        ],
        -1,
    )


@pytest.mark.parametrize("degrees", [90.0, 33.0, -160.0])
def test_landmarks_under_rotate_label_are_rotated_landmarks(default, degrees):
    R = geometry.sample_rotations(6, seed=1)
    ids = np.arange(6) * 17
    lm = default.landmarks(ids, R)
    lm_t = default.landmarks(ids, geometry.rotate_label(R, degrees))
    for name in LANDMARK_NAMES:
        np.testing.assert_allclose(lm_t[name], rotate_points(lm[name], degrees), atol=1e-6)


def test_landmarks_under_hflip_label_are_mirrored_and_swapped(default):
    R = geometry.sample_rotations(6, seed=2)
    ids = np.arange(6) * 5 + 1
    lm = default.landmarks(ids, R)
    lm_f = default.landmarks(ids, geometry.hflip_label(R))
    swap = {
        "eye_left": "eye_right",
        "eye_right": "eye_left",
        "ear_left": "ear_right",
        "ear_right": "ear_left",
    }
    for name in LANDMARK_NAMES:
        expected = lm[swap.get(name, name)].copy()
        expected[:, 0] = SIZE - expected[:, 0]
        np.testing.assert_allclose(lm_f[name], expected, atol=1e-6)


def test_nose_tip_is_the_silhouette_extreme_in_profile():
    """At yaw 90 deg the nose tip is the leftmost head pixel near its row (projection check
    against the image itself)."""
    r = ProceduralRenderer(image_size=128, lighting="frontal", background="grey")
    ids = np.array([2, 8, 31])
    R = np.stack([euler_deg(0, 90, 0)] * 3)
    _, mask = r.render(ids, R, return_mask=True)
    nose = r.landmarks(ids, R)["nose_tip"]
    for i in range(3):
        row = int(nose[i, 1])
        band = mask[i, max(row - 3, 0) : row + 4]
        cols = np.nonzero((band > 0.5).any(0))[0]
        # Coverage 0.5 is crossed at the silhouette, so compare in pixel-edge coordinates.
        left = cols.min() + 1.0 - band[:, cols.min()].max()
        assert abs(left - nose[i, 0]) < 1.5, (i, left, nose[i])


def test_landmark_visibility(default):
    ident = np.array([4, 4, 4])
    R = np.stack([euler_deg(0, 0, 0), euler_deg(0, 180, 0), euler_deg(0, 80, 0)])
    _, vis = default.landmarks(ident, R, return_visibility=True)
    assert vis["nose_tip"][0] and vis["eye_left"][0] and vis["mouth"][0]
    assert not vis["nose_tip"][1] and not vis["eye_left"][1] and not vis["mouth"][1]
    # yaw 80: the face turns to the image's left (the subject's own right), which shows the
    # camera the subject's left ear and hides the right one behind the head.
    assert vis["ear_left"][2] and not vis["ear_right"][2]


# ----------------------------------------------------------------------------- (c) identities


def test_identities_differ_in_pixels_but_share_landmarks(frontal):
    ids = np.arange(100, 112)
    R = np.repeat(euler_deg(5, 20, -10)[None], len(ids), 0)
    img, mask = frontal.render(ids, R, return_mask=True)
    lm = frontal.landmarks(ids, R)
    for i in range(1, len(ids)):
        m = interior(mask[0], mask[i])
        assert mad(img[0], img[i], m) > 8.0, i
    # Proportions vary by about +-10 %: landmarks stay within 5 px of their mean at 64 px.
    for name in LANDMARK_NAMES:
        spread = np.abs(lm[name] - lm[name].mean(0)).max()
        assert spread < 5.0, (name, spread)


# ----------------------------------------------------------------------------- (d) contract


def test_deterministic_and_batch_independent(default):
    R = geometry.sample_rotations(5, seed=3)
    ids = np.array([0, 1, 2, 3, 2**40 + 5])
    full = default.render(ids, R)
    again = default.render(ids, R)
    np.testing.assert_array_equal(full, again)
    # Same samples, other batch compositions and orders.
    part = default.render(ids[[4, 1]], R[[4, 1]])
    np.testing.assert_array_equal(part[0], full[4])
    np.testing.assert_array_equal(part[1], full[1])
    mixed = default.render(np.array([99, 3, 98]), np.stack([R[0], R[3], R[2]]))
    np.testing.assert_array_equal(mixed[1], full[3])
    # A tiny work budget forces one sample per chunk.
    single = ProceduralRenderer(image_size=SIZE, max_elements=1).render(ids, R)
    np.testing.assert_array_equal(single, full)


def test_background_varies_and_is_seedable(default):
    ident = np.array([7, 7])
    R = np.stack([euler_deg(0, 10, 0), euler_deg(0, 12, 0)])
    img, mask = default.render(ident, R, return_mask=True)
    bg = (mask[0] == 0) & (mask[1] == 0)
    assert img[0][bg].std(0).mean() > 10, "background must not be flat"
    assert mad(img[0], img[1], bg) > 10, "background must change with pose"
    seeded, mask = default.render(ident, R, background_seeds=np.array([5, 5]), return_mask=True)
    bg = (mask[0] == 0) & (mask[1] == 0)
    np.testing.assert_array_equal(seeded[0][bg], seeded[1][bg])


def test_image_size_and_output_format():
    for size in (32, 48):
        r = make_renderer("procedural", image_size=size, supersample=1)
        out, mask = r.render(np.array([1, 2]), np.stack([np.eye(3)] * 2), return_mask=True)
        assert out.shape == (2, size, size, 3) and out.dtype == np.uint8
        assert mask.shape == (2, size, size) and 0.0 <= mask.min() and mask.max() == 1.0
        # The head fills about two thirds of the frame height (a loose face crop).
        rows = np.nonzero(mask[0].max(1) > 0.5)[0]
        assert 0.55 * size < rows.max() - rows.min() + 1
    assert r.pose_range.full
    empty = r.render(np.zeros(0, np.int64), np.zeros((0, 3, 3)))
    assert empty.shape == (0, 48, 48, 3)


def test_head_fills_a_loose_face_crop(default):
    """Crown to chin spans 55-80 % of the frame height for an upright frontal head."""
    ids = np.arange(20)
    R = np.repeat(np.eye(3)[None], 20, 0)
    lm = default.landmarks(ids, R)
    _, mask = default.render(ids, R, return_mask=True)
    for i in range(20):
        rows = np.nonzero(mask[i].max(1) > 0.5)[0]
        crown = rows.min()
        height = lm["chin"][i, 1] - crown
        assert 0.55 * SIZE < height < 0.8 * SIZE, (i, height)


def test_input_validation_errors(default):
    with pytest.raises(ValueError, match="identities"):
        default.render(np.array([0.5]), np.eye(3)[None])
    with pytest.raises(ValueError, match="R must have shape"):
        default.render(np.array([1, 2]), np.eye(3)[None])
    with pytest.raises(ValueError, match="background_seeds"):
        default.render(np.array([1]), np.eye(3)[None], background_seeds=np.array([1, 2]))
    with pytest.raises(ValueError, match="image_size"):
        make_renderer("procedural", image_size=4)
    with pytest.raises(ValueError, match="lighting"):
        make_renderer("procedural", lighting="sun")
    with pytest.raises(ValueError, match="supersample"):
        make_renderer("procedural", supersample=0)


# ----------------------------------------------------------------------------- contact sheet / CLI


def test_clerf_render_writes_a_labelled_contact_sheet(tmp_path, capsys):
    from PIL import Image

    from clerf_ray.cli import main
    from clerf_ray.render.contact_sheet import DEFAULT_POSES

    out = tmp_path / "sheet" / "grid.png"
    code = main(
        ["render", "--renderer", "procedural", "--n", "3", "--image-size", "32", "--out", str(out)]
    )
    assert code == 0 and out.exists()
    assert "wrote" in capsys.readouterr().out
    img = np.asarray(Image.open(out).convert("RGB"))
    # A header row and a label column around a 3 x len(DEFAULT_POSES) grid of 32 px cells.
    assert img.shape[0] > 3 * 32 and img.shape[1] > len(DEFAULT_POSES) * 32
    # Rows are different identities: the bottom-right cells differ from the top-right ones.
    assert np.abs(img[-32:, -32:].astype(int) - img[-32 - 34 : -34, -32:].astype(int)).mean() > 5


def test_clerf_render_rejects_bad_arguments(tmp_path):
    from clerf_ray.cli import main

    with pytest.raises(SystemExit):
        main(["render", "--n", "0", "--out", str(tmp_path / "x.png")])
    with pytest.raises(ValueError, match="unknown renderer"):
        main(["render", "--renderer", "nope", "--out", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit):
        main(["render", "--option", "novalue"])


def test_identity_variety_covers_every_style():
    """Across 400 seeds every hair style, facial-hair kind and glasses kind occurs, and skin
    brightness spans light to dark."""
    from clerf_ray.render import procedural as P

    heads = P._Heads(np.arange(400))
    styles = set(heads.f["style"].astype(int))
    assert styles == {P.SHORT, P.MEDIUM, P.LONG, P.BALD, P.BUZZ, P.BANGS}
    assert 0.2 < (heads.f["frame_w"] > 0).mean() < 0.5  # glasses on about a third
    assert len(set(np.round(heads.f["frame_w"], 4))) == 4  # none, thin, thick, sunglasses
    assert 0.05 < heads.f["full_beard"].mean() < 0.25 and 0.05 < heads.f["stubble"].mean() < 0.25
    skin = heads.palette[:, P.M_SKIN].mean(1)
    assert skin.min() < 0.35 and skin.max() > 0.8
    # Proportions vary: head width over the cranium semi-axis, +-8 %.
    width = heads.axes[:, P.CRANIUM, 0]
    assert width.max() / width.min() > 1.12


def test_skipping_unused_hair_primitives_leaves_the_trace_unchanged():
    """The trace skips hair primitives a style does not use (they are shrunk inside the
    cranium); tracing them anyway must give the same depths and primitives, bit for bit."""
    import torch

    from clerf_ray.render import procedural as P

    r = ProceduralRenderer(image_size=32)
    ids = np.arange(60)
    heads = P._Heads(ids)
    assert not heads.active.all(), "the batch must contain styles without some hair primitive"
    R_cam = torch.as_tensor(geometry.to_camera(geometry.sample_rotations(60, seed=4)))
    args = (
        torch.as_tensor(heads.S, dtype=torch.float32),
        torch.as_tensor(heads.centre, dtype=torch.float32),
        R_cam.float(),
        heads.axes,
    )
    t, k = r._trace(*args, heads.active)
    t_all, k_all = r._trace(*args, np.ones_like(heads.active))
    assert torch.equal(t, t_all) and torch.equal(k, k_all)


def _brute_force_hits(identities, R, u, v):
    """Whether the camera ray through image-plane point (u, v) (head units, x right, y down)
    meets any of the head's ellipsoids, in float64 numpy (N, P), and the smallest |discriminant|
    over the ellipsoids (how close the ray passes to an outline), written from the geometry in
    ``clerf_ray.render.procedural``'s docstring: the ray is ``u ex + v ey + t d`` with ex, ey, d
    the rows of ``to_camera(R)``, and a point p is inside an ellipsoid when |S (p - c)| <= 1."""
    from clerf_ray.render import procedural as P

    heads = P._Heads(identities)
    R_cam = geometry.to_camera(R)
    hit = np.zeros((len(identities), len(u)), dtype=bool)
    closest = np.full(hit.shape, np.inf)
    for k in range(P.N_PRIM):
        S, c = heads.S[:, k], heads.centre[:, k]  # (N, 3, 3), (N, 3)
        origin = u[None, :, None] * R_cam[:, None, 0] + v[None, :, None] * R_cam[:, None, 1]
        q0 = np.einsum("nij,npj->npi", S, origin - c[:, None])
        qd = np.einsum("nij,nj->ni", S, R_cam[:, 2])[:, None]
        a, b = (qd * qd).sum(-1), (q0 * qd).sum(-1)
        disc = b * b - a * ((q0 * q0).sum(-1) - 1.0)
        hit |= disc >= 0
        closest = np.minimum(closest, np.abs(disc))
    return hit, closest


@pytest.mark.parametrize("options", [{}, {"supersample": 2}])
def test_coverage_is_the_filter_over_brute_force_ray_casts(options):
    """Head coverage per pixel is the anti-aliasing filter's average of independent float64 ray
    casts: quincunx (the default) weighs the pixel centre 1/2 and each of its four corners 1/8;
    the 2x2 grid averages four rays at the quarter points."""
    size, extent = 24, 0.76  # EXTENT in head units: pixel j spans [j, j + 1) * 2 extent / size
    ids = np.array([3, 11, 42, 7, 99, 5])
    R = geometry.sample_rotations(len(ids), seed=12)
    _, mask = make_renderer("procedural", image_size=size, **options).render(
        ids, R, return_mask=True
    )
    pix = 2 * extent / size
    jj, ii = np.meshgrid(np.arange(size), np.arange(size))  # column j, row i
    if options:
        offsets = [(dx, dy, 0.25) for dx in (0.25, 0.75) for dy in (0.25, 0.75)]
    else:
        offsets = [(0.5, 0.5, 0.5)] + [(dx, dy, 0.125) for dx in (0, 1) for dy in (0, 1)]
    expected = np.zeros(mask.shape)
    near_outline = np.zeros(mask.shape, dtype=bool)
    for dx, dy, weight in offsets:
        u = ((jj + dx) * pix - extent).reshape(-1)
        v = ((ii + dy) * pix - extent).reshape(-1)
        hit, closest = _brute_force_hits(ids, R, u, v)
        expected += weight * hit.reshape(mask.shape)
        near_outline |= (closest < 1e-5).reshape(mask.shape)
    edge = (expected > 0) & (expected < 1)
    assert edge.sum() > 20 * len(ids), "the test needs anti-aliased silhouette pixels"
    assert set(np.unique(expected)) > {0.0, 1.0}
    # float32 against float64 can only disagree on rays that graze an outline.
    wrong = np.abs(mask - expected) > 1e-6
    assert not (wrong & ~near_outline).any(), np.argwhere(wrong & ~near_outline)[:5]
    assert wrong.sum() <= 2, wrong.sum()


def test_antialias_option_errors():
    with pytest.raises(ValueError, match="antialias"):
        make_renderer("procedural", antialias="msaa")
    with pytest.raises(ValueError, match="supersample applies to antialias='grid'"):
        make_renderer("procedural", antialias="quincunx", supersample=2)
    r = make_renderer("procedural", antialias="grid")
    assert (r.antialias, r.supersample) == ("grid", 2)
    assert make_renderer("procedural").antialias == "quincunx"
