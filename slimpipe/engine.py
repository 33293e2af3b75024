"""The one place that starts or attaches Ray and sizes resources.

Every stage calls :func:`ensure_ray`; nothing else calls ``ray.init``. Locally it starts a private Ray
with the machine's cores (or ``num_cpus``); with ``address`` it joins an existing cluster.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = True) -> None:
    """Start (or attach to) Ray once per process; a second call is a no-op."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("SLIMPIPE_RAY_ADDRESS")
    kwargs: dict = {"ignore_reinit_error": True, "log_to_driver": not quiet}
    if address:
        kwargs["address"] = address
    else:
        # "local": a private Ray even when another instance runs on this machine (never attach silently)
        kwargs["address"] = "local"
        kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
        kwargs["include_dashboard"] = False
        # A laptop default: do not let the object store claim a third of RAM for small jobs.
        kwargs.setdefault("object_store_memory", _object_store_bytes())
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    ray.init(**kwargs)
    log.info("ray: %s", ray.cluster_resources())
    try:
        ray.data.DataContext.get_current().enable_progress_bars = not quiet
    except Exception:  # older/newer Ray without the knob
        pass


def _object_store_bytes() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(min(max(total // 8, 512 << 20), 4 << 30))


def available_cpus() -> int:
    """Logical CPUs Ray can schedule on (after :func:`ensure_ray`)."""
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
