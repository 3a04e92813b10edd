"""`neurosurgeon bench compile`: the compile cost of partitioning. For each model and target, building
every segment (what a bundle needs to serve every cut) vs one monolithic build of the whole model,
and the artifacts' size vs the size of the weights. A benchmark, not a test.

    neurosurgeon bench compile [--models alexnet resnet18 vgg16] [--targets x86-host aarch64-neon cuda-sm80]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from ...compiler.analysis import analyse
from ...compiler.build import build_graph
from ...compiler.build_pool import BuildJob, build_all, start_workers, workers_for
from ...compiler.report import human_bytes
from ...runtime.progress import Progress
from ...targets import get_preset
from .. import zoo

__all__ = ["bench_compile", "compile_table", "measure"]


def measure(name: str, target: str, input_size: int | None, workdir: Path, partitioner: str | None = None,
            workers: int | None = None) -> dict:
    frozen, graph, plan = analyse(zoo.build(name, input_size=input_size), name=name,
                                  partitioner=partitioner)
    preset = get_preset(target)
    weights = sum(frozen.tensors[i.name].nbytes for i in frozen.graph.initializer)

    started = time.perf_counter()
    whole = build_graph(frozen.model, frozen.inputs, preset, workdir / f"{name}_{target}_full.so", "whole model")
    monolithic_s = time.perf_counter() - started

    jobs = [BuildJob(segment.model, segment.inputs, preset, workdir / f"{name}_{target}_seg{segment.index:03d}.so",
                     f"segment {segment.index}") for segment in plan.segments]
    workers = workers_for(len(jobs), workers)
    seconds = {}
    for at_a_time in sorted({1, workers}):
        start_workers(at_a_time)  # not timed: once per process
        with Progress(len(jobs), f"{name} {target}, {at_a_time} at a time", unit="segment") as progress:
            started = time.perf_counter()
            built = build_all(jobs, at_a_time, lambda _job, _artifact: progress.update())
            seconds[at_a_time] = time.perf_counter() - started
    segment_bytes = sum(b.path.stat().st_size for b in built)
    return {"model": name, "target": target, "partitioner": plan.partitioner, "layers": len(graph.layers),
            "segments": len(plan.segments),
            "cuts": len(plan.cuts), "monolithic_s": monolithic_s, "segments_s": seconds[1],
            "time_ratio": seconds[1] / monolithic_s, "workers": workers, "segments_parallel_s": seconds[workers],
            "parallel_time_ratio": seconds[workers] / monolithic_s, "weights_bytes": weights,
            "monolithic_bytes": whole.path.stat().st_size, "segments_bytes": segment_bytes,
            "size_ratio_vs_weights": segment_bytes / weights,
            "size_ratio_vs_monolithic": segment_bytes / whole.path.stat().st_size}


def bench_compile(models: list[str], targets: list[str], input_size: int | None = None,
                  partitioners: list[str | None] = (None,)) -> list[dict]:
    """`measure` for every model and target, each in a scratch folder removed afterwards."""
    rows = []
    for name in models:
        for target in targets:
            for partitioner in partitioners:
                workdir = Path(tempfile.mkdtemp(prefix="ns-bench-"))
                try:
                    rows.append(measure(name, target, input_size, workdir, partitioner))
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
    return rows


def compile_table(rows: list[dict]) -> str:
    header = (f"{'model':9} {'target':13} {'partitioner':16} {'segs':>4} {'mono s':>7} {'segs s':>7} {'ratio':>6} "
              f"{'at a time':>9} {'segs s':>7} {'ratio':>6}   "
              f"{'weights':>10} {'mono .so':>10} {'all segs':>10} {'vs weights':>10}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['model']:9} {r['target']:13} {r['partitioner']:16} {r['segments']:>4} {r['monolithic_s']:7.1f} "
                     f"{r['segments_s']:7.1f} {r['time_ratio']:5.2f}x {r['workers']:>9} {r['segments_parallel_s']:7.1f} "
                     f"{r['parallel_time_ratio']:5.2f}x   {human_bytes(r['weights_bytes']):>10} "
                     f"{human_bytes(r['monolithic_bytes']):>10} {human_bytes(r['segments_bytes']):>10} "
                     f"{r['size_ratio_vs_weights']:9.3f}x")
    lines.append("\nratio = time to build every segment (one at a time, then as many at a time as `compile` builds: "
                 "every core) / time to build the whole model once; a bundle serves every cut from these segments.\nvs weights = all segment artifacts of one target / the model's weight bytes.")
    return "\n".join(lines)
