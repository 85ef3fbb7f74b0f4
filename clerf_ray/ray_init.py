"""Starting Ray: connect to the cluster this process runs in, or start a local one.

Below every run driver, so that prediction, rendering and the runs share one way to start Ray.
"""

from __future__ import annotations


def init_ray() -> None:
    """Connect to the cluster this process runs in (``ray job submit``, ``RAY_ADDRESS``) or start
    a local one; quiet Ray Data's progress bars (our own progress lines say more)."""
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(log_to_driver=True)
    quiet_ray_data()


def quiet_ray_data() -> None:
    """Turn Ray Data's progress bars and execution banners off in this process's DataContext."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
