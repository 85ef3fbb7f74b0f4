"""PanoHead (An et al., CVPR 2023) renderer, loaded from the user's checkout of SizheAn/PanoHead.

PanoHead is under CC BY-NC-SA 4.0 (non-commercial) and builds on EG3D (NVIDIA Source Code
License). This module copies none of it: the generator's code is imported from the checkout named
by ``checkout=`` and its weights are read from ``network_pkl=``. See
:class:`clerf_ray.render.gan.GanRenderer` for options and behaviour.
"""

from __future__ import annotations

from clerf_ray.render.base import PoseRange, register_renderer
from clerf_ray.render.gan import GanRenderer


@register_renderer("panohead")
class PanoHeadRenderer(GanRenderer):
    """PanoHead full-head generator (``easy-khair-180-gpc0.8-trans10-025000.pkl``) as a
    :class:`Renderer`.

    Cameras orbit the pivot (0, 0, 0) at radius 2.7 with focal length 4.2647, as in PanoHead's
    generation scripts. ``pose_range``: PanoHead renders the whole head, so the orbit yaw covers
    [-180, 180] deg; the orbit pitch is limited to [-60, 60] deg (views from far above or below
    the head are rare in its training data). Roll and upside-down poses come from the in-plane
    rotation.
    """

    name = "panohead"
    pose_range = PoseRange(yaw=(-180.0, 180.0), pitch=(-60.0, 60.0))
    default_pivot = (0.0, 0.0, 0.0)
    weights_hint = (
        "PanoHead's code is at https://github.com/SizheAn/PanoHead (CC BY-NC-SA 4.0, "
        "non-commercial); its pretrained pickle easy-khair-180-gpc0.8-trans10-025000.pkl is in "
        "the 'models' folder linked (Google Drive) from the repository's README, 'Getting started'."
    )
