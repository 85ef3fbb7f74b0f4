"""Image helpers shared by data, evaluation and prediction: decoding encoded images and resizing
uint8 RGB arrays to a square side."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

import numpy as np


def decode_images(column: Iterable) -> np.ndarray:
    """Encoded images (PNG/JPEG bytes) -> (N, H, W, 3) uint8 RGB; all must share one size."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(bytes(b))).convert("RGB")) for b in column])


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8, bilinear (PIL); returned as is when it already
    has that size."""
    from PIL import Image

    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def resize_all(images: Sequence[np.ndarray] | np.ndarray, size: int) -> np.ndarray:
    """Images of any sizes -> one (N, size, size, 3) uint8 array (:func:`resize_square` each;
    an empty input gives an empty array of that shape)."""
    if len(images) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    if isinstance(images, np.ndarray) and images.shape[1:3] == (size, size):
        return images
    return np.stack([resize_square(im, size) for im in images])
