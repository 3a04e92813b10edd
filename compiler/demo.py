"""The README's main job on a built-in default, end to end on this machine:

1. take a zoo network, compile it for x86-host on both sides (cached between runs) and check every
   cut against onnxruntime;
2. start the inference server on loopback (a separate process);
3. make this process the "device": a cgroup CPU quota makes it really slower than the server, as a
   phone is, and it measures its own segment times at start (no guessing);
4. send requests with the link shaped to Wi-Fi, LTE and 3G, then under rising server load, and
   print what the planner chose and why, against cloud-only and device-only, outputs checked.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ..runtime.bundle import MANIFEST, Bundle
from ..runtime.client import InferenceClient, ServerUnavailable
from ..runtime.device import DeviceRuntime
from ..runtime.profile import time_segments
from ..runtime.protocol import cut_model_name
from . import zoo
from .pipeline import CompileOptions, analyse, compile_model
from .report import check_table, cut_table, human_bytes
from .verify import random_inputs, reference_outputs, verify_bundle


def throttle_self(share: float) -> tuple[str | None, callable]:
    """Limit this process to `share` of one CPU with a cgroup quota (v1 cpu controller or v2).
    Returns (None, undo) on success, or (why not, no-op)."""
    period = 100_000
    quota = max(1000, int(share * period))
    name = f"neurosurgeon-demo-{os.getpid()}"
    for root, v2 in (("/sys/fs/cgroup/cpu", False), ("/sys/fs/cgroup", True)):
        base = Path(root)
        if not (base / ("cgroup.controllers" if v2 else "cpu.cfs_quota_us")).exists():
            continue
        group = base / name
        try:
            group.mkdir(exist_ok=True)
            if v2:
                (group / "cpu.max").write_text(f"{quota} {period}")
            else:
                (group / "cpu.cfs_period_us").write_text(str(period))
                (group / "cpu.cfs_quota_us").write_text(str(quota))
            (group / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as err:
            try:
                group.rmdir()
            except OSError:
                pass
            reason = f"cannot use {root} ({err.strerror})"
            continue

        def undo(group=group, base=base):
            try:
                (base / "cgroup.procs").write_text(str(os.getpid()))
                group.rmdir()
            except OSError:
                pass
        return None, undo
    return locals().get("reason", "no writable cgroup cpu controller"), lambda: None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "neurosurgeon.serve", str(bundle_path), "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    client = InferenceClient(url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            client.ready(deadline_s=1.0)
            return process, url
        except ServerUnavailable:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not become ready within 120 s")


class LoadGenerator:
    """`clients` threads sending whole-model requests to the server, as other users would."""

    def __init__(self, url: str, bundle: Bundle, clients: int, feeds: dict):
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(url, bundle, feeds), daemon=True) for _ in range(clients)]

    def _loop(self, url, bundle, feeds):
        client = InferenceClient(url)
        while not self.stop.is_set():
            try:
                client.infer(cut_model_name(bundle.name, 0), feeds, [t.name for t in bundle.outputs], deadline_s=60)
            except ServerUnavailable:
                time.sleep(0.1)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        time.sleep(0.5 if self.threads else 0)  # let a queue form
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def _cached_bundle_is_current(bundle_path: Path, model_sha256: str) -> bool:
    """A cached bundle counts only if this very compiler made it from this model (a bundle from an
    older version would show older code's speed and decisions)."""
    import tvm

    from .. import __version__
    from ..runtime.bundle import SCHEMA_MAJOR, SCHEMA_MINOR

    if not (bundle_path / MANIFEST).is_file():
        return False
    manifest = Bundle(bundle_path).manifest
    identity = manifest["identity"]
    return (identity["model_sha256"] == model_sha256 and identity["tool_version"] == __version__
            and identity["tvm_version"] == tvm.__version__ and manifest["schema_version"] == [SCHEMA_MAJOR, SCHEMA_MINOR]
            and identity["options"].get("kernels") == CompileOptions("x86-host", "x86-host").kernels)


def run_demo(workdir: Path, model_name: str = "alexnet", input_size: int | None = None, device_share: float = 0.25,
             requests: int = 3) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    model_path = workdir / f"{model_name}.onnx"
    zoo.save(zoo.build(model_name, input_size=input_size), model_path)
    frozen, graph, plan = analyse(model_path)
    print(cut_table(plan), end="\n\n")

    bundle_path = workdir / f"{model_name}.bundle"
    if _cached_bundle_is_current(bundle_path, frozen.sha256):
        print(f"using the cached bundle {bundle_path}")
    else:
        compile_model(model_path, bundle_path, CompileOptions(mobile="x86-host", server="x86-host", force=True))
    checks = verify_bundle(bundle_path, model_path)
    print(check_table(checks).splitlines()[-1], "(every cut, in-process)\n")
    bundle = Bundle(bundle_path)
    feeds = random_inputs(bundle, seed=1)
    reference = reference_outputs(model_path, feeds)

    server, url = start_server(bundle_path)
    why_not, unthrottle = throttle_self(device_share)
    try:
        print(f"server: {url} (its own process, full speed)")
        if why_not:
            print(f"device: this process, NOT throttled ({why_not}): device and server run at the same speed, "
                  "so offloading rarely pays off here")
        else:
            print(f"device: this process, limited to {device_share:.0%} of one CPU by a cgroup quota (a phone-like device)")
        device_costs = _calibrate(bundle, workdir)
        n = len(bundle.segments)
        rows = []
        mobile_only = _run(bundle, url, "wifi", device_costs, n, feeds, 1)[-1]
        for network in ("wifi", "lte", "3g"):
            auto = _run(bundle, url, network, device_costs, "auto", feeds, requests)
            cloud = _run(bundle, url, network, device_costs, 0, feeds, 1)
            rows.append((network, "idle", auto, cloud[-1], mobile_only))
        for clients in (2, 4):
            with LoadGenerator(url, bundle, clients, feeds):
                auto = _run(bundle, url, "wifi", device_costs, "auto", feeds, requests)
                cloud = _run(bundle, url, "wifi", device_costs, 0, feeds, 1)
            rows.append(("wifi", f"{clients} other clients", auto, cloud[-1], mobile_only))
        _print_table(bundle, rows, reference)
    finally:
        unthrottle()
        server.terminate()
        server.wait(timeout=30)
    return 0


def _calibrate(bundle: Bundle, workdir: Path) -> Path:
    """The device measures its own segments (it is slower than the machine that built the bundle)."""
    started = time.perf_counter()
    seconds = time_segments(bundle, "mobile", repeats=3)
    costs = dict(bundle.manifest["costs"])
    costs["mobile"] = {**costs["mobile"], "segment_seconds": seconds, "source": "measured on this device at start-up"}
    path = Path(tempfile.mkstemp(prefix="device-costs-", suffix=".json", dir=workdir)[1])
    path.write_text(json.dumps(costs))
    print(f"device calibration: {sum(seconds) * 1e3:.0f} ms for the whole model here "
          f"(the server measured {sum(costs['server']['segment_seconds']) * 1e3:.0f} ms), took {time.perf_counter() - started:.1f} s\n")
    return path


def _run(bundle, url, network, costs_file, cut, feeds, requests):
    runtime = DeviceRuntime(bundle, url, network=network, shape_link=True, costs=costs_file)
    runtime.warm_up()
    results = []
    for _ in range(requests):
        outputs, record = runtime.infer(feeds, cut)
        results.append((outputs, record))
    runtime.client.close()
    return results


def _print_table(bundle: Bundle, rows, reference) -> None:
    head = ("network", "server load", "chosen cut", "after layer", "uploads", "predicted", "latency", "cloud-only",
            "device-only", "vs cloud", "vs device", "why: estimates used", "max err")
    table = [head]
    for network, load, auto, (_, cloud), (_, device) in rows:
        outputs, record = auto[-1]
        error = max(float(np.max(np.abs(outputs[k] - reference[k]))) for k in reference)
        after = bundle.manifest["cuts"][record.cut]["after_layer"] or "(input)"
        why = (f"up {record.up_mbps:.1f} Mbps, rtt {record.rtt_s * 1e3:.0f} ms, "
               f"server queue {record.server_wait_s * 1e3:.0f} ms")
        table.append((network, load, f"{record.cut}" + (" (fell back)" if record.fell_back else ""), after,
                      human_bytes(record.crossing_bytes), f"{record.predicted_latency_s * 1e3:.0f} ms",
                      f"{record.total_s * 1e3:.0f} ms", f"{cloud.total_s * 1e3:.0f} ms", f"{device.total_s * 1e3:.0f} ms",
                      f"{cloud.total_s / record.total_s:.2f}x", f"{device.total_s / record.total_s:.2f}x", why,
                      f"{error:.1e}"))
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for i, r in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\nchosen cut: the argmin of the predicted latency over all {len(bundle.cuts)} cuts, from the device's "
          "measured segment times, the server's, and the estimates shown (learned from the requests' own transfers "
          "and the load the server reports).")
    print(f"latency: the last of the auto requests (the estimators learn from the first ones); cloud-only and "
          f"device-only run the same request at cut 0 and cut {len(bundle.segments)}; max err vs onnxruntime on the whole model.")
