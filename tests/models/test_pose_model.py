"""The pose model: a frozen encoder stays frozen, dimensions are checked, test-time views."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clerf_ray import geometry
from clerf_ray.models import (
    PoseModel,
    create_encoder,
    create_head,
    create_head_for,
    load_model,
    save_model,
)

from .common import EMB, SMALL


def test_pose_model_keeps_a_frozen_encoder_frozen(images):
    torch.manual_seed(2)
    enc = create_encoder(**SMALL)
    model = PoseModel(enc, create_head(EMB, in_dim=16), freeze_encoder=True)
    model.train()
    assert not model.encoder.training and model.head.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    x = model.preprocess(images)
    R = model(x)
    assert R.shape == (3, 3, 3)
    R.sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())
    # BatchNorm running statistics did not move: the encoder ran in eval mode.
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k

    trainable = PoseModel(
        create_encoder(**SMALL), create_head(EMB, in_dim=16), freeze_encoder=False
    )
    trainable.train()
    assert trainable.encoder.training
    trainable(x).sum().backward()
    assert trainable.encoder.projection[0].weight.grad is not None


def test_pose_model_checks_dimensions():
    with pytest.raises(ValueError, match="in_dim"):
        PoseModel(create_encoder(**SMALL), create_head(EMB, in_dim=8))
    with pytest.raises(ValueError, match="num_features 512"):
        PoseModel(create_encoder(**SMALL), create_head(EMB, in_dim=16, input="features"))
    with pytest.raises(ValueError, match="feature_map_dim 2048"):
        PoseModel(create_encoder(**SMALL), create_head(EMB, in_dim=512, input="feature_map"))


def test_feature_map_model_reads_the_grid_and_survives_save_and_load(tmp_path, images):
    """A head on the feature map gets 4 x 512 inputs at 32 px, where resnet10t's last map is
    1 x 1: every grid cell repeats that one position, so the head's input is each channel of
    the unpooled map four times over (built here by hand)."""
    torch.manual_seed(4)
    enc = create_encoder(**SMALL)
    model = PoseModel(
        enc, create_head_for(enc, hidden=(8,), input="feature_map", standardize=False)
    )
    x = model.preprocess(images)
    with torch.no_grad():
        fm = enc.backbone.forward_features(x)
        assert fm.shape[-2:] == (1, 1)
        by_hand = fm.reshape(len(x), 512, 1).repeat(1, 1, 4).reshape(len(x), 2048)
        torch.testing.assert_close(model.head_input(x), by_hand)
        R = model(x)
    save_model(model, None, str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.head.config.input == "feature_map" and loaded.head.config.in_dim == 2048
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), R)


def _views_model(views: int) -> PoseModel:
    torch.manual_seed(11)
    return PoseModel(
        create_encoder(**SMALL), create_head(EMB, in_dim=16), freeze_encoder=True, views=views
    ).eval()


def _predict(model: PoseModel, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(model.preprocess(np.ascontiguousarray(images))).double().numpy()


def test_eight_and_sixteen_views_make_predictions_equivariant(images):
    """Quarter turns and mirrors of the input move the 8- and 16-view predictions as the label
    transforms say (checked with numpy's rot90 and slicing on HWC images, not torch's ops; the
    45 deg views commute with them on the square grid); a single view is not equivariant, so
    the property is the views' doing."""
    # float32 convolutions of turned tensors round differently; the random-init model's views
    # disagree, so the average amplifies that to a few hundredths of a degree.
    for views, tol in ((8, 0.1), (16, 0.1), (1, None)):
        model = _views_model(views)
        R = _predict(model, images)
        turned = _predict(model, np.rot90(images, 1, axes=(1, 2)))
        mirrored = _predict(model, images[:, :, ::-1])
        err_turn = geometry.geodesic_error(turned, geometry.rotate_label(R, 90.0))
        err_mirror = geometry.geodesic_error(mirrored, geometry.hflip_label(R))
        if tol is not None:
            assert err_turn.max() < tol and err_mirror.max() < tol
        else:
            assert err_turn.max() > 1.0 and err_mirror.max() > 1.0


def test_eight_views_average_the_back_mapped_predictions_of_pil_augmented_images(images):
    """The 8-view prediction equals a brute force: each view made with the augmentation module
    (PIL), its single-view prediction mapped back by the inverse label transform, and the
    rotations averaged with scipy's ``Rotation.mean`` (chordal L2 mean)."""
    from scipy.spatial.transform import Rotation

    from clerf_ray.augment import GeometricAugment

    single, multi = _views_model(1), _views_model(8)
    aug = GeometricAugment.preset("none")
    back = []
    for turns in range(4):
        for mirror in (False, True):
            draw = (90.0 * turns, mirror, False)
            views = np.stack([aug.apply([im], np.eye(3), draw)[0][0] for im in images])
            P = geometry.rotate_label(_predict(single, views), -90.0 * turns)
            back.append(geometry.hflip_label(P) if mirror else P)
    back = np.stack(back, axis=1)  # (B, 8, 3, 3)
    expected = np.stack([Rotation.from_matrix(b).mean().as_matrix() for b in back])
    assert geometry.geodesic_error(_predict(multi, images), expected).max() < 0.05


# The label of a horizontally mirrored image (x -> -x), written out: S R S with S = diag(-1, 1, 1)
# (yaw and roll change sign, pitch stays).
S = np.diag([-1.0, 1.0, 1.0])


def _chordal_mean(R: np.ndarray) -> np.ndarray:
    """(V, B, 3, 3) -> (B, 3, 3): the rotation nearest the arithmetic mean (SVD, det +1)."""
    U, _, Vt = np.linalg.svd(R.mean(axis=0))
    D = np.ones(U.shape[:-1])
    D[:, 2] = np.sign(np.linalg.det(U @ Vt))
    return U @ (D[..., None] * Vt)


def test_two_views_average_the_image_and_its_back_mapped_mirror(images):
    """views=2: the single-view head's prediction on the image and on its mirror image (numpy's
    flip of the HWC pixels), the mirror's mapped back by S R S, averaged with a chordal mean
    written here. The two disagree by degrees on a random-init model, so a model that kept one
    view, or forgot the mirror's label transform, lands elsewhere."""
    single, two = _views_model(1), _views_model(2)
    P = _predict(single, images)
    Pm = _predict(single, np.flip(images, axis=2))  # (B, H, W, 3): axis 2 is the image's x
    back = S @ Pm @ S
    assert geometry.geodesic_error(P, back).min() > 1.0  # the views tell different things
    expected = _chordal_mean(np.stack([P, back]))
    got = _predict(two, images)
    assert np.allclose(got @ np.swapaxes(got, -1, -2), np.eye(3), atol=1e-5)
    assert geometry.geodesic_error(got, expected).max() < 0.01
    # Both views count equally: half-way between the two (and neither of them).
    assert np.allclose(
        geometry.geodesic_error(got, P), geometry.geodesic_error(got, back), atol=0.01
    )


def test_two_views_make_predictions_mirror_equivariant(images):
    """The mirror image's 2-view prediction is the mirrored 2-view prediction, S R S; one view
    is not mirror-equivariant, so the property is the views' doing."""
    for views, equivariant in ((2, True), (1, False)):
        model = _views_model(views)
        R = _predict(model, images)
        mirrored = _predict(model, images[:, :, ::-1])
        err = geometry.geodesic_error(mirrored, S @ R @ S)
        assert err.max() < 0.01 if equivariant else err.min() > 1.0, (views, err)


def test_views_are_validated_and_kept_by_save_and_load(tmp_path, images):
    with pytest.raises(ValueError, match="views must be one of"):
        PoseModel(create_encoder(**SMALL), create_head(EMB, in_dim=16), views=4)
    model = _views_model(16)
    save_model(model, None, str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.views == 16
    np.testing.assert_allclose(_predict(loaded, images), _predict(model, images), atol=1e-6)
    # A model saved before views existed loads as single-view.
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    del meta["views"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    assert load_model(str(tmp_path / "m")).views == 1


def test_rotate_images_turns_as_the_augmentation_does_inside_the_disc():
    """rotate_images (torch grid_sample) against augment.rotate (PIL's affine transform of the
    reflection-padded image): the same bilinear samples wherever the turn reads from inside the
    image, so within PIL's uint8 rounding (up to 1 grey level here); the other sense is far off,
    so the test sees it. In the corners the two reflections differ by about a pixel."""
    from clerf_ray.augment import rotate
    from clerf_ray.models.pose_model import rotate_images

    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    x = torch.as_tensor(img, dtype=torch.float32).permute(2, 0, 1)[None]
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    inside = np.hypot(xx - 16, yy - 16) < 15.0  # pixels whose samples lie in the image
    for deg in (45.0, 30.0, -45.0):
        want = rotate(img, np.eye(3), deg, fill="edge")[0].astype(np.float64)
        got = rotate_images(x, deg)[0].permute(1, 2, 0).double().numpy()
        assert np.abs(got - want)[inside].max() <= 1.5, deg
        other = rotate_images(x, -deg)[0].permute(1, 2, 0).double().numpy()
        assert np.abs(other - want)[inside].mean() > 20.0, deg
    # The corners: on a smooth image (at most 3 grey levels per pixel), reflecting about the
    # border or about the edge pixels' centres is the same to a few grey levels; a constant
    # fill is not.
    cols, rows = np.meshgrid(np.linspace(0, 1, 32), np.linspace(0, 1, 32))
    smooth = np.stack(
        [80 + 90 * cols, 60 + 100 * rows, 128 + 60 * np.sin(3 * cols + 2 * rows)], axis=-1
    ).astype(np.uint8)
    want = rotate(smooth, np.eye(3), 45.0, fill="edge")[0].astype(np.float64)
    xs = torch.as_tensor(smooth, dtype=torch.float32).permute(2, 0, 1)[None]
    got = rotate_images(xs, 45.0)[0].permute(1, 2, 0).double().numpy()
    assert np.abs(got - want)[~inside].max() <= 8.0
    with pytest.raises(ValueError, match="square"):
        rotate_images(torch.zeros(1, 3, 8, 6), 45.0)


def test_sixteen_views_average_the_back_mapped_predictions_of_both_images(images):
    """The 16-view prediction against a brute force: the single-view head on the 8 dihedral
    views (numpy's rot90 and flips) of the image and of the image turned by 45 deg (by
    rotate_images, checked against PIL above), each mapped back through its inverse label
    transforms and the 16 averaged with scipy's ``Rotation.mean``. It differs from the 8-view
    prediction, so the turned views count."""
    from scipy.spatial.transform import Rotation

    from clerf_ray.models.pose_model import rotate_images

    single, multi = _views_model(1), _views_model(16)
    x = single.preprocess(images)
    back = []
    for base, base_deg in ((x, 0.0), (rotate_images(x, 45.0), 45.0)):
        arr = base.numpy()
        for turns in range(4):
            for mirror in (False, True):
                v = arr[..., ::-1] if mirror else arr
                v = np.rot90(v, turns, axes=(2, 3))
                with torch.no_grad():
                    P = single(torch.as_tensor(np.ascontiguousarray(v))).double().numpy()
                P = geometry.rotate_label(P, -90.0 * turns)
                P = geometry.hflip_label(P) if mirror else P
                back.append(geometry.rotate_label(P, -base_deg))
    back = np.stack(back, axis=1)  # (B, 16, 3, 3)
    expected = np.stack([Rotation.from_matrix(b).mean().as_matrix() for b in back])
    got = _predict(multi, images)
    assert geometry.geodesic_error(got, expected).max() < 0.05
    assert geometry.geodesic_error(got, _predict(_views_model(8), images)).min() > 0.2
    # The 45 deg half alone, averaged: not what 16 views give either.
    half = np.stack([Rotation.from_matrix(b[8:]).mean().as_matrix() for b in back])
    assert geometry.geodesic_error(got, half).min() > 0.2
