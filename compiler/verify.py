"""Check a bundle against an independent reference: onnxruntime on the whole, original model.

For every cut, the device's segments run, then the server's, in this process (both sides must be
built for this machine, e.g. x86-host), and the outputs are compared with onnxruntime's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..runtime.bundle import Bundle, SegmentExecutor, fetch
from ..runtime.errors import NeurosurgeonError


@dataclass
class CutCheck:
    cut: int
    upload_bytes: int
    device_seconds: float
    server_seconds: float
    max_abs_error: float
    max_rel_error: float
    ok: bool


def random_inputs(bundle: Bundle, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in bundle.inputs:
        if np.issubdtype(np.dtype(t.dtype), np.floating):
            feeds[t.name] = rng.standard_normal(t.shape).astype(t.dtype)
        else:
            feeds[t.name] = rng.integers(0, 2, size=t.shape).astype(t.dtype)
    return feeds


def reference_outputs(model: str | Path | onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    # The reference must be the model as written: no graph rewrites that could mask our own.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def run_cut(bundle: Bundle, device: SegmentExecutor, server: SegmentExecutor, cut: int,
            feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, float]:
    env: dict = dict(feeds)
    start = time.perf_counter()
    device.run(env, range(cut))
    mid = time.perf_counter()
    server.run(env, range(cut, len(bundle.segments)))
    outputs = {t.name: fetch(env[t.name]) for t in bundle.outputs}
    return outputs, mid - start, time.perf_counter() - mid


def verify_bundle(bundle_path: str | Path, model: str | Path | onnx.ModelProto, rtol: float = 1e-4,
                  atol: float = 1e-5, seed: int = 0, cuts: list[int] | None = None) -> list[CutCheck]:
    bundle = Bundle(bundle_path)
    device, server = SegmentExecutor(bundle, "mobile"), SegmentExecutor(bundle, "server")
    feeds = random_inputs(bundle, seed)
    reference = reference_outputs(model, feeds)
    for index in range(len(bundle.segments)):  # load (and checksum) everything first, so times are run times
        device.load(index)
        server.load(index)
    missing = [t.name for t in bundle.outputs if t.name not in reference]
    if missing:
        raise NeurosurgeonError(f"the reference model has no output(s) {missing}: is it the model this bundle was built from?")
    checks = []
    for cut in cuts if cuts is not None else range(len(bundle.cuts)):
        outputs, device_s, server_s = run_cut(bundle, device, server, cut, feeds)
        abs_err = max(float(np.max(np.abs(outputs[n].astype(np.float64) - reference[n]), initial=0.0)) for n in outputs)
        rel_err = max(float(np.max(np.abs(outputs[n].astype(np.float64) - reference[n]) /
                                   (np.abs(reference[n]) + atol), initial=0.0)) for n in outputs)
        ok = all(np.allclose(outputs[n], reference[n], rtol=rtol, atol=atol) for n in outputs)
        checks.append(CutCheck(cut, bundle.cuts[cut].upload_bytes, device_s, server_s, abs_err, rel_err, ok))
    return checks
