"""Benchmarks that print tables (`neurosurgeon bench ...`): measured here, medians side by side in
one run, since the machine is shared and noisy."""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
import timeit
from pathlib import Path

import numpy as np

from neurosurgeon.compiler.demo import start_server
from neurosurgeon.compiler.verify import random_inputs
from neurosurgeon.runtime.bundle import Bundle, SegmentExecutor, fetch
from neurosurgeon.runtime.client import InferenceClient
from neurosurgeon.runtime.device import DeviceRuntime
from neurosurgeon.runtime.planner import Conditions, Planner, SegmentCosts
from neurosurgeon.runtime.protocol import cut_model_name


def _per_call_us(function, number: int = 2000, repeat: int = 7) -> float:
    return min(timeit.repeat(function, number=number, repeat=repeat)) / number * 1e6


def decision_times(runtime: DeviceRuntime) -> dict:
    """The planner alone, the device's whole decision (estimates -> conditions -> argmin), and a
    synthetic 50-cut planner for the issue's target."""
    rng = np.random.default_rng(0)
    n = 49
    synthetic = Planner(SegmentCosts(rng.uniform(size=n), rng.uniform(size=n), rng.uniform(size=n),
                                     rng.uniform(size=n + 1), rng.uniform(size=n + 1)))
    c = Conditions(5.85, 13.76, 0.05, upload_power_w=3.9, download_power_w=2.0)
    return {
        "cuts": len(runtime.bundle.cuts),
        "planner_us": _per_call_us(lambda: runtime.planner.choose(c)),
        "device_decide_us": _per_call_us(lambda: runtime.decide("auto")),
        "planner_50_cuts_us": _per_call_us(lambda: synthetic.choose(c)),
    }


def request_overhead(bundle: Bundle, url: str, feeds: dict, cuts: list[int], repeats: int) -> list[dict]:
    """A partitioned request over loopback vs the sum of its parts run in-process (the same device
    segments, the same server segments): what the protocol, sockets and server add."""
    device = SegmentExecutor(bundle, "mobile")
    server = SegmentExecutor(bundle, "server")
    runtime = DeviceRuntime(bundle, url, learn=False)
    runtime.warm_up()
    rows = []
    for k in cuts:
        parts, totals = [], []
        for _ in range(repeats):
            env = dict(feeds)
            started = time.perf_counter()
            device.run(env, range(k))
            server.run(env, range(k, len(bundle.segments)))
            [fetch(env[t.name]) for t in bundle.outputs]  # the request returns numpy arrays too
            parts.append(time.perf_counter() - started)
            _, record = runtime.infer(feeds, k)
            assert not record.fell_back, record.fallback_reason
            totals.append(record.total_s)
        part, total = statistics.median(parts), statistics.median(totals)
        rows.append({"cut": k, "crossing_bytes": bundle.cuts[k].upload_bytes, "parts_ms": part * 1e3,
                     "request_ms": total * 1e3, "overhead_ms": (total - part) * 1e3,
                     "overhead_ratio": total / part if part else float("nan")})
    runtime.client.close()
    return rows


def server_throughput(bundle: Bundle, url: str, feeds: dict, clients: list[int], seconds: float) -> list[dict]:
    """Requests/s of the server on loopback with N concurrent clients sending the whole model (cut 0)."""
    rows = []
    model = cut_model_name(bundle.name, 0)
    outputs = [t.name for t in bundle.outputs]
    for n in clients:
        latencies: list[float] = []
        stop = time.perf_counter() + seconds
        lock = threading.Lock()

        def client_loop():
            client = InferenceClient(url)
            while time.perf_counter() < stop:
                answer = client.infer(model, feeds, outputs, deadline_s=60)
                with lock:
                    latencies.append(answer.seconds)
            client.close()

        threads = [threading.Thread(target=client_loop) for _ in range(n)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        rows.append({"clients": n, "requests": len(latencies), "requests_per_s": len(latencies) / elapsed,
                     "median_latency_ms": statistics.median(latencies) * 1e3 if latencies else float("nan")})
    return rows


def bench_runtime(bundle_path: str | Path, clients: list[int], seconds: float, repeats: int, as_json: bool) -> int:
    bundle = Bundle(bundle_path)
    feeds = random_inputs(bundle)
    server, url = start_server(Path(bundle_path))
    try:
        runtime = DeviceRuntime(bundle, url)
        decisions = decision_times(runtime)
        runtime.client.close()
        n = len(bundle.segments)
        overhead = request_overhead(bundle, url, feeds, sorted({0, n // 2, n - 1}), repeats)
        throughput = server_throughput(bundle, url, feeds, clients, seconds)
    finally:
        server.terminate()
        server.wait(timeout=30)
    result = {"bundle": bundle.name, "decision": decisions, "overhead": overhead, "throughput": throughput}
    if as_json:
        print(json.dumps(result, indent=1))
        return 0
    d = decisions
    print(f"decision time ({bundle.name}, {d['cuts']} cuts): planner {d['planner_us']:.1f} us, "
          f"device decide (estimates + planner) {d['device_decide_us']:.1f} us; "
          f"a 50-cut planner {d['planner_50_cuts_us']:.1f} us (target < 20 us)\n")
    print(f"{'cut':>4} {'crossing':>10} {'parts ms':>9} {'request ms':>11} {'overhead ms':>12} {'ratio':>6}")
    for r in overhead:
        print(f"{r['cut']:>4} {r['crossing_bytes']:>10} {r['parts_ms']:9.2f} {r['request_ms']:11.2f} "
              f"{r['overhead_ms']:12.2f} {r['overhead_ratio']:5.2f}x")
    print(f"(parts = the same segments run in-process; request = the whole partitioned request over loopback; "
          f"medians of {repeats})\n")
    print(f"{'clients':>7} {'requests':>9} {'req/s':>8} {'median ms':>10}")
    for r in throughput:
        print(f"{r['clients']:>7} {r['requests']:>9} {r['requests_per_s']:8.1f} {r['median_latency_ms']:10.1f}")
    print(f"(whole-model requests, cut 0, for {seconds:g} s per row; the server runs one request at a time)")
    return 0


def decision_quality(predicted_device: np.ndarray, measured_device: np.ndarray, predicted_server: np.ndarray,
                     measured_server: np.ndarray, upload_bytes: np.ndarray, download_bytes: np.ndarray,
                     uplinks_mbps, server_ratios, server_waits_s, rtt_s: float = 0.02) -> dict:
    """Over a grid of conditions: how often the cut chosen from predictions is the oracle's (chosen from
    measured times), and how much slower, in measured time, the chosen cut is than the oracle's."""
    n = len(predicted_device)
    zeros = np.zeros(n)

    def planner(device, server):
        return Planner(SegmentCosts(device, server, zeros, upload_bytes, download_bytes))

    same, ratios = 0, []
    for ratio in server_ratios:
        predicted = planner(predicted_device, predicted_server / ratio)
        measured = planner(measured_device, measured_server / ratio)
        for up in uplinks_mbps:
            for wait in server_waits_s:
                c = Conditions(up, up * 2.5, rtt_s, server_wait_s=wait)
                chosen = predicted.choose(c).cut
                truth, _ = measured.predict(c)
                oracle = int(np.argmin(truth))
                same += chosen == oracle
                ratios.append(truth[chosen] / truth[oracle])
    return {"cases": len(ratios), "same_cut_share": same / len(ratios), "mean_ratio": float(np.mean(ratios)),
            "worst_ratio": float(np.max(ratios))}


def _time_whole_model(frozen, path: Path, repeats: int = 3) -> float:
    """Median seconds of the whole model built as one (monolithic) artifact, for the additivity check."""
    import tvm

    from neurosurgeon.compiler.build import build_graph
    from neurosurgeon.targets import get_preset

    build_graph(frozen.model, frozen.inputs, get_preset("x86-host"), path, "whole model")
    function = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())["main"]
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.standard_normal(t.shape).astype(t.dtype)) for t in frozen.inputs]
    function(*args)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function(*args)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _capped(zoo, name: str, cap: int | None):
    """The zoo model at its default size, or at `cap` if that is smaller (never below its minimum)."""
    model = zoo.build(name)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if cap is None or zoo.min_input_size(name) is None or dims[-1].dim_value <= cap:
        return model
    return zoo.build(name, input_size=max(cap, zoo.min_input_size(name)))


def bench_decisions(models: list[str], cost_model: str, input_size: int | None, workdir: Path, as_json: bool) -> int:
    """Cost-model quality on this machine: per-type fit error, per-segment predicted vs measured, and
    decision quality over uplinks 0.1-100 Mbps, server speed ratios and server loads."""
    from neurosurgeon.compiler import zoo
    from neurosurgeon.compiler.pipeline import CompileOptions, compile_model
    from neurosurgeon.runtime.costmodel import CostModel

    model = CostModel.load(cost_model)
    grid = {"uplinks_mbps": list(np.geomspace(0.1, 100, 13)), "server_ratios": [1, 4, 16, 64],
            "server_waits_s": [0.0, 0.05, 0.2]}
    rows = []
    workdir.mkdir(parents=True, exist_ok=True)
    for name in models:
        path = workdir / f"{name}.onnx"
        zoo.save(_capped(zoo, name, input_size), path)
        print(f"  {name}: compiling and measuring its segments", file=sys.stderr)
        result = compile_model(path, workdir / f"{name}.bundle",
                               CompileOptions("x86-host", "x86-host", force=True, progress=False,
                                              mobile_cost=cost_model, server_cost=cost_model))
        whole_s = _time_whole_model(result.frozen, workdir / f"{name}_whole.so")
        costs = result.manifest["costs"]["mobile"]
        predicted, measured = np.array(costs["predicted_seconds"]), np.array(costs["measured_seconds"])
        errors = np.abs(predicted - measured) / measured
        cuts = result.manifest["cuts"]
        quality = decision_quality(predicted, measured, predicted, measured,
                                   np.array([c["upload_bytes"] for c in cuts], dtype=float),
                                   np.array([c["download_bytes"] for c in cuts], dtype=float), **grid)
        rows.append({"model": name, "segments": len(predicted), "segment_mape": float(np.mean(errors)),
                     "segment_worst": float(np.max(errors)), "total_predicted_s": float(predicted.sum()),
                     "total_measured_s": float(measured.sum()), "whole_model_s": whole_s,
                     "chain_over_whole": float(measured.sum()) / whole_s, **quality})
    result = {"cost_model": cost_model, "types": model.type_errors(), "grid": grid, "models": rows}
    if as_json:
        print(json.dumps(result, indent=1))
        return 0
    print("per-layer-type regressions (held-out MAPE of the chosen form):")
    for layer_type, info in sorted(result["types"].items()):
        mape = "n/a" if info["cv_mape"] is None else f"{info['cv_mape']:.1%}"
        print(f"  {layer_type:14s} {info['form']:7s} n={info['n']:<4d} MAPE {mape}")
    print(f"\n{'model':10} {'segs':>4} {'seg MAPE':>9} {'worst':>7} {'pred s':>8} {'meas s':>8} {'whole s':>8} "
          f"{'chain/whole':>11} {'same cut':>9} {'mean ratio':>11} {'worst ratio':>12}")
    for r in rows:
        print(f"{r['model']:10} {r['segments']:>4} {r['segment_mape']:9.1%} {r['segment_worst']:7.0%} "
              f"{r['total_predicted_s']:8.3f} {r['total_measured_s']:8.3f} {r['whole_model_s']:8.3f} "
              f"{r['chain_over_whole']:10.2f}x {r['same_cut_share']:9.1%} {r['mean_ratio']:11.3f} {r['worst_ratio']:12.3f}")
    print("seg MAPE: per-segment predicted vs measured; chain/whole: the measured segments' sum over the "
          "monolithic build's time (how far from additive layers are once compiled together)")
    cases = sum(r["cases"] for r in rows)
    share = sum(r["same_cut_share"] * r["cases"] for r in rows) / cases
    print(f"\nall models: the predicted cut is the oracle's in {share:.1%} of {cases} cases; worst measured "
          f"slowdown vs the oracle {max(r['worst_ratio'] for r in rows):.3f}x (goal: >= 95% and < 1.05x)")
    print(f"grid: uplink {grid['uplinks_mbps'][0]:g}-{grid['uplinks_mbps'][-1]:g} Mbps ({len(grid['uplinks_mbps'])} steps), "
          f"downlink 2.5x uplink, RTT 20 ms, server {grid['server_ratios']}x faster than this machine, "
          f"server queueing {grid['server_waits_s']} s")
    return 0
