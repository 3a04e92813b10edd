"""Speed of generated code on this machine (x86-host): does chaining tuned segments keep the speed of
a monolithic tuned build? For each model: tune (segments' and whole model's workloads, one shared
folder), then time, in this process and as medians,
  - the untuned monolithic build (TVM's default pipeline),
  - the tuned monolithic build (the same database),
  - the tuned bundle at every cut (segments [0, k) then [k, S), tensors handed over in memory),
  - onnxruntime on the whole model, with as many threads as TVM (every core here).
A benchmark, not a test: it prints a table (and JSON with --json).

    python bench/speed_bench.py [--models alexnet resnet18] [--budget 600] [--trials-per-task 32]

The tuning folder (--workdir, default .cache/speed-bench/x86-host.tuning) is kept: a second run
re-uses it and tunes nothing it already has, so its --budget only covers what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from neurosurgeon.compiler import zoo
from neurosurgeon.compiler.build import build_graph
from neurosurgeon.compiler.pipeline import CompileOptions, analyse, compile_model
from neurosurgeon.compiler.tuning import read_tuning_info, tune
from neurosurgeon.compiler.verify import run_cut
from neurosurgeon.runtime.bundle import Bundle, SegmentExecutor
from neurosurgeon.targets import get_preset

PRESET = "x86-host"
# TVM's thread pool takes x86 cores for hyper-threads and uses half of them unless told; compare
# like with like: TVM and onnxruntime both on every core here (2 on the reference machine).
THREADS = len(os.sched_getaffinity(0))
os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))


def median_seconds(run, repeats: int, warmup_s: float = 2.0, max_seconds: float = 20.0) -> float:
    """Median wall time of `run()` after at least `warmup_s` (and two runs) of warm-up: the first runs
    of a freshly loaded model are up to 1.5x slower (page faults on the weights, caches, the thread
    pool). Fewer repeats for very slow code (the untuned builds)."""
    spent, runs = time.perf_counter(), 0
    while runs < 2 or time.perf_counter() - spent < warmup_s:
        run()
        runs += 1
    times: list[float] = []
    spent = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - spent < max_seconds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_monolithic(model, inputs, feeds, workdir: Path, tuning: Path | None, repeats: int) -> tuple[float, float]:
    import tvm
    import tvm.runtime.vm

    path = workdir / f"whole-{'tuned' if tuning else 'untuned'}.so"
    built = build_graph(model, inputs, get_preset(PRESET), path, "whole model", tuning=tuning)
    vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu(0))
    main = vm["main"]
    args = [tvm.runtime.tensor(feeds[t.name]) for t in inputs]
    return median_seconds(lambda: main(*args), repeats), built.compile_seconds


def time_onnxruntime(model, feeds, repeats: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return median_seconds(lambda: session.run(None, feeds), repeats)


def time_cuts(bundle_path: Path, feeds, repeats: int) -> list[float]:
    bundle = Bundle(bundle_path)
    device, server = SegmentExecutor(bundle, "mobile"), SegmentExecutor(bundle, "server")
    for index in range(len(bundle.segments)):
        device.load(index)
        server.load(index)
    median_seconds(lambda: run_cut(bundle, device, server, 0, feeds), 1, warmup_s=3.0)  # warms every segment
    return [median_seconds(lambda: run_cut(bundle, device, server, cut, feeds), repeats, warmup_s=0.1)
            for cut in range(len(bundle.cuts))]


def measure(name: str, folder: Path, budget: float, trials: int | None, repeats: int, progress: bool) -> dict:
    model = zoo.build(name)
    frozen, _graph, plan = analyse(model, name=name)
    rng = np.random.default_rng(0)
    feeds = {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in frozen.inputs}

    report = tune(model, PRESET, folder, budget, trials_per_task=trials, progress=progress, whole_model=True, name=name)
    print(report.summary(), file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="ns-speed-"))
    try:
        untuned_s, _ = time_monolithic(frozen.model, frozen.inputs, feeds, workdir, None, repeats)
        tuned_s, _ = time_monolithic(frozen.model, frozen.inputs, feeds, workdir, folder, repeats)
        started = time.perf_counter()
        compile_model(model, workdir / "bundle", CompileOptions(PRESET, PRESET, tuning=folder, progress=progress,
                                                                measure=False), name=name)
        bundle_compile_s = time.perf_counter() - started
        cuts = time_cuts(workdir / "bundle", feeds, repeats)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ort_s = time_onnxruntime(frozen.model, feeds, repeats)
    tasks = read_tuning_info(folder)["tasks"]
    mine = [t for t in tasks.values() if name in t["models"]]
    return {"model": name, "segments": len(plan.segments), "cuts": len(plan.cuts), "workloads": report.tasks,
            "tuned_workloads": sum(1 for t in mine if t["trials"] > 0),
            "tuning_s_total": round(sum(t["seconds"] for t in mine), 1), "tuning_s_this_run": round(report.seconds, 1),
            "trials_per_task": read_tuning_info(folder)["runs"][-1]["trials_per_task"],
            "bundle_compile_s": round(bundle_compile_s, 1), "untuned_ms": untuned_s * 1e3, "tuned_mono_ms": tuned_s * 1e3,
            "cut_min_ms": min(cuts) * 1e3, "cut_median_ms": statistics.median(cuts) * 1e3, "cut_max_ms": max(cuts) * 1e3,
            "cut_ms": [round(c * 1e3, 2) for c in cuts], "onnxruntime_ms": ort_s * 1e3}


def table(rows: list[dict]) -> str:
    header = (f"{'model':9} {'tasks':>5} {'tuned':>5} {'tune s':>7} {'untuned':>9} {'tuned mono':>10} "
              f"{'cuts min/median/max':>22} {'ORT':>8} {'speed-up':>8} {'bundle/mono':>11} {'bundle/ORT':>10}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['model']:9} {r['workloads']:>5} {r['tuned_workloads']:>5} {r['tuning_s_total']:7.0f} "
                     f"{r['untuned_ms']:7.1f}ms {r['tuned_mono_ms']:8.1f}ms "
                     f"{r['cut_min_ms']:6.1f}/{r['cut_median_ms']:6.1f}/{r['cut_max_ms']:6.1f}ms "
                     f"{r['onnxruntime_ms']:6.1f}ms {r['untuned_ms'] / r['cut_median_ms']:7.1f}x "
                     f"{r['cut_median_ms'] / r['tuned_mono_ms']:10.2f}x {r['cut_median_ms'] / r['onnxruntime_ms']:9.2f}x")
    lines.append(f"\nTimes are medians of in-process runs on this machine ({PRESET}, TVM_NUM_THREADS="
                 f"{os.environ['TVM_NUM_THREADS']}, onnxruntime {THREADS} threads), batch 1. tasks = distinct "
                 "workloads of the segments and the whole model; tune s = tuning time spent on them (all runs). "
                 "cuts = the bundle run end to end at each cut (device segments, then server segments). "
                 "speed-up = untuned monolithic / median cut; bundle/mono = median cut / tuned monolithic (same "
                 "database); bundle/ORT = median cut / onnxruntime.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["alexnet", "resnet18"])
    parser.add_argument("--budget", type=float, default=600, help="tuning seconds per model (default 600)")
    parser.add_argument("--trials-per-task", type=int, help="default: tune's default for a measured target")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per measurement (median kept)")
    parser.add_argument("--workdir", default=".cache/speed-bench", help="keeps the tuning folder between runs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    folder = Path(args.workdir) / f"{PRESET}.tuning"
    folder.parent.mkdir(parents=True, exist_ok=True)
    rows = [measure(name, folder, args.budget, args.trials_per_task, args.repeats, not args.quiet) for name in args.models]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
