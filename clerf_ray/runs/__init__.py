"""Whole runs, each one call from a job: the CLERF run (:mod:`~clerf_ray.runs.clerf`), the
supervised baseline (:mod:`~clerf_ray.runs.baseline`), a head on a registered encoder
(:mod:`~clerf_ray.runs.head_on_registered`), and the steps they share
(:mod:`~clerf_ray.runs.common`). Only entry points (``jobs/``, the CLI) import this layer."""
