"""Cost model fits on a small real profile: single-layer models built with TVM for x86-host and timed
here (the profiler proper is not needed), the JSON export against scikit-learn, bad profiles, the CLI."""

import json
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from neurosurgeon.cli import main
from neurosurgeon.cost_models.fit import (FALLBACK, FORM_CLASSES, ProfileError, feature_matrix, fit, fit_profile,
                                          load_profile)
from neurosurgeon.cost_models.model import MAX_SECONDS, MIN_SECONDS, CostModel, CostModelError, layer_features

CONVS = [(3, 32, 8, 3, 1), (3, 32, 16, 3, 1), (8, 16, 16, 3, 1), (16, 16, 32, 3, 1), (8, 32, 8, 5, 1),  # C, H, F, k, s
         (3, 64, 16, 3, 2), (16, 8, 64, 1, 1), (32, 16, 32, 3, 2), (4, 24, 12, 5, 2), (8, 8, 8, 3, 1)]
FCS = [(1, 64, 64), (1, 256, 128), (1, 512, 256), (1, 1024, 512), (1, 128, 1024), (1, 2048, 64), (4, 256, 256)]


def layer_specs():
    """(key, op, input shape, weight shapes, attributes) of each one-layer model to time."""
    specs = []
    for c, h, f, k, s in CONVS:
        specs.append((f"conv_c{c}_h{h}_f{f}_k{k}_s{s}", "Conv", [1, c, h, h], [[f, c, k, k]],
                      {"strides": [s, s], "pads": [k // 2] * 4}))
    for rows, k, n in FCS:
        specs.append((f"fc_{rows}x{k}_{n}", "Gemm", [rows, k], [[n, k], [n]], {"transB": 1}))
    pools = [("MaxPool", 8, 32, 2), ("MaxPool", 16, 16, 2), ("MaxPool", 32, 32, 2), ("AveragePool", 16, 32, 3)]
    for op, c, h, k in pools:
        specs.append((f"{op}_c{c}_h{h}_k{k}", op, [1, c, h, h], [], {"kernel_shape": [k, k], "strides": [k, k]}))
    specs.append(("gap_c64_h14", "GlobalAveragePool", [1, 64, 14, 14], [], {}))
    for op, n in [("Relu", 1_000), ("Relu", 10_000), ("Relu", 100_000), ("Sigmoid", 10_000), ("Tanh", 50_000)]:
        specs.append((f"{op}_{n}", op, [1, n], [], {}))
    for rows, n in [(1, 10), (1, 1000), (4, 1000)]:
        specs.append((f"softmax_{rows}x{n}", "Softmax", [rows, n], [], {"axis": -1}))
    specs.append(("lrn_c16_h16", "LRN", [1, 16, 16, 16], [], {"size": 5}))
    return specs


def one_layer_model(op, in_shape, weight_shapes, attrs) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.1, f"w{i}")
               for i, s in enumerate(weight_shapes)]
    node = helper.make_node(op, ["x"] + [w.name for w in weights], ["y"], name="layer", **attrs)
    graph = helper.make_graph([node], "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return onnx.shape_inference.infer_shapes(model)  # fills in the output's shape


def measure(path, inputs, repeats=15) -> list[float]:
    import tvm
    import tvm.runtime.vm

    device = tvm.cpu(0)
    function = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(path)), device)["main"]
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.standard_normal(t.shape).astype(t.dtype), device) for t in inputs]
    for _ in range(3):
        function(*args)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function(*args)
        samples.append(time.perf_counter() - started)
    return samples


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    """A real profile of ~30 single-layer models on this machine."""
    import tvm

    from neurosurgeon.compiler.build import build_graph
    from neurosurgeon.compiler.analysis import analyse
    from neurosurgeon.targets import get_preset

    preset = get_preset("x86-host")
    workdir = tmp_path_factory.mktemp("bench")
    samples = []
    for key, op, in_shape, weight_shapes, attrs in layer_specs():
        frozen, graph, _ = analyse(one_layer_model(op, in_shape, weight_shapes, attrs), name=key)
        (layer,) = graph.layers
        info = layer.to_json()
        path = workdir / f"{key}.so"
        build_graph(frozen.model, frozen.inputs, preset, path, key)
        times = measure(path, frozen.inputs)
        samples.append({"key": key, "type": layer.type, "config": info["config"], "flops": layer.flops,
                        "in_bytes": layer.input_bytes, "out_bytes": layer.output_bytes,
                        "features": layer_features(layer.type, info["config"], layer.flops, layer.input_bytes,
                                                   layer.output_bytes),
                        "seconds": float(np.median(times)), "samples": times})
    return {"format": "neurosurgeon-profile", "version": 1, "target": {"name": "x86-host"},
            "hardware": {"cpu": "test machine"}, "tvm_version": tvm.__version__, "kit_id": "test-kit",
            "complete": True, "samples": samples}


@pytest.fixture(scope="module")
def fitted(profile):
    return fit(profile)


@pytest.fixture(scope="module")
def profile_path(profile, tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "profile.json"
    path.write_text(json.dumps(profile))
    return path


def test_profile_covers_the_layer_types(profile):
    types = {s["type"] for s in profile["samples"]}
    assert {"conv", "fc", "pooling", "activation", "softmax", "normalization"} <= types


@pytest.mark.parametrize("form", ["linear", "log", "tree"])
def test_exported_json_predicts_like_scikit_learn(profile, form):
    result = fit(profile, forms=(form,))
    model = CostModel.from_json(json.loads(json.dumps(result.model)))  # what a bundle would carry
    rng = np.random.default_rng(1)
    checked = 0
    for layer_type, type_fit in result.types.items():
        group = [s for s in profile["samples"] if layer_type in (FALLBACK, s["type"])]
        x = feature_matrix(group, type_fit.features)
        # the training points and unseen ones between and beyond them
        x = np.vstack([x, x * 10 ** rng.uniform(-1, 1, x.shape)])
        expected = type_fit.form.predict(x)
        runtime_type = "no-such-type" if layer_type == FALLBACK else layer_type  # predicted by the fallback
        assert model.entry(runtime_type)["form"] == type_fit.form.name
        got = [model.predict(runtime_type, dict(zip(type_fit.features, row))) for row in x]
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        # and the wrapper is scikit-learn's own prediction, through the form's link function
        raw = type_fit.form.estimator.predict(type_fit.form.design(x))
        link = raw if type_fit.form.name == "linear" else np.exp(raw)
        np.testing.assert_allclose(expected, np.clip(link, MIN_SECONDS, MAX_SECONDS), rtol=1e-6)  # clamped both ways
        checked += type_fit.form.name == form
    assert checked >= 3  # the forced form was fitted for several types, not only the small-type rule


def test_fit_chooses_by_cross_validation(fitted):
    model = fitted.model
    assert model["format"] == "neurosurgeon-costmodel" and model["version"] == 1
    assert model["profile_kit_id"] == "test-kit" and model["target"]["name"] == "x86-host"
    conv = model["types"]["conv"]
    assert set(conv["candidates"]) == {"linear", "log", "tree"}
    assert conv["cv_mape"] == min(conv["candidates"].values())
    assert conv["n"] == len(CONVS)
    # few samples: the simple rule; one sample: the fallback predicts it
    assert model["types"]["softmax"]["form"] == "linear" and model["types"]["softmax"]["features"] == ["flops"]
    assert "normalization" not in model["types"]
    assert any("normalization" in note for note in model["notes"])
    json.dumps(model, allow_nan=False)  # strict JSON


def test_manifest_predictions_positive_and_finite(fitted, tmp_path):
    from neurosurgeon.compiler.pipeline import CompileOptions, compile_model
    from neurosurgeon.tools.zoo import build

    model = CostModel.from_json(fitted.model)
    onnx_path = tmp_path / "lenet.onnx"
    onnx.save(build("lenet", width=0.25), onnx_path)
    manifest = compile_model(onnx_path, tmp_path / "b", CompileOptions("x86-host", "x86-host",
                                                                                            progress=False)).manifest
    layers = model.predict_layers(manifest["layers"])
    assert layers.shape == (len(manifest["layers"]),) and np.all(np.isfinite(layers)) and np.all(layers > 0)
    segments = model.predict_segments(manifest)
    assert segments.shape == (len(manifest["segments"]),) and np.all(np.isfinite(segments)) and np.all(segments > 0)
    np.testing.assert_allclose(segments.sum(), layers.sum(), rtol=1e-9)
    # a layer type the profile never saw, and a degenerate one, still get a positive finite time
    for layer_type, features in [("resize", {"neurons": 1e4, "flops": 1e4, "in_bytes": 1e4, "out_bytes": 4e4}),
                                 ("reshape", {"neurons": 0, "flops": 0, "in_bytes": 0, "out_bytes": 0})]:
        seconds = model.predict(layer_type, features)
        assert np.isfinite(seconds) and seconds > 0


def test_predictions_are_clamped():
    doc = {"format": "neurosurgeon-costmodel", "version": 1, "types": {
        "fc": {"form": "linear", "features": ["flops"], "intercept": -1.0, "coef": [0.0]},
        "conv": {"form": "log", "features": ["flops"], "intercept": 1e6, "coef": [1.0]}},
        "fallback": {"form": "log", "features": ["flops"], "intercept": float("nan"), "coef": [1.0]}}
    model = CostModel.from_json(doc)
    for layer_type in ("fc", "conv", "other"):
        seconds = model.predict(layer_type, {"flops": 10.0})
        assert np.isfinite(seconds) and seconds > 0


def _mutated(profile, change):
    doc = json.loads(json.dumps(profile))
    change(doc)
    return doc


@pytest.mark.parametrize("content, message", [
    ("{not json", "not JSON"),
    ('{"format": "something-else", "version": 1}', "not a neurosurgeon profile"),
    ('{"format": "neurosurgeon-profile", "version": 2, "samples": []}', "version 2"),
    ('{"format": "neurosurgeon-profile", "version": 1, "samples": []}', "no samples"),
])
def test_bad_profile_files_are_rejected(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ProfileError, match=message) as err:
        load_profile(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["samples"][2].pop("seconds"), "sample 2 .* lacks seconds"),
    (lambda d: d["samples"][0].update(seconds=-1e-3), "positive finite"),
    (lambda d: d["samples"][0].update(seconds=0), "positive finite"),
    (lambda d: d["samples"][1].update(seconds="fast"), "positive finite"),
    (lambda d: d["samples"][0]["features"].pop("flops"), "features lack flops"),
])
def test_bad_samples_are_rejected(profile, tmp_path, change, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(_mutated(profile, change)))
    with pytest.raises(ProfileError, match=message):
        load_profile(path)


def test_non_finite_seconds_and_missing_files(profile, tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(_mutated(profile, lambda d: d["samples"][0].update(seconds=float("nan")))))
    with pytest.raises(ProfileError, match="positive finite"):
        load_profile(path)
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "missing.json")


def test_unknown_type_and_incomplete_profile_are_noted(profile):
    def change(doc):
        doc["complete"] = False
        for sample in doc["samples"][:4]:
            sample["type"] = "warp"
            sample["features"]["neurons"] = sample["features"]["out_bytes"] / 4  # as layer_features would give it
    model = fit_profile(_mutated(profile, change), forms=("log",))
    assert "warp" in model["types"]
    assert any("incomplete" in note for note in model["notes"])
    assert any("warp" in note for note in model["notes"])


def test_cost_model_files_are_checked(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"format": "neurosurgeon-costmodel", "version": 7}')
    with pytest.raises(CostModelError, match="version 7"):
        CostModel.load(path)
    path.write_text('{"format": "neurosurgeon-costmodel", "version": 1, "types": {}, "fallback": {"form": "spline"}}')
    with pytest.raises(CostModelError, match="fallback"):
        CostModel.load(path)
    path.write_text('{"format": "neurosurgeon-costmodel", "version": 1, "types": {"fc": {"form": "log", '
                    '"features": ["flops"], "coef": [1]}}, "fallback": {"form": "linear", "features": ["flops"], '
                    '"intercept": 0, "coef": [1e-9]}}')
    with pytest.raises(CostModelError, match="'fc' log regression lacks intercept"):
        CostModel.load(path)
    with pytest.raises(CostModelError, match="cannot read"):
        CostModel.load(tmp_path / "missing.json")


def test_cli_writes_model_and_report(profile_path, tmp_path, capsys):
    out, report = tmp_path / "cm.json", tmp_path / "fit.png"
    assert main(["fit", str(profile_path), "-o", str(out), "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "conv" in printed and "fallback" in printed and "MAPE" in printed
    model = CostModel.load(out)
    assert "conv" in model.types
    assert report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_forms_are_the_runtime_forms():
    from neurosurgeon.cost_models.model import FORMS

    assert tuple(FORM_CLASSES) == FORMS
