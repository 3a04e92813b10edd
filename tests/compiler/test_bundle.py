"""Stages after the build: the manifest, atomic publishing, and what the runtime accepts."""

import json
import tarfile
import time

import pytest

from neurosurgeon.compiler import build_pool, pipeline
from neurosurgeon.compiler.analysis import analyse
from neurosurgeon.compiler.build import BuildError
from neurosurgeon.targets import get_preset
from neurosurgeon.compiler.bundle import OutputError
from neurosurgeon.api import CompileOptions
from neurosurgeon.api import compile as compile_model
from neurosurgeon.tools.verify import verify_bundle
from neurosurgeon.runtime.bundle import Bundle, SegmentExecutor, sha256_file
from neurosurgeon.runtime.errors import BundleError

SHAPES = {"x": (1, 3, 8, 8)}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    from models import residual_with_shape_arithmetic
    import onnx

    root = tmp_path_factory.mktemp("bundle")
    onnx.save(residual_with_shape_arithmetic(), root / "residual.onnx")
    compile_model(root / "residual.onnx", root / "out", CompileOptions("x86-host", "x86-host", SHAPES, progress=False, partitioner="fused-layers"))
    return root


def test_manifest_describes_model_cuts_segments_and_files(bundle_dir):
    manifest = json.loads((bundle_dir / "out" / "manifest.json").read_text())
    assert manifest["format"] == "neurosurgeon-bundle" and manifest["schema_version"] == [2, 2]
    assert "compatibility" in manifest
    assert manifest["externs"] == [] and manifest["identity"]["options"]["kernels"] == "tvm"  # tiled: nothing outside TVM
    counts = manifest["build"]["kernels"]["x86-host"]  # untuned: our default schedules, the products tiled
    assert counts["tuned"] == 0 and counts["kernels"] > counts["tiled"] > 0 and counts["externs"] == 0
    identity = manifest["identity"]
    assert identity["model_sha256"] == sha256_file(bundle_dir / "residual.onnx")
    assert identity["sides"]["mobile"]["preset"] == "x86-host" and identity["options"]["input_shapes"] == {"x": [1, 3, 8, 8]}
    assert {"tool_version", "tvm_version", "bundle_id"} <= set(identity)
    assert [t["name"] for t in manifest["model"]["inputs"]] == ["x"]
    # conv1 and its ReLU are one segment (fused-layers, the default), conv2 and the residual add another;
    # every other layer is its own
    assert len(manifest["cuts"]) == len(manifest["segments"]) + 1 == len(manifest["layers"]) - 1
    assert manifest["identity"]["options"]["partitioner"] == "fused-layers"
    assert [s["layer_names"] for s in manifest["segments"]][:2] == [["conv1", "relu1"], ["conv2", "add"]]
    # the cut after conv2, which fused-layers drops, would cross both the residual branch and conv2's output
    _, _, every = analyse(bundle_dir / "residual.onnx", {"x": (1, 3, 8, 8)},
                          partitioner="layer-boundaries")
    crossing = {c.after_layer: [t.name for t in c.crossing] for c in every.cuts}
    assert crossing["conv2"] == ["r1", "c2"]
    files = manifest["artifacts"]["x86-host"]
    assert [f["segment"] for f in files] == list(range(len(manifest["segments"])))
    for entry in files:
        path = bundle_dir / "out" / entry["file"]
        assert sha256_file(path) == entry["sha256"] and path.stat().st_size == entry["bytes"]
        assert path.name.startswith("residual_x86-host_seg")
    # identical presets share artifacts: one folder, every weight once
    assert list(manifest["artifacts"]) == ["x86-host"]


def test_every_cut_matches_onnxruntime(bundle_dir):
    checks = verify_bundle(bundle_dir / "out", bundle_dir / "residual.onnx")
    assert len(checks) == 5 and all(c.ok for c in checks), checks


def test_existing_output_is_refused_without_force_and_replaced_with_it(bundle_dir, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(OutputError, match="not a bundle"):
        compile_model(bundle_dir / "residual.onnx", out, CompileOptions("x86-host", "x86-host", SHAPES, force=True, progress=False, partitioner="fused-layers"))
    with pytest.raises(OutputError, match="already exists"):
        compile_model(bundle_dir / "residual.onnx", out, CompileOptions("x86-host", "x86-host", SHAPES, progress=False, partitioner="fused-layers"))
    assert (out / "keep.txt").read_text() == "user data"


def test_tar_bundle(bundle_dir, tmp_path):
    out = tmp_path / "residual.tar"
    compile_model(bundle_dir / "residual.onnx", out, CompileOptions("x86-host", "x86-host", SHAPES, as_tar=True, progress=False, partitioner="fused-layers"))
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert "manifest.json" in names and sum(n.endswith(".so") for n in names) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["residual.tar"]


def test_failed_build_leaves_nothing_behind(bundle_dir, tmp_path, monkeypatch):
    calls = []
    real_build = build_pool.build_graph

    def build_then_fail(*args, **kwargs):  # the third segment's build fails, as a TVM error would
        calls.append(1)
        if len(calls) == 3:
            raise pipeline.NeurosurgeonError("segment 2: TVM failed to compile")
        return real_build(*args, **kwargs)

    monkeypatch.setattr(build_pool, "build_graph", build_then_fail)  # one job at a time: builds in this process
    with pytest.raises(pipeline.NeurosurgeonError, match="segment 2"):
        compile_model(bundle_dir / "residual.onnx", tmp_path / "b",
                      CompileOptions("x86-host", "x86-host", SHAPES, progress=False, partitioner="fused-layers", jobs=1))
    assert list(tmp_path.iterdir()) == []


def test_builds_run_side_by_side_and_a_failure_stops_them(bundle_dir, tmp_path):
    """Two builds at a time, each in a worker process; a build that fails (here its linker) is raised
    as its one-line error once the running builds have ended, and nothing more starts."""
    import dataclasses

    frozen, _graph, plan = analyse(bundle_dir / "residual.onnx", SHAPES, "fused-layers")
    good, broken = get_preset("x86-host"), dataclasses.replace(get_preset("x86-host"), cxx="false")
    jobs = [build_pool.BuildJob(s.model, s.inputs, good, tmp_path / f"seg{s.index}.so", f"segment {s.index}")
            for s in plan.segments]
    finished = []
    built = build_pool.build_all(jobs, 2, lambda job, _artifact: finished.append(job.what))
    assert [b.path for b in built] == [j.out_path for j in jobs] and sorted(finished) == sorted(j.what for j in jobs)
    for b in built:
        b.path.unlink()

    jobs[1] = dataclasses.replace(jobs[1], preset=broken)
    jobs += [dataclasses.replace(j, out_path=tmp_path / f"more{i}.so") for i, j in enumerate(jobs * 3)
             if j.preset is good]
    with pytest.raises(BuildError, match=r"^segment 1: exporting the x86-host artifact with false failed"):
        build_pool.build_all(jobs, 2)
    written = sorted(p.name for p in tmp_path.iterdir())
    time.sleep(0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == written  # no build still running
    assert len(written) < len(jobs) - 1  # the rest never started


def test_jobs_must_be_positive(bundle_dir, tmp_path):
    with pytest.raises(pipeline.NeurosurgeonError, match="--jobs must be at least 1, got 0"):
        compile_model(bundle_dir / "residual.onnx", tmp_path / "b",
                      CompileOptions("x86-host", "x86-host", SHAPES, progress=False, partitioner="fused-layers", jobs=0))
    assert list(tmp_path.iterdir()) == []


def test_tampered_artifact_is_refused_before_loading(bundle_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir / "out", copy)
    bundle = Bundle(copy)
    path, _ = bundle.artifact("mobile", 1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    # every artifact of a side is checked before any is loaded: segment 0 is never loaded either
    with pytest.raises(BundleError, match="seg001.so: mobile artifact does not match the manifest"):
        SegmentExecutor(bundle, "mobile")
    path.unlink()
    with pytest.raises(BundleError, match="seg001.so: mobile artifact is missing"):
        SegmentExecutor(bundle, "mobile")
    with open("/proc/self/maps") as maps:
        assert not [line for line in maps if str(copy) in line], "a changed bundle's code was loaded"


def test_unknown_schema_and_foreign_machine_are_refused(bundle_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir / "out", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = [3, 0]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema version"):
        Bundle(copy)
    manifest["schema_version"] = [2, 7]  # a newer minor version only adds fields
    manifest["sides"]["mobile"]["machine"] = "aarch64"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="built for x86-host \\(aarch64\\), this machine is x86_64"):
        SegmentExecutor(Bundle(copy), "mobile")


def test_a_schema_1_bundle_is_still_read(bundle_dir, tmp_path):
    """Bundles made before schedules (schema 1.x): no planner, the mobile side's outputs named
    device_outputs. This runtime reads them, with the prefix planner."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir / "out", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    current = Bundle(copy)
    manifest["schema_version"] = [1, 1]
    del manifest["planner"]
    for cut in manifest["cuts"]:
        cut["device_outputs"] = cut.pop("mobile_outputs")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    old = Bundle(copy)
    assert old.manifest.planner == "prefix" and old.manifest.version == (1, 1)
    assert [c.mobile_outputs for c in old.cuts] == [c.mobile_outputs for c in current.cuts]
    assert old.cuts[-1].mobile_outputs  # the last cut: every model output is made on the mobile side


def test_a_script_without_a_main_guard_compiles_once(bundle_dir, tmp_path):
    """The build workers start from multiprocessing's forkserver, whose children would run the
    parent's main module again: a script calling compile at top level (no `if __name__ ==
    "__main__"`) would compile again in every worker. They are told of no main module."""
    import subprocess
    import sys

    script = tmp_path / "build_it.py"
    script.write_text(
        "from neurosurgeon.api import CompileOptions, compile\n"
        f"compile({str(bundle_dir / 'residual.onnx')!r}, {str(tmp_path / 'b')!r}, "
        f"CompileOptions('x86-host', 'x86-host', {SHAPES!r}, progress=False, jobs=2, partitioner='fused-layers'))\n"
        "print('compiled')\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("compiled") == 1 and (tmp_path / "b" / "manifest.json").is_file()
