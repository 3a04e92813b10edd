"""The README's main job on a built-in default, end to end on this machine, with the evaluation's
machinery (tools/evaluate):

1. take a zoo network, compile it for x86-host on both sides (cached between runs) and check every
   cut against onnxruntime;
2. start the inference server on loopback (a separate process);
3. start the mobile device, a process of its own slowed to a stated speed (tools/evaluate/device.py),
   which measures its own segment times at start (no guessing);
4. per scenario (Wi-Fi, LTE, 3G on an idle server, then Wi-Fi with other clients loading the server
   from a process of their own), run the planner's choice, cloud-only, device-only and every cut that
   could be the best, interleaved, 10 requests each, and print the medians with their spread, every
   output checked against onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

from ..compiler.report import cut_table, human_bytes
from ..runtime.bundle import Bundle
from ..runtime.errors import NeurosurgeonError
from ..runtime.protocol import cut_model_name
from ..runtime.tensors import random_inputs
from ..serving import LoadProcess, start_server
from .evaluate import SERVER_ENV, EvaluateOptions, prepare_bundle
from .evaluate.device import DeviceProcess, parse_speed
from .evaluate.measure import measure_case
from .verify import check_table, reference_outputs, verify_bundle

__all__ = ["SCENARIOS", "run_demo"]

SCENARIOS = (("wifi", 0), ("lte", 0), ("3g", 0), ("wifi", 2), ("wifi", 4))  # (network, other clients)


def run_demo(workdir: Path, model_name: str = "alexnet", input_size: int | None = None, device: str = "dilate:16",
             requests: int = 10) -> int:
    speed = parse_speed(device)
    model_path, bundle_path = prepare_bundle(workdir, model_name, input_size)
    from ..api import analyse

    print(cut_table(analyse(model_path)[2]), end="\n\n")
    checks = verify_bundle(bundle_path, model_path)
    print(check_table(checks).splitlines()[-1], "(every cut, in-process)\n")
    bundle = Bundle(bundle_path)
    feeds = random_inputs(bundle.inputs, seed=1)
    reference = reference_outputs(model_path, feeds)
    outputs = [t.name for t in bundle.outputs]
    rows = []
    with start_server(bundle_path, extra_env=SERVER_ENV) as server, DeviceProcess(bundle_path, server.url, speed, reference, feeds) as phone:
        if phone.not_applied:
            raise NeurosurgeonError(f"device {speed.spec}: {phone.not_applied}; try --device dilate:4")
        print(f"server: {server.url} (its own process, full speed)")
        print(f"mobile device: its own process, {speed.describe}")
        seconds = phone.calibrate(5, str(workdir), EvaluateOptions.device_power_w)
        server_s = sum(bundle.manifest.costs["server"].segment_seconds)
        print(f"device calibration: {sum(seconds) * 1e3:.0f} ms for the whole model (the server measured "
              f"{server_s * 1e3:.0f} ms at compile time)\n")
        for network, clients in SCENARIOS:
            print(f"measuring {network}, {clients} other clients ...", flush=True)
            with LoadProcess(server.url, cut_model_name(bundle.name, 0), feeds, outputs, clients):
                rows.append(measure_case(phone, bundle, model_name, network, clients, requests,
                                         objectives=("latency",), device_s=seconds))
    print()
    _print_table(bundle, rows, requests)
    return 0


def _print_table(bundle: Bundle, cases, requests: int) -> None:
    n = len(bundle.segments)
    head = ("network", "server load", "chosen cut (share)", "after layer", "uploads", "predicted", "latency",
            "cloud-only", "device-only", "best cut", "vs cloud", "vs device", "vs best", "max err")
    table = [head]
    for case in cases:
        auto = case.auto_stats("latency")
        schedule, times, cut = case.choice("latency")
        picked = [r for r in case.auto["latency"] if r["schedule"] == schedule]
        best, best_stats = case.oracle("latency")
        cloud, device = case.stats(0), case.stats(n)
        judged = case.judged("latency")
        predicted = sorted(r["predicted_latency_s"] for r in picked)[len(picked) // 2]
        error = max(r["error"] for v in [*case.cuts.values(), *case.auto.values()] for r in v)
        fell_back = sum(r["fell_back"] for r in case.auto["latency"])
        table.append((case.network, f"{case.clients} other clients" if case.clients else "idle",
                      f"{cut} ({times}/{auto.n})" + (f", {fell_back} fell back" if fell_back else ""),
                      (bundle.cuts[cut].after_layer or "(input)") if cut is not None else schedule,
                      human_bytes(bundle.cuts[cut].upload_bytes) if cut is not None else "", f"{predicted * 1e3:.0f} ms",
                      f"{auto.text()} ms", f"{cloud.text()} ms", f"{device.text()} ms", f"{best}: {best_stats.text()} ms",
                      f"{cloud.median / auto.median:.2f}x", f"{device.median / auto.median:.2f}x",
                      f"{judged.median / best_stats.median:.2f}x", f"{error:.1e}"))
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for i, r in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\nEvery time is the median of {requests} requests [10th-90th percentile], the planner's own requests "
          "interleaved with cloud-only (cut 0), device-only (cut "
          f"{n}) and every cut that could be the best (the best cut: the lowest median measured).")
    print("chosen cut: the planner's argmin of the predicted latency over all cuts, from the device's measured "
          "segment times, the server's, and what it learns from its requests (bandwidth, round trip, the load the "
          "server reports); share: how many of the requests chose it.")
    print("vs best: the chosen cut's median against the best cut's, both from the same rounds (1.00x: the best). "
          "max err: against onnxruntime on the whole model, over every request.")
