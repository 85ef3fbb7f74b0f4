"""Metric values against hand computations."""

import numpy as np
import pytest

from clerf_ray import evaluate

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
