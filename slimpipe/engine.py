"""The one place that starts or attaches Ray and sizes resources.

Every stage calls :func:`ensure_ray`; nothing else calls ``ray.init``.

- With an address (``--ray-address A``, ``--ray-address auto``, or ``RAY_ADDRESS`` as ``ray job submit``
  and cluster nodes set it) it attaches to that cluster, passing no local resource arguments: the
  cluster owns its CPUs, GPUs and object store. ``auto`` means the cluster the last ``ray start`` on
  this machine recorded (``ray_current_cluster`` in Ray's temp folder, ``RAY_TMPDIR`` or /tmp/ray) and
  nothing else: unlike ``ray.init("auto")`` it never picks another Ray found running on the machine
  (another job's private one); with no record it is refused with one line.
- Before ``ray.init`` it checks, in well under a second, that the address answers and that this
  process's Ray token is accepted, so a wrong address or token is one line instead of a minute of
  retries and raw ``gcs_client.cc`` warnings.
- Without one it starts a private Ray for this process only (``address="local"``), bound to 127.0.0.1
  with no dashboard, sized to the machine's cores (or ``num_cpus``). It never attaches to another Ray
  that happens to run on the machine.

Ray's start-up lines and its token-authentication warning are hidden unless ``slimpipe -v``.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

VERBOSE_ENV = "SLIMPIPE_VERBOSE"
LOOPBACK = "127.0.0.1"
# The storage environment this process's private Ray started with (its workers inherited it); None when
# no private Ray was started here (attached to a cluster, or no Ray yet).
_PRIVATE_ENV: dict[str, str] | None = None
_EXIT_REGISTERED = False  # shutdown_ray is registered to run at exit


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


def private_ray_env() -> dict[str, str] | None:
    """The storage environment the private Ray of this process started with; None on a cluster."""
    return dict(_PRIVATE_ENV) if _PRIVATE_ENV is not None else None


def _check_command_line() -> None:
    """Ray names its driver by this process's command line and fails on bytes that are not UTF-8 (#19.14):
    say which argument it is, in one line, instead of Ray's UnicodeEncodeError."""
    import sys

    for arg in sys.argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise RayConnectError(f"'{shown}' on the command line is not valid UTF-8, and Ray cannot start with it: "
                                  "name the folder above it (files in it are read whatever their names), "
                                  "or rename it") from None


def ensure_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = True,
               preload: Callable[[], Any] | None = None) -> None:
    """Start a private Ray, or attach to a cluster, once per process; a second call is a no-op.

    ``preload()`` (e.g. importing the job's modules) runs in a thread while Ray starts, which mostly waits
    for its processes; it has finished when this returns, and its error, if any, is raised.
    """
    done: list[BaseException | None] = []
    thread = None
    if preload is not None:
        def run() -> None:
            try:
                preload()
                done.append(None)
            except BaseException as exc:  # noqa: BLE001 - raised below, on the caller's thread
                done.append(exc)

        thread = threading.Thread(target=run, name="slimpipe-preload", daemon=True)
        thread.start()
    try:
        _ensure_ray(address, num_cpus, quiet)
    finally:
        if thread is not None:
            thread.join()
    if done and done[0] is not None:
        raise done[0]


def _ensure_ray(address: str | None, num_cpus: int | None, quiet: bool) -> None:
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
    _check_command_line()
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception when its node times out starting
        raise RayConnectError(_connect_problem(exc, target)) from exc
    global _PRIVATE_ENV, _EXIT_REGISTERED
    if not kwargs["log_to_driver"] and not _EXIT_REGISTERED:
        # Before Ray's own exit hook (atexit runs the last registered first), which sleeps half a second for
        # worker output that is not shown here anyway.
        atexit.register(shutdown_ray)
        _EXIT_REGISTERED = True
    if target is None:
        from slimpipe import storage

        _PRIVATE_ENV = storage.storage_env()
    else:
        _PRIVATE_ENV = None
    how = f"attached to the Ray cluster at {target}" if target else "started a private local Ray"
    gcs = ray.get_runtime_context().gcs_address
    log.info("ray: %s (gcs %s): %s", how, gcs, ray.cluster_resources())
    if loud:
        print(f"ray: {how} (gcs {gcs})", file=sys.stderr)
    if "ray.data" in sys.modules:  # slimpipe does not use Ray Data: importing it costs a second of CPU
        try:
            sys.modules["ray.data"].DataContext.get_current().enable_progress_bars = loud or not quiet
        except Exception:  # older/newer Ray without the knob
            pass


def _auto_address() -> str:
    """``--ray-address auto``: the cluster the last ``ray start`` on this machine recorded, as host:port
    (as recorded: Ray's own canonicalisation would turn a loopback cluster's 127.0.0.1 into the public IP).

    Only the record: Ray's own ``auto`` falls back to any Ray it finds running on the machine (by reading
    the processes' command lines), which may be another job's private Ray.
    """
    from ray._private.utils import get_ray_address_file, read_ray_address

    recorded = read_ray_address(None)
    if not recorded or not recorded.strip():
        raise RayConnectError(
            f"--ray-address auto: no cluster recorded by `ray start` on this machine ({get_ray_address_file(None)} "
            "not found); start one with `ray start --head` or give its address as host:port")
    return recorded.strip()


def _check_reachable(target: str) -> None:
    """Fail in seconds, with one line, when nothing listens at ``host:port`` or this process's Ray token is
    refused there (Ray itself retries for 20 s to a minute, printing a raw warning each second)."""
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
    _check_token(target)


def _check_token(target: str) -> None:
    """One request to the cluster's GCS with this process's token; a refusal is one line, now.

    Ray's C++ client prints its own warning on stderr for the refused request: it is held back (shown with
    ``slimpipe -v``). Anything but a refused token is left to ``ray.init``, which retries and explains.
    """
    import tempfile

    from ray._raylet import GcsClient

    sys_err = 2
    with tempfile.TemporaryFile() as held:
        saved = os.dup(sys_err)
        os.dup2(held.fileno(), sys_err)
        try:
            GcsClient(address=target.split("://", 1)[-1])
            problem = None
        except Exception as exc:  # noqa: BLE001 - Ray raises AuthenticationError, RpcError or others
            problem = exc
        finally:
            os.dup2(saved, sys_err)
            os.close(saved)
        if problem is not None and verbose():
            held.seek(0)
            os.write(sys_err, held.read())
    if problem is not None:
        message = _connect_problem(problem, target)
        if "token" in message:
            raise RayConnectError(message) from problem
        log.info("ray: GCS at %s did not answer a first request (%s); ray.init retries", target, problem)


def _connect_problem(exc: BaseException, target: str | None) -> str:
    """One line saying why Ray could not start or attach, with the fix when it is a known one."""
    where = f"the Ray cluster at {target}" if target else "a local Ray"
    chain, e = [], exc
    while e is not None and len(chain) < 5:
        chain.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    text = " ".join(chain)
    if "InvalidAuthToken" in text or "AuthenticationError" in text or "Unauthenticated" in text:
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


def available_gpus() -> int:
    """GPUs Ray can schedule on (after :func:`ensure_ray`)."""
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
