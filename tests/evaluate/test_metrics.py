"""Metric values against hand computations."""

import numpy as np
import pytest

from clerf_ray import evaluate, geometry

from .common import R_PRED, R_TRUE


def test_summarize_matches_hand_computed_values():
    m = evaluate.summarize(R_PRED, R_TRUE)
    # Geodesic errors 9, 25, 55 deg (single-axis rotations).
    assert m["geodesic_mean"] == pytest.approx(89 / 3)
    assert m["geodesic_median"] == pytest.approx(25)
    assert m["geodesic_p90"] == pytest.approx(25 + 0.8 * 30)  # linear interpolation at rank 1.8
    assert m["within_10"] == pytest.approx(1 / 3)
    assert m["within_20"] == pytest.approx(1 / 3)
    assert m["within_30"] == pytest.approx(2 / 3)
    # A rotation by t about one axis moves the two other axes by t and leaves its own: 2t/3.
    assert m["maev"] == pytest.approx((2 * 9 / 3 + 2 * 25 / 3 + 2 * 55 / 3) / 3)
    assert m["mae_pitch"] == pytest.approx(55 / 3)
    assert m["mae_yaw"] == pytest.approx(25 / 3)
    assert m["mae_roll"] == pytest.approx(9 / 3)
    assert m["mae_mean"] == pytest.approx(89 / 9)
    assert m["n"] == 3


def test_summarize_uses_dataset_euler_angles_when_given():
    # The dataset's own angles: roll 359 deg (wrapped error against 9 deg: 10), yaw 31 (error
    # 31 against 0), pitch 50 (error 55 against -5).
    euler = np.radians([[0.0, 0.0, 359.0], [0.0, 31.0, 0.0], [50.0, 0.0, 0.0]])
    m = evaluate.summarize(R_PRED, R_TRUE, euler)
    assert m["mae_roll"] == pytest.approx(10 / 3)
    assert m["mae_yaw"] == pytest.approx(31 / 3)
    assert m["mae_pitch"] == pytest.approx(55 / 3)
    assert m["geodesic_mean"] == pytest.approx(89 / 3)  # matrices unchanged


def test_summarize_mae_follows_the_dataset_angles_not_the_labels_own():
    """Stored angles that describe the same label by another triple (pitch + 180, 180 - yaw,
    roll + 180; real sets store |yaw| > 90 this way) or wrapped by 360: the MAE is taken against
    them, wrapped, while the matrices (geodesic error) stay as they are."""
    deg = np.radians
    # (own angles of the label, the dataset's stored angles, predicted angles), all degrees.
    cases = [
        ((12, 25, 27), (-168, 155, -153), (10, 20, 30)),  # equivalent triple
        ((150, 85, 150), (-30, 95, -30), (140, 80, 160)),  # equivalent, stored |yaw| > 90
        ((-20, -40, 170), (340, -40, -190), (-25, -30, -175)),  # wrapped by 360
        ((5, -10, 0), (5, -10, 0), (0, -5, 5)),  # stored as the label's own
    ]
    own, stored, predicted = (np.array(c, dtype=float) for c in zip(*cases, strict=True))
    R_true = geometry.euler_to_matrix(*deg(own).T)
    R_pred = geometry.euler_to_matrix(*deg(predicted).T)
    # The fixture itself: each stored triple is the same rotation as the label.
    np.testing.assert_allclose(geometry.euler_to_matrix(*deg(stored).T), R_true, atol=1e-12)

    # Hand-computed wrapped errors against the stored angles, (pitch, yaw, roll) per case:
    # (178, 135, 177), (170, 15, 170), (5, 10, 15), (5, 5, 5).
    m = evaluate.summarize(R_pred, R_true, deg(stored))
    assert m["mae_pitch"] == pytest.approx((178 + 170 + 5 + 5) / 4)
    assert m["mae_yaw"] == pytest.approx((135 + 15 + 10 + 5) / 4)
    assert m["mae_roll"] == pytest.approx((177 + 170 + 15 + 5) / 4)
    assert m["mae_mean"] == pytest.approx((358 + 165 + 367) / 12)
    # Against the labels' own angles: (2, 5, 3), (10, 5, 10), (5, 10, 15), (5, 5, 5).
    own_m = evaluate.summarize(R_pred, R_true)
    assert own_m["mae_pitch"] == pytest.approx(22 / 4)
    assert own_m["mae_yaw"] == pytest.approx(25 / 4)
    assert own_m["mae_roll"] == pytest.approx(33 / 4)
    for k in ("geodesic_mean", "geodesic_median", "maev", "within_10", "within_30"):
        assert m[k] == own_m[k], k
