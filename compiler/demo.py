"""The README's main job on a built-in default: take a zoo network, show its layers and cuts, compile
it into a bundle (cached), and run every cut against onnxruntime."""

from __future__ import annotations

from pathlib import Path

from ..runtime.bundle import MANIFEST, Bundle
from . import zoo
from .pipeline import CompileOptions, analyse, compile_model
from .report import check_table, cut_table, layer_table
from .verify import verify_bundle


def run_demo(workdir: Path, model_name: str = "alexnet", input_size: int | None = None) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    model_path = workdir / f"{model_name}.onnx"
    zoo.save(zoo.build(model_name, input_size=input_size), model_path)
    frozen, graph, plan = analyse(model_path)
    print(layer_table(frozen, graph), end="\n\n")
    print(cut_table(plan), end="\n\n")

    bundle_path = workdir / f"{model_name}.bundle"
    cached = (bundle_path / MANIFEST).is_file() and Bundle(bundle_path).manifest["identity"]["model_sha256"] == frozen.sha256
    if cached:
        print(f"using cached bundle {bundle_path}")
    else:
        compile_model(model_path, bundle_path, CompileOptions(mobile="x86-host", server="x86-host", force=True))
    checks = verify_bundle(bundle_path, model_path)
    print(f"\nevery cut of {model_name}, device side then server side (both x86-host here), vs onnxruntime:")
    print(check_table(checks))
    return 0 if all(c.ok for c in checks) else 1
