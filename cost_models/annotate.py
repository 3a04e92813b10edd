"""The pipeline's cost-annotation stage: the manifest's `costs` section, which the runtime's planner
reads. Each side gets per-segment seconds and where they came from."""

from __future__ import annotations

from pathlib import Path

from ..runtime.bundle import Bundle
from ..runtime.profile import time_segments
from ..targets import Preset

# A segment call costs this much beyond its arithmetic (VM call, argument handling), measured on x86.
SEGMENT_OVERHEAD_S = 20e-6


def side_costs(staged: Path, side: str, preset: Preset, segment_flops: list[int], measure: bool, repeats: int = 5) -> dict:
    if measure and preset.runs_here():
        target, _ = preset.resolved_target()
        seconds = time_segments(Bundle(staged), side, repeats=repeats)
        source = f"measured on the build machine ({preset.name}, {target.get('mcpu', '?')}), median of {repeats}"
    else:
        seconds = [flops / (preset.nominal_gflops * 1e9) + SEGMENT_OVERHEAD_S for flops in segment_flops]
        source = (f"estimated: FLOPs / {preset.nominal_gflops:g} GFLOP/s, the preset's nominal speed "
                  "(measure it on the device with `neurosurgeon profile --bundle`)")
    costs = {"segment_seconds": [round(s, 9) for s in seconds], "source": source}
    if side == "mobile":
        costs["power_w"] = preset.power_w if preset.power_w is not None else 0.0
        costs["power_source"] = preset.power_source or "no power figure for this preset"
    return costs
