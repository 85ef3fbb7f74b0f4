"""Renderers: ``make_renderer(name, **options).render(identities, R) -> images``."""

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
