"""Renderers: ``make_renderer(name, **options).render(identities, R) -> images``."""

# The backends (procedural, the CPU default; eg3d and panohead, the GANs) register themselves when
# imported, which the registry does on the first lookup (``base._load_builtins``): importing this
# package does not import torch.
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
