"""Check a bundle against an independent reference: onnxruntime on the whole, original model.

For every cut, the mobile side's segments run, then the server's, in this process (both sides must be
built for this machine, e.g. x86-host), and the outputs are compared with onnxruntime's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..compiler.report import format_rows, human_bytes
from ..runtime.bundle import Bundle, SegmentExecutor, fetch
from ..runtime.errors import NeurosurgeonError, first_line
from ..runtime.tensors import random_inputs

__all__ = ["CutCheck", "check_table", "reference_outputs", "run_cut", "verify_bundle"]


@dataclass
class CutCheck:
    cut: int
    upload_bytes: int
    mobile_seconds: float
    server_seconds: float
    max_abs_error: float
    max_rel_error: float
    ok: bool


def reference_outputs(model: str | Path | onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    # The reference must be the model as written: no graph rewrites that could mask our own.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 (onnxruntime's exception types have no stable import path)
        what = "the model" if isinstance(model, onnx.ModelProto) else str(model)
        raise NeurosurgeonError(f"{what}: onnxruntime cannot load it: {first_line(err)}") from None
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def run_cut(bundle: Bundle, mobile: SegmentExecutor, server: SegmentExecutor, cut: int,
            feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, float]:
    """Cut `cut` run in this process: the mobile side's segments, then the server's."""
    env: dict = dict(feeds)
    start = time.perf_counter()
    mobile.run(env, range(cut))
    mid = time.perf_counter()
    server.run(env, range(cut, len(bundle.segments)))
    outputs = {t.name: fetch(env[t.name]) for t in bundle.outputs}
    return outputs, mid - start, time.perf_counter() - mid


def verify_bundle(bundle_path: str | Path, model: str | Path | onnx.ModelProto, rtol: float = 1e-4,
                  atol: float = 1e-5, seed: int = 0, cuts: list[int] | None = None) -> list[CutCheck]:
    bundle = Bundle(bundle_path)
    mobile, server = SegmentExecutor(bundle, "mobile"), SegmentExecutor(bundle, "server")
    feeds = random_inputs(bundle.inputs, seed)
    reference = reference_outputs(model, feeds)
    for index in range(len(bundle.segments)):  # load (and checksum) everything first, so times are run times
        mobile.load(index)
        server.load(index)
    missing = [t.name for t in bundle.outputs if t.name not in reference]
    if missing:
        raise NeurosurgeonError(f"the reference model has no output(s) {missing}: is it the model this bundle was built from?")
    checks = []
    for cut in cuts if cuts is not None else range(len(bundle.cuts)):
        outputs, mobile_s, server_s = run_cut(bundle, mobile, server, cut, feeds)
        abs_err = max(float(np.max(np.abs(outputs[n].astype(np.float64) - reference[n]), initial=0.0)) for n in outputs)
        rel_err = max(float(np.max(np.abs(outputs[n].astype(np.float64) - reference[n]) /
                                   (np.abs(reference[n]) + atol), initial=0.0)) for n in outputs)
        ok = all(np.allclose(outputs[n], reference[n], rtol=rtol, atol=atol) for n in outputs)
        checks.append(CutCheck(cut, bundle.cuts[cut].upload_bytes, mobile_s, server_s, abs_err, rel_err, ok))
    return checks


def check_table(checks: list[CutCheck]) -> str:
    """The per-cut result of `verify_bundle`: bytes uploaded, time on each side, error vs onnxruntime."""
    rows = [("cut", "upload", "mobile ms", "server ms", "max abs err", "ok")]
    for c in checks:
        rows.append((str(c.cut), human_bytes(c.upload_bytes), f"{c.mobile_seconds * 1e3:.1f}",
                     f"{c.server_seconds * 1e3:.1f}", f"{c.max_abs_error:.2e}", "yes" if c.ok else "NO"))
    failed = [c.cut for c in checks if not c.ok]
    summary = f"{len(checks) - len(failed)} of {len(checks)} cuts reproduce onnxruntime" + (f"; failed: {failed}" if failed else "")
    return format_rows(rows, right={0, 1, 2, 3, 4}) + "\n" + summary
