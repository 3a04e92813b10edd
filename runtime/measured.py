"""Measured mode: a bundle's own segments timed on the machine that runs them, stored beside the
manifest (measured/<side>.json) so the planner can decide with them instead of predictions."""

from __future__ import annotations

import platform
from pathlib import Path

from .bundle import Bundle
from .errors import BundleError
from .jsonfile import JsonFormat
from .profile import time_segments

__all__ = ["MEASURED_FORMAT", "load_measured", "measure_bundle", "measured_path", "measured_record"]

MEASURED_FORMAT = JsonFormat("neurosurgeon-measured", 1, "neurosurgeon measured-costs file", BundleError,
                             hint="measure again (run.py --measure or neurosurgeon profile --bundle)")


def measured_path(bundle: Bundle, side: str) -> Path:
    return bundle.path / "measured" / f"{side}.json"


def measured_record(bundle: Bundle, side: str, seconds: list[float], how: str) -> dict:
    """A measured-costs file's contents: `seconds` per segment of `side`, measured here `how`."""
    return {**MEASURED_FORMAT.stamp(), "bundle_id": bundle.bundle_id, "side": side,
            "segment_seconds": [round(float(s), 9) for s in seconds],
            "source": f"measured on {platform.node()} ({platform.machine()}) with the bundle's own runtime, {how}"}


def measure_bundle(bundle: Bundle, side: str, repeats: int = 5) -> Path:
    """Time every segment of `side` here (median of `repeats` after a warm-up) and save it where the
    planner finds it (measured/<side>.json)."""
    record = measured_record(bundle, side, time_segments(bundle, side, repeats=repeats), f"median of {repeats}")
    path = measured_path(bundle, side)
    path.parent.mkdir(exist_ok=True)
    return MEASURED_FORMAT.write(path, record)


def load_measured(bundle: Bundle, side: str) -> dict | None:
    path = measured_path(bundle, side)
    if not path.is_file():
        return None
    record = MEASURED_FORMAT.read(path)
    if len(record.get("segment_seconds", [])) != len(bundle.segments):
        raise BundleError(f"{path}: not measurements of this bundle's {len(bundle.segments)} segments")
    if record.get("bundle_id") != bundle.bundle_id:
        raise BundleError(f"{path}: measured for bundle {record.get('bundle_id')}, this is {bundle.bundle_id}; "
                          "measure again")
    return record
