"""`neurosurgeon bench speed`: our generated code against onnxruntime on the same CPU, in one run.

For one model and a preset that runs on this machine it builds the whole model (monolithic) and
times, side by side and as medians of interleaved rounds (the machine is shared and noisy, so every
candidate sees the same noise):

  - onnxruntime (CPU execution provider, all graph optimisations), N intra-op threads;
  - our build without tuning (the default: GEMMs to BLAS, our schedules for the rest);
  - with --steps, the steps that lead there: TVM's default pipeline ("naive"), our schedules and
    graph passes without BLAS ("tvm");
  - with --tuning DIR, our build with that tuning database, and the tuning time it holds for the model;
  - with --cuts, the bundle (every segment built, same database) run end to end at every cut,
    against the monolithic build.

N (--threads) is applied to TVM's thread pool, numpy's OpenBLAS and onnxruntime alike; it must be
set before numpy loads, which the CLI verb does.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...runtime.bundle import load_artifact
from ...runtime.errors import NeurosurgeonError
from ...runtime.tensors import random_inputs
from ...targets import get_preset
from .. import zoo

__all__ = ["SpeedError", "SpeedOptions", "apply_threads", "bench_speed", "speed_table"]


class SpeedError(NeurosurgeonError):
    pass


@dataclass
class SpeedOptions:
    target: str = "x86-host"
    tuning: str | Path | None = None
    threads: int | None = None  # None: every core this process may use
    steps: bool = False  # also time kernels=naive and kernels=tvm
    cuts: bool = False  # also build the bundle and time every cut end to end
    repeats: int = 15  # timed rounds (medians kept)
    max_seconds: float = 30.0  # per candidate: slow builds (naive) stop sampling after this, keeping >= 3 samples
    input_shapes: dict = field(default_factory=dict)
    input_size: int | None = None  # zoo models: input height = width
    kernels: str = "blas"
    partitioner: str | None = None  # --cuts: the bundle's candidate cuts (None: the default, fused-layers)
    progress: bool = True


def apply_threads(threads: int | None) -> int:
    """Set the thread count for TVM, OpenBLAS (before numpy loads) and return it."""
    n = threads or len(os.sched_getaffinity(0))
    if n < 1:
        raise SpeedError(f"--threads must be at least 1, got {n}")
    if "numpy" in sys.modules and os.environ.get("OPENBLAS_NUM_THREADS") not in (None, str(n)):
        raise SpeedError("the thread count must be set before numpy is imported (use the CLI verb)")
    if "numpy" not in sys.modules:
        os.environ["OPENBLAS_NUM_THREADS"] = str(n)
    os.environ["TVM_NUM_THREADS"] = str(n)
    return n


class _Candidate:
    def __init__(self, label: str, run, note: str = ""):
        self.label, self.run, self.note = label, run, note
        self.times: list[float] = []
        self.spent = 0.0


def _interleaved_medians(candidates: list[_Candidate], repeats: int, max_seconds: float, warmup_s: float = 1.0) -> None:
    """Warm every candidate (a fresh module's first runs fault its weights in), then, round after
    round, run each candidate once untimed and once timed. The untimed run absorbs the switch: the
    previous candidate's thread pool (onnxruntime's, OpenBLAS's, TVM's) may still be spinning on the
    cores. A candidate that has used `max_seconds` and has 3 samples stops (the naive builds)."""
    for c in candidates:
        started, runs = time.perf_counter(), 0
        while runs < 2 or (time.perf_counter() - started < warmup_s and runs < 50):
            c.run()
            runs += 1
    for _ in range(repeats):
        for c in candidates:
            if len(c.times) >= 3 and c.spent > max_seconds:
                continue
            if not c.times or statistics.median(c.times) < 0.25:  # slow builds do not need it and cannot afford it
                c.run()
            started = time.perf_counter()
            c.run()
            elapsed = time.perf_counter() - started
            c.times.append(elapsed)
            c.spent += elapsed


def _vm_main(path: Path):
    import tvm

    return load_artifact(path, tvm.cpu(0))


def bench_speed(model, options: SpeedOptions, name: str | None = None) -> dict:
    """Build and time `model` (an ONNX file or model, or a zoo model's name; see the module docstring);
    returns a JSON-able dict (`speed_table` prints it)."""
    import onnxruntime as ort
    import tvm

    from ...compiler.analysis import analyse
    from ...compiler.build import build_graph
    from ...compiler.tuning.folder import read_tuning_info

    threads = apply_threads(options.threads)
    preset = get_preset(options.target)
    if not preset.runs_here():
        raise SpeedError(f"{preset.name} does not run on this machine ({preset.machine} {preset.device}); "
                         "time it on a board (neurosurgeon profile) or under emulation (neurosurgeon emulate), "
                         "where timings mean nothing for speed")
    if isinstance(model, (str, Path)):
        model, resolved = zoo.resolve(model, options.input_size)
        name = name or resolved
    tuning_info = read_tuning_info(options.tuning) if options.tuning else None
    if tuning_info and tuning_info["preset"] != preset.name:
        raise SpeedError(f"{options.tuning}: tuned for {tuning_info['preset']}, not {preset.name}")
    frozen, _graph, plan = analyse(model, options.input_shapes, name=name)
    feeds = random_inputs(frozen.inputs)
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if options.progress else (lambda msg: None)

    workdir = Path(tempfile.mkdtemp(prefix="ns-speed-"))
    try:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        session = ort.InferenceSession(frozen.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        reference = session.run(None, feeds)
        candidates = [_Candidate("onnxruntime", lambda: session.run(None, feeds),
                                 f"onnxruntime {ort.__version__}, CPU EP, {threads} threads")]
        builds = []
        if options.steps:
            builds += [("TVM default pipeline", "naive", None), ("ours, no BLAS", "tvm", None)]
        builds.append(("ours, untuned", options.kernels, None))
        if options.tuning:
            builds.append(("ours, tuned", tuning_info.get("kernels") or options.kernels, Path(options.tuning)))
        compile_s: dict[str, float] = {}
        for label, kernels, tuning in builds:
            say(f"building {frozen.name} for {preset.name}: {label}")
            path = workdir / f"{kernels}-{'tuned' if tuning else 'untuned'}.so"
            started = time.perf_counter()
            build_graph(frozen.model, frozen.inputs, preset, path, f"{frozen.name} ({label})", tuning=tuning,
                        kernels=kernels)
            compile_s[label] = time.perf_counter() - started
            main = _vm_main(path)
            args = [tvm.runtime.tensor(feeds[t.name]) for t in frozen.inputs]
            out = main(*args)
            outs = [out] if hasattr(out, "numpy") else list(out)
            error = max(float(np.max(np.abs(o.numpy() - r))) for o, r in zip(outs, reference))
            candidates.append(_Candidate(label, lambda main=main, args=args: main(*args),
                                         f"kernels={kernels}, max |error| vs onnxruntime {error:.1e}"))
        say(f"timing {len(candidates)} candidates, {options.repeats} interleaved rounds")
        _interleaved_medians(candidates, options.repeats, options.max_seconds)
        ort_s = statistics.median(candidates[0].times)
        rows = [{"label": c.label, "median_ms": statistics.median(c.times) * 1e3, "samples": len(c.times),
                 "ratio_to_onnxruntime": statistics.median(c.times) / ort_s, "note": c.note,
                 "compile_s": round(compile_s[c.label], 1) if c.label in compile_s else None} for c in candidates]
        result = {"model": frozen.name, "target": preset.name, "threads": threads, "rows": rows,
                  "input_shapes": {t.name: list(t.shape) for t in frozen.inputs}}
        if tuning_info:
            mine = [t for t in tuning_info["tasks"].values() if frozen.name in t.get("models", [])]
            result["tuning"] = {"dir": str(options.tuning), "measured": tuning_info["measured"],
                                "workloads": len(mine), "tuned_workloads": sum(1 for t in mine if t["trials"] > 0),
                                "seconds": round(sum(t["seconds"] for t in mine), 1),
                                "budgets_s": [r["budget_s"] for r in tuning_info["runs"] if r["model"] == frozen.name]}
        if options.cuts:
            say(f"building the bundle ({len(plan.segments)} segments) to time every cut")
            result["cuts"] = _time_cuts(model, feeds, options, workdir, name, candidates[-1])
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _time_cuts(model, feeds, options: SpeedOptions, workdir: Path, name, monolithic: _Candidate) -> dict:
    from ...compiler.partition import get_partitioner
    from ...compiler.pipeline import CompileOptions, compile_model
    from ...runtime.bundle import Bundle, SegmentExecutor
    from ..verify import run_cut

    compile_model(model, workdir / "bundle", CompileOptions(options.target, options.target, options.input_shapes,
                                                            tuning=options.tuning, kernels=options.kernels,
                                                            progress=options.progress,
                                                            partitioner=get_partitioner(options.partitioner)),
                  name=name)
    bundle = Bundle(workdir / "bundle")
    mobile, server = SegmentExecutor(bundle, "mobile"), SegmentExecutor(bundle, "server")
    candidates = [_Candidate(f"cut {k}", lambda k=k: run_cut(bundle, mobile, server, k, feeds))
                  for k in range(len(bundle.cuts))]
    mono = _Candidate("monolithic", monolithic.run)
    _interleaved_medians([mono, *candidates], max(3, options.repeats // 3), options.max_seconds, warmup_s=0.05)
    mono_s = statistics.median(mono.times)
    per_cut = [statistics.median(c.times) / mono_s for c in candidates]
    return {"partitioner": bundle.manifest.identity.options.get("partitioner"), "segments": len(bundle.segments),
            "monolithic_ms": mono_s * 1e3, "cut_ms": [round(statistics.median(c.times) * 1e3, 3) for c in candidates],
            "ratio_min": min(per_cut), "ratio_median": statistics.median(per_cut), "ratio_max": max(per_cut)}


def speed_table(result: dict) -> str:
    lines = [f"{result['model']} on {result['target']}, {result['threads']} threads, input "
             + ", ".join(f"{k} {v}" for k, v in result["input_shapes"].items()), ""]
    header = f"{'build':24} {'median':>10} {'vs onnxruntime':>15} {'samples':>8} {'compile':>8}  note"
    lines += [header, "-" * len(header)]
    for r in result["rows"]:
        compile_s = f"{r['compile_s']:.1f}s" if r["compile_s"] is not None else ""
        lines.append(f"{r['label']:24} {r['median_ms']:8.2f}ms {r['ratio_to_onnxruntime']:14.2f}x "
                     f"{r['samples']:>8} {compile_s:>8}  {r['note']}")
    if "tuning" in result:
        t = result["tuning"]
        lines.append(f"\ntuning: {t['dir']}, {t['tuned_workloads']} of {t['workloads']} workloads tuned, "
                     f"{t['seconds']:.0f} s of tuning (budgets {t['budgets_s']}), "
                     f"{'measured here' if t['measured'] else 'NOT measured'}")
    if "cuts" in result:
        c = result["cuts"]
        lines.append(f"\nevery cut end to end (segments chained in one process) vs the monolithic build "
                     f"({c['monolithic_ms']:.2f} ms): min {c['ratio_min']:.2f}x, median {c['ratio_median']:.2f}x, "
                     f"max {c['ratio_max']:.2f}x over {len(c['cut_ms'])} cuts ({c['segments']} segments, "
                     f"partitioner {c['partitioner']})")
    lines.append("\nMedians of interleaved rounds in one process (each round runs every build once), batch 1; "
                 "ratio = median / onnxruntime's median.")
    return "\n".join(lines)
