"""The compile pipeline as named stages: analyse (load -> layer graph -> cuts and segments) -> build
per target -> cost stage -> generated runtime -> bundle. Each stage is a function of the previous
one's result and can be used on its own; the manifest is assembled in memory and written once.

The cost stage is given to the pipeline (`CompileOptions.costs`): the compiler knows how to build a
bundle, not how its segments' costs are predicted or measured (cost_models/annotate.py's
`CostAnnotation` is the stage the API and the CLI use).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import onnx

from .. import __version__
from ..runtime.errors import NeurosurgeonError
from ..runtime.kernels import EXTERNS
from ..runtime.manifest import DEFAULT_PLANNER, MANIFEST_FORMAT
from ..runtime.planner import PLANNERS
from ..runtime.progress import Progress
from ..runtime.signing import read_private_key, sign_manifest
from ..targets import Preset, get_preset
from .analysis import analyse
from .build import artifact_name
from .build_pool import BuildJob, build_all, workers_for
from .bundle import check_destination, file_entry, publish, staging_dir, write_manifest
from .codegen import generate_runtime
from .frontend import FrozenModel
from .kernels import DEFAULT_KERNELS, KERNEL_CHOICES
from .layers import LayerGraph
from .codecs import calibration, measure_codecs
from .partition import Partitioner, PartitionPlan

__all__ = ["CompileOptions", "CompileResult", "CostStage", "check_toolchain", "compile_model", "make_manifest"]


class CostStage(Protocol):
    """Fills the manifest's `costs` section: per side, the per-segment seconds the planner decides
    with (and power on the mobile side). Called with the staged bundle folder, whose artifacts are
    all built, the manifest as assembled so far, and the presets by side."""

    def __call__(self, folder: Path, manifest: dict, presets: dict[str, Preset]) -> dict[str, dict]: ...


@dataclass
class CompileOptions:
    mobile: str
    server: str
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    partitioner: Partitioner | str | None = None  # an instance or a name; None: the default
    as_tar: bool = False
    force: bool = False
    progress: bool = True
    tuning: str | Path | None = None  # a tuning folder (neurosurgeon tune), applied to the side(s) of its preset
    kernels: str = DEFAULT_KERNELS  # CPU builds: tvm (tiled products), blas (GEMMs to the runtime's BLAS) or naive (compiler/kernels.py)
    planner: str = DEFAULT_PLANNER  # the schedule planner run.py uses by default (runtime/planner.py's PLANNERS)
    sign_key: str | Path | None = None  # an Ed25519 private key (PEM): the manifest is signed (manifest.sig)
    costs: CostStage | None = None  # None: a bundle without costs, which a planner cannot use
    server_batch: tuple[int, ...] = ()  # batch sizes above 1 the server side is also built for (dynamic batching)
    jobs: int | None = None  # builds at a time (compiler/build_pool.py); None: every core


@dataclass
class CompileResult:
    path: Path
    manifest: dict
    frozen: FrozenModel
    graph: LayerGraph
    plan: PartitionPlan
    build_seconds: dict[str, float]


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
    if options.planner not in PLANNERS:
        raise NeurosurgeonError(f"--planner must be one of {', '.join(PLANNERS)}, not {options.planner!r}")
    if options.jobs is not None and options.jobs < 1:
        raise NeurosurgeonError(f"--jobs must be at least 1, got {options.jobs}")
    tuning = _tuning_for(options.tuning, presets)
    seed = read_private_key(options.sign_key) if options.sign_key else None  # a bad key fails before any work
    frozen, graph, plan = analyse(model, options.input_shapes, options.partitioner, name)
    batched = batched_plans(model, options, frozen, plan, name)

    # Identical presets on both sides share one set of artifacts: every weight is stored once per target.
    targets = list(dict.fromkeys(p.name for p in presets.values()))
    build_seconds: dict[str, float] = {}
    kernel_counts: dict[str, dict[str, int]] = {}
    artifacts: dict[str, list[dict]] = {}
    with staging_dir(out) as staged:
        # (preset, segment, batch): every segment for each preset, and the server's again for each batch size
        jobs = ([(get_preset(t), segment, 1) for t in targets for segment in plan.segments]
                + [(presets["server"], segment, b) for b, batch_plan in batched.items()
                   for segment in batch_plan.segments])
        batch_artifacts: dict[str, list[dict]] = {}
        builds = [BuildJob(segment.model, segment.inputs, preset,
                           staged / "artifacts" / preset.name / artifact_name(frozen.name, preset, segment.index, batch),
                           f"segment {segment.index} (layers {segment.layer_names[0]}..{segment.layer_names[-1]}) "
                           f"for {preset.name}" + (f" at batch {batch}" if batch > 1 else ""),
                           tuning.get(preset.name), options.kernels)
                  for preset, segment, batch in jobs]
        workers = workers_for(len(builds), options.jobs)
        with Progress(len(jobs), f"building {len(plan.segments)} segments"
                      + (f", {workers} at a time" if workers > 1 else ""), unit="build",
                      enabled=options.progress) as progress:
            def built_one(build: BuildJob, _built) -> None:
                progress.update(note=build.out_path.stem)

            built = build_all(builds, workers, built_one)
        for (preset, segment, batch), build, artifact in zip(jobs, builds, built):
            build_seconds[preset.name] = (build_seconds.get(preset.name, 0.0) + artifact.compile_seconds
                                          + artifact.export_seconds)
            counts = kernel_counts.setdefault(preset.name, {"kernels": 0, "tuned": 0, "tiled": 0, "externs": 0})
            for key in counts:
                counts[key] += artifact.stats.get(key, 0)
            if batch == 1:
                artifacts.setdefault(preset.name, []).append({"segment": segment.index, **file_entry(staged, build.out_path)})
            else:
                batch_artifacts.setdefault(preset.name, []).append({"segment": segment.index, "batch": batch,
                                                                    **file_entry(staged, build.out_path)})
        manifest = make_manifest(frozen, graph, plan, presets, options, artifacts, build_seconds)
        manifest["build"]["workers"] = workers
        manifest["codecs"] = measure_codecs(frozen, plan)
        manifest["build"]["codec_calibration"] = calibration()
        if batch_artifacts:
            manifest["batching"] = {"sizes": [1, *batched], "artifacts": batch_artifacts}
        # Per target: TVM-generated kernels in all segments, how many came from the tuning database (the
        # rest have neurosurgeon's default schedules), and how many GEMMs call the runtime's BLAS.
        manifest["build"]["kernels"] = {name: counts for name, counts in kernel_counts.items() if counts["kernels"]}
        if options.costs is not None:
            manifest["costs"] = options.costs(staged, manifest, presets)
        manifest["runtime_files"] = generate_runtime(staged, manifest)
        write_manifest(staged, manifest)
        if seed is not None:
            sign_manifest(staged, seed)
        path = publish(staged, out, options.as_tar)
    return CompileResult(path, manifest, frozen, graph, plan, build_seconds)


def batched_plans(model, options: CompileOptions, frozen: FrozenModel, plan: PartitionPlan,
                  name: str | None) -> dict[int, PartitionPlan]:
    """Batch size -> the partition plan with every model input's leading dimension at that size,
    checked to be the batch-1 plan with every tensor's leading dimension scaled (else the model fixes
    its batch dimension somewhere, and batching it would be wrong)."""
    sizes = sorted(set(options.server_batch))
    if not sizes:
        return {}
    if sizes[0] < 2:
        raise NeurosurgeonError(f"--server-batch sizes must be at least 2 (batch 1 is always built), got {sizes}")
    label = frozen.name
    fixed = [t for t in frozen.inputs if not t.shape or t.shape[0] != 1]
    if fixed:
        raise NeurosurgeonError(f"{label}: cannot batch: input {fixed[0].name!r} has shape {list(fixed[0].shape)}; "
                                "batching needs every input's first dimension to be the batch, of size 1")
    plans = {}
    for b in sizes:
        try:
            _, _, batch_plan = analyse(model, options.input_shapes, options.partitioner, name, batch=b)
        except NeurosurgeonError as err:
            raise NeurosurgeonError(f"cannot batch at {b}: {err}") from None
        _check_batched(plan, batch_plan, b, label)
        plans[b] = batch_plan
    return plans


def _check_batched(plan: PartitionPlan, batch_plan: PartitionPlan, b: int, label: str) -> None:
    if len(batch_plan.segments) != len(plan.segments):
        raise NeurosurgeonError(f"{label}: cannot batch at {b}: the model has {len(batch_plan.segments)} segments at "
                                f"batch {b} and {len(plan.segments)} at batch 1")
    for one, many in zip(plan.segments, batch_plan.segments):
        for t1, tb in zip([*one.inputs, *one.outputs], [*many.inputs, *many.outputs]):
            if t1.name != tb.name or t1.dtype != tb.dtype or not t1.shape or t1.shape[0] != 1 \
                    or tb.shape != (b, *t1.shape[1:]):
                raise NeurosurgeonError(f"{label}: cannot batch at {b}: tensor {t1.name!r} of segment {one.index} is "
                                        f"{list(t1.shape)} at batch 1 and {tb.name!r} {list(tb.shape)} at batch {b}; "
                                        "the model fixes its batch dimension (a Reshape to a constant shape?)")


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
        from .tuning.folder import tuning_identity

        identity["options"]["tuning"] = tuning_identity(options.tuning)
    identity["bundle_id"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return {
        **MANIFEST_FORMAT.stamp(),
        "compatibility": MANIFEST_FORMAT.compatibility,
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
        "planner": options.planner,
        "build": {"seconds": {k: round(v, 3) for k, v in build_seconds.items()}},
    }


def _tuning_for(tuning: str | Path | None, presets: dict[str, Preset]) -> dict[str, Path]:
    """Preset name -> tuning folder: a folder holds one preset's schedules and applies to that side only."""
    if tuning is None:
        return {}
    from .tuning.folder import read_tuning_info

    preset = read_tuning_info(tuning)["preset"]
    if preset not in {p.name for p in presets.values()}:
        raise NeurosurgeonError(f"{tuning}: tuned for {preset}, but the bundle builds "
                                f"{' and '.join(sorted({p.name for p in presets.values()}))}")
    return {preset: Path(tuning)}
