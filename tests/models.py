"""Small hand-made ONNX models for tests (the zoo has the real networks)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _weights(rng, name, shape, scale=0.3):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _ints(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def residual_with_shape_arithmetic(batch: str | int = "N") -> onnx.ModelProto:
    """conv -> relu -> conv -> add(residual) -> reshape(via Shape/Gather/Concat) -> fc -> softmax.

    With a dynamic batch, the Reshape target is computed from Shape at run time: the frontend must
    freeze and fold it for TVM to import the model.
    """
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
        helper.make_node("Shape", ["a"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0, name="gather"),
        helper.make_node("Unsqueeze", ["b", "axis0"], ["bu"], name="unsqueeze"),
        helper.make_node("Concat", ["bu", "minus1"], ["newshape"], axis=0, name="concat_shape"),
        helper.make_node("Reshape", ["a", "newshape"], ["flat"], name="reshape"),
        helper.make_node("Gemm", ["flat", "Wf"], ["y"], transB=1, name="fc"),
        helper.make_node("Softmax", ["y"], ["prob"], name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [batch, 10])],
        [_weights(rng, "W1", (4, 3, 3, 3)), _weights(rng, "W2", (4, 4, 3, 3)), _weights(rng, "Wf", (10, 256)),
         numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"), _ints("axis0", [0]), _ints("minus1", [-1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def with_unsupported_ops() -> onnx.ModelProto:
    """Two operators TVM's importer lacks (a custom-domain op and LSTM) and one If."""
    rng = np.random.default_rng(1)
    then_graph = helper.make_graph([helper.make_node("Identity", ["h"], ["t_out"], name="then_id")], "then", [],
                                   [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [1, 4])])
    else_graph = helper.make_graph([helper.make_node("Neg", ["h"], ["e_out"], name="else_neg")], "else", [],
                                   [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [1, 4])])
    nodes = [
        helper.make_node("Gemm", ["x", "W"], ["h"], transB=1, name="fc"),
        helper.make_node("FancyActivation", ["h"], ["f"], domain="com.example", name="fancy1"),
        helper.make_node("Unsqueeze", ["f", "axis0"], ["seq"], name="to_seq"),
        helper.make_node("LSTM", ["seq", "Wl", "Rl"], ["", "lstm_h"], hidden_size=4, name="lstm1"),
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="positive"),
        helper.make_node("If", ["cond"], ["branch"], then_branch=then_graph, else_branch=else_graph, name="choose"),
    ]
    graph = helper.make_graph(
        nodes, "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("lstm_h", TensorProto.FLOAT, [1, 1, 4]),
         helper.make_tensor_value_info("branch", TensorProto.FLOAT, [1, 4])],
        [_weights(rng, "W", (4, 4)), _weights(rng, "Wl", (1, 16, 4)), _weights(rng, "Rl", (1, 16, 4)), _ints("axis0", [0]),
         numpy_helper.from_array(np.array(0, dtype=np.float32), "zero")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
                             ir_version=9)


def heavy_convs(channels: int = 64, size: int = 112) -> onnx.ModelProto:
    """Two wide 3x3 convolutions: few layers (compiles in seconds), tens of milliseconds per run (a
    server worker is busy long enough for a test to see its queue)."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["y"], name="relu2"),
    ]
    graph = helper.make_graph(
        nodes, "heavy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])],
        [_weights(rng, "W1", (channels, channels, 3, 3), 0.05), _weights(rng, "W2", (channels, channels, 3, 3), 0.05)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def windowed_reductions(channels: int = 32, size: int = 28) -> onnx.ModelProto:
    """Depthwise convolutions (3x3 stride 1 and 2, 5x5) with bias and ReLU6, and padded pooling: the
    windowed reductions whose schedules (compiler/kernels.py) pad per channel and vectorise over the
    width, at widths below, at and above a vector's lanes (28, 14, 7)."""
    rng = np.random.default_rng(3)

    def depthwise(name, x, y, k, stride):
        return [helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_c"], group=channels,
                                 kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride], name=name),
                helper.make_node("Clip", [f"{name}_c", "zero", "six"], [y], name=f"{name}_relu6")]

    nodes = (depthwise("dw1", "x", "a", 3, 1) + depthwise("dw2", "a", "b", 3, 2)
             + [helper.make_node("MaxPool", ["b"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2],
                                 name="pool")]
             + depthwise("dw3", "p", "y", 5, 1))
    weights = [_weights(rng, f"{n}_w", (channels, 1, k, k)) for n, k in (("dw1", 3), ("dw2", 3), ("dw3", 5))]
    weights += [_weights(rng, f"{n}_b", (channels,)) for n in ("dw1", "dw2", "dw3")]
    weights += [numpy_helper.from_array(np.array(v, dtype=np.float32), n) for n, v in (("zero", 0.0), ("six", 6.0))]
    out = size // 4
    graph = helper.make_graph(
        nodes, "windowed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, out, out])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
