"""`neurosurgeon bench memory MODELS`: peak resident memory of our two halves against onnxruntime on
the same model, each in a process of its own (the kernel's high-water mark, VmHWM, as each reports it):

- onnxruntime: a session on the whole model, 5 runs (what the device or a Triton/KServe model
  instance holds today);
- device, every segment: the bundle's run.py with no server (every segment loaded and run here);
- device, cut K: run.py with a fixed cut against a server, so it loads only segments 0..K-1;
- server: `neurosurgeon serve` on the bundle after 5 cloud-only requests;
- and each process's floor: the interpreter with its libraries imported (numpy + onnxruntime, numpy +
  TVM's runtime, the server's imports), so what the model itself adds can be read off.

Bundles are the x86-host ones `evaluate` builds (cached in the work folder)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from ...runtime.progress import Progress

__all__ = ["bench_memory", "memory_table"]

_ORT = """
import json, sys, numpy as np, onnxruntime as ort
def hwm():
    return int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) / 1024
floor = hwm()
if len(sys.argv) > 1:
    so = ort.SessionOptions(); so.intra_op_num_threads = 1
    s = ort.InferenceSession(sys.argv[1], so, providers=['CPUExecutionProvider'])
    feeds = {i.name: np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
             for i in s.get_inputs()}
    for _ in range(5):
        s.run(None, feeds)
print(json.dumps({"floor_mib": floor, "peak_mib": hwm()}))
"""

_TVM_FLOOR = """
import numpy
from neurosurgeon.runtime import tvm_lib
tvm_lib.load_library()
print(int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) / 1024)
"""


def _run(args: list[str]) -> subprocess.CompletedProcess:
    """Run `args` to its end (each process reports its own high-water mark, VmHWM: a fork's rusage would
    count the parent's pages that the child started with)."""
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no message)"]
        raise RuntimeError(f"{' '.join(args[:3])}: exit {done.returncode}: {tail[0]}")
    return done


def _run_py_peak(args: list[str]) -> float:
    """The peak resident MiB that run.py reports for itself on its last line."""
    found = re.search(r"peak resident memory (\d+) MiB", _run(args).stderr)
    if not found:
        raise RuntimeError(f"{' '.join(args[:2])}: no peak resident memory reported")
    return float(found.group(1))


def bench_memory(models: list[str], input_size: int | None, workdir: Path, progress: bool = True,
                 kernels: str | None = None) -> dict:
    """`kernels`: the bundles' CPU kernel choice (compiler/kernels.py; None: the default)."""
    from ...runtime.bundle import Bundle
    from ...runtime.client import InferenceClient
    from ...runtime.protocol import cut_model_name
    from ...runtime.tensors import random_inputs
    from ...runtime.workers import peak_resident_mib
    from ...serving import start_server
    from ..evaluate import prepare_bundle

    python = sys.executable
    ort_floor = json.loads(_run([python, "-c", _ORT]).stdout)["floor_mib"]
    tvm_floor = float(_run([python, "-c", _TVM_FLOOR]).stdout)
    rows = []
    with Progress(len(models), "memory", unit="model", enabled=progress) as report:
        for name in models:
            model_path, bundle_path = prepare_bundle(workdir, name, input_size, log=lambda _: None, kernels=kernels)
            bundle = Bundle(bundle_path)
            n = len(bundle.segments)
            ort_peak = json.loads(_run([python, "-c", _ORT, str(model_path)]).stdout)["peak_mib"]
            run_py = [python, str(bundle_path / "run.py"), "--requests", "5"]
            device_all = _run_py_peak(run_py + ["--cut", str(n)])
            feeds = random_inputs(bundle.inputs, seed=1)
            half = n // 2
            with start_server(bundle_path) as server:
                server_ready = peak_resident_mib(server.process.pid)
                device_half = _run_py_peak(run_py + ["--cut", str(half), "--server", server.url])
                client = InferenceClient(server.url)
                try:
                    for _ in range(5):
                        client.infer(cut_model_name(bundle.name, 0), feeds, [t.name for t in bundle.outputs], 60.0)
                finally:
                    client.close()
                server_peak = peak_resident_mib(server.process.pid)
            weights = sum((bundle_path / s.file).stat().st_size for s in _mobile_artifacts(bundle))
            rows.append({"model": name, "kernels": bundle.manifest.identity.options["kernels"], "segments": n,
                         "artifacts_mib": weights / 2**20,
                         "onnx_mib": model_path.stat().st_size / 2**20, "onnxruntime_mib": ort_peak,
                         "device_all_mib": device_all, "device_cut": half, "device_cut_mib": device_half,
                         "server_ready_mib": server_ready, "server_mib": server_peak})
            report.update(note=name)
    return {"floors_mib": {"onnxruntime": ort_floor, "tvm_runtime": tvm_floor}, "rows": rows}


def _mobile_artifacts(bundle) -> list:
    return [bundle.manifest.artifact("mobile", i, 1) for i in range(len(bundle.segments))]


def memory_table(result: dict) -> str:
    floors = result["floors_mib"]
    lines = [f"{'model':12} {'segs':>4} {'onnx MiB':>8} {'artifacts':>9} {'onnxruntime':>11} {'device all':>10} "
             f"{'device cut k':>14} {'server':>8} {'server idle':>11} {'device/ort':>10}"]
    for r in result["rows"]:
        lines.append(f"{r['model']:12} {r['segments']:>4} {r['onnx_mib']:8.1f} {r['artifacts_mib']:9.1f} "
                     f"{r['onnxruntime_mib']:11.0f} {r['device_all_mib']:10.0f} {r['device_cut_mib']:9.0f} "
                     f"(k={r['device_cut']:<2}) "
                     f"{r['server_mib']:8.0f} {r['server_ready_mib']:11.0f} {r['device_all_mib'] / r['onnxruntime_mib']:9.2f}x")
    lines += ["", textwrap.fill(
        "Peak resident memory (MiB), each in a process of its own, 5 requests (artifacts: the device side's files, "
        "MiB): onnxruntime = a session on the whole model; device all = the bundle's run.py running every segment "
        "here; device cut k = run.py with --cut k against a server (only segments 0..k-1 loaded); server = "
        "neurosurgeon serve after 5 cloud-only requests "
        f"(server idle: once ready). Floors (the interpreter and its libraries, no model): numpy + onnxruntime "
        f"{floors['onnxruntime']:.0f} MiB, numpy + TVM's runtime {floors['tvm_runtime']:.0f} MiB. Bundles: x86-host, "
        f"--kernels {', '.join(sorted({r['kernels'] for r in result['rows']})) or '-'}.", 110)]
    return "\n".join(lines)
