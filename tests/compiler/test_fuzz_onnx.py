"""Property-based fuzzing of `neurosurgeon compile` with mutated ONNX files: broken bytes, wrong
operators, dangling names, bad attributes, weights and shapes, odd opsets.

The promise under test: a model the compiler cannot take is a one-line error and exit 2, with nothing
left behind (no bundle, no staging folder); a model it takes compiles to a bundle that reproduces
onnxruntime on every cut.
"""

from __future__ import annotations

import os

import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from models import residual_with_shape_arithmetic

from neurosurgeon.cli import main

pytestmark = pytest.mark.slow  # each example that survives compiles a bundle

OPS = ["Relu", "Sigmoid", "Conv", "MatMul", "Add", "Identity", "Flatten", "Softmax", "FancyOp", "LSTM", "If", ""]


def _flip(raw: bytes, data) -> bytes:
    at = data.draw(st.integers(0, len(raw) - 1))
    return raw[:at] + bytes([raw[at] ^ (1 << data.draw(st.integers(0, 7)))]) + raw[at + 1:]


def _node(model, data):
    return model.graph.node[data.draw(st.integers(0, len(model.graph.node) - 1))]


def _op_type(model, data):
    _node(model, data).op_type = data.draw(st.sampled_from(OPS))


def _dangling_input(model, data):
    node = _node(model, data)
    if node.input:
        node.input[data.draw(st.integers(0, len(node.input) - 1))] = data.draw(st.sampled_from(["nowhere", "", "prob",
                                                                                                "x", "W1"]))


def _attribute(model, data):
    node = _node(model, data)
    if node.attribute:
        attribute = node.attribute[data.draw(st.integers(0, len(node.attribute) - 1))]
        if attribute.ints:
            attribute.ints[data.draw(st.integers(0, len(attribute.ints) - 1))] = data.draw(st.integers(-3, 40))
        else:
            attribute.i = data.draw(st.integers(-5, 5))


def _weights(model, data):
    weights = model.graph.initializer[data.draw(st.integers(0, len(model.graph.initializer) - 1))]
    kind = data.draw(st.sampled_from(["dims", "dtype", "truncate"]))
    if kind == "dims" and weights.dims:
        weights.dims[data.draw(st.integers(0, len(weights.dims) - 1))] = data.draw(st.integers(0, 9))
    elif kind == "dtype":
        weights.data_type = data.draw(st.integers(0, 17))
    elif weights.raw_data:
        weights.raw_data = weights.raw_data[:data.draw(st.integers(0, len(weights.raw_data) - 1))]


def _graph_input(model, data):
    tensor = model.graph.input[0].type.tensor_type
    if data.draw(st.booleans()):
        tensor.elem_type = data.draw(st.integers(0, 17))
    else:
        dim = tensor.shape.dim[data.draw(st.integers(0, len(tensor.shape.dim) - 1))]
        dim.dim_value = data.draw(st.sampled_from([0, 1, 2, 7, 9, 1 << 20]))


def _remove_node(model, data):
    del model.graph.node[data.draw(st.integers(0, len(model.graph.node) - 1))]


def _duplicate_node(model, data):
    model.graph.node.append(_node(model, data))


def _opset(model, data):
    model.opset_import[0].version = data.draw(st.integers(1, 30))


def _output_name(model, data):
    model.graph.output[0].name = data.draw(st.sampled_from(["nowhere", "r1", "flat", ""]))


STRUCTURAL = {f.__name__[1:]: f for f in (_op_type, _dangling_input, _attribute, _weights, _graph_input, _remove_node,
                                          _duplicate_node, _opset, _output_name)}


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "30")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_a_mutated_model_compiles_correctly_or_is_one_line_and_exit_2_leaving_nothing(tmp_path_factory, capsys, data):
    root = tmp_path_factory.mktemp("fuzz")
    model = residual_with_shape_arithmetic(batch=1)
    kinds = data.draw(st.lists(st.sampled_from(["bytes", *STRUCTURAL]), min_size=1, max_size=2))
    raw = model.SerializeToString()
    for kind in kinds:
        if kind == "bytes":
            if not raw:
                continue
            raw = _flip(raw, data) if data.draw(st.booleans()) else raw[:data.draw(st.integers(0, len(raw) - 1))]
        else:
            try:
                model = onnx.load_from_string(raw)
            except Exception:  # noqa: BLE001 (earlier bytes broke the protobuf: mutate a fresh model instead)
                model = residual_with_shape_arithmetic(batch=1)
            if model.graph.node and model.graph.initializer and model.graph.input and model.graph.output:
                STRUCTURAL[kind](model, data)
            raw = model.SerializeToString()
    path = root / "mutant.onnx"
    path.write_bytes(raw)
    out = root / "mutant.bundle"
    capsys.readouterr()
    code = main(["compile", str(path), "--mobile", "x86-host", "--server", "x86-host", "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    event(f"exit {code}" + (f": {err.replace(str(root), '')[21:70]}" if code else ""))
    if code == 0:
        assert main(["verify", str(out), str(path)]) == 0, capsys.readouterr()
        return
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("neurosurgeon: error: "), err
    assert sorted(p.name for p in root.iterdir()) == ["mutant.onnx"], "the failed compile left files behind"
