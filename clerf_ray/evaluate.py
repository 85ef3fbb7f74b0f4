"""Evaluation: predictions on labelled images and the error summary reported everywhere."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clerf_ray import geometry


def summarize(R_pred: np.ndarray, R_true: np.ndarray) -> dict[str, float]:
    """Geodesic error (mean, median, 90th percentile, share within 10/20/30 deg), MAEV and Euler
    MAE, all in degrees, over (N, 3, 3) predictions and labels."""
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
    out.update({f"mae_{k}": v for k, v in geometry.mae_euler(R_pred, R_true).items()})
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


def heldout_renders(pair_cfg, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Labelled renders of the identities in ``pair_cfg.identities`` over all of SO(3) (FA
    augmentation on top of the renderer's own range): (images, R)."""
    from dataclasses import replace

    from clerf_ray.data.pairs import build_labelled_image_dataset

    cfg = replace(pair_cfg, num_pairs=max(1, (num_samples + 1) // 2), source="synthetic")
    rows = build_labelled_image_dataset(cfg).take_all()[:num_samples]
    images = np.stack([r["image"] for r in rows])
    R = np.stack([np.asarray(r["R"], dtype=np.float64).reshape(3, 3) for r in rows])
    return images, R


def evaluate_model(model, images: np.ndarray, R: np.ndarray) -> dict[str, Any]:
    return summarize(predict(model, images), R)
