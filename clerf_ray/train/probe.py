"""A cheap per-epoch measure of the contrastive embedding, for early stopping: nearest-neighbour
pose retrieval from labelled query renders to labelled reference renders (all of validation
identities), reported as the median geodesic error (degrees) between each query's pose and its
nearest reference's. An embedding that groups images by pose scores low; one that learnt nothing
scores near the error of a random reference (about 126 deg median over SO(3))."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def embed(model: torch.nn.Module, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, D) embeddings of ``model`` (an ``Encoder``), in eval mode and
    without gradients; the model's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = model.preprocess(images[i : i + batch_size])
            out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def retrieval_errors(
    query_z: torch.Tensor, query_R: np.ndarray, ref_z: torch.Tensor, ref_R: np.ndarray
) -> np.ndarray:
    """Geodesic error (degrees) between each query's pose and that of its nearest reference by
    cosine similarity of the embeddings."""
    q = torch.nn.functional.normalize(query_z, dim=-1)
    r = torch.nn.functional.normalize(ref_z, dim=-1)
    nearest = (q @ r.T).argmax(dim=1).numpy()
    A = np.asarray(query_R, dtype=np.float64).reshape(-1, 3, 3)
    B = np.asarray(ref_R, dtype=np.float64).reshape(-1, 3, 3)[nearest]
    cos = (np.einsum("nij,nij->n", A, B) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def retrieval_probe(probe: dict[str, Any]):
    """``epoch_metrics`` callable for ``clerf_ray.train.common.fit``: given the model, the
    median retrieval error of ``probe`` (``query_images``, ``query_R``, ``ref_images``,
    ``ref_R``) as ``{"val/retrieval_median": degrees}``."""

    def measure(model: torch.nn.Module) -> dict[str, float]:
        from clerf_ray.train.common import unwrap

        encoder = unwrap(model)
        qz = embed(encoder, probe["query_images"])
        rz = embed(encoder, probe["ref_images"])
        errors = retrieval_errors(qz, probe["query_R"], rz, probe["ref_R"])
        return {"val/retrieval_median": float(np.median(errors))}

    return measure
