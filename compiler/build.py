"""Build ONNX graphs (segments, or a whole model) into loadable TVM artifacts for a target preset."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..runtime.bundle import elf_machine
from ..runtime.errors import NeurosurgeonError, first_line
from ..runtime.tensors import TensorInfo
from ..targets import Preset
from .importer import BuildError, import_graph
from .kernels import DEFAULT_KERNELS

__all__ = ["BuildError", "BuiltArtifact", "artifact_name", "build_graph"]


@dataclass
class BuiltArtifact:
    path: Path
    compile_seconds: float
    export_seconds: float
    stats: dict  # CPU and tuned builds: kernels (TVM-generated), tuned (with a database record), tiled, externs (BLAS calls)


def artifact_name(model_name: str, preset: Preset, segment: int | None, batch: int = 1) -> str:
    """Deterministic file names: {model}_{preset}_seg{k:03d}.so ({...}_seg{k:03d}_b{batch}.so for a
    batch above 1), or {model}_{preset}_full.so."""
    suffix = f"seg{segment:03d}" if segment is not None else "full"
    return f"{model_name}_{preset.name}_{suffix}{f'_b{batch}' if batch > 1 else ''}.so"


def build_graph(model: onnx.ModelProto, inputs: list[TensorInfo], preset: Preset, out_path: Path,
                what: str, tuning: Path | None = None, kernels: str = DEFAULT_KERNELS) -> BuiltArtifact:
    """Import, compile and export one graph. `what` names it in errors ("segment 3 (conv2..relu2)").
    `tuning`: a tuning folder (neurosurgeon tune) whose schedules to apply; None compiles untuned.
    `kernels` (CPU targets): "tvm" generates every kernel (products register-tiled), "blas" offloads
    GEMMs to the runtime's BLAS, "naive" is TVM's default pipeline (compiler/kernels.py)."""
    import tvm

    started = time.perf_counter()
    mod = import_graph(model, inputs, what)
    target = preset.tvm_target()
    stats: dict = {}
    try:
        if tuning is not None:
            from .tuning.tuned_build import compile_tuned

            executable = compile_tuned(mod, preset, tuning, kernels, stats)
        elif preset.device == "cuda":
            from .cuda import compile_cuda

            executable = compile_cuda(mod, target)
        elif kernels == "naive":
            with target:
                executable = tvm.compile(mod, target=target)
        else:
            from .kernels import cpu_pipeline, cpu_tir_pipeline

            with target:
                executable = tvm.compile(mod, target=target, relax_pipeline=cpu_pipeline(target, kernels, stats=stats),
                                         tir_pipeline=cpu_tir_pipeline())
    except NeurosurgeonError:
        raise
    except Exception as err:
        raise BuildError(f"{what}: TVM failed to compile for {preset.name}: {first_line(err)}") from None
    compiled = time.perf_counter()
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        executable.export_library(str(out_path), fcompile=tvm.support.cc.cross_compiler(preset.cxx))
    except Exception as err:
        raise BuildError(f"{what}: exporting the {preset.name} artifact with {preset.cxx} failed: "
                         f"{first_line(err)}") from None
    machine = elf_machine(out_path)
    if machine != preset.machine:  # e.g. a cross compiler on PATH that is not what its name says
        raise BuildError(f"{what}: {preset.cxx} produced a {machine} object, {preset.name} needs {preset.machine}")
    return BuiltArtifact(out_path, compiled - started, time.perf_counter() - compiled, stats)
