"""The renderer contract shared by every backend, and the registry behind ``make_renderer``."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from clerf_ray import geometry


@dataclass(frozen=True)
class PoseRange:
    """Poses a backend can render directly, in degrees of the orbit decomposition.

    A GAN renders yaw and pitch by moving its camera (``geometry.orbit_decomposition``); the
    in-plane part is an image rotation and always possible. ``yaw`` and ``pitch`` bound the orbit
    angles; (-180, 180) and (-90, 90) mean the whole of SO(3).
    """

    yaw: tuple[float, float] = (-180.0, 180.0)
    pitch: tuple[float, float] = (-90.0, 90.0)

    @property
    def full(self) -> bool:
        return (
            self.yaw[0] <= -180.0
            and self.yaw[1] >= 180.0
            and self.pitch[0] <= -90.0
            and self.pitch[1] >= 90.0
        )

    def contains(self, R: np.ndarray, tol_deg: float = 1e-6) -> np.ndarray:
        """Boolean mask (...) of the labels (..., 3, 3) this range covers."""
        if self.full:
            return np.ones(np.asarray(R).shape[:-2], dtype=bool)
        pitch, yaw, _ = (
            np.degrees(a) for a in geometry.orbit_decomposition(np.asarray(R, dtype=np.float64))
        )
        return (
            (yaw >= self.yaw[0] - tol_deg)
            & (yaw <= self.yaw[1] + tol_deg)
            & (pitch >= self.pitch[0] - tol_deg)
            & (pitch <= self.pitch[1] + tol_deg)
        )


class Renderer(abc.ABC):
    """Renders heads: ``render(identities, R) -> images``.

    Attributes:
        image_size: side of the square output images in pixels.
        pose_range: the poses the backend can render (:class:`PoseRange`); samplers must stay
            inside it.
    """

    image_size: int
    pose_range: PoseRange = PoseRange()

    @abc.abstractmethod
    def render(self, identities: np.ndarray, R: np.ndarray) -> np.ndarray:
        """Render identity ``identities[i]`` at label ``R[i]``.

        Args:
            identities: (N,) int64 identity seeds.
            R: (N, 3, 3) labels in the dataset convention (``geometry``).

        Returns:
            (N, H, W, 3) uint8 images, H = W = ``image_size``. Deterministic for a given
            identity and pose.
        """

    def check_inputs(self, identities, R) -> tuple[np.ndarray, np.ndarray]:
        """Validate and normalise ``render``'s arguments, with errors that say what is wrong."""
        identities = np.asarray(identities)
        R = np.asarray(R, dtype=np.float64)
        if identities.ndim != 1 or not np.issubdtype(identities.dtype, np.integer):
            raise ValueError(
                f"identities must be a 1-D integer array, got shape {identities.shape} {identities.dtype}"
            )
        if R.shape != (len(identities), 3, 3):
            raise ValueError(
                f"R must have shape ({len(identities)}, 3, 3) to match identities, got {R.shape}"
            )
        inside = self.pose_range.contains(R, tol_deg=0.5)
        if not inside.all():
            bad = int(np.flatnonzero(~inside)[0])
            pitch, yaw, _ = (float(np.degrees(a)) for a in geometry.orbit_decomposition(R[bad]))
            raise ValueError(
                f"{type(self).__name__} cannot render orbit yaw {yaw:.1f} deg, pitch {pitch:.1f} deg "
                f"(sample {bad}); its pose_range is {self.pose_range}"
            )
        return identities.astype(np.int64), R


_RENDERERS: dict[str, Callable[..., Renderer]] = {}

# The backends that ship with the package, imported on first lookup rather than with the package:
# they import torch (2-4 s of CPU here), and every Ray process that unpickles a ``PoseRange`` or a
# data function (split coordinators, Ray Data tasks) imports this package without rendering.
_BUILTIN_MODULES = (
    "clerf_ray.render.procedural",
    "clerf_ray.render.eg3d",
    "clerf_ray.render.panohead",
)
_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        import importlib

        for module in _BUILTIN_MODULES:
            importlib.import_module(module)  # registers itself
        _builtins_loaded = True


def register_renderer(name: str):
    """Class decorator adding a renderer factory to the registry under ``name``."""

    def deco(factory):
        if name in _RENDERERS:
            raise ValueError(f"renderer {name!r} registered twice")
        _RENDERERS[name] = factory
        return factory

    return deco


def list_renderers() -> list[str]:
    _load_builtins()
    return sorted(_RENDERERS)


def renderer_class(name: str) -> type[Renderer]:
    """The class (factory) registered as ``name``, e.g. to read its ``pose_range`` without
    building it (a GAN backend loads weights when built)."""
    if name not in _RENDERERS:
        _load_builtins()
    if name not in _RENDERERS:
        raise ValueError(f"unknown renderer {name!r}; available: {', '.join(list_renderers())}")
    return _RENDERERS[name]


def make_renderer(name: str, **options) -> Renderer:
    """Build the renderer registered as ``name`` with its keyword ``options``."""
    return renderer_class(name)(**options)
