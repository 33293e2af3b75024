"""The one place that starts or attaches Ray and sizes resources.

Every stage calls :func:`ensure_ray`; nothing else calls ``ray.init``.

- With an address (``--ray-address A``, ``--ray-address auto``, or ``RAY_ADDRESS`` as ``ray job submit``
  and cluster nodes set it) it attaches to that cluster, passing no local resource arguments: the
  cluster owns its CPUs, GPUs and object store.
- Without one it starts a private Ray for this process only (``address="local"``), bound to 127.0.0.1
  with no dashboard, sized to the machine's cores (or ``num_cpus``). It never attaches to another Ray
  that happens to run on the machine.

Ray's start-up lines and its token-authentication warning are hidden unless ``slimpipe -v``.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

VERBOSE_ENV = "SLIMPIPE_VERBOSE"
LOOPBACK = "127.0.0.1"


class RayConnectError(RuntimeError):
    """Ray could not be started or the cluster at an address could not be reached (one line for the user)."""


def verbose() -> bool:
    """True when ``slimpipe -v`` (or ``SLIMPIPE_VERBOSE=1``) asked for Ray's own output."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def cluster_address(address: str | None = None) -> str | None:
    """The cluster to attach to: ``address``, else ``RAY_ADDRESS``, else ``SLIMPIPE_RAY_ADDRESS``; None = private."""
    for value in (address, os.environ.get("RAY_ADDRESS"), os.environ.get("SLIMPIPE_RAY_ADDRESS")):
        if value and value.strip() and value.strip() != "local":
            return value.strip()
    return None


def ensure_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = True) -> None:
    """Start a private Ray, or attach to a cluster, once per process; a second call is a no-op."""
    loud = verbose()
    target = cluster_address(address)
    if target is None:
        # Ray resolves 127.0.0.1 to the machine's public address unless it believes it runs alone; this
        # keeps the GCS, raylet and worker ports on loopback (children inherit the environment).
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    if ray.is_initialized():
        return
    kwargs: dict = {"ignore_reinit_error": True, "log_to_driver": loud or not quiet,
                    "logging_level": logging.INFO if loud else logging.ERROR}
    if not loud:
        for name in ("ray", "ray._private.authentication", "ray.rllib"):
            logging.getLogger(name).setLevel(logging.ERROR)
    if target == "auto":
        target = _auto_address()
    loopback = target is None or target.split("://")[-1].rsplit(":", 1)[0] in (LOOPBACK, "localhost")
    if loopback:  # also lets a driver find the raylet of a cluster started on loopback
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if loopback:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before the variable was set
        kwargs["_node_ip_address"] = LOOPBACK
    if target is not None:
        kwargs["address"] = target  # attach: the cluster's resources are its own, pass none
    else:
        kwargs.update(address="local", include_dashboard=False,
                      num_cpus=num_cpus or os.cpu_count() or 1,
                      # A laptop default: do not let the object store claim a third of RAM for small jobs.
                      object_store_memory=_object_store_bytes())
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if target is not None:
        _check_reachable(target)
    try:
        ray.init(**kwargs)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as exc:
        raise RayConnectError(_connect_problem(exc, target)) from exc
    how = f"attached to the Ray cluster at {target}" if target else "started a private local Ray"
    gcs = ray.get_runtime_context().gcs_address
    log.info("ray: %s (gcs %s): %s", how, gcs, ray.cluster_resources())
    if loud:
        import sys

        print(f"ray: {how} (gcs {gcs})", file=sys.stderr)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = loud or not quiet
    except Exception:  # older/newer Ray without the knob
        pass


def _auto_address() -> str:
    """``--ray-address auto``: the cluster the last ``ray start`` on this machine recorded, as host:port
    (as recorded: Ray's own canonicalisation would turn a loopback cluster's 127.0.0.1 into the public IP)."""
    from ray._private.services import get_ray_address_from_environment

    try:
        return get_ray_address_from_environment("auto", None)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError or others when none is found
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RayConnectError(f"--ray-address auto: no running Ray cluster found on this machine ({first})") from exc


def _check_reachable(target: str) -> None:
    """Fail in seconds, with one line, when nothing listens at ``host:port`` (Ray itself retries for a minute)."""
    import socket

    hostport = target.split("://", 1)[-1]
    if target == "auto" or target.startswith("ray://") or ":" not in hostport:
        return
    host, port = hostport.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        raise RayConnectError(f"cannot reach the Ray cluster at {target}: {getattr(exc, 'strerror', None) or exc}") \
            from exc


def _connect_problem(exc: BaseException, target: str | None) -> str:
    """One line saying why Ray could not start or attach, with the fix when it is a known one."""
    where = f"the Ray cluster at {target}" if target else "a local Ray"
    chain, e = [], exc
    while e is not None and len(chain) < 5:
        chain.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    text = " ".join(chain)
    if "InvalidAuthToken" in text or "AuthenticationError" in text:
        return (f"cannot reach {where}: its authentication token is missing or wrong here (set RAY_AUTH_MODE=token "
                "and put the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN)")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"cannot start or reach {where}: {first}"


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
