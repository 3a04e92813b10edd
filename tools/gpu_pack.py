"""The GPU pack (`neurosurgeon gpu-pack`, `make gpu-pack`): a folder that goes to a GPU machine which
has Python, numpy, onnx, onnxruntime and CUDA but not TVM, and runs there as `python3 check.py [OUT]`.

    site/                 TVM's runtime for that machine's CPython: libtvm_runtime, its CUDA plugin and
                          tvm-ffi, without the 250 MB compiler library
    lib/neurosurgeon/     the runtime, this module and the zoo (onnxruntime there runs the same model)
    bundles/NAME/         each model's bundle, its server side only (manifest and server artifacts)
    references/NAME.npz   the inputs, and onnxruntime's outputs for them, computed here
    pack.json             what was packed: models, preset, the sha256 of each ONNX model, sizes
    check.py              the one script (templates/gpu_check.py.j2)

check.py (`check_pack`) loads each bundle's server segments with the runtime alone, checks every cut
against the reference (runtime/check.py), times each segment and the whole chain (synchronised wall
time, medians with their spread), times onnxruntime on the machine's CPU on the same model, and
writes OUT/gpu-check.json and, per model, OUT/NAME.server.json: measured server costs that the
planner uses once copied into the bundle's measured/ folder. The same script runs here on CPU
bundles (the tests do), so everything but the GPU is checked where there is none.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..runtime.bundle import Bundle
from ..runtime.check import REFERENCE_INPUT, REFERENCE_OUTPUT, check_side, spread
from ..runtime.errors import NeurosurgeonError
from ..runtime.jsonfile import JsonFormat
from ..runtime.manifest import MANIFEST
from ..runtime.measured import MEASURED_FORMAT, measured_record
from ..runtime.profile import hardware_info, time_calls

__all__ = ["CARRY_LIMIT_BYTES", "DEFAULT_MODELS", "PACK_FORMAT", "PackModel", "build_gpu_pack", "check_pack",
           "check_table"]

PACK_FORMAT = JsonFormat("neurosurgeon-gpu-pack", 1, "neurosurgeon GPU pack", NeurosurgeonError, file="pack.json",
                         folder="GPU pack", made_by="`neurosurgeon gpu-pack`")
RESULTS_FORMAT = JsonFormat("neurosurgeon-gpu-check", 1, "neurosurgeon GPU check", NeurosurgeonError)
CARRY_LIMIT_BYTES = 60 << 20  # what may travel to the GPU machine with the working tree (64 MiB), less the repo
# The modules the pack's script imports, as lib/neurosurgeon/<path>: the runtime, and this module with
# the zoo (which needs compiler/frontend.py's opset) so that onnxruntime there runs the very model.
LIB_FILES = ("__init__.py", "runtime/*.py", "compiler/__init__.py", "compiler/frontend.py", "tools/__init__.py",
             "tools/zoo.py", "tools/gpu_pack.py")
LIB_SOURCES = {"": "neurosurgeon", "runtime": "runtime", "compiler": "compiler", "tools": "tools"}


@dataclass(frozen=True)
class PackModel:
    """A zoo model as packed: its width and input size chosen so that the pack fits what travels."""

    name: str
    width: float = 1.0
    input_size: int | None = None


# What travels to the GPU machine is at most 64 MiB, and TVM's runtime takes 18 of them. Full-width
# AlexNet (238 MB of weights) and ResNet-18 (45 MB) do not fit: narrower versions keep every layer
# and every cut at 224x224 (cuda-sm90 artifacts: AlexNet x0.125 about 6 MiB, ResNet-18 x0.5 14 MiB,
# MobileNetV2 x1 18 MiB, most of it weights; each artifact also carries about 40 KiB of code).
DEFAULT_MODELS = (PackModel("alexnet", width=0.125), PackModel("resnet18", width=0.5), PackModel("mobilenetv2"))


def build_gpu_pack(out: str | Path, models: tuple[PackModel, ...] = DEFAULT_MODELS, preset: str = "cuda-sm90",
                   python: str = "3.12", force: bool = False, progress: bool = True,
                   limit_bytes: int = CARRY_LIMIT_BYTES) -> dict:
    """Build the pack folder `out` (atomically: a failed build leaves nothing) and return pack.json."""
    from ..compiler.bundle import publish, staging_dir
    from ..compiler.pipeline import CompileOptions, compile_model
    from ..runtime.tensors import random_inputs
    from . import zoo
    from .verify import reference_outputs

    out = Path(out)
    if out.exists() and not (out / "pack.json").is_file() and any(out.iterdir()):
        raise NeurosurgeonError(f"{out}: exists and is not a GPU pack; refusing to replace it")
    if out.exists() and not force:
        raise NeurosurgeonError(f"{out}: already exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise NeurosurgeonError(f"{out.parent}: no such folder")
    say = (lambda message: print(message, file=sys.stderr, flush=True)) if progress else (lambda message: None)
    with staging_dir(out) as staged:
        say(f"gpu pack: TVM's runtime for CPython {python}")
        _runtime_site(staged / "site", python, say)
        _copy_lib(staged / "lib")
        entries = []
        with tempfile.TemporaryDirectory(prefix="neurosurgeon-gpu-pack-") as tmp:
            for model in models:
                say(f"gpu pack: {model.name} (width {model.width:g}) for {preset}")
                onnx_model = zoo.build(model.name, input_size=model.input_size, width=model.width)
                built = compile_model(onnx_model, Path(tmp) / model.name,
                                      CompileOptions("x86-host", preset, progress=progress), name=model.name)
                bundle = _copy_server_side(built.path, staged / "bundles" / model.name)
                feeds = random_inputs(built.frozen.inputs)
                expected = reference_outputs(onnx_model, feeds)
                (staged / "references").mkdir(exist_ok=True)
                np.savez(staged / "references" / f"{model.name}.npz",
                         **{REFERENCE_INPUT + k: v for k, v in feeds.items()},
                         **{REFERENCE_OUTPUT + k: v for k, v in expected.items()})
                entries.append({**asdict(model), "segments": len(built.plan.segments),
                                "onnx_sha256": hashlib.sha256(onnx_model.SerializeToString()).hexdigest(),
                                "bundle_id": bundle.bundle_id,
                                "bytes": _bytes(staged / "bundles" / model.name)})
        _render_script(staged, python)
        size = _bytes(staged)
        pack = {**PACK_FORMAT.stamp(), "preset": preset, "python": python, "models": entries, "bytes": size,
                "site_bytes": _bytes(staged / "site")}
        if size > limit_bytes:
            parts = ", ".join([f"TVM runtime {pack['site_bytes'] / 2**20:.1f}"]
                              + [f"{e['name']} {e['bytes'] / 2**20:.1f}" for e in entries])
            raise NeurosurgeonError(f"the pack is {size / 2**20:.1f} MiB ({parts} MiB), over the "
                                    f"{limit_bytes / 2**20:.0f} MiB that travel to the GPU machine: pack fewer or "
                                    "narrower models")
        PACK_FORMAT.write(staged / "pack.json", pack)
        publish(staged, out, as_tar=False)
    return pack


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _runtime_site(site: Path, python: str, say) -> None:
    """tvm and tvm_ffi, runtime only, for CPython `python`: this environment's own packages when it is
    that Python, else the same versions' wheels from PyPI."""
    import tvm
    import tvm_ffi

    from .board import BOARD_RECIPE, download_wheels, prune, unpack_wheel

    # What a runtime-only process never reads; the CUDA plugin stays (the board's recipe drops it).
    skip = [p for p in BOARD_RECIPE["wheels"]["prune"] if "libtvm_runtime_cuda" not in p]
    site.mkdir(parents=True)
    if python == f"{sys.version_info.major}.{sys.version_info.minor}":
        for package in (tvm, tvm_ffi):
            source = Path(package.__file__).parent
            shutil.copytree(source, site / source.name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "libtvm_compiler.so", "libtvm.so"))
    else:
        abi = "cp" + python.replace(".", "")
        spec = {"python_version": python, "implementation": "cp", "abi": abi, "glibc": [2, 28], "machine": "x86_64",
                "pins": {"apache-tvm": [tvm.__version__, None], "apache-tvm-ffi": [tvm_ffi.__version__, None]}}
        with tempfile.TemporaryDirectory(prefix="neurosurgeon-wheels-") as tmp:
            for wheel in download_wheels(spec, Path(tmp), say):
                unpack_wheel(wheel, site, skip)
    prune(site, skip)


def _copy_lib(lib: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    for pattern in LIB_FILES:
        folder, _, name = pattern.rpartition("/")
        for source in sorted((root / LIB_SOURCES[folder]).glob(name)):
            target = lib / "neurosurgeon" / folder / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def _copy_server_side(bundle_dir: Path, dest: Path) -> Bundle:
    """The manifest and the server's artifacts: all a server needs of a bundle."""
    bundle = Bundle(bundle_dir)
    dest.mkdir(parents=True)
    shutil.copyfile(bundle_dir / MANIFEST, dest / MANIFEST)
    for entry in bundle.manifest.artifacts[bundle.side("server").preset]:
        (dest / entry.file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle_dir / entry.file, dest / entry.file)
    return bundle


def _render_script(root: Path, python: str) -> None:
    import jinja2

    from .. import __version__

    templates = Path(__file__).resolve().parent.parent / "templates"
    script = root / "check.py"
    script.write_text(jinja2.Environment(loader=jinja2.FileSystemLoader(templates), keep_trailing_newline=True)
                      .get_template("gpu_check.py.j2").render(version=__version__, python=python))
    script.chmod(0o755)


# -- on the GPU machine ----------------------------------------------------------------------------


def check_pack(pack_dir: str | Path, out_dir: str | Path, repeats: int = 20) -> dict:
    """Check and time every packed bundle's server side here; write OUT/gpu-check.json and the measured
    server costs per model; return the results."""
    pack_dir, out_dir = Path(pack_dir), Path(out_dir)
    pack = PACK_FORMAT.read_folder(pack_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for entry in pack["models"]:
        name = entry["name"]
        bundle = Bundle(pack_dir / "bundles" / name)
        reference = dict(np.load(pack_dir / "references" / f"{name}.npz"))
        result = check_side(bundle, "server", reference, repeats=repeats)
        result["onnxruntime_cpu"] = _onnxruntime_baseline(entry, reference, repeats)
        record = measured_record(bundle, "server", result["segment_seconds"],
                                 f"median of {repeats} synchronised runs on {result['device']} (gpu pack)")
        result["measured_costs"] = str(MEASURED_FORMAT.write(out_dir / f"{name}.server.json", record))
        results.append(result)
    import tvm

    report = {**RESULTS_FORMAT.stamp(), "pack": {k: pack[k] for k in ("preset", "python", "models")},
              "machine": hardware_info("cuda" if pack["preset"].startswith("cuda") else "cpu"),
              "runtime": str(Path(__file__).resolve().parent.parent / "runtime"),
              "tvm": {"version": tvm.__version__, "path": str(Path(tvm.__file__).parent),
                      "runtime_only": bool(tvm.base._RUNTIME_ONLY)}, "repeats": repeats,
              "all_ok": all(r["all_cuts_ok"] for r in results), "results": results}
    RESULTS_FORMAT.write(out_dir / "gpu-check.json", report)
    return report


def _onnxruntime_baseline(entry: dict, reference: dict[str, np.ndarray], repeats: int) -> dict:
    """onnxruntime (CPU) on the same model, rebuilt here from the zoo: the whole model's median time
    with its spread, and whether the rebuilt model is byte for byte the one packed."""
    try:
        import onnxruntime as ort

        from . import zoo
    except ImportError as err:
        return {"skipped": f"onnxruntime or onnx cannot be imported here ({err})"}
    model = zoo.build(entry["name"], input_size=entry["input_size"], width=entry["width"]).SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads = len(os.sched_getaffinity(0))
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feeds = {i.name: reference[REFERENCE_INPUT + i.name] for i in session.get_inputs()}
    samples, _ = time_calls(lambda: session.run(None, feeds), repeats=repeats)
    return {"version": ort.__version__, "threads": threads, "cpu": hardware_info()["cpu"],
            "same_model": hashlib.sha256(model).hexdigest() == entry["onnx_sha256"], **spread(samples)}


def check_table(report: dict) -> str:
    """One row per model: cuts equal to the reference, the chain's time, onnxruntime's on the CPU."""
    lines = [f"{report['pack']['preset']} on {report['results'][0]['device'] if report['results'] else '?'}; "
             f"CPU {report['machine'].get('cpu')}; medians of {report['repeats']} runs", "",
             f"{'model':12} {'cuts ok':>9} {'max err':>9} {'segments':>9} {'chain ms':>18} {'onnxruntime CPU ms':>22}"]
    for r in report["results"]:
        ok = sum(c["ok"] for c in r["cuts"])
        chain, ort = r["chain"], r["onnxruntime_cpu"]
        ort_text = (f"{ort['median_s'] * 1e3:.2f} ({ort['min_s'] * 1e3:.2f}-{ort['max_s'] * 1e3:.2f})"
                    if "median_s" in ort else ort.get("skipped", "?")[:22])
        lines.append(f"{r['model']:12} {ok:>4}/{len(r['cuts']):<4} {max(c['max_abs_error'] for c in r['cuts']):9.1e} "
                     f"{len(r['segments']):>9} {chain['median_s'] * 1e3:8.3f} ({chain['min_s'] * 1e3:.3f}-"
                     f"{chain['max_s'] * 1e3:.3f}) {ort_text:>22}")
    lines.append("\nchain: every server segment in a row from host inputs, synchronised; in brackets min-max")
    return "\n".join(lines)


def main(pack_dir: str | Path, argv: list[str]) -> int:
    """The pack's check.py: `python3 check.py [OUT_FOLDER]` (default: the pack folder)."""
    out_dir = Path(argv[0]) if argv else Path(pack_dir)
    try:
        report = check_pack(pack_dir, out_dir)
    except NeurosurgeonError as err:
        print(f"check.py: error: {err}", file=sys.stderr)
        return 2
    print(check_table(report))
    print(f"\nwrote {out_dir / 'gpu-check.json'}")
    return 0 if report["all_ok"] else 1
