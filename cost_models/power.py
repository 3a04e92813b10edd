"""Mobile power per segment from a power table (watts per layer type), for the energy objective.

A segment's power is the average of its layers' powers weighted by how long each runs (predicted
time where a cost model gives one, else FLOPs), since energy = sum of power x time."""

from __future__ import annotations

from pathlib import Path

from ..runtime.errors import NeurosurgeonError
from ..runtime.jsonfile import JsonFormat

__all__ = ["DEFAULTS", "POWER_FORMAT", "PowerTableError", "load_power_table", "segment_power"]

DEFAULTS = Path(__file__).parent / "power_defaults.json"


class PowerTableError(NeurosurgeonError):
    pass


POWER_FORMAT = JsonFormat("neurosurgeon-power", 1, "neurosurgeon power table", PowerTableError)


def load_power_table(path: str | Path | None, preset: str) -> tuple[dict[str, float], str]:
    """(watts by layer type with a "default" entry, where the numbers come from) for `preset`, from
    the table at `path` or the defaults that ship."""
    source_path = Path(path) if path else DEFAULTS
    data = POWER_FORMAT.read(source_path)
    entry = data.get("presets", {}).get(preset) or (data if "active_w" in data else None)
    if entry is None:
        return {"default": 0.0}, f"no power figures for {preset} in {source_path.name}"
    watts = entry.get("active_w", {})
    if "default" not in watts or any(not isinstance(v, (int, float)) or v < 0 for v in watts.values()):
        raise PowerTableError(f"{source_path}: active_w for {preset} needs a non-negative 'default' and numbers")
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
