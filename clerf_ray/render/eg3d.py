"""EG3D (Chan et al., CVPR 2022) renderer, loaded from the user's checkout of NVlabs/eg3d.

EG3D is under the NVIDIA Source Code License (non-commercial). This module copies none of it: the
generator's code is imported from the checkout named by ``checkout=`` and its weights are read
from ``network_pkl=``. See :class:`clerf_ray.render.gan.GanRenderer` for options and behaviour.
"""

from __future__ import annotations

from clerf_ray.render.base import PoseRange, register_renderer
from clerf_ray.render.gan import GanRenderer


@register_renderer("eg3d")
class EG3DRenderer(GanRenderer):
    """EG3D FFHQ generator (e.g. ``ffhqrebalanced512-128.pkl``) as a :class:`Renderer`.

    Cameras orbit the pivot (0, 0, 0.2) at radius 2.7 with the FFHQ focal length 4.2647, as in
    EG3D's FFHQ training data. ``pose_range``: FFHQ holds faces from frontal to about profile, so
    the orbit yaw is limited to [-90, 90] deg and the orbit pitch to [-45, 45] deg; beyond that
    EG3D renders degenerate images. Roll and upside-down poses come from the in-plane rotation.
    """

    name = "eg3d"
    pose_range = PoseRange(yaw=(-90.0, 90.0), pitch=(-45.0, 45.0))
    default_pivot = (0.0, 0.0, 0.2)
    weights_hint = (
        "EG3D's code is at https://github.com/NVlabs/eg3d (NVIDIA Source Code License, "
        "non-commercial); its pretrained pickles (e.g. ffhqrebalanced512-128.pkl) are published "
        "on the NVIDIA NGC catalog, model 'eg3d': "
        "https://catalog.ngc.nvidia.com/orgs/nvidia/teams/research/models/eg3d "
        "(linked from the repository's docs/models.md)."
    )
