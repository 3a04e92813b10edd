"""A bundle's side checked where it runs, with the runtime alone: every cut equals reference outputs
(onnxruntime's on the whole model, computed where the bundle was built and shipped beside it), and
each segment and the whole chain are timed (each run ending when the device has finished, medians
with their spread). What the GPU pack runs on a GPU machine (tools/gpu_pack.py), and what a user
runs on a new server or phone before trusting its numbers.

At cut k the side runs segments 0..k-1, the tensors that cross cut k go to host memory and back (as
an upload would take them), and the side runs segments k..S-1 from them: so every cut's server
part is checked, starting from exactly the tensors a mobile side would send.
"""

from __future__ import annotations

import platform

import numpy as np

from . import tvm_lib
from .bundle import Bundle, SegmentExecutor, fetch
from .profile import segment_samples, time_calls

__all__ = ["REFERENCE_INPUT", "REFERENCE_OUTPUT", "check_side", "device_name", "spread"]

# Keys of a reference .npz: the model's inputs and onnxruntime's outputs for them.
REFERENCE_INPUT, REFERENCE_OUTPUT = "input/", "output/"


def spread(samples: list[float]) -> dict:
    """Median, minimum and maximum of timing samples, in seconds."""
    return {"median_s": float(np.median(samples)), "min_s": float(np.min(samples)), "max_s": float(np.max(samples)),
            "samples": len(samples)}


def device_name(executor: SegmentExecutor) -> str:
    """The GPU's name for a CUDA side, else this machine's CPU."""
    if executor.bundle.side(executor.side).device != "cpu":
        return tvm_lib.device_name(executor.device)
    from .profile import hardware_info

    return hardware_info()["cpu"] or platform.processor()


def check_side(bundle: Bundle, side: str, reference: dict[str, np.ndarray], rtol: float = 1e-3, atol: float = 1e-4,
               repeats: int = 20) -> dict:
    """Every cut of `side` against `reference` (REFERENCE_INPUT/OUTPUT keys), then its timings."""
    executor = SegmentExecutor(bundle, side)
    n = len(bundle.segments)
    executor.load_all()
    inputs = {t.name: reference[REFERENCE_INPUT + t.name] for t in bundle.inputs}
    expected = {t.name: reference[REFERENCE_OUTPUT + t.name] for t in bundle.outputs}
    cuts = []
    for cut in bundle.cuts:
        env = executor.run(dict(inputs), range(cut.index))
        carried = [t.name for t in cut.crossing] + list(cut.mobile_outputs)
        env = executor.run({name: fetch(env[name]) for name in carried}, range(cut.index, n))
        errors = {name: float(np.max(np.abs(fetch(env[name]).astype(np.float64) - value), initial=0.0))
                  for name, value in expected.items()}
        ok = all(np.allclose(fetch(env[name]), value, rtol=rtol, atol=atol) for name, value in expected.items())
        cuts.append({"cut": cut.index, "max_abs_error": max(errors.values()), "ok": bool(ok)})
    samples = segment_samples(bundle, side, repeats=repeats, executor=executor)
    chain, _ = time_calls(lambda: executor.run(dict(inputs), range(n)), sync=executor.sync, repeats=repeats)
    return {"model": bundle.name, "bundle_id": bundle.bundle_id, "side": side, "preset": bundle.side(side).preset,
            "device": device_name(executor), "rtol": rtol, "atol": atol, "cuts": cuts,
            "all_cuts_ok": all(c["ok"] for c in cuts), "segments": [spread(s) for s in samples],
            "segment_seconds": [float(np.median(s)) for s in samples], "chain": spread(chain)}
