"""The GPU pack, built for x86-host bundles and run here as it runs on a GPU machine: its own TVM
runtime and runtime copy, every cut equal to onnxruntime, medians per segment, measured server costs
the planner reads, onnxruntime on the same model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from neurosurgeon.runtime.bundle import Bundle
from neurosurgeon.runtime.errors import NeurosurgeonError
from neurosurgeon.runtime.measured import load_measured
from neurosurgeon.tools.gpu_pack import PackModel, build_gpu_pack

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
MODELS = (PackModel("lenet", width=0.25), PackModel("inception", width=0.125, input_size=32))


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "pack"
    return out, build_gpu_pack(out, MODELS, preset="x86-host", python=PYTHON, progress=False)


def test_the_pack_holds_the_server_side_the_runtime_and_references(pack):
    out, info = pack
    assert [m["name"] for m in info["models"]] == ["lenet", "inception"] and info["bytes"] < 60 << 20
    assert (out / "site" / "tvm" / "lib" / "libtvm_runtime.so").is_file()
    assert not list(out.rglob("libtvm_compiler.so"))
    for model in info["models"]:
        bundle = Bundle(out / "bundles" / model["name"])
        assert len(list((bundle.path / "artifacts").rglob("*.so"))) == model["segments"] == len(bundle.segments)
        assert (out / "references" / f"{model['name']}.npz").is_file()


def test_check_runs_with_the_packs_own_runtime_and_every_cut_matches(pack, tmp_path):
    out, info = pack
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TVM_"))}
    run = subprocess.run([sys.executable, str(out / "check.py"), str(tmp_path / "results")], capture_output=True,
                         text=True, timeout=600, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((tmp_path / "results" / "gpu-check.json").read_text())
    assert report["all_ok"] and report["tvm"]["runtime_only"]
    assert Path(report["tvm"]["path"]).is_relative_to(out / "site")
    assert Path(report["runtime"]).is_relative_to(out / "lib")
    for model, result in zip(info["models"], report["results"]):
        assert len(result["cuts"]) == model["segments"] + 1 and all(c["ok"] for c in result["cuts"])
        assert len(result["segment_seconds"]) == model["segments"] and min(result["segment_seconds"]) > 0
        assert all(s["samples"] == report["repeats"] and s["min_s"] <= s["median_s"] <= s["max_s"]
                   for s in result["segments"])
        assert result["onnxruntime_cpu"]["same_model"] and result["onnxruntime_cpu"]["median_s"] > 0
        # the measured server costs are what the planner reads from a bundle's measured/ folder
        measured = out / "bundles" / model["name"] / "measured" / "server.json"
        measured.parent.mkdir(exist_ok=True)
        measured.write_text(Path(result["measured_costs"]).read_text())
        record = load_measured(Bundle(out / "bundles" / model["name"]), "server")
        assert record["segment_seconds"] == pytest.approx(result["segment_seconds"], abs=1e-9)  # 9 decimals kept
        measured.unlink()
    assert "lenet" in run.stdout and "inception" in run.stdout


def test_a_pack_over_the_carry_limit_is_refused_and_leaves_nothing(tmp_path):
    with pytest.raises(NeurosurgeonError, match="over the 0 MiB that travel"):
        build_gpu_pack(tmp_path / "big", (PackModel("lenet", width=0.25),), preset="x86-host", python=PYTHON,
                       progress=False, limit_bytes=1000)
    assert list(tmp_path.iterdir()) == []


def test_check_run_by_another_python_says_which_one_the_pack_needs(tmp_path):
    """site/ holds TVM's runtime for one CPython; any other stops at once with one line, not a traceback
    from inside tvm_ffi's import."""
    from neurosurgeon.tools.gpu_pack import _render_script

    _render_script(tmp_path, "3.99")
    run = subprocess.run([sys.executable, str(tmp_path / "check.py")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [
        f"check.py: error: this pack's TVM runtime (site/) is for CPython 3.99, this is {sys.version.split()[0]} "
        f"({sys.executable}); run it with python3.99, or make the pack for this Python: neurosurgeon gpu-pack "
        f"--python {PYTHON}"]
