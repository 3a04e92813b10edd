"""The compile pipeline as named stages: load -> layer graph -> cuts and segments -> build per target
-> bundle. Each stage is a function of the previous one's result and can be used on its own."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from .. import __version__
from ..cost_models.annotate import side_costs
from ..runtime.bundle import FORMAT, SCHEMA_MAJOR, SCHEMA_MINOR
from ..runtime.errors import NeurosurgeonError
from ..runtime.kernels import EXTERNS
from ..targets import Preset, get_preset
from .build import artifact_name, build_graph
from .bundle import check_destination, file_entry, publish, staging_dir, write_manifest
from .codegen import generate_runtime
from .frontend import FrozenModel, load_model
from .kernels import KERNEL_CHOICES
from .layers import LayerGraph, build_layer_graph
from .partition import Partitioner, PartitionPlan, partition

COMPATIBILITY = (f"A runtime reads bundles whose schema_version major equals its own ({SCHEMA_MAJOR}); "
                 "a higher minor version only adds fields, which older runtimes ignore.")


@dataclass
class CompileOptions:
    mobile: str
    server: str
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    partitioner: Partitioner | None = None
    as_tar: bool = False
    force: bool = False
    progress: bool = True
    measure: bool = True  # time segments whose target runs on the build machine
    mobile_cost: str | Path | None = None  # fitted cost models (neurosurgeon fit) for each side
    server_cost: str | Path | None = None
    mobile_power: str | Path | None = None  # power profile (watts per layer type); defaults ship
    tuning: str | Path | None = None  # a tuning folder (neurosurgeon tune), applied to the side(s) of its preset
    kernels: str = "blas"  # CPU builds: blas (GEMMs to the runtime's BLAS), tvm, or naive (compiler/kernels.py)


@dataclass
class CompileResult:
    path: Path
    manifest: dict
    frozen: FrozenModel
    graph: LayerGraph
    plan: PartitionPlan
    build_seconds: dict[str, float]


def analyse(model: str | Path | onnx.ModelProto, input_shapes: dict | None = None, partitioner: Partitioner | None = None,
            name: str | None = None) -> tuple[FrozenModel, LayerGraph, PartitionPlan]:
    """The stages every verb shares: frozen model, layer graph, candidate cuts and segments."""
    frozen = load_model(model, input_shapes, name=name)
    graph = build_layer_graph(frozen)
    return frozen, graph, partition(graph, partitioner)


def check_toolchain(preset: Preset) -> None:
    if shutil.which(preset.cxx) is None:
        hint = " (apt-get install g++-aarch64-linux-gnu)" if preset.machine == "aarch64" else ""
        raise NeurosurgeonError(f"target {preset.name} links with {preset.cxx}, which is not on PATH{hint}")
    if preset.device == "cuda" and shutil.which("nvcc") is None:
        raise NeurosurgeonError(f"target {preset.name} needs nvcc on PATH to compile CUDA device code")


def compile_model(model: str | Path | onnx.ModelProto, out: str | Path, options: CompileOptions,
                  name: str | None = None) -> CompileResult:
    out = Path(out)
    presets = {"mobile": get_preset(options.mobile, "mobile"), "server": get_preset(options.server, "server")}
    for preset in presets.values():
        check_toolchain(preset)
    check_destination(out, options.force)
    if options.kernels not in KERNEL_CHOICES:
        raise NeurosurgeonError(f"--kernels must be one of {', '.join(KERNEL_CHOICES)}, not {options.kernels!r}")
    tuning = _tuning_for(options.tuning, presets)
    frozen, graph, plan = analyse(model, options.input_shapes, options.partitioner, name)

    # Identical presets on both sides share one set of artifacts: every weight is stored once per target.
    targets = list(dict.fromkeys(p.name for p in presets.values()))
    build_seconds: dict[str, float] = {}
    kernel_counts: dict[str, dict[str, int]] = {}
    artifacts: dict[str, list[dict]] = {}
    with staging_dir(out) as staged:
        jobs = [(get_preset(t), segment) for t in targets for segment in plan.segments]
        for preset, segment in _progress(jobs, options.progress, f"building {len(plan.segments)} segments"):
            path = staged / "artifacts" / preset.name / artifact_name(frozen.name, preset, segment.index)
            what = (f"segment {segment.index} (layers {segment.layer_names[0]}..{segment.layer_names[-1]}) "
                    f"for {preset.name}")
            built = build_graph(segment.model, segment.inputs, preset, path, what, tuning.get(preset.name),
                                options.kernels)
            build_seconds[preset.name] = build_seconds.get(preset.name, 0.0) + built.compile_seconds + built.export_seconds
            counts = kernel_counts.setdefault(preset.name, {"kernels": 0, "tuned": 0, "externs": 0})
            for key in counts:
                counts[key] += built.stats.get(key, 0)
            artifacts.setdefault(preset.name, []).append({"segment": segment.index, **file_entry(staged, path)})
        manifest = make_manifest(frozen, graph, plan, presets, options, artifacts, build_seconds)
        # Per target: TVM-generated kernels in all segments, how many came from the tuning database (the
        # rest have neurosurgeon's default schedules), and how many GEMMs call the runtime's BLAS.
        manifest["build"]["kernels"] = {name: counts for name, counts in kernel_counts.items() if counts["kernels"]}
        write_manifest(staged, manifest)  # the cost stage reads the bundle back through the runtime
        measured: dict = {}
        manifest["costs"] = {
            side: side_costs(staged, side, preset, manifest, options.measure,
                             cost_model=options.mobile_cost if side == "mobile" else options.server_cost,
                             power_profile=options.mobile_power, measured=measured)
            for side, preset in presets.items()}
        manifest["runtime_files"] = generate_runtime(staged, manifest)
        write_manifest(staged, manifest)
        path = publish(staged, out, options.as_tar)
    return CompileResult(path, manifest, frozen, graph, plan, build_seconds)


def make_manifest(frozen: FrozenModel, graph: LayerGraph, plan: PartitionPlan, presets: dict[str, Preset],
                  options: CompileOptions, artifacts: dict[str, list[dict]], build_seconds: dict[str, float]) -> dict:
    import tvm

    sides = {side: preset.to_json() for side, preset in presets.items()}
    identity = {
        "model_sha256": frozen.sha256,
        "model_name": frozen.name,
        "sides": {side: {"preset": s["name"], "target": s["target"], "host": s["host"]} for side, s in sides.items()},
        "options": {"input_shapes": {k: list(v) for k, v in options.input_shapes.items()},
                    "partitioner": plan.partitioner, "kernels": options.kernels},
        "tool_version": __version__,
        "tvm_version": tvm.__version__,
    }
    if options.tuning is not None:
        from .tuning import tuning_identity

        identity["options"]["tuning"] = tuning_identity(options.tuning)
    identity["bundle_id"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "format": FORMAT,
        "schema_version": [SCHEMA_MAJOR, SCHEMA_MINOR],
        "compatibility": COMPATIBILITY,
        "identity": identity,
        "created_unix": int(time.time()),
        "model": {
            "name": frozen.name,
            "opset": {o.domain or "ai.onnx": o.version for o in frozen.model.opset_import},
            "inputs": [t.to_json() for t in frozen.inputs],
            "outputs": [t.to_json() for t in frozen.outputs],
            "flops": sum(layer.flops for layer in graph.layers),
        },
        "sides": sides,
        "layers": [layer.to_json() for layer in graph.layers],
        "cuts": [cut.to_json() for cut in plan.cuts],
        "segments": [segment.to_json() for segment in plan.segments],
        "artifacts": artifacts,
        # functions the artifacts call that the runtime provides (runtime/kernels.py)
        "externs": list(EXTERNS) if options.kernels == "blas" and any(p.device != "cuda" for p in presets.values()) else [],
        "build": {"seconds": {k: round(v, 3) for k, v in build_seconds.items()}},
    }


def _tuning_for(tuning: str | Path | None, presets: dict[str, Preset]) -> dict[str, Path]:
    """Preset name -> tuning folder: a folder holds one preset's schedules and applies to that side only."""
    if tuning is None:
        return {}
    from .tuning import read_tuning_info

    preset = read_tuning_info(tuning)["preset"]
    if preset not in {p.name for p in presets.values()}:
        raise NeurosurgeonError(f"{tuning}: tuned for {preset}, but the bundle builds "
                                f"{' and '.join(sorted({p.name for p in presets.values()}))}")
    return {preset: Path(tuning)}


def _progress(items: list, enabled: bool, label: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=label, unit="build", file=sys.stderr, dynamic_ncols=True)
