"""The profiler (Neurosurgeon's deployment phase): microbenchmark grid, profile kit, runtime timing
with resume and budget, tamper refusal, and the grid's coverage of the zoo networks."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from neurosurgeon.tools import zoo
from neurosurgeon.compiler.analysis import analyse
from neurosurgeon.cli import main
from neurosurgeon.cost_models import microbench
from neurosurgeon.cost_models.fit import validate_profile
from neurosurgeon.cost_models.microbench import build_kit, grid
from neurosurgeon.runtime import profile as runtime_profile
from neurosurgeon.runtime.bundle import elf_machine, sha256_file
from neurosurgeon.cost_models.model import layer_features
from neurosurgeon.runtime.profile import ProfileError, profile_kit, read_kit

PAPER_TYPES = {"conv", "fc", "pooling", "activation", "normalization", "softmax", "elementwise", "concat"}


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return build_kit("x86-host", tmp_path_factory.mktemp("kit") / "x86-small", scale="small", progress=False)


@pytest.fixture(scope="module")
def measured(kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "x86.profile.json"
    return out, profile_kit(kit, out, repeats=3, warmup=1, progress=False, min_sample_s=1e-3)


def features_of(layer) -> dict:
    return layer_features(layer.type, layer.config, layer.flops, layer.input_bytes, layer.output_bytes)


def structure_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its weights replaced by external-data references to an empty file in the
    working directory: the pipeline then sees the same graph, shapes and dtypes (all that a layer's
    config, FLOPs and bytes depend on) without serialising hundreds of MB of weights. Small
    constants stay: shape inference reads some (Resize scales, Reshape targets)."""
    for init in model.graph.initializer:
        if len(init.raw_data) <= 4096:
            continue
        init.ClearField("raw_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        entry = init.external_data.add()
        entry.key, entry.value = "location", "weights.stub"
    return model


# -- the grid --------------------------------------------------------------------------------------

def test_grids_are_deterministic_unique_and_cover_every_paper_type():
    for scale in ("small", "default"):
        benches = grid(scale)
        assert [b.spec for b in benches] == [b.spec for b in grid(scale)]
        assert len({b.key for b in benches}) == len(benches)
        assert PAPER_TYPES <= {b.type for b in benches}
        # types take turns, so a profile cut short by its budget still has every type
        first = {b.type for b in benches[:len({b.type for b in benches})]}
        assert first == {b.type for b in benches}
    bench = grid("small")[0]
    assert bench.model().SerializeToString() == bench.model().SerializeToString()
    with pytest.raises(microbench.KitError, match="unknown grid scale"):
        grid("huge")


def test_default_grid_ranges():
    by_type: dict[str, list] = {}
    for bench in grid("default"):
        by_type.setdefault(bench.op, []).append(bench)
    kernels = {b.attrs["kernel_shape"][0] for b in by_type["Conv"]}
    strides = {b.attrs["strides"][0] for b in by_type["Conv"]}
    assert {1, 3, 5, 7, 11} <= kernels and {1, 2, 4} <= strides
    assert any(b.attrs["group"] == b.inputs["input"][1] > 1 for b in by_type["Conv"])  # depthwise
    assert any(1 < b.attrs["group"] < b.inputs["input"][1] for b in by_type["Conv"])  # grouped
    fc_sizes = {(b.inputs["input"][1], b.consts[0].shape[0]) for b in by_type["Gemm"]}
    assert (9216, 4096) in fc_sizes and min(min(s) for s in fc_sizes) <= 10
    assert {"Relu", "Sigmoid", "Tanh", "Clip", "BatchNormalization", "LRN", "MaxPool", "AveragePool",
            "GlobalAveragePool", "Softmax", "Add", "Concat"} <= set(by_type)


def test_microbench_is_described_exactly_as_the_same_layer_in_a_real_model():
    """Config and features of a microbenchmark equal those of the same layer inside a zoo model."""
    benches = {b.key: b for b in grid("default")}
    cases = {
        "lenet": {"conv2": "conv_i20x12x12_o50_k5_s1_p0", "pool1": "maxpool_i20x24x24_k2_s2_p0",
                  "ip1": "fc_i1x800_o500", "relu1": "relu_i500", "softmax": "softmax_i1x10"},
        # resnet18's avgpool carries the following Flatten (a shape-only op joins its producer's
        # layer); the features do not change, since Flatten moves no data.
        "resnet18": {"layer1.0.conv1": "conv_i64x56x56_o64_k3_s1_p1", "bn1": "batchnorm_i64x112x112",
                     "layer1.0.add": "add_i64x56x56", "avgpool": "globalaveragepool_i512x7x7"},
    }
    for model, pairs in cases.items():
        _, graph, _ = analyse(zoo.build(model))
        layers = {layer.name: layer for layer in graph.layers}
        for name, key in pairs.items():
            bench, layer = benches[key], layers[name]
            assert bench.record["config"] == layer.config, (model, name)
            assert bench.features == features_of(layer), (model, name)
    assert layers["avgpool"].ops == ["GlobalAveragePool", "Flatten"]
    assert benches["globalaveragepool_i512x7x7"].record["ops"] == ["GlobalAveragePool"]


def test_default_grid_covers_every_zoo_layer(tmp_path, monkeypatch):
    """Every layer of the 10 zoo networks at default size has a grid sample of its type whose FLOPs
    and paper variables are all within 4x of its own."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.stub").touch()
    # the structure-only shortcut describes layers exactly as the full model does
    small = grid("small")[0]
    assert analyse(structure_only(small.model()))[1].layers[0].config == small.record["config"]

    layers = []
    for name in zoo.MODELS:
        _, graph, _ = analyse(structure_only(zoo.build(name)))
        layers += [(f"{name}/{layer.name}", layer.type, features_of(layer)) for layer in graph.layers]
    samples = []
    for bench in grid("default"):
        (layer,) = analyse(structure_only(bench.model()), name=bench.key)[1].layers
        samples.append((layer.type, features_of(layer)))
    assert len(layers) > 200
    gaps = microbench.uncovered(layers, samples, factor=4.0)
    assert not gaps, "zoo layers outside the grid:\n" + "\n".join(map(str, gaps))


# -- the kit ----------------------------------------------------------------------------------------

def test_kit_holds_artifacts_records_runtime_and_script(kit):
    doc = read_kit(kit)
    assert doc["format"] == "neurosurgeon-profile-kit" and doc["version"] == 1
    assert doc["target"]["name"] == "x86-host" and doc["tvm_version"] and doc["scale"] == "small"
    assert [e["key"] for e in doc["entries"]] == [b.key for b in grid("small")]
    for entry, bench in zip(doc["entries"], grid("small")):
        assert sha256_file(kit / entry["file"]) == entry["sha256"]
        assert entry["features"] == layer_features(entry["type"], entry["config"], entry["flops"],
                                                   entry["in_bytes"], entry["out_bytes"]) == bench.features
        assert entry["inputs"] == bench.record["inputs"]
        assert {"key", "type", "config", "flops", "in_bytes", "out_bytes", "file", "sha256", "inputs"} <= set(entry)
    assert (kit / "neurosurgeon_runtime" / "profile.py").is_file() and os.access(kit / "profile.py", os.X_OK)
    assert not list(kit.parent.glob(".*partial*"))  # built in a temporary folder, renamed into place


def test_kit_is_reused_when_nothing_changed(kit):
    before = {p: p.stat().st_mtime_ns for p in (kit / "artifacts").iterdir()}
    assert build_kit("x86-host", kit, scale="small", progress=False) == kit
    assert {p: p.stat().st_mtime_ns for p in (kit / "artifacts").iterdir()} == before


def test_kit_refuses_to_replace_a_folder_that_is_not_a_kit(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(microbench.KitError, match="not a profile kit"):
        build_kit("x86-host", tmp_path, scale="small", progress=False)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


# -- timing -------------------------------------------------------------------------------------------

def test_profile_measures_every_entry_in_the_contract_format(kit, measured):
    out, profile = measured
    assert json.loads(out.read_text()) == profile
    assert profile["format"] == "neurosurgeon-profile" and profile["version"] == 1 and profile["complete"]
    assert profile["kit_id"] == read_kit(kit)["kit_id"] and profile["target"]["name"] == "x86-host"
    assert {"machine", "cpu", "cores"} <= set(profile["hardware"]) and profile["tvm_version"]
    entries = {e["key"]: e for e in read_kit(kit)["entries"]}
    assert [s["key"] for s in profile["samples"]] == list(entries)
    for sample in profile["samples"]:
        assert len(sample["samples"]) == 3 and all(t > 0 for t in sample["samples"])
        assert sample["seconds"] == float(np.median(sample["samples"]))
        for field in ("type", "config", "flops", "in_bytes", "out_bytes", "features"):
            assert sample[field] == entries[sample["key"]][field]
    validate_profile(profile)  # what the fitter accepts


def test_interrupted_profile_resumes_with_only_the_rest(kit, tmp_path, monkeypatch):
    out = tmp_path / "p.json"
    loaded = []
    real_load = runtime_profile._load

    def load_then_interrupt(kit_dir, entry, device):
        if len(loaded) == 4:
            raise KeyboardInterrupt
        loaded.append(entry["key"])
        return real_load(kit_dir, entry, device)

    monkeypatch.setattr(runtime_profile, "_load", load_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        profile_kit(kit, out, repeats=2, warmup=1, progress=False)
    partial = json.loads(out.read_text())  # a valid file with what was measured
    assert [s["key"] for s in partial["samples"]] == loaded and not partial["complete"]

    resumed = []
    monkeypatch.setattr(runtime_profile, "_load", lambda kit_dir, entry, device:
                        resumed.append(entry["key"]) or real_load(kit_dir, entry, device))
    profile = profile_kit(kit, out, repeats=2, warmup=1, progress=False)
    keys = [e["key"] for e in read_kit(kit)["entries"]]
    assert resumed == keys[4:] and [s["key"] for s in profile["samples"]] == keys and profile["complete"]
    assert profile["samples"][:4] == partial["samples"]


def test_budget_stops_cleanly_then_resumes(kit, tmp_path, monkeypatch, capsys):
    import time

    real_load = runtime_profile._load

    def slow_load(*args):
        time.sleep(0.2)  # every layer takes at least 0.2 s
        return real_load(*args)

    monkeypatch.setattr(runtime_profile, "_load", slow_load)
    out = tmp_path / "p.json"
    first = profile_kit(kit, out, budget_s=0.5, repeats=2, warmup=1, progress=True)
    total = len(read_kit(kit)["entries"])
    assert 1 <= len(first["samples"]) < total and not first["complete"]
    assert json.loads(out.read_text())["samples"] == first["samples"]
    assert "budget of 0.5 s used up" in capsys.readouterr().err
    monkeypatch.setattr(runtime_profile, "_load", real_load)
    second = profile_kit(kit, out, repeats=2, warmup=1, progress=False)
    assert second["complete"] and len(second["samples"]) == total
    assert second["samples"][:len(first["samples"])] == first["samples"]


def test_tampered_artifact_is_refused(kit, tmp_path):
    copy = shutil.copytree(kit, tmp_path / "kit")
    entry = read_kit(copy)["entries"][0]
    data = bytearray((copy / entry["file"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / entry["file"]).write_bytes(bytes(data))
    with pytest.raises(ProfileError, match="refusing to load a modified artifact"):
        profile_kit(copy, tmp_path / "p.json", progress=False)


def test_profile_of_another_kit_or_file_is_not_overwritten(kit, measured, tmp_path):
    out, profile = measured
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**profile, "kit_id": "0123456789abcdef"}))
    with pytest.raises(ProfileError, match="measured with kit 0123456789abcdef"):
        profile_kit(kit, other, progress=False)
    unrelated = tmp_path / "notes.json"
    unrelated.write_text('{"hello": 1}')
    with pytest.raises(ProfileError, match="refusing to overwrite"):
        profile_kit(kit, unrelated, progress=False)
    assert json.loads(unrelated.read_text()) == {"hello": 1}


def test_kit_script_runs_with_tvm_runtime_only(kit, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(kit / "profile.py"), "-o", str(tmp_path / "dev.json"), "--quiet",
                             "--repeats", "1", "--warmup", "1"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["complete"]
    assert json.loads((tmp_path / "dev.json").read_text())["complete"]


# -- the CLI verb -------------------------------------------------------------------------------------

def test_cli_profiles_here(kit, tmp_path, capsys):
    out = tmp_path / "x86.profile.json"
    assert main(["profile", "--target", "x86-host", "-o", str(out), "--kit", str(kit), "--scale", "small", "--quiet",
                 "--repeats", "2"]) == 0
    assert json.loads(out.read_text())["complete"]
    printed = capsys.readouterr().out
    assert f"kit {kit}" in printed and "13 of 13 layers measured, complete" in printed


def test_cli_builds_a_board_kit_and_says_how_to_run_it(tmp_path, capsys):
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("no aarch64 cross compiler")
    kit_dir = tmp_path / "arm-kit"
    assert main(["profile", "--target", "aarch64-neon", "--kit", str(kit_dir), "--scale", "small", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "does not run on this machine" in printed and "profile.py -o" in printed
    entries = read_kit(kit_dir)["entries"]
    assert {elf_machine(kit_dir / e["file"]) for e in entries} == {"aarch64"}
    with pytest.raises(ProfileError, match="built for aarch64-neon"):
        profile_kit(kit_dir, tmp_path / "p.json", progress=False)
