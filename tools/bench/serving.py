"""`neurosurgeon bench runtime BUNDLE`: what the request path costs, measured here: the planner's
decision time, a partitioned request over loopback against the sum of its parts run in-process,
and the server's requests/s with N concurrent clients."""

from __future__ import annotations

import statistics
import time
import timeit
from pathlib import Path

import numpy as np

from ...runtime.bundle import Bundle, SegmentExecutor, fetch
from ...runtime.mobile import MobileRuntime
from ...runtime.planner import Conditions, PrefixPlanner, SegmentCosts
from ...runtime.protocol import cut_model_name
from ...runtime.schedule import TensorGraph
from ...runtime.tensors import random_inputs
from ...serving import LoadGenerator, start_server

__all__ = ["bench_runtime", "decision_times", "request_overhead", "runtime_table", "server_throughput"]


def _per_call_us(function, number: int = 2000, repeat: int = 7) -> float:
    return min(timeit.repeat(function, number=number, repeat=repeat)) / number * 1e6


def decision_times(runtime: MobileRuntime) -> dict:
    """The planner alone, the mobile side's whole decision (estimates -> conditions -> argmin), and
    a synthetic 50-cut planner for the issue's target."""
    rng = np.random.default_rng(0)
    n = 49
    synthetic = PrefixPlanner(TensorGraph.chain(rng.uniform(1e3, 1e6, n), 4e3),
                              SegmentCosts(rng.uniform(size=n), rng.uniform(size=n), rng.uniform(size=n)))
    c = Conditions(5.85, 13.76, 0.05, upload_power_w=3.9, download_power_w=2.0)
    return {
        "cuts": len(runtime.bundle.cuts),
        "planner_us": _per_call_us(lambda: runtime.planner.choose(c)),
        "mobile_decide_us": _per_call_us(lambda: runtime.decide("auto")),
        "planner_50_cuts_us": _per_call_us(lambda: synthetic.choose(c)),
    }


def request_overhead(bundle: Bundle, url: str, feeds: dict, cuts: list[int], repeats: int) -> list[dict]:
    """A partitioned request over loopback vs the sum of its parts run in-process (the same mobile
    segments, the same server segments): what the protocol, sockets and server add."""
    mobile = SegmentExecutor(bundle, "mobile")
    server = SegmentExecutor(bundle, "server")
    runtime = MobileRuntime(bundle, url, learn=False)
    runtime.warm_up()
    rows = []
    for k in cuts:
        parts, totals = [], []
        for _ in range(repeats):
            env = dict(feeds)
            started = time.perf_counter()
            mobile.run(env, range(k))
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
    for n in clients:
        load = LoadGenerator(url, cut_model_name(bundle.name, 0), feeds, [t.name for t in bundle.outputs], n)
        elapsed = load.run_for(seconds)
        latencies = [sample.seconds for sample in load.samples]
        rows.append({"clients": n, "requests": len(latencies), "errors": load.errors,
                     "requests_per_s": len(latencies) / elapsed,
                     "median_latency_ms": statistics.median(latencies) * 1e3 if latencies else float("nan")})
    return rows


def bench_runtime(bundle_path: str | Path, clients: list[int], seconds: float, repeats: int) -> dict:
    bundle = Bundle(bundle_path)
    feeds = random_inputs(bundle.inputs)
    with start_server(bundle.path) as server:
        runtime = MobileRuntime(bundle, server.url)
        decisions = decision_times(runtime)
        runtime.client.close()
        n = len(bundle.segments)
        overhead = request_overhead(bundle, server.url, feeds, sorted({0, n // 2, n - 1}), repeats)
        throughput = server_throughput(bundle, server.url, feeds, clients, seconds)
    return {"bundle": bundle.name, "decision": decisions, "overhead": overhead, "throughput": throughput,
            "seconds_per_row": seconds, "repeats": repeats}


def runtime_table(result: dict) -> str:
    d = result["decision"]
    lines = [f"decision time ({result['bundle']}, {d['cuts']} cuts): planner {d['planner_us']:.1f} us, "
             f"mobile decide (estimates + planner) {d['mobile_decide_us']:.1f} us; "
             f"a 50-cut planner {d['planner_50_cuts_us']:.1f} us (target < 20 us)", "",
             f"{'cut':>4} {'crossing':>10} {'parts ms':>9} {'request ms':>11} {'overhead ms':>12} {'ratio':>6}"]
    for r in result["overhead"]:
        lines.append(f"{r['cut']:>4} {r['crossing_bytes']:>10} {r['parts_ms']:9.2f} {r['request_ms']:11.2f} "
                     f"{r['overhead_ms']:12.2f} {r['overhead_ratio']:5.2f}x")
    lines += [f"(parts = the same segments run in-process; request = the whole partitioned request over loopback; "
              f"medians of {result['repeats']})", "",
              f"{'clients':>7} {'requests':>9} {'errors':>7} {'req/s':>8} {'median ms':>10}"]
    for r in result["throughput"]:
        lines.append(f"{r['clients']:>7} {r['requests']:>9} {r['errors']:>7} {r['requests_per_s']:8.1f} "
                     f"{r['median_latency_ms']:10.1f}")
    lines.append(f"(whole-model requests, cut 0, for {result['seconds_per_row']:g} s per row; the server runs one "
                 "request at a time)")
    return "\n".join(lines)
