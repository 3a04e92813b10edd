"""Measured mode: a bundle's own segments timed on the machine that runs them, stored beside the
manifest (measured/<side>.json) so the planner can decide with them instead of predictions."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from .bundle import Bundle
from .errors import BundleError
from .profile import time_segments

FORMAT = "neurosurgeon-measured"


def measured_path(bundle: Bundle, side: str) -> Path:
    return bundle.path / "measured" / f"{side}.json"


def measure_bundle(bundle: Bundle, side: str, repeats: int = 5) -> Path:
    """Time every segment of `side` here (median of `repeats` after a warm-up) and save it."""
    seconds = time_segments(bundle, side, repeats=repeats)
    record = {"format": FORMAT, "version": 1, "bundle_id": bundle.manifest["identity"]["bundle_id"], "side": side,
              "segment_seconds": [round(s, 9) for s in seconds],
              "source": f"measured on {platform.node()} ({platform.machine()}) with the bundle's own runtime, "
                        f"median of {repeats}"}
    path = measured_path(bundle, side)
    path.parent.mkdir(exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(partial, path)
    return path


def load_measured(bundle: Bundle, side: str) -> dict | None:
    path = measured_path(bundle, side)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BundleError(f"{path}: unreadable measurements ({err})") from None
    if record.get("format") != FORMAT or len(record.get("segment_seconds", [])) != len(bundle.segments):
        raise BundleError(f"{path}: not measurements of this bundle's {len(bundle.segments)} segments")
    if record.get("bundle_id") != bundle.manifest["identity"]["bundle_id"]:
        raise BundleError(f"{path}: measured for bundle {record.get('bundle_id')}, this is "
                          f"{bundle.manifest['identity']['bundle_id']}; measure again")
    return record
