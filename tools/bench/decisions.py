"""`neurosurgeon bench decisions --cost-model M`: cost-model quality on this machine, per layer type
and per segment, and decision quality: how often the cut chosen from predictions is the one chosen
from measured times (the oracle), and how much slower it is when not, over uplinks 0.1-100 Mbps,
server speed ratios and server loads."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from ...compiler.build import build_graph
from ...compiler.pipeline import CompileOptions, compile_model
from ...cost_models.annotate import CostAnnotation
from ...cost_models.model import CostModel
from ...runtime.bundle import Bundle, load_artifact
from ...runtime.planner import Conditions, PrefixPlanner, SegmentCosts
from ...runtime.profile import time_calls
from ...runtime.progress import Progress
from ...runtime.schedule import TensorGraph
from ...runtime.tensors import random_inputs
from ...targets import get_preset
from .. import zoo

__all__ = ["GRID", "bench_decisions", "decision_quality", "decisions_table"]

GRID = {"uplinks_mbps": list(np.geomspace(0.1, 100, 13)), "server_ratios": [1, 4, 16, 64],
        "server_waits_s": [0.0, 0.05, 0.2]}


def decision_quality(graph: TensorGraph, predicted_mobile: np.ndarray, measured_mobile: np.ndarray,
                     predicted_server: np.ndarray, measured_server: np.ndarray, uplinks_mbps, server_ratios,
                     server_waits_s, rtt_s: float = 0.02) -> dict:
    """Over a grid of conditions: how often the cut chosen from predictions is the oracle's (chosen from
    measured times), and how much slower, in measured time, the chosen cut is than the oracle's."""
    zeros = np.zeros(graph.n)

    def planner(mobile, server):
        return PrefixPlanner(graph, SegmentCosts(mobile, server, zeros))

    same, ratios = 0, []
    for ratio in server_ratios:
        predicted = planner(predicted_mobile, predicted_server / ratio)
        measured = planner(measured_mobile, measured_server / ratio)
        for up in uplinks_mbps:
            for wait in server_waits_s:
                c = Conditions(up, up * 2.5, rtt_s, server_wait_s=wait)
                chosen = predicted.choose(c).cut
                truth = measured.predict(c)[0]
                oracle = int(np.argmin(truth))
                same += chosen == oracle
                ratios.append(truth[chosen] / truth[oracle])
    return {"cases": len(ratios), "same_cut_share": same / len(ratios), "mean_ratio": float(np.mean(ratios)),
            "worst_ratio": float(np.max(ratios))}


def _time_whole_model(frozen, path: Path, repeats: int = 3) -> float:
    """Median seconds of the whole model built as one (monolithic) artifact, for the additivity check."""
    import tvm

    build_graph(frozen.model, frozen.inputs, get_preset("x86-host"), path, "whole model")
    function = load_artifact(path, tvm.cpu(0))
    args = [tvm.runtime.tensor(value) for value in random_inputs(frozen.inputs).values()]
    samples, _ = time_calls(function, args, repeats=repeats)
    return statistics.median(samples)


def _capped(name: str, cap: int | None):
    """The zoo model at its default size, or at `cap` if that is smaller (never below its minimum)."""
    model = zoo.build(name)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if cap is None or zoo.min_input_size(name) is None or dims[-1].dim_value <= cap:
        return model
    return zoo.build(name, input_size=max(cap, zoo.min_input_size(name)))


def bench_decisions(models: list[str], cost_model: str | Path, input_size: int | None, workdir: Path,
                    progress: bool = True) -> dict:
    """Per model: compile with the cost model (predicted) and measured costs side by side, and score
    the decisions over GRID."""
    model = CostModel.load(cost_model)
    rows = []
    workdir.mkdir(parents=True, exist_ok=True)
    with Progress(len(models), "compiling and measuring", unit="model", enabled=progress) as report:
        for name in models:
            path = workdir / f"{name}.onnx"
            zoo.save(_capped(name, input_size), path)
            result = compile_model(path, workdir / f"{name}.bundle",
                                   CompileOptions("x86-host", "x86-host", force=True, progress=False,
                                                  costs=CostAnnotation(cost_model, cost_model)))
            whole_s = _time_whole_model(result.frozen, workdir / f"{name}_whole.so")
            bundle = Bundle(result.path)
            costs = bundle.manifest.costs["mobile"]
            predicted, measured = np.array(costs.predicted_seconds), np.array(costs.measured_seconds)
            errors = np.abs(predicted - measured) / measured
            quality = decision_quality(TensorGraph.of_bundle(bundle), predicted, measured, predicted, measured, **GRID)
            rows.append({"model": name, "segments": len(predicted), "segment_mape": float(np.mean(errors)),
                         "segment_worst": float(np.max(errors)), "total_predicted_s": float(predicted.sum()),
                         "total_measured_s": float(measured.sum()), "whole_model_s": whole_s,
                         "chain_over_whole": float(measured.sum()) / whole_s, **quality})
            report.update(note=name)
    return {"cost_model": str(cost_model), "types": model.type_errors(), "grid": GRID, "models": rows}


def decisions_table(result: dict) -> str:
    grid, rows = result["grid"], result["models"]
    lines = ["per-layer-type regressions (held-out MAPE of the chosen form):"]
    for layer_type, info in sorted(result["types"].items()):
        mape = "n/a" if info["cv_mape"] is None else f"{info['cv_mape']:.1%}"
        lines.append(f"  {layer_type:14s} {info['form']:7s} n={info['n']:<4d} MAPE {mape}")
    lines += ["", f"{'model':10} {'segs':>4} {'seg MAPE':>9} {'worst':>7} {'pred s':>8} {'meas s':>8} {'whole s':>8} "
                  f"{'chain/whole':>11} {'same cut':>9} {'mean ratio':>11} {'worst ratio':>12}"]
    for r in rows:
        lines.append(f"{r['model']:10} {r['segments']:>4} {r['segment_mape']:9.1%} {r['segment_worst']:7.0%} "
                     f"{r['total_predicted_s']:8.3f} {r['total_measured_s']:8.3f} {r['whole_model_s']:8.3f} "
                     f"{r['chain_over_whole']:10.2f}x {r['same_cut_share']:9.1%} {r['mean_ratio']:11.3f} "
                     f"{r['worst_ratio']:12.3f}")
    lines.append("seg MAPE: per-segment predicted vs measured; chain/whole: the measured segments' sum over the "
                 "monolithic build's time (how far from additive layers are once compiled together)")
    cases = sum(r["cases"] for r in rows)
    share = sum(r["same_cut_share"] * r["cases"] for r in rows) / cases
    lines += ["", f"all models: the predicted cut is the oracle's in {share:.1%} of {cases} cases; worst measured "
                  f"slowdown vs the oracle {max(r['worst_ratio'] for r in rows):.3f}x (goal: >= 95% and < 1.05x)",
              f"grid: uplink {grid['uplinks_mbps'][0]:g}-{grid['uplinks_mbps'][-1]:g} Mbps "
              f"({len(grid['uplinks_mbps'])} steps), downlink 2.5x uplink, RTT 20 ms, server {grid['server_ratios']}x "
              f"faster than this machine, server queueing {grid['server_waits_s']} s"]
    return "\n".join(lines)
