"""clerf_ray: CLERF (contrastive learning for full-range head pose estimation) on Ray."""

__version__ = "0.1.0"
