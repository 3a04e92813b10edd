"""Mobile power per segment from a power profile (watts per layer type), for the energy objective.

A segment's power is the average of its layers' powers weighted by how long each runs (predicted
time where a cost model gives one, else FLOPs), since energy = sum of power x time."""

from __future__ import annotations

import json
from pathlib import Path

from ..runtime.errors import NeurosurgeonError

DEFAULTS = Path(__file__).parent / "power_defaults.json"


class PowerProfileError(NeurosurgeonError):
    pass


def load_power_profile(path: str | Path | None, preset: str) -> tuple[dict[str, float], str]:
    """(watts by layer type with a "default" entry, where the numbers come from) for `preset`."""
    source_path = Path(path) if path else DEFAULTS
    try:
        data = json.loads(source_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PowerProfileError(f"{source_path}: cannot read power profile ({err})") from None
    if data.get("format") != "neurosurgeon-power":
        raise PowerProfileError(f"{source_path}: not a power profile (format {data.get('format')!r})")
    entry = data.get("presets", {}).get(preset) or (data if "active_w" in data else None)
    if entry is None:
        return {"default": 0.0}, f"no power figures for {preset} in {source_path.name}"
    watts = entry.get("active_w", {})
    if "default" not in watts or any(not isinstance(v, (int, float)) or v < 0 for v in watts.values()):
        raise PowerProfileError(f"{source_path}: active_w for {preset} needs a non-negative 'default' and numbers")
    return {k: float(v) for k, v in watts.items()}, entry.get("source", str(source_path))


def segment_power(manifest_layers: list[dict], segments: list[dict], watts: dict[str, float],
                  layer_seconds: list[float] | None = None) -> list[float]:
    """Time-weighted power of each segment (FLOPs stand in for time where no prediction is given)."""
    weights = layer_seconds if layer_seconds is not None else [max(layer["flops"], 1) for layer in manifest_layers]
    powers = []
    for segment in segments:
        first, end = segment["layers"]
        span = range(first, end)
        total = sum(weights[i] for i in span)
        power = sum(weights[i] * watts.get(manifest_layers[i]["type"], watts["default"]) for i in span)
        powers.append(round(power / total, 6) if total > 0 else watts["default"])
    return powers
