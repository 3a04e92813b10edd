"""The pipeline's cost stage: the manifest's `costs` section, which the runtime's planner reads.

Per side: per-segment seconds predicted by a fitted cost model (Neurosurgeon: no profiling of the
model itself), measured on the build machine where the target runs here, or, lacking both,
estimated from FLOPs; which one the planner uses by default; and, on the mobile side, power.

    compile_model("m.onnx", "b/", CompileOptions("x86-host", "x86-host", costs=CostAnnotation()))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..runtime.bundle import Bundle
from ..runtime.manifest import Manifest
from ..runtime.profile import time_segments
from ..targets import Preset
from .model import CostModel
from .power import load_power_table, segment_power

__all__ = ["SEGMENT_OVERHEAD_S", "CostAnnotation"]

# A segment call costs this much beyond its arithmetic (VM call, argument handling), measured on x86.
SEGMENT_OVERHEAD_S = 20e-6


@dataclass
class CostAnnotation:
    """The cost stage: `mobile_model`/`server_model` are fitted cost models (neurosurgeon fit) for each
    side, `mobile_power` a power table (watts per layer type; defaults ship); with `measure`,
    segments whose target runs on the build machine are timed (median of `repeats`)."""

    mobile_model: str | Path | None = None
    server_model: str | Path | None = None
    mobile_power: str | Path | None = None
    measure: bool = True
    repeats: int = 5

    def __call__(self, folder: Path, manifest: dict, presets: dict[str, Preset]) -> dict[str, dict]:
        bundle = Bundle(folder, Manifest.from_json(manifest))
        measured: dict[str, list[float]] = {}  # by preset: two sides on one preset are timed once
        return {side: self.side_costs(bundle, side, preset, manifest, measured) for side, preset in presets.items()}

    def side_costs(self, bundle: Bundle, side: str, preset: Preset, manifest: dict,
                   measured: dict[str, list[float]]) -> dict:
        costs: dict = {}
        layer_seconds = None
        cost_model = self.mobile_model if side == "mobile" else self.server_model
        if cost_model:
            model = CostModel.load(cost_model)
            layer_seconds = [float(s) for s in model.predict_layers(manifest["layers"])]
            costs["predicted_seconds"] = _rounded(model.predict_segments(manifest))
            costs["predicted_source"] = f"cost model {Path(cost_model).name} ({model.describe()})"
        if self.measure and preset.runs_here():
            if preset.name not in measured:
                measured[preset.name] = _rounded(time_segments(bundle, side, repeats=self.repeats))
            target, _ = preset.resolved_target()
            costs["measured_seconds"] = measured[preset.name]
            costs["measured_source"] = (f"measured on the build machine ({preset.name}, {target.get('mcpu', '?')}), "
                                        f"median of {self.repeats}")
        if "predicted_seconds" in costs:  # the user asked for predictions: decide with them
            costs["segment_seconds"], costs["source"] = costs["predicted_seconds"], costs["predicted_source"]
        elif "measured_seconds" in costs:
            costs["segment_seconds"], costs["source"] = costs["measured_seconds"], costs["measured_source"]
        else:
            costs["segment_seconds"] = _rounded([s["flops"] / (preset.nominal_gflops * 1e9) + SEGMENT_OVERHEAD_S
                                                 for s in manifest["segments"]])
            costs["source"] = (f"estimated: FLOPs / {preset.nominal_gflops:g} GFLOP/s, the preset's nominal speed "
                               "(fit a cost model with `neurosurgeon profile` and `fit`, or measure the bundle where it "
                               "runs with `run.py --measure` or `neurosurgeon profile --bundle`)")
        if side == "mobile":
            watts, source = load_power_table(self.mobile_power, preset.name)
            costs["power_w"] = segment_power(manifest["layers"], manifest["segments"], watts, layer_seconds)
            costs["power_source"] = source
        return costs


def _rounded(values) -> list[float]:
    return [round(float(v), 9) for v in values]
