"""Renderers: ``make_renderer(name, **options).render(identities, R) -> images``."""

# Backends register themselves on import.
import clerf_ray.render.procedural  # noqa: F401  (CPU default)
from clerf_ray.render import eg3d, panohead  # noqa: F401  (GAN backends)
from clerf_ray.render.base import (
    PoseRange,
    Renderer,
    list_renderers,
    make_renderer,
    register_renderer,
    renderer_class,
)

__all__ = [
    "PoseRange",
    "Renderer",
    "list_renderers",
    "make_renderer",
    "register_renderer",
    "renderer_class",
]
