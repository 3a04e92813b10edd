"""The pipeline's cost-annotation stage: the manifest's `costs` section, which the runtime's planner
reads. Per side: per-segment seconds predicted by a fitted cost model (Neurosurgeon: no profiling
of the model itself), measured on the build machine where the target runs here, or, lacking both,
estimated from FLOPs; which one the planner uses by default; and, on the mobile side, power."""

from __future__ import annotations

from pathlib import Path

from ..runtime.bundle import Bundle
from ..runtime.profile import time_segments
from ..targets import Preset
from .power import load_power_profile, segment_power

# A segment call costs this much beyond its arithmetic (VM call, argument handling), measured on x86.
SEGMENT_OVERHEAD_S = 20e-6


def side_costs(staged: Path, side: str, preset: Preset, manifest: dict, measure: bool,
               cost_model: str | Path | None = None, power_profile: str | Path | None = None,
               repeats: int = 5, measured: dict | None = None) -> dict:
    """`measured` caches measurements by preset, so two sides on one preset are timed once."""
    costs: dict = {}
    layer_seconds = None
    if cost_model:
        from ..runtime.costmodel import CostModel

        model = CostModel.load(cost_model)
        layer_seconds = [float(s) for s in model.predict_layers(manifest["layers"])]
        costs["predicted_seconds"] = _rounded(model.predict_segments(manifest))
        costs["predicted_source"] = f"cost model {Path(cost_model).name} ({model.describe()})"
    if measure and preset.runs_here():
        measured = {} if measured is None else measured
        if preset.name not in measured:
            measured[preset.name] = _rounded(time_segments(Bundle(staged), side, repeats=repeats))
        target, _ = preset.resolved_target()
        costs["measured_seconds"] = measured[preset.name]
        costs["measured_source"] = f"measured on the build machine ({preset.name}, {target.get('mcpu', '?')}), median of {repeats}"
    if "predicted_seconds" in costs:  # the user asked for predictions: decide with them
        costs["segment_seconds"], costs["source"] = costs["predicted_seconds"], costs["predicted_source"]
    elif "measured_seconds" in costs:
        costs["segment_seconds"], costs["source"] = costs["measured_seconds"], costs["measured_source"]
    else:
        costs["segment_seconds"] = _rounded([s["flops"] / (preset.nominal_gflops * 1e9) + SEGMENT_OVERHEAD_S
                                             for s in manifest["segments"]])
        costs["source"] = (f"estimated: FLOPs / {preset.nominal_gflops:g} GFLOP/s, the preset's nominal speed "
                           "(fit a cost model with `neurosurgeon profile` and `fit`, or measure the bundle on the "
                           "device with `neurosurgeon profile --bundle`)")
    if side == "mobile":
        watts, source = load_power_profile(power_profile, preset.name)
        costs["power_w"] = segment_power(manifest["layers"], manifest["segments"], watts, layer_seconds)
        costs["power_source"] = source
    return costs


def _rounded(values) -> list[float]:
    return [round(float(v), 9) for v in values]
