"""`neurosurgeon bench decisions` (its first part): what schedules buy over a single cut, on the zoo at
the papers' sizes, and how long each planner takes to decide.

For every zoo model, network (Wi-Fi, LTE, 3G) and mobile device (CPU-like, GPU-like), three planners
choose for latency and for mobile energy: the best single cut (prefix), the shortest path (several
transfers), the min-cut placement (DAGs); the table gives each one's predicted latency and energy,
and how often and by how much several transfers beat the best cut.

Per-segment times come from a roofline model of each device (no measurement: these are the papers'
machines, none of which is here): a layer takes max(FLOPs / sustained FLOP/s, bytes moved / sustained
bandwidth) plus a per-layer overhead, where bytes moved are its inputs, outputs and weights. That is
what makes a mobile GPU fast at convolutions (compute-bound) and no faster than its CPU at fully
connected layers at batch 1 (bound by reading the weights), the case where several transfers can pay.
The figures and their sources are in DEVICES and SERVERS (a GPU server, and a CPU one: "the reverse on
the server"); the server is idle (no queue).
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from ...compiler.analysis import analyse
from ...compiler.partition import FusedLayersPartitioner, UploadEnvelopePartitioner
from ...runtime.planner import NETWORKS, PLANNERS, Budgets, Conditions, MinCutPlanner, SegmentCosts, make_planner
from ...runtime.progress import Progress
from ...runtime.schedule import TensorGraph
from .. import zoo

__all__ = ["DEVICES", "MODELS", "SERVERS", "Roofline", "bench_schedules", "decision_times", "schedules_table"]

MODELS = ["alexnet", "vgg16", "deepface", "lenet", "asr", "pos", "ner", "chk", "resnet18", "mobilenetv2", "inception"]


@dataclass(frozen=True)
class Roofline:
    name: str
    gflops: float  # sustained FP32 FLOP/s (peak x efficiency), in G
    gbytes: float  # sustained memory bandwidth, GB/s
    overhead_s: float  # per layer: kernel launch or dispatch
    power_w: float  # while computing (mobile devices)
    source: str

    def seconds(self, flops: float, nbytes: float) -> float:
        return max(flops / (self.gflops * 1e9), nbytes / (self.gbytes * 1e9)) + self.overhead_s


# Neurosurgeon's machines: a Jetson TK1 (4x Cortex-A15 at 2.32 GHz and a 192-core Kepler GPU at 852 MHz
# sharing 14.9 GB/s of LPDDR3) and a Tesla K40 server. Peaks from the datasheets; the shares of them a
# batch-1 inference sustains are assumptions (small kernels use a mobile chip poorly), as are the powers.
DEVICES = {
    "cpu-like": Roofline("cpu-like", 74.2 * 0.1, 14.9 * 0.5, 10e-6, 3.5,
                         "Jetson TK1 CPU: 4 x 2.32 GHz x 8 FLOP/cycle (NEON) = 74 GFLOP/s peak, 10% sustained; "
                         "14.9 GB/s LPDDR3, 50% sustained; 3.5 W under load"),
    "gpu-like": Roofline("gpu-like", 327 * 0.15, 14.9 * 0.5, 30e-6, 6.0,
                         "Jetson TK1 GPU: 192 cores x 852 MHz x 2 = 327 GFLOP/s peak, 15% sustained; the same "
                         "14.9 GB/s LPDDR3, 50% sustained; 30 us per kernel launch; 6 W under load"),
}
# The server: Neurosurgeon's Tesla K40, or the Xeon E5-2620 that hosts it, with no GPU: then the mobile
# GPU is about as fast at convolutions, and the server still far faster at fully connected layers.
SERVERS = {
    "gpu-server": Roofline("gpu-server", 4290 * 0.3, 288 * 0.6, 20e-6, 0.0,
                           "Tesla K40: 4.29 TFLOP/s FP32 peak, 30% sustained; 288 GB/s GDDR5, 60% sustained"),
    "cpu-server": Roofline("cpu-server", 192 * 0.3, 42.6 * 0.6, 5e-6, 0.0,
                           "Xeon E5-2620: 6 x 2.0 GHz x 16 FLOP/cycle (AVX) = 192 GFLOP/s peak, 30% sustained; "
                           "42.6 GB/s DDR3, 60% sustained"),
}


@functools.lru_cache(maxsize=None)
def _case(name: str, partitioner: str = FusedLayersPartitioner.name):
    """(graph, per-segment FLOPs, per-segment bytes moved) of a zoo model at the papers' size, its segments
    cut by `partitioner` (by default at every boundary a compiler does not fuse: the most room for the
    planners, and what upload-envelope prunes); analysed once per run (the table, the pruning check and
    the decision times all read it)."""
    frozen, graph, plan = analyse(zoo.build(name), name=name, partitioner=partitioner)
    tensors = TensorGraph.from_segments(frozen.inputs, [(s.inputs, s.outputs) for s in plan.segments], frozen.outputs)
    layers = graph.layers
    flops = [[layers[i].flops for i in range(*s.layers)] for s in plan.segments]
    moved = [[layers[i].input_bytes + layers[i].output_bytes + layers[i].weight_bytes for i in range(*s.layers)]
             for s in plan.segments]
    return tensors, flops, moved


def _times(device: Roofline, flops, moved) -> np.ndarray:
    return np.array([sum(device.seconds(f, b) for f, b in zip(fs, bs)) for fs, bs in zip(flops, moved)])


def bench_schedules(models: list[str] = MODELS, networks: list[str] = list(NETWORKS), progress: bool = True) -> dict:
    rows = []
    with Progress(len(models), "schedules", unit="model", enabled=progress) as report:
        for name in models:
            graph, flops, moved = _case(name)
            for host, device in ((host, device) for host in SERVERS.values() for device in DEVICES.values()):
                server = _times(host, flops, moved)
                mobile = _times(device, flops, moved)
                costs = SegmentCosts(mobile, server, np.full(graph.n, device.power_w))
                planners = {p: make_planner(p, graph, costs) for p in PLANNERS}
                for network in networks:
                    link = NETWORKS[network]
                    c = Conditions(link.up_mbps, link.down_mbps, link.rtt_s,
                                   upload_power_w=link.upload_power_w(link.up_mbps),
                                   download_power_w=link.download_power_w(link.down_mbps))
                    row = {"model": name, "segments": graph.n, "dag": not graph.is_chain, "device": device.name,
                           "server": host.name, "network": network}
                    prefix = planners["prefix"]
                    cloud = prefix.evaluate(c, prefix.schedule(np.ones(graph.n, dtype=bool)))
                    row["cloud_only"] = {"latency_s": cloud[0], "energy_j": cloud[1]}
                    row["mobile_only"] = {"latency_s": float(mobile.sum()), "energy_j": float((mobile * device.power_w).sum())}
                    for objective in ("latency", "energy"):
                        for planner_name, planner in planners.items():
                            d = planner.choose(c, objective)
                            row[f"{planner_name}/{objective}"] = {
                                "latency_s": d.latency_s, "energy_j": d.energy_j, "schedule": d.schedule.describe(),
                                "server_stages": d.schedule.server_stages}
                    rows.append(row)
            report.update(note=name)
    return {"devices": {k: asdict(v) for k, v in DEVICES.items()}, "servers": {k: asdict(v) for k, v in SERVERS.items()},
            "rows": rows, "summary": _summary(rows), "pruning": pruning_check(models, progress),
            "decision_times": decision_times()}


PRUNING_GRID = {"uplinks_mbps": list(np.geomspace(0.1, 100, 13)), "server_waits_s": [0.0, 0.05, 0.2],
                "server_slowdowns": [1.0, 4.0]}


def pruning_check(models: list[str], progress: bool = True) -> dict:
    """What upload-envelope's pruning changes: for every model, device, server and PRUNING_GRID point,
    per planner and objective, the best schedule over the pruned segments against the best over all
    fused-layers segments; counted inside its stated range (no segment slower on the loaded server than
    on the device) and outside it."""
    counts: dict[str, dict] = {}
    segments = {}
    link = NETWORKS["lte"]  # its round trip and radio power model; the uplink is the grid's
    with Progress(len(models), "pruning check", unit="model", enabled=progress) as report:
        for name in models:
            full, pruned = _case(name), _case(name, UploadEnvelopePartitioner.name)
            segments[name] = [full[0].n, pruned[0].n]
            for host, device in ((host, device) for host in SERVERS.values() for device in DEVICES.values()):
                planners = []
                for graph, flops, moved in (full, pruned):
                    costs = SegmentCosts(_times(device, flops, moved), _times(host, flops, moved),
                                         np.full(graph.n, device.power_w))
                    planners.append({p: make_planner(p, graph, costs) for p in PLANNERS})
                mobile, server = planners[0]["prefix"].mobile_s, planners[0]["prefix"].server_s
                for slowdown in PRUNING_GRID["server_slowdowns"]:
                    where = "in range" if np.all(server * slowdown <= mobile) else "out of range"
                    for up, wait in ((u, w) for u in PRUNING_GRID["uplinks_mbps"] for w in PRUNING_GRID["server_waits_s"]):
                        c = Conditions(up, 2.5 * up, link.rtt_s, server_wait_s=wait, server_slowdown=slowdown,
                                       upload_power_w=link.upload_power_w(up), download_power_w=link.download_power_w(2.5 * up),
                                       wait_power_w=link.beta_mw / 1000)
                        for planner, objective in ((p, o) for p in PLANNERS for o in ("latency", "energy")):
                            key = "latency_s" if objective == "latency" else "energy_j"
                            best = planners[0][planner].choose(c, objective)
                            kept = planners[1][planner].choose(c, objective)
                            ratio = getattr(kept, key) / getattr(best, key)
                            entry = counts.setdefault(f"{planner}/{objective}/{where}", {"cases": 0, "changed": 0, "worst": 1.0})
                            entry["cases"] += 1
                            entry["changed"] += int(ratio > 1 + 1e-9)
                            entry["worst"] = max(entry["worst"], ratio)
            report.update(note=name)
    return {"grid": PRUNING_GRID, "segments": segments, "results": counts}


def _value(row, planner, objective):
    return row[f"{planner}/{objective}"]["latency_s" if objective == "latency" else "energy_j"]


def _summary(rows: list[dict]) -> dict:
    """Per device and objective: how often several transfers (shortest path) beat the best cut by more
    than 1%, the mean and largest gain, the min-cut's gain on DAGs, and the gains over cloud-only."""
    summary = {}
    for device, host in ((d, h) for h in SERVERS for d in DEVICES):
        for objective in ("latency", "energy"):
            mine = [r for r in rows if r["device"] == device and r["server"] == host]
            gain = np.array([_value(r, "prefix", objective) / _value(r, "shortest-path", objective) for r in mine])
            dags = [r for r in mine if r["dag"]]
            cut_gain = np.array([_value(r, "prefix", objective) / _value(r, "min-cut", objective) for r in dags])
            key = "latency_s" if objective == "latency" else "energy_j"
            cloud = np.array([r["cloud_only"][key] / _value(r, "shortest-path", objective) for r in mine])
            geomean = float(np.exp(np.log(cloud).mean()))
            summary[f"{device}/{host}/{objective}"] = {
                "cases": len(mine), "several_transfers_win": int((gain > 1.01).sum()),
                "gain_mean": float(gain.mean()), "gain_max": float(gain.max()),
                "min_cut_gain_mean_dags": float(cut_gain.mean()) if len(dags) else None,
                "min_cut_gain_max_dags": float(cut_gain.max()) if len(dags) else None,
                "vs_cloud_mean": float(cloud.mean()), "vs_cloud_geomean": geomean, "vs_cloud_max": float(cloud.max())}
    return summary


def decision_times(repeats: int = 300) -> list[dict]:
    """Per planner, the time of one decision (median and spread of `repeats`), unconstrained and under
    an energy budget (battery) or a latency one (QoS), on a 50-segment chain and on the zoo's DAGs."""
    rng = np.random.default_rng(0)
    n = 50
    chain = TensorGraph.chain(np.exp(rng.uniform(np.log(1e2), np.log(1e6), n)), 4e3)
    server = rng.uniform(1e-3, 2e-2, n)
    cases = [("50-segment chain", chain, SegmentCosts(server * np.exp(rng.uniform(np.log(0.05), np.log(20), n)),
                                                       server, np.full(n, 3.0)))]
    for name in ("inception", "resnet18"):
        graph, flops, moved = _case(name)
        cases.append((f"{name} ({graph.n} segments)", graph,
                      SegmentCosts(_times(DEVICES["gpu-like"], flops, moved), _times(SERVERS["cpu-server"], flops, moved),
                                   np.full(graph.n, 6.0))))
    link = NETWORKS["lte"]
    c = Conditions(link.up_mbps, link.down_mbps, link.rtt_s, upload_power_w=link.upload_power_w(link.up_mbps),
                   download_power_w=link.download_power_w(link.down_mbps))
    rows = []
    for label, graph, costs in cases:
        planners = [(name, make_planner(name, graph, costs)) for name in PLANNERS]
        planners.append(("min-cut (max flow)", MinCutPlanner(graph, costs, method="flow")))
        for name, planner in planners:
            free = planner.choose(c)
            for budget, objective, budgets in (("none", "latency", Budgets()),
                                               ("energy <= 0.7 x unconstrained", "latency",
                                                Budgets(max_energy_j=0.7 * free.energy_j)),
                                               ("latency <= 1.2 x unconstrained", "energy",
                                                Budgets(max_latency_s=1.2 * free.latency_s))):
                samples = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    planner.choose(c, objective, budgets)
                    samples.append(time.perf_counter() - started)
                rows.append({"graph": label, "planner": name, "budget": budget,
                             "median_us": statistics.median(samples) * 1e6,
                             "p90_us": float(np.quantile(samples, 0.9)) * 1e6, "max_us": max(samples) * 1e6})
    return rows


def schedules_table(result: dict) -> str:
    lines = ["latency (ms) with the latency objective; energy (mJ) with the energy objective; idle server",
             "", f"{'model':12} {'device':9} {'server':10} {'net':5} {'cloud':>9} {'best cut':>9} {'short.path':>10} {'stages':>6} "
                 f"{'min-cut':>9} | {'cut mJ':>9} {'path mJ':>9} {'stages':>6} {'min-cut mJ':>10}"]
    for r in result["rows"]:
        lat = [r["cloud_only"]["latency_s"], _value(r, "prefix", "latency"), _value(r, "shortest-path", "latency")]
        en = [_value(r, "prefix", "energy"), _value(r, "shortest-path", "energy")]
        lines.append(f"{r['model']:12} {r['device']:9} {r['server']:10} {r['network']:5} {lat[0] * 1e3:9.1f} {lat[1] * 1e3:9.1f} "
                     f"{lat[2] * 1e3:10.1f} {r['shortest-path/latency']['server_stages']:>6} "
                     f"{_value(r, 'min-cut', 'latency') * 1e3:9.1f} | {en[0] * 1e3:9.1f} {en[1] * 1e3:9.1f} "
                     f"{r['shortest-path/energy']['server_stages']:>6} {_value(r, 'min-cut', 'energy') * 1e3:10.1f}")
    lines += ["", "several transfers (shortest path) against the best single cut, and against cloud-only:"]
    for key, s in result["summary"].items():
        dags = (f"; min-cut on DAGs {s['min_cut_gain_mean_dags']:.3f}x mean, {s['min_cut_gain_max_dags']:.3f}x max"
                if s["min_cut_gain_mean_dags"] is not None else "")
        lines.append(f"  {key:27} wins {s['several_transfers_win']:>2}/{s['cases']} cases by >1%: {s['gain_mean']:.3f}x "
                     f"mean, {s['gain_max']:.3f}x max{dags}; vs cloud-only {s['vs_cloud_geomean']:.2f}x geometric mean, "
                     f"{s['vs_cloud_mean']:.2f}x mean, {s['vs_cloud_max']:.2f}x max")
    lines += ["  (Eshratifar & Pedram report 1.42x mean / 3.07x max speedup and 2.11x / 4.26x less energy against "
              "their baselines)", ""]
    pruning, grid = result["pruning"], result["pruning"]["grid"]
    lines += ["upload-envelope pruning (compile --partitioner upload-envelope): segments, fused-layers -> pruned: "
              + ", ".join(f"{m} {a} -> {b}" for m, (a, b) in pruning["segments"].items()),
              f"the best schedule over the pruned segments against over all, uplink {grid['uplinks_mbps'][0]:g}-"
              f"{grid['uplinks_mbps'][-1]:g} Mbps ({len(grid['uplinks_mbps'])} steps), server queue {grid['server_waits_s']} s, "
              f"server slowdown {grid['server_slowdowns']}x, every device and server above "
              "(in range: no segment slower on the loaded server than on the device):"]
    for key, s in sorted(pruning["results"].items()):
        lines.append(f"  {key:40} worse in {s['changed']:>4}/{s['cases']} cases, worst {s['worst']:.4f}x")
    lines += ["", "decision time per request, microseconds (median, 90th percentile, max):"]
    for d in result["decision_times"]:
        lines.append(f"  {d['graph']:28} {d['planner']:18} {d['budget']:32} {d['median_us']:8.1f} "
                     f"{d['p90_us']:8.1f} {d['max_us']:8.1f}")
    lines += ["", "per-segment times: roofline models (no measurement), " + "; ".join(
        f"{name}: {d['source']}" for name, d in [*result["devices"].items(), *result["servers"].items()])]
    return "\n".join(lines)
