"""The README's main job on a built-in default, end to end on this machine:

1. take a zoo network, compile it for x86-host on both sides (cached between runs) and check every
   cut against onnxruntime;
2. start the inference server on loopback (a separate process);
3. make this process the mobile side: a cgroup CPU quota makes it really slower than the server, as
   a phone is, and it measures its own segment times at start (no guessing);
4. send requests with the link shaped to Wi-Fi, LTE and 3G, then under rising server load, and
   print what the planner chose and why, against cloud-only and mobile-only, outputs checked.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ..api import CompileOptions, analyse
from ..api import compile as compile_bundle
from ..compiler.report import cut_table, human_bytes
from ..runtime.bundle import Bundle
from ..runtime.manifest import MANIFEST, MANIFEST_FORMAT
from ..runtime.mobile import COSTS_FORMAT, MobileRuntime
from ..runtime.profile import time_segments
from ..runtime.protocol import cut_model_name
from ..runtime.tensors import random_inputs
from ..serving import LoadGenerator, start_server
from . import zoo
from .verify import check_table, reference_outputs, verify_bundle

__all__ = ["run_demo", "throttle_self"]


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


def _cached_bundle_is_current(bundle_path: Path, model_sha256: str) -> bool:
    """A cached bundle counts only if this very compiler made it from this model (a bundle from an
    older version would show older code's speed and decisions)."""
    import tvm

    from .. import __version__

    if not (bundle_path / MANIFEST).is_file():
        return False
    manifest = Bundle(bundle_path).manifest
    identity = manifest.identity
    return (identity.model_sha256 == model_sha256 and identity.tool_version == __version__
            and identity.tvm_version == tvm.__version__ and manifest.version == MANIFEST_FORMAT.version
            and identity.options.get("kernels") == CompileOptions("x86-host", "x86-host").kernels)


def run_demo(workdir: Path, model_name: str = "alexnet", input_size: int | None = None, mobile_share: float = 0.25,
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
        compile_bundle(model_path, bundle_path, CompileOptions(mobile="x86-host", server="x86-host", force=True))
    checks = verify_bundle(bundle_path, model_path)
    print(check_table(checks).splitlines()[-1], "(every cut, in-process)\n")
    bundle = Bundle(bundle_path)
    feeds = random_inputs(bundle.inputs, seed=1)
    reference = reference_outputs(model_path, feeds)

    with start_server(bundle_path) as server:
        url = server.url
        why_not, unthrottle = throttle_self(mobile_share)
        try:
            print(f"server: {url} (its own process, full speed)")
            if why_not:
                print(f"mobile side: this process, NOT throttled ({why_not}): it runs as fast as the server, "
                      "so offloading rarely pays off here")
            else:
                print(f"mobile side: this process, limited to {mobile_share:.0%} of one CPU by a cgroup quota "
                      "(a phone-like machine)")
            mobile_costs = _calibrate(bundle, workdir)
            n = len(bundle.segments)
            rows = []
            mobile_only = _run(bundle, url, "wifi", mobile_costs, n, feeds, 1)[-1]
            for network in ("wifi", "lte", "3g"):
                auto = _run(bundle, url, network, mobile_costs, "auto", feeds, requests)
                cloud = _run(bundle, url, network, mobile_costs, 0, feeds, 1)
                rows.append((network, "idle", auto, cloud[-1], mobile_only))
            for clients in (2, 4):
                with LoadGenerator(url, cut_model_name(bundle.name, 0), feeds, [t.name for t in bundle.outputs], clients):
                    auto = _run(bundle, url, "wifi", mobile_costs, "auto", feeds, requests)
                    cloud = _run(bundle, url, "wifi", mobile_costs, 0, feeds, 1)
                rows.append(("wifi", f"{clients} other clients", auto, cloud[-1], mobile_only))
            _print_table(bundle, rows, reference)
        finally:
            unthrottle()
    return 0


def _calibrate(bundle: Bundle, workdir: Path) -> Path:
    """The mobile side measures its own segments (it is slower than the machine that built the bundle)
    and writes a costs file with them, which its runtime then decides with."""
    started = time.perf_counter()
    seconds = time_segments(bundle, "mobile", repeats=3)
    mobile, server = bundle.manifest.costs["mobile"], bundle.manifest.costs["server"]
    costs = {**COSTS_FORMAT.stamp(),
             "mobile": {"segment_seconds": seconds, "source": "measured on this machine at start-up",
                        "power_w": list(mobile.power_w) if isinstance(mobile.power_w, tuple) else mobile.power_w},
             "server": {"segment_seconds": list(server.segment_seconds), "source": server.source}}
    path = Path(tempfile.mkstemp(prefix="mobile-costs-", suffix=".json", dir=workdir)[1])
    COSTS_FORMAT.write(path, costs)
    print(f"mobile calibration: {sum(seconds) * 1e3:.0f} ms for the whole model here "
          f"(the server measured {sum(server.segment_seconds) * 1e3:.0f} ms), took {time.perf_counter() - started:.1f} s\n")
    return path


def _run(bundle, url, network, costs_file, cut, feeds, requests):
    runtime = MobileRuntime(bundle, url, network=network, shape_link=True, costs=costs_file)
    runtime.warm_up()
    results = []
    for _ in range(requests):
        outputs, record = runtime.infer(feeds, cut)
        results.append((outputs, record))
    runtime.client.close()
    return results


def _print_table(bundle: Bundle, rows, reference) -> None:
    head = ("network", "server load", "chosen cut", "after layer", "uploads", "predicted", "latency", "cloud-only",
            "mobile-only", "vs cloud", "vs mobile", "why: estimates used", "max err")
    table = [head]
    for network, load, auto, (_, cloud), (_, mobile) in rows:
        outputs, record = auto[-1]
        error = max(float(np.max(np.abs(outputs[k] - reference[k]))) for k in reference)
        after = bundle.cuts[record.cut].after_layer or "(input)"
        why = (f"up {record.up_mbps:.1f} Mbps, rtt {record.rtt_s * 1e3:.0f} ms, "
               f"server queue {record.server_wait_s * 1e3:.0f} ms")
        table.append((network, load, f"{record.cut}" + (" (fell back)" if record.fell_back else ""), after,
                      human_bytes(record.crossing_bytes), f"{record.predicted_latency_s * 1e3:.0f} ms",
                      f"{record.total_s * 1e3:.0f} ms", f"{cloud.total_s * 1e3:.0f} ms", f"{mobile.total_s * 1e3:.0f} ms",
                      f"{cloud.total_s / record.total_s:.2f}x", f"{mobile.total_s / record.total_s:.2f}x", why,
                      f"{error:.1e}"))
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for i, r in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\nchosen cut: the argmin of the predicted latency over all {len(bundle.cuts)} cuts, from the mobile side's "
          "measured segment times, the server's, and the estimates shown (learned from the requests' own transfers "
          "and the load the server reports).")
    print(f"latency: the last of the auto requests (the estimators learn from the first ones); cloud-only and "
          f"mobile-only run the same request at cut 0 and cut {len(bundle.segments)}; max err vs onnxruntime on the whole model.")
