"""Stage 1: loading, freezing and folding, and the one-line errors for bad input."""

import onnx
import pytest

from models import residual_with_shape_arithmetic, with_unsupported_ops
from neurosurgeon.cli import main
from neurosurgeon.compiler.frontend import ModelError, load_model, parse_input_shapes


def test_freeze_folds_shape_arithmetic_so_reshape_is_static(residual_model):
    frozen = load_model(residual_model, {"x": (2, 3, 8, 8)})
    ops = [n.op_type for n in frozen.graph.node]
    assert "Shape" not in ops and "Gather" not in ops and "Concat" not in ops
    reshape = next(n for n in frozen.graph.node if n.op_type == "Reshape")
    target = next(i for i in frozen.graph.initializer if i.name == reshape.input[1])
    assert list(onnx.numpy_helper.to_array(target)) == [2, -1]
    assert frozen.inputs[0].shape == (2, 3, 8, 8)
    assert frozen.outputs[0].shape == (2, 10)
    assert frozen.tensors["flat"].shape == (2, 256)


def test_static_model_needs_no_input_shape(tmp_path):
    path = tmp_path / "static.onnx"
    onnx.save(residual_with_shape_arithmetic(batch=1), path)
    assert load_model(path).inputs[0].shape == (1, 3, 8, 8)


@pytest.mark.parametrize("specs, message", [
    (None, "input 'x' has dynamic dims (Nx3x8x8); freeze them with --input-shape x=N,3,8,8"),
    (["x=1,3,8"], "input 'x' has rank 4 (Nx3x8x8), --input-shape gave 3 dims (1x3x8)"),
    (["image=1,3,8,8"], "--input-shape names 'image', but the model's inputs are: x"),
    (["x=1,4,8,8"], "input 'x' dim 1 is fixed at 3 in the model, --input-shape gave 4"),
])
def test_bad_input_shapes_name_the_problem(residual_model, specs, message):
    with pytest.raises(ModelError) as err:
        load_model(residual_model, parse_input_shapes(specs))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("spec", ["x", "x=1,a,3", "x=0,3,8,8", "=1,2"])
def test_malformed_input_shape_spec(spec):
    with pytest.raises(ModelError, match="--input-shape"):
        parse_input_shapes([spec])


def test_unsupported_operators_are_listed_together_with_node_names(tmp_path):
    path = tmp_path / "unsupported.onnx"
    onnx.save(with_unsupported_ops(), path)
    with pytest.raises(ModelError) as err:
        load_model(path)
    text = str(err.value)
    assert "control flow is not supported" in text and "If (node 'choose')" in text
    assert "LSTM (node 'lstm1')" in text and "com.example.FancyActivation (node 'fancy1')" in text


def test_cli_errors_are_one_line_exit_2_and_write_nothing(tmp_path, capsys):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 definitely not protobuf" * 10)
    unsupported = tmp_path / "unsupported.onnx"
    onnx.save(with_unsupported_ops(), unsupported)
    dynamic = tmp_path / "dynamic.onnx"
    onnx.save(residual_with_shape_arithmetic(), dynamic)
    cases = [
        ([str(tmp_path / "missing.onnx")], "no such file"),
        ([str(garbage)], "not an ONNX model"),
        ([str(unsupported)], "LSTM (node 'lstm1')"),
        ([str(dynamic), "--input-shape", "y=1,3,8,8"], "--input-shape names 'y'"),
        ([str(dynamic), "--input-shape", "x=1,3"], "has rank 4"),
        ([str(dynamic), "--input-shape", "x=1,3,8,8", "--mobile", "pixel"], "unknown target preset 'pixel'"),
    ]
    for extra, message in cases:
        out = tmp_path / "bundle"
        args = ["compile", extra[0], "-o", str(out), "--mobile", "x86-host", "--server", "x86-host", *extra[1:]]
        assert main(args) == 2, extra
        captured = capsys.readouterr()
        assert message in captured.err, (extra, captured.err)
        assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
        assert not out.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["dynamic.onnx", "garbage.onnx", "unsupported.onnx"]
