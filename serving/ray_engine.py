"""`neurosurgeon serve DIR --engine ray`: the same ASGI app (runtime/server.py) as a Ray Serve
deployment, on a local Ray head or on an existing Ray cluster by address.

Each replica builds the app itself (`__serve_build_asgi_app__`, run on the replica after its
constructor): what travels to a replica is the repository's path and the options, never a loaded
TVM module. The cores are shared out among replicas (each gets `cores / replicas` CPUs from Ray and
as many threads); with `--replicas auto`, Ray Serve's autoscaler keeps between 1 and the node's
cores' worth of replicas, aiming at 2 requests in flight per replica. Ray is an optional extra
(`pip install neurosurgeon[ray]`).

On several machines: `ray start --head` on one, `ray start --address HEAD:6379` on the others, the
repository at the same path on every machine, then `neurosurgeon serve DIR --engine ray
--ray-address auto --replicas N` on the head.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

from ..runtime.errors import NeurosurgeonError
from ..runtime.repository import bundle_folders
from ..runtime.threads import cores_here
from .config import ServerConfig

__all__ = ["run_ray"]

TARGET_ONGOING_REQUESTS = 2  # per replica, what the autoscaler aims at


def _app_class():
    """The deployment class, made when Ray is imported (`serve.ingress` needs it)."""
    from ray import serve

    @serve.ingress()
    class NeurosurgeonReplica:
        def __init__(self, config: ServerConfig):
            self.config = config

        def __serve_build_asgi_app__(self):
            return self.config.app()

    return NeurosurgeonReplica


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run_ray(config: ServerConfig, replicas: int | str = 1, address: str | None = None) -> None:
    """Deploy the app on Ray Serve and block until interrupted (SIGINT or SIGTERM), then shut down
    what was started (the local Ray head, if it was started here)."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise NeurosurgeonError("--engine ray needs Ray Serve: pip install 'neurosurgeon[ray]' "
                                "(or pip install 'ray[serve]')") from None
    options = config.options
    cores = cores_here()
    if replicas == "auto":
        most = max(1, cores // options.workers)
        scaling = {"autoscaling_config": {"min_replicas": 1, "max_replicas": most,
                                          "target_ongoing_requests": TARGET_ONGOING_REQUESTS}}
        threads = max(1, cores // (most * options.workers))
    else:
        count = int(replicas)
        if count < 1:
            raise NeurosurgeonError(f"--replicas must be at least 1 or auto, got {replicas}")
        scaling = {"num_replicas": count}
        threads = max(1, cores // (count * options.workers))
    bundles = [p.name for p in bundle_folders(config.path)]
    port = config.port or _free_port(config.host)
    ray.init(address=address, include_dashboard=False, logging_level=config.log_level.upper(), log_to_driver=False,
             **({} if address else {"num_cpus": cores}))
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs handlers of its own
        signal.signal(number, lambda *_: stop.set())
    try:
        http = {"host": config.host, "port": port}
        if config.ssl_certfile:
            http.update(ssl_certfile=config.ssl_certfile, ssl_keyfile=config.ssl_keyfile)
        serve.start(http_options=http)
        deployment = serve.deployment(_app_class(), name="neurosurgeon",
                                      ray_actor_options={"num_cpus": threads * options.workers},
                                      max_ongoing_requests=64, **scaling)
        replica = replace(config, path=config.path.resolve(), options=replace(options, threads_per_worker=threads))
        serve.run(deployment.bind(replica), name="neurosurgeon", route_prefix="/")
        config.announce(port, bundles, f"Ray Serve, {replicas} replicas x {options.workers} workers")
        while not stop.wait(1.0):
            pass
    finally:
        logging.getLogger("neurosurgeon.server").info("shutting Ray Serve down")
        started_here = _descendants(os.getpid())  # the local head's processes, if it was started here
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            _reap(started_here)


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, theirs, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state
        children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _reap(pids: set[int], grace_s: float = 1.0) -> None:
    """Ray's agents outlive its shutdown by up to a minute, polling for a raylet that is gone: end what
    is left of the processes the local head started (asked first, then told)."""
    for number in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, number)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
