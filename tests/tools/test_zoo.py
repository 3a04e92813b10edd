"""Tests for neurosurgeon.compiler.zoo: the paper's benchmark networks as ONNX models."""

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from neurosurgeon.compiler.frontend import ONNX_IR_VERSION
from neurosurgeon.tools import zoo

IMAGE_MODELS = ["alexnet", "vgg16", "deepface", "lenet", "resnet18", "inception"]
VECTOR_MODELS = ["asr", "pos", "ner", "chk"]
ALL_MODELS = ["alexnet", "vgg16", "deepface", "lenet", "asr", "pos", "ner", "chk", "resnet18",
              "mobilenetv2", "inception"]
CLASSES = {"alexnet": 1000, "vgg16": 1000, "deepface": 4030, "lenet": 10, "asr": 1706,
           "pos": 45, "ner": 17, "chk": 23, "resnet18": 1000, "mobilenetv2": 1000,
           "inception": 1000}
SENNA = {"pos", "ner", "chk"}  # raw tag scores, no softmax
DEFAULT_INPUT = {"alexnet": [1, 3, 224, 224], "vgg16": [1, 3, 224, 224],
                 "deepface": [1, 3, 152, 152], "lenet": [1, 1, 28, 28], "asr": [1, 440],
                 "pos": [1, 250], "ner": [1, 250], "chk": [1, 250],
                 "resnet18": [1, 3, 224, 224], "mobilenetv2": [1, 3, 224, 224], "inception": [1, 3, 224, 224]}
MIN_INPUT_SIZE = {"alexnet": 63, "vgg16": 32, "deepface": 72, "lenet": 16, "resnet18": 1,
                  "mobilenetv2": 1, "inception": 1}
# Weights plus BN statistics and Clip bounds; resnet18 and vgg16 equal torchvision's counts
# (plus BN running statistics for resnet18).
PARAMS = {"alexnet": 62_378_344, "vgg16": 138_357_544, "deepface": 45_509_246,
          "lenet": 431_080, "asr": 25_380_522, "pos": 88_847, "ner": 80_419, "chk": 82_225,
          "resnet18": 11_699_112, "inception": 1_823_024,
          # torchvision's 3,504,872 plus BN running mean and variance (17,056 channels, x2) and the
          # 70 scalar bounds of the 35 ReLU6 Clips
          "mobilenetv2": 3_504_872 + 2 * 17_056 + 70}
# Feature map shapes at the paper's input sizes (AlexNet: Caffe's 227-input shapes).
KNOWN_SHAPES = {
    "alexnet": {"conv1": [1, 96, 55, 55], "pool1": [1, 96, 27, 27], "pool5": [1, 256, 6, 6]},
    "vgg16": {"pool5": [1, 512, 7, 7]},
    "deepface": {"c1": [1, 32, 142, 142], "m2": [1, 32, 71, 71], "c3": [1, 16, 63, 63],
                 "l4": [1, 16, 55, 55], "l5": [1, 16, 25, 25], "l6": [1, 16, 21, 21]},
    "lenet": {"pool2": [1, 50, 4, 4]},
    "resnet18": {"maxpool": [1, 64, 56, 56], "layer4.1.relu2": [1, 512, 7, 7]},
    "inception": {"inception3a.concat": [1, 256, 28, 28], "inception3b.concat": [1, 480, 28, 28],
                  "inception4a.concat": [1, 512, 14, 14]},
}
# Small variants (width 1/8, input a little above the minimum) keep the suite fast.
SMALL_SIZE = {"alexnet": 67, "vgg16": 32, "deepface": 76, "lenet": 28, "resnet18": 32,
              "inception": 32}
SMALL_WIDTH = 0.125


def small(name: str, **kwargs) -> onnx.ModelProto:
    return zoo.build(name, SMALL_SIZE.get(name), width=SMALL_WIDTH, **kwargs)


def dims(value_info: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def run(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal(dims(model.graph.input[0]), dtype=np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": x})))


def check_outputs(name: str, outputs: dict[str, np.ndarray]) -> None:
    for value in outputs.values():
        assert value.shape == (1, CLASSES[name])
        assert np.isfinite(value).all()
        assert np.ptp(value) > 0, "all outputs equal"
        if name not in SENNA:
            assert value.sum() == pytest.approx(1.0, abs=1e-4)


def test_models_are_listed_in_paper_order():
    assert list(zoo.MODELS) == ALL_MODELS
    assert all(isinstance(d, str) and d for d in zoo.MODELS.values())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_small_variant_is_valid_and_runs(name):
    model = small(name)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == ONNX_IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert [i.name for i in model.graph.input] == ["input"]
    first, second = run(model, seed=0), run(model, seed=1)
    check_outputs(name, first)
    assert not np.array_equal(first["output"], second["output"]), "output ignores the input"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_default_size_model_is_valid(name):
    model = zoo.build(name)
    # full_check also cross-checks the declared intermediate shapes with shape inference.
    onnx.checker.check_model(model, full_check=True)
    assert dims(model.graph.input[0]) == DEFAULT_INPUT[name]
    assert sum(math.prod(t.dims) for t in model.graph.initializer) == PARAMS[name]
    declared = {v.name: dims(v) for v in model.graph.value_info}
    for tensor, shape in KNOWN_SHAPES.get(name, {}).items():
        assert declared[tensor] == shape, tensor
    if name != "vgg16":  # onnxruntime needs ~5 s to load its 138M weights: see the slow test
        check_outputs(name, run(model))


@pytest.mark.slow
def test_default_vgg16_runs():
    check_outputs("vgg16", run(zoo.build("vgg16")))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_graph_is_topological_with_unique_names(name):
    graph = small(name).graph
    names = [n.name for n in graph.node]
    assert all(names) and len(set(names)) == len(names)
    available = {"input"} | {t.name for t in graph.initializer}
    consumed = set()
    for node in graph.node:
        assert set(node.input) <= available, node.name
        consumed.update(node.input)
        available.update(node.output)
    graph_outputs = {o.name for o in graph.output}
    assert graph_outputs <= available
    # No dead ends and no unused weights.
    assert {o for n in graph.node for o in n.output} <= consumed | graph_outputs
    assert {t.name for t in graph.initializer} <= consumed


@pytest.mark.parametrize("name", ALL_MODELS)
def test_build_is_deterministic(name):
    data = small(name).SerializeToString()
    assert small(name).SerializeToString() == data
    assert small(name, seed=1).SerializeToString() != data


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError) as err:
        zoo.build("googlenet")
    assert isinstance(err.value, ValueError)
    assert all(name in str(err.value) for name in ALL_MODELS)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_minimum_input_size(name):
    minimum = zoo.min_input_size(name)
    assert minimum == MIN_INPUT_SIZE[name]
    with pytest.raises(ValueError, match=f"minimum input_size for '{name}' is {minimum}"):
        zoo.build(name, minimum - 1, width=SMALL_WIDTH)
    model = zoo.build(name, minimum, width=SMALL_WIDTH)
    onnx.checker.check_model(model, full_check=True)
    check_outputs(name, run(model))


@pytest.mark.parametrize("name", VECTOR_MODELS)
def test_input_size_is_rejected_for_vector_models(name):
    assert zoo.min_input_size(name) is None
    with pytest.raises(ValueError, match=name):
        zoo.build(name, input_size=32)


@pytest.mark.parametrize("kwargs", [{"width": 0}, {"width": -1.0}, {"width": float("nan")},
                                    {"input_size": 64.0}, {"input_size": -5}])
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        zoo.build("alexnet", **kwargs)


def test_width_scales_hidden_layers_only():
    weights = {t.name: list(t.dims) for t in zoo.build("alexnet", 67, width=0.5).graph.initializer}
    assert weights["conv1.weight"] == [48, 3, 11, 11]
    assert weights["fc8.weight"] == [1000, 2048]
    weights = {t.name: list(t.dims) for t in zoo.build("lenet", width=1e-6).graph.initializer}
    assert weights["conv1.weight"] == [1, 1, 5, 5]
    assert weights["ip2.weight"] == [10, 1]


def test_paper_layer_lists():
    ops = [(n.name, n.op_type) for n in small("alexnet").graph.node]
    assert ops == [
        ("conv1", "Conv"), ("relu1", "Relu"), ("lrn1", "LRN"), ("pool1", "MaxPool"),
        ("conv2", "Conv"), ("relu2", "Relu"), ("lrn2", "LRN"), ("pool2", "MaxPool"),
        ("conv3", "Conv"), ("relu3", "Relu"), ("conv4", "Conv"), ("relu4", "Relu"),
        ("conv5", "Conv"), ("relu5", "Relu"), ("pool5", "MaxPool"), ("flatten", "Flatten"),
        ("fc6", "Gemm"), ("relu6", "Relu"), ("drop6", "Dropout"),
        ("fc7", "Gemm"), ("relu7", "Relu"), ("drop7", "Dropout"),
        ("fc8", "Gemm"), ("softmax", "Softmax")]
    assert [n.op_type for n in small("pos").graph.node] == ["Gemm", "Clip", "Gemm"]
    assert [n.name for n in small("lenet").graph.node] == [
        "conv1", "pool1", "conv2", "pool2", "flatten", "ip1", "relu1", "ip2", "softmax"]
    asr_ops = [n.op_type for n in small("asr").graph.node]
    assert asr_ops == ["Gemm", "Sigmoid"] * 6 + ["Gemm", "Softmax"]
    vgg_ops = [n.op_type for n in small("vgg16").graph.node]
    assert (vgg_ops.count("Conv"), vgg_ops.count("MaxPool"), vgg_ops.count("Gemm")) == (13, 5, 3)


def test_inception_has_two_outputs_and_multi_tensor_cuts():
    model = small("inception")
    assert [o.name for o in model.graph.output] == ["output", "aux"]
    outputs = run(model)
    assert list(outputs) == ["output", "aux"]
    check_outputs("inception", outputs)
    concats = [n for n in model.graph.node if n.op_type == "Concat"]
    assert len(concats) == 3 and all(len(n.input) == 4 for n in concats)


def test_resnet18_has_residual_adds_and_batchnorm():
    ops = [n.op_type for n in small("resnet18").graph.node]
    assert ops.count("Add") == 8
    assert ops.count("BatchNormalization") == 20  # stem + 2 per block + 3 downsamples
    names = [n.name for n in small("resnet18").graph.node]
    assert [n for n in names if n.endswith("downsample.conv")] == [
        "layer2.0.downsample.conv", "layer3.0.downsample.conv", "layer4.0.downsample.conv"]


def test_save_writes_one_self_contained_file(tmp_path):
    model = small("resnet18")
    path = tmp_path / "resnet18.onnx"
    zoo.save(model, path)
    assert [p.name for p in tmp_path.iterdir()] == ["resnet18.onnx"]
    assert onnx.load(str(path)).SerializeToString() == model.SerializeToString()
