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


if __name__ == "__main__":
    sys.exit(bench_runtime(sys.argv[1], [1, 2, 4], 5.0, 20, "--json" in sys.argv))
