"""Workloads: the distinct fused TIR functions a model's segments compile to, one tuning task each.

TVM 0.27's untuned CPU code is naive loops, and a fused function with no record in the database
keeps our default schedule, so tuning works on exactly the functions the segment builds produce (a
cut between a conv and its relu makes a different fused function than the whole model has), made
by the same passes; each distinct workload is tuned once (the same conv shape in two segments, or in
two models tuned into the same folder, is one task)."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from ...targets import Preset, get_preset
from ..importer import import_graph
from .tuned_build import fusion_passes
from ..kernels import DEFAULT_KERNELS

__all__ = ["Workload", "extract_workloads", "segment_workloads"]


@dataclass
class Workload:
    """One distinct tuning task: a fused TIR function and where it occurs."""

    key: str  # structural hash of the function: equal functions share it, whatever their weights
    name: str  # MetaSchedule's task name, e.g. fused_conv2d_add (not unique)
    mod: object  # tvm.IRModule holding the PrimFunc as "main"
    flops: float
    weight: int = 0  # how many times the segments call it
    graphs: list[str] = field(default_factory=list)  # which graphs (segments) call it


def extract_workloads(graphs: list[tuple[str, onnx.ModelProto, list]], preset: Preset,
                      kernels: str = DEFAULT_KERNELS, tiles=None) -> list[Workload]:
    """The distinct fused TIR functions that building `graphs` ((label, model, inputs) each) for
    `preset` produces, deduplicated by structural hash, with their call counts summed. `tiles` (a
    TileChoices), if given, learns the tiled convolutions the builds make (its `asked`)."""
    import tvm
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    target = preset.tvm_target()
    found: dict[str, Workload] = {}
    for label, model, inputs in graphs:
        mod = import_graph(model, inputs, label)
        with target:
            mod = tvm.transform.Sequential(fusion_passes(target, kernels, tiles))(mod)
        for task in ms.relax_integration.extract_tasks(mod, target):
            func_mod = task.dispatched[0]
            if _tiled(func_mod):
                continue  # scheduled where it was made (compiler/tiled_kernels.py)
            key = f"{tvm_ffi.structural_hash(func_mod) & (2**64 - 1):016x}"
            workload = found.get(key)
            if workload is None:
                workload = found[key] = Workload(key, task.task_name, func_mod, _flops(func_mod))
            workload.weight += int(task.weight)
            if label not in workload.graphs:
                workload.graphs.append(label)
    return list(found.values())

def segment_workloads(plan_or_segments, preset: Preset | str, kernels: str = DEFAULT_KERNELS) -> list[Workload]:
    """The distinct workloads of a partition plan's segments (or of a list of segments) for a preset."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    segments = getattr(plan_or_segments, "segments", plan_or_segments)
    return extract_workloads([(f"segment {s.index}", s.model, s.inputs) for s in segments], preset, kernels)

def _tiled(mod) -> bool:
    from ..tiled_kernels import is_tiled

    return any(is_tiled(f) for f in mod.functions.values())


def _flops(mod) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(mod))
    except Exception:  # some functions (e.g. data movement with dynamic loops) have no estimate
        return 0.0

