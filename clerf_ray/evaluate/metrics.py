"""Metrics as the peers compute them (DESIGN.md, "Metrics"): Euler MAE in degrees (wrapped; on
real sets the prediction's Euler angles are compared with the dataset's own ``euler_deg``), MAEV,
geodesic error (mean, median, 90th percentile) and the share of samples within 10/20/30 deg of
geodesic error; and predictions of a ``PoseModel`` on uint8 images."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clerf_ray import geometry


def summarize(
    R_pred: np.ndarray, R_true: np.ndarray, euler_true: np.ndarray | None = None
) -> dict[str, float]:
    """Error summary over a set, all angles in degrees.

    Args:
        R_pred: (N, 3, 3) predicted labels (dataset convention, ``clerf_ray.geometry``).
        R_true: (N, 3, 3) true labels.
        euler_true: optional (N, 3) true Euler angles in radians, ordered (pitch, yaw, roll), used
            for the Euler MAE instead of the angles of ``R_true`` (real sets: the dataset's own
            angles, as the peers compare).

    Returns:
        ``geodesic_mean``, ``geodesic_median``, ``geodesic_p90``, ``within_10/20/30`` (shares in
        [0, 1] of samples with geodesic error <= 10/20/30 deg), ``maev``, ``mae_pitch``,
        ``mae_yaw``, ``mae_roll``, ``mae_mean`` and ``n``.
    """
    R_pred = np.asarray(R_pred, dtype=np.float64)
    R_true = np.asarray(R_true, dtype=np.float64)
    if len(R_true) == 0:
        raise ValueError("summarize: no samples to evaluate")
    err = geometry.geodesic_error(R_pred, R_true)
    out = {
        "geodesic_mean": float(err.mean()),
        "geodesic_median": float(np.median(err)),
        "geodesic_p90": float(np.percentile(err, 90)),
        "within_10": float((err <= 10).mean()),
        "within_20": float((err <= 20).mean()),
        "within_30": float((err <= 30).mean()),
        "maev": float(geometry.maev(R_pred, R_true).mean()),
        "n": int(len(err)),
    }
    if euler_true is None:
        mae = geometry.mae_euler(R_pred, R_true)
    else:
        # Euler triples as (N, 1, 3): an (N, 3) array with N == 3 would read as one matrix.
        pred = np.stack(geometry.matrix_to_euler(R_pred), -1)[:, None, :]
        true = np.asarray(euler_true, dtype=np.float64).reshape(-1, 1, 3)
        mae = geometry.mae_euler(pred, true)
    out.update({f"mae_{k}": v for k, v in mae.items()})
    return out


@torch.no_grad()
def predict(
    model, images: np.ndarray, batch_size: int = 256, device: str | None = None
) -> np.ndarray:
    """(N, H, W, 3) uint8 images -> (N, 3, 3) float64 labels with a ``PoseModel``."""
    device = device or next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = model.preprocess(images[i : i + batch_size]).to(device)
        out.append(model(x).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 3, 3))


def evaluate_model(model, images: np.ndarray, R: np.ndarray) -> dict[str, Any]:
    return summarize(predict(model, images), R)
