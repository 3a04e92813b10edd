"""The tuned build: the backend pipeline split where MetaSchedule's database applies, shared by
workload extraction (which must see exactly the fused functions the build makes) and the build
itself, and `compile_tuned`, which compiles a Relax module with a tuning folder's schedules."""

from __future__ import annotations

import importlib
from pathlib import Path

from ...targets import Preset
from .folder import TuningError, database, read_tuning_info, tile_choices
from ..kernels import DEFAULT_KERNELS

__all__ = ["compile_tuned", "default_passes", "fusion_passes", "tuned_pipeline"]


def default_passes(target, kernels: str = DEFAULT_KERNELS, tiles=None) -> tuple[list, list, list]:
    """The backend pipeline for `target`, split where MetaSchedule's database applies: (up to fused
    TIR functions, the default schedules that follow on GPUs, lowering). CPUs get our pipeline
    (compiler/kernels.py: GEMM offload per `kernels`, fusion); GPUs TVM's own pass lists, so that
    extraction and the tuned build agree. `tiles`: the tiled products' choices (a TileChoices)."""
    if target.kind.name != "cuda":
        from ..kernels import cpu_phases

        return cpu_phases(target, kernels, tiles)
    backend = importlib.import_module("tvm.relax.backend.cuda.pipeline")  # dataflow_lower_passes is not exported
    legalize = backend.legalize_passes(target)
    fused = 1 + [p.info.name for p in legalize].index("FuseTIR")
    return (backend.library_dispatch_passes(target) + legalize[:fused], legalize[fused:],
            backend.dataflow_lower_passes(target) + backend.finalize_passes(target))

def fusion_passes(target, kernels: str = DEFAULT_KERNELS, tiles=None) -> list:
    """The passes up to fused TIR, before any schedule: what tasks are extracted from."""
    return default_passes(target, kernels, tiles)[0]

def tuned_pipeline(target, kernels: str = DEFAULT_KERNELS, stats: dict | None = None, tiles=None):
    """The default pipeline for `target` with the current MetaSchedule database applied right after
    fusion. Functions without a record keep the default: dlight rules on GPUs, our ParallelLoops
    rule on CPUs (compiler/kernels.py); the tiled products take `tiles`' choices."""
    import tvm
    from tvm import relax

    if target.kind.name != "cuda":
        from ..kernels import cpu_pipeline

        return cpu_pipeline(target, kernels, apply_database=True, stats=stats, tiles=tiles)
    fusion, default_schedules, lower = default_passes(target, kernels)

    @tvm.transform.module_pass(opt_level=0, name="NeurosurgeonTunedPipeline")
    def pipeline(mod, _ctx):
        with target:
            mod = tvm.transform.Sequential(fusion)(mod)
            mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
            if stats is not None:
                from ..kernels import count_kernels

                stats.update(count_kernels(mod), externs=0)
            return tvm.transform.Sequential(default_schedules + lower)(mod)

    return pipeline

def compile_tuned(mod, preset: Preset, tuning_dir: str | Path, kernels: str = DEFAULT_KERNELS, stats: dict | None = None):
    """tvm.compile a Relax module for `preset` with the tuning folder's schedules applied. `kernels`
    must be what the folder was tuned with: the fused functions (and so the records' keys) differ."""
    import tvm

    from ..kernels import cpu_tir_pipeline
    from ..tiled_kernels import TileChoices

    info = read_tuning_info(tuning_dir)
    if info["preset"] != preset.name:
        raise TuningError(f"{tuning_dir}: tuned for {info['preset']}, cannot apply it to a {preset.name} build")
    if preset.device != "cuda" and info.get("kernels", "blas") != kernels:
        raise TuningError(f"{tuning_dir}: tuned with --kernels {info['kernels']}, this build uses --kernels {kernels}")
    target = preset.tvm_target()
    with database(Path(tuning_dir)):
        if preset.device == "cuda":
            from ..cuda import compile_cuda

            return compile_cuda(mod, target, pipeline=tuned_pipeline(target, stats=stats))
        with target:
            tiles = TileChoices(tile_choices(info, tuning_dir))
            return tvm.compile(mod, target=target, relax_pipeline=tuned_pipeline(target, kernels, stats, tiles),
                               tir_pipeline=cpu_tir_pipeline())

