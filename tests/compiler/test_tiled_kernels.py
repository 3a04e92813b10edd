"""The register-tiled products of compiler/tiled_kernels.py: each kernel against numpy, on shapes that
exercise its tiles (two vectors of channels, one, half a vector; row tiles that divide the row and one
that does not), strides, padding, dilation, batches and epilogues; and in a whole build against
onnxruntime, with nothing handed to the BLAS."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from neurosurgeon.compiler import tiled_kernels
from neurosurgeon.compiler.build import build_graph
from neurosurgeon.runtime.bundle import load_artifact
from neurosurgeon.runtime.tensors import TensorInfo
from neurosurgeon.targets import get_preset

LANES = 16  # AVX-512's float32 lanes; the kernels are plain TIR and run on any x86 host


def _run(kernel, inputs, out_shape):
    import tvm

    func, packed = kernel
    # the biases padded as compiler/kernels.py pads them, residuals as they are
    inputs = [inputs[0], *(tiled_kernels.padded_bias(b, packed) if b.ndim == 1 else b for b in inputs[1:])]
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=get_preset("x86-host").tvm_target())
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32))
    lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a, dtype=np.float32)) for a in (inputs[0], packed, *inputs[1:])],
                out)
    return out.numpy()


def _conv_reference(x, w, strides, padding, dilation):
    """NCHW/OIHW convolution in numpy, padding as (top, left, bottom, right)."""
    top, left, bottom, right = padding
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oc, _, kh, kw = w.shape
    (sh, sw), (dh, dw) = strides, dilation
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((x.shape[0], oc, oh, ow), np.float64)
    for y in range(kh):
        for z in range(kw):
            window = xp[:, :, y * dh: y * dh + sh * (oh - 1) + 1: sh, z * dw: z * dw + sw * (ow - 1) + 1: sw]
            out += np.einsum("nchw,oc->nohw", window, w[:, :, y, z], dtype=np.float64)
    return out


EPILOGUE = (("bias",), ("max", 0.0), ("min", 6.0))  # a bias and ONNX's Clip(0, 6), MobileNetV2's ReLU6


def _epilogue_reference(out, bias, channel_axis):
    shape = [1] * out.ndim
    shape[channel_axis] = -1
    return np.clip(out + bias.reshape(shape), 0.0, 6.0)


@pytest.mark.parametrize("batch, channels, size, out_channels, kernel, stride, padding, dilation", [
    (1, 3, 23, 64, 7, 2, (3, 3, 3, 3), 1),  # a first layer: window unrolled; two vectors by 6 columns
    (2, 16, 14, 32, 3, 1, (1, 1, 1, 1), 1),  # a batch: two vectors of channels by 7 columns
    (1, 8, 17, 48, 3, 1, (1, 0, 1, 2), 1),  # 48 = 3 vectors: one vector by 14 columns, the last tile run past the row
    (1, 3, 21, 32, 5, 1, (0, 0, 0, 0), 1),  # DeepFace's first layer in small: 17 columns in tiles of 7, unpadded
    (1, 8, 9, 24, 1, 2, (0, 0, 0, 0), 1),  # 24 channels: padded to two vectors; a strided 1x1
    (1, 20, 12, 50, 5, 1, (0, 0, 0, 0), 1),  # LeNet's 50 channels (no block of 4 divides them): padded to 64
    (1, 4, 12, 16, 3, 1, (2, 2, 2, 2), 2),  # dilation
])
@pytest.mark.parametrize("rows_outer", [False, True])  # tasks by blocks of channels x rows, or by rows
def test_direct_convolution_equals_numpy(batch, channels, size, out_channels, kernel, stride, padding, dilation,
                                         rows_outer):
    rng = np.random.default_rng(channels + size)
    x = rng.standard_normal((batch, channels, size, size)).astype(np.float32)
    w = rng.standard_normal((out_channels, channels, kernel, kernel)).astype(np.float32)
    bias = rng.standard_normal(out_channels).astype(np.float32)
    geometry = ((stride, stride), padding, (dilation, dilation))
    want = _conv_reference(x, w, *geometry)
    plain = tiled_kernels.direct_conv2d(x.shape, w, *geometry, LANES, rows_outer=rows_outer)
    np.testing.assert_allclose(_run(plain, [x], want.shape), want, rtol=1e-4, atol=1e-4)
    fused = tiled_kernels.direct_conv2d(x.shape, w, *geometry, LANES, EPILOGUE, rows_outer=rows_outer)
    np.testing.assert_allclose(_run(fused, [x, bias], want.shape), _epilogue_reference(want, bias, 1), rtol=1e-4, atol=1e-4)
    assert np.array_equal(_run(plain, [x], want.shape),  # the same sums in the same order either way
                          _run(tiled_kernels.direct_conv2d(x.shape, w, *geometry, LANES, rows_outer=not rows_outer),
                               [x], want.shape))


@pytest.mark.parametrize("data_shape, weight_shape, strides, padding", [
    ((1, 16, 8, 8), (32, 16, 1, 1), (1, 1), (0, 0, 0, 0)),  # the pointwise kernel by default
    ((1, 8, 15, 15), (40, 8, 3, 3), (2, 2), (1, 1, 1, 1)),  # channels padded to whole vectors, a partial row tile
])
def test_every_tile_choice_tuning_times_gives_the_defaults_bits(data_shape, weight_shape, strides, padding):
    # Tuning picks among these by time alone (compiler/tuning/search.py): each must compute the same
    # sums in the same order, whatever its tiles, tasks or kernel.
    rng = np.random.default_rng(5)
    x = rng.standard_normal(data_shape).astype(np.float32)
    w = rng.standard_normal(weight_shape).astype(np.float32)
    variants = tiled_kernels.conv_variants(data_shape, weight_shape, strides, padding, (1, 1), LANES)
    assert variants[0] == {} and len(variants) >= 4 and all(set(v) == set(tiled_kernels.TILE_KNOBS) for v in variants[1:])
    outputs = []
    for choice in variants:
        kind, kernel = tiled_kernels.conv_kernel(data_shape, w, strides, padding, (1, 1), LANES, (), choice)
        out_shape = _conv_reference(x, w, strides, padding, (1, 1)).shape
        flat = kind == "pointwise"
        data = x.reshape(*data_shape[:2], -1) if flat else x
        outputs.append(_run(kernel, [data], (*out_shape[:2], out_shape[2] * out_shape[3]) if flat else out_shape)
                       .reshape(out_shape))
    np.testing.assert_allclose(outputs[0], _conv_reference(x, w, strides, padding, (1, 1)), rtol=1e-4, atol=1e-4)
    assert all(np.array_equal(out, outputs[0]) for out in outputs[1:])


@pytest.mark.parametrize("data_shape, strides, padding", [
    ((1, 32, 15, 15), (1, 1), (1, 1, 1, 1)),  # a partial tile of columns (15 = 2 x 7 + 1)
    ((2, 48, 14, 14), (2, 2), (1, 1, 1, 1)),  # a batch, stride 2 (MobileNetV2's)
    ((1, 16, 9, 9), (2, 2), (0, 0, 1, 1)),    # padding on one side only (TensorFlow's SAME)
])
def test_depthwise_convolution_in_nchwc_equals_numpy(data_shape, strides, padding):
    rng = np.random.default_rng(7)
    n, c, h, w = data_shape
    x = rng.standard_normal(data_shape).astype(np.float32)
    weight = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    kernel = tiled_kernels.depthwise_conv2d_nchwc(data_shape, weight, strides, padding, LANES, EPILOGUE)
    blocked = x.reshape(n, c // LANES, LANES, h, w).transpose(0, 1, 3, 4, 2)
    per_channel = np.concatenate([_conv_reference(x[:, i:i + 1], weight[i:i + 1], strides, padding, (1, 1))
                                  for i in range(c)], axis=1)
    expected = _epilogue_reference(per_channel, bias, 1)
    oh, ow = expected.shape[2:]
    out = _run(kernel, [blocked, bias], (n, c // LANES, oh, ow, LANES))
    np.testing.assert_allclose(out.transpose(0, 1, 4, 2, 3).reshape(expected.shape), expected, rtol=1e-4, atol=1e-4)
    assert tiled_kernels.depthwise_conv2d_nchwc((1, 20, 8, 8), weight[:20], strides, padding, LANES) is None


@pytest.mark.parametrize("kernel, stride, padding, blocked_in, blocked_out, blocked_residual", [
    (1, 1, (0, 0, 0, 0), False, True, False),  # an expanding 1x1 writing NCHW16c
    (3, 1, (1, 1, 1, 1), False, True, False),  # a first 3x3 layer writing it
    (1, 1, (0, 0, 0, 0), True, False, False),  # a projecting 1x1 reading it
    (3, 1, (1, 1, 1, 1), True, True, True),  # inside ResNet: padding a blocked input, adding a blocked residual
    (3, 1, (1, 1, 1, 1), True, True, False),  # its first block: the residual (the pooling's output) NCHW
    (3, 1, (1, 1, 1, 1), True, False, True),  # its last block: writing NCHW for the pooling
    (1, 2, (0, 0, 0, 0), True, True, False),  # a downsampling 1x1, stride 2
])
def test_direct_convolution_reads_and_writes_nchwc_as_asked(kernel, stride, padding, blocked_in, blocked_out,
                                                            blocked_residual):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 32, 10, 10)).astype(np.float32)
    w = rng.standard_normal((48, 32, kernel, kernel)).astype(np.float32)
    bias = rng.standard_normal(48).astype(np.float32)
    product = _conv_reference(x, w, (stride, stride), padding, (1, 1))
    residual = rng.standard_normal(product.shape).astype(np.float32)
    expected = np.maximum(product + bias.reshape(-1, 1, 1) + residual, 0.0)  # ResNet's: bias, residual, ReLU

    def blocked(a, really=True):
        n, c, h, w_ = a.shape
        return a.reshape(n, c // LANES, LANES, h, w_).transpose(0, 1, 3, 4, 2) if really else a

    kernel_ = tiled_kernels.direct_conv2d(x.shape, w, (stride, stride), padding, (1, 1), LANES,
                                          (("bias",), ("residual",), ("relu",)), blocked_in=blocked_in,
                                          blocked_out=blocked_out, blocked_residual=blocked_residual)
    inputs = [blocked(x, blocked_in), bias, blocked(residual, blocked_residual)]
    out = _run(kernel_, inputs, blocked(expected, blocked_out).shape)
    np.testing.assert_allclose(out, blocked(expected, blocked_out), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch, channels, size, out_channels, padding, blocked_in, blocked_out, blocked_residual", [
    (1, 32, 14, 48, (1, 1, 1, 1), True, True, True),  # inside ResNet: NCHW16c in, out and residual
    (1, 16, 12, 32, (1, 1, 1, 1), True, False, False),  # writing NCHW (a segment's output), 6 tiles a row of 7
    (2, 16, 9, 24, (1, 0, 2, 1), False, False, False),  # a batch, NCHW, uneven padding, 24 channels (padded to 32)
    (1, 32, 30, 16, (0, 0, 0, 0), False, True, False),  # unpadded: 28 x 28, two rows of 7 tiles
    (1, 32, 7, 32, (1, 1, 1, 1), True, True, True),  # ResNet's last stage: 7 x 7, the last tiles half written
    (1, 16, 13, 16, (1, 1, 1, 1), False, False, False),  # AlexNet's 13 x 13, NCHW
])
@pytest.mark.parametrize("rows_outer", [None, False, True])  # as the rule picks, tasks by channel blocks, by rows
def test_winograd_convolution_equals_numpy(batch, channels, size, out_channels, padding, blocked_in, blocked_out,
                                           blocked_residual, rows_outer):
    rng = np.random.default_rng(channels + size)
    x = rng.standard_normal((batch, channels, size, size)).astype(np.float32)
    w = (rng.standard_normal((out_channels, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
    bias = rng.standard_normal(out_channels).astype(np.float32)
    geometry = ((1, 1), padding, (1, 1))
    assert tiled_kernels.conv_variants(x.shape, w.shape, *geometry, LANES) == [{}]
    product = _conv_reference(x, w, *geometry)
    residual = rng.standard_normal(product.shape).astype(np.float32)
    expected = np.maximum(product + bias.reshape(-1, 1, 1) + residual, 0.0)

    def blocked(a, really=True):
        n, c, h, w_ = a.shape
        return a.reshape(n, c // LANES, LANES, h, w_).transpose(0, 1, 3, 4, 2) if really else a

    assert tiled_kernels.conv_kernel(x.shape, w, *geometry, LANES)[0] == "winograd"
    kernel = tiled_kernels.winograd_conv2d(x.shape, w, padding, LANES, (("bias",), ("residual",), ("relu",)),
                                           rows_outer=rows_outer, blocked_in=blocked_in, blocked_out=blocked_out,
                                           blocked_residual=blocked_residual)
    out = _run(kernel, [blocked(x, blocked_in), bias, blocked(residual, blocked_residual)],
               blocked(expected, blocked_out).shape)
    np.testing.assert_allclose(out, blocked(expected, blocked_out), rtol=1e-4, atol=1e-4)
    # where it does not apply, the direct kernel: stride 2, a first layer's 3 channels
    for shape, strides in (((1, 16, 8, 8), (2, 2)), ((1, 3, 8, 8), (1, 1))):
        assert tiled_kernels.conv_kernel(shape, np.zeros((16, shape[1], 3, 3), np.float32), strides, (1, 1, 1, 1),
                                         (1, 1), LANES)[0] != "winograd"


def test_a_sample_gets_the_same_bits_alone_and_in_a_batch():
    # The server batches requests: every output is one sum in one order whatever the batch.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 16, 14, 14)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    geometry = ((1, 1), (1, 1, 1, 1), (1, 1))
    batched = _run(tiled_kernels.direct_conv2d(x.shape, w, *geometry, LANES), [x], (3, 32, 14, 14))
    alone = _run(tiled_kernels.direct_conv2d(x[1:2].shape, w, *geometry, LANES), [x[1:2]], (1, 32, 14, 14))
    assert np.array_equal(batched[1:2], alone)
    a = rng.standard_normal((12, 40)).astype(np.float32)
    weight = rng.standard_normal((40, 48)).astype(np.float32)
    one = _run(tiled_kernels.dense(1, weight, LANES), [a[3:4]], (1, 48))
    for rows in (5, 12):  # the reduction's parts summed side by side, and one after the other
        batched = _run(tiled_kernels.dense(rows, weight, LANES), [a[:rows]], (rows, 48))
        assert np.array_equal(batched[3:4], one)
    parts = [a[3:4, i:i + 10] @ weight[i:i + 10] for i in range(0, 40, 10)]  # depth 40: 4 parts, added in order
    np.testing.assert_allclose(one, ((parts[0] + parts[1]) + parts[2]) + parts[3], rtol=1e-6, atol=1e-6)


def test_pointwise_convolution_and_dense_equal_numpy():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 24, 8, 8)).astype(np.float32)  # 64 positions: two vectors
    w = rng.standard_normal((40, 24, 1, 1)).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    want = np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0]).reshape(2, 40, 64)
    kernel = tiled_kernels.pointwise_conv2d(x.shape, w, LANES, EPILOGUE)
    got = _run(kernel, [x.reshape(2, 24, 64), bias], (2, 40, 64))
    np.testing.assert_allclose(got, _epilogue_reference(want, bias, 1), rtol=1e-4, atol=1e-4)
    assert tiled_kernels.pointwise_conv2d((1, 24, 7, 7), w, LANES) is None  # 49 positions: not two vectors
    narrow = rng.standard_normal((16, 24, 1, 1)).astype(np.float32)  # fewer outputs than inputs: columns outside blocks
    got = _run(tiled_kernels.pointwise_conv2d(x.shape, narrow, LANES), [x.reshape(2, 24, 64)], (2, 16, 64))
    np.testing.assert_allclose(got, np.einsum("nchw,oc->nohw", x, narrow[:, :, 0, 0]).reshape(2, 16, 64),
                               rtol=1e-4, atol=1e-4)
    a = rng.standard_normal((3, 100)).astype(np.float32)
    weight = rng.standard_normal((100, 72)).astype(np.float32)  # 72: half vectors
    bias = rng.standard_normal(72).astype(np.float32)
    got = _run(tiled_kernels.dense(3, weight, LANES, (("bias",), ("relu",))), [a, bias], (3, 72))
    np.testing.assert_allclose(got, np.maximum(a @ weight + bias, 0), rtol=1e-4, atol=1e-4)
    for columns in (6, 37):  # no block of 4 divides them: padded with zero weights, the padding never written
        weight = rng.standard_normal((100, columns)).astype(np.float32)
        bias = rng.standard_normal(columns).astype(np.float32)
        kernel = tiled_kernels.dense(3, weight, LANES, (("bias",),))
        assert kernel[1].shape == (-(-columns // LANES), 100, LANES)
        got = _run(kernel, [a, bias], (3, columns))
        np.testing.assert_allclose(got, a @ weight + bias, rtol=1e-4, atol=1e-4)


def _tiled_net():
    """conv + bias + ReLU, conv + Clip (ReLU6), a 1x1 conv, a 3-channel conv (padded to a vector), Gemm + ReLU."""
    rng = np.random.default_rng(3)
    init, nodes = [], []

    def weight(name, shape):
        init.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name))
        return name

    nodes.append(helper.make_node("Conv", ["x", weight("w1", (32, 3, 3, 3)), weight("b1", (32,))], ["c1"], pads=[1] * 4))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
    nodes.append(helper.make_node("Conv", ["r1", weight("w2", (16, 32, 3, 3)), weight("b2", (16,))], ["c2"], pads=[1] * 4,
                                  strides=[2, 2]))
    init += [numpy_helper.from_array(np.float32(0.0), "lo"), numpy_helper.from_array(np.float32(6.0), "hi")]
    nodes.append(helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"]))
    nodes.append(helper.make_node("Conv", ["r2", weight("w3", (32, 16, 1, 1)), weight("b3", (32,))], ["c3"]))
    nodes.append(helper.make_node("Conv", ["c3", weight("w4", (3, 32, 3, 3))], ["c4"], pads=[1] * 4))
    nodes.append(helper.make_node("Flatten", ["c4"], ["f"]))
    nodes.append(helper.make_node("Gemm", ["f", weight("w5", (64, 192)), weight("b5", (64,))], ["g"], transB=1))
    nodes.append(helper.make_node("Relu", ["g"], ["y"]))
    graph = helper.make_graph(nodes, "tiled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_a_build_with_tiled_products_equals_onnxruntime_and_calls_no_blas(tmp_path):
    model = _tiled_net()
    onnx.checker.check_model(model)
    built = build_graph(model, [TensorInfo("x", (1, 3, 16, 16), "float32")], get_preset("x86-host"),
                        tmp_path / "tiled.so", "tiled")
    assert built.stats["tiled"] == 5 and built.stats["externs"] == 0  # the 3-channel conv too, padded to a vector
    x = np.random.default_rng(4).standard_normal((1, 3, 16, 16)).astype(np.float32)
    import tvm

    ours = load_artifact(tmp_path / "tiled.so", tvm.cpu(0))(tvm.runtime.tensor(x))
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(ours.numpy(), want, rtol=1e-4, atol=1e-4)


def test_clip_after_a_product_is_applied_in_its_kernel():
    """TVM's importer emits ONNX's Clip as TIR max and min (not Relax operators), which the epilogue
    search did not see: MobileNetV2's ReLU6 ran as a pass of its own after every convolution."""
    import tvm
    from tvm import tirx

    from neurosurgeon.compiler.importer import import_graph
    from neurosurgeon.compiler.kernels import cpu_phases

    target = get_preset("x86-host").tvm_target()
    fusion, _after, _lower = cpu_phases(target, "tvm")
    with target:
        mod = tvm.transform.Sequential(fusion)(import_graph(_tiled_net(), [TensorInfo("x", (1, 3, 16, 16), "float32")],
                                                            "tiled"))
    kernels = [str(g.name_hint) for g, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)]
    assert not [k for k in kernels if "maximum" in k or "minimum" in k], kernels


def _build_run_and_trace(tmp_path, nodes, init, name, in_shape, out_shape, with_shapes=False):
    """Build the graph x -> y, run it on noise against onnxruntime; (the build, the kernels it called,
    or with_shapes, (kernel, the shape it wrote) pairs)."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    built = build_graph(model, [TensorInfo("x", in_shape, "float32")], get_preset("x86-host"), tmp_path / f"{name}.so",
                        name)
    vm = VirtualMachine(tvm.runtime.load_module(str(tmp_path / f"{name}.so")), tvm.cpu(0))
    called = []
    vm.set_instrument(lambda func, symbol, before, ret, *args: called.append(
        (str(symbol), tuple(getattr(args[-1], "shape", ()) if args else ()))) if before else None)
    x = np.random.default_rng(7).standard_normal(in_shape).astype(np.float32)
    ours = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4)
    kernels = [(s, shape) for s, shape in called if not s.startswith("vm.builtin")]
    return built, [s for s, _ in kernels] if not with_shapes else kernels


def test_a_graph_ending_in_a_1x1_convolution_returns_a_view_not_a_copy(tmp_path):
    """The tiled 1x1 convolution computes [N, C, H*W]; its reshape to NCHW was a copy kernel where it
    was the graph's (a segment's) output, since TVM makes views only inside dataflow blocks."""
    rng = np.random.default_rng(5)
    init = [numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
            for name, shape in (("w1", (24, 3, 3, 3)), ("w2", (16, 24, 1, 1)), ("b2", (16,)))]  # 24: NCHW
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"])]
    _, kernels = _build_run_and_trace(tmp_path, nodes, init, "ends_1x1", (1, 3, 16, 16), (1, 16, 16, 16))
    assert any("pointwise" in s for s in kernels) and not any("reshape" in s for s in kernels), kernels


def test_a_skip_connections_add_is_applied_in_the_products_kernel(tmp_path):
    """ResNet's and MobileNetV2's residual adds (a product's result plus a tensor of its shape) ran as
    kernels of their own, a pass over memory each; now the product adds the tensor as it writes its
    output: in a direct convolution's transposed write-back (here with the ReLU after it, which then
    moves there too), in a 1x1 convolution's, and where both operands are products (ResNet's
    downsampling blocks), in the first one's."""
    rng = np.random.default_rng(6)
    shapes = (("w1", (32, 32, 3, 3)), ("b1", (32,)), ("w2", (32, 32, 1, 1)), ("b2", (32,)), ("w3", (16, 32, 1, 1)),
              ("w4", (16, 32, 1, 1)))
    init = [numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name) for name, shape in shapes]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4),
             helper.make_node("Add", ["c1", "x"], ["s1"]), helper.make_node("Relu", ["s1"], ["r1"]),  # direct
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]), helper.make_node("Add", ["r1", "c2"], ["s2"]),  # 1x1
             helper.make_node("Conv", ["s2", "w3"], ["c3"]), helper.make_node("Conv", ["s2", "w4"], ["c4"]),
             helper.make_node("Add", ["c3", "c4"], ["y"])]  # two products
    built, kernels = _build_run_and_trace(tmp_path, nodes, init, "skips", (1, 32, 8, 8), (1, 16, 8, 8))
    assert built.stats["tiled"] == 4
    assert len(kernels) == 4 and not any("add" in s or "relu" in s for s in kernels), kernels


def test_an_inverted_residual_block_runs_its_depthwise_convolution_in_nchwc(tmp_path):
    """MobileNetV2's block: expand (1x1, ReLU6), depthwise 3x3 (ReLU6), project (1x1), residual add.
    Inside it the tensors are NCHW16c (kernels.py `_blocked_layout`): the expanding convolution writes
    it, the depthwise one works in it, the projecting one reads it and adds the block's input (the
    graph's, NCHW) as it writes NCHW; where the depthwise result is also read by something else
    (a ReduceMean), the depthwise convolution and its data stay NCHW."""
    rng = np.random.default_rng(8)
    shapes = (("we", (64, 16, 1, 1)), ("be", (64,)), ("wd", (64, 1, 3, 3)), ("bd", (64,)), ("wp", (16, 64, 1, 1)),
              ("bp", (16,)))
    init = [numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name) for name, shape in shapes]
    init += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", 0.0), ("hi", 6.0))]
    nodes = [helper.make_node("Conv", ["x", "we", "be"], ["e"]), helper.make_node("Clip", ["e", "lo", "hi"], ["e6"]),
             helper.make_node("Conv", ["e6", "wd", "bd"], ["d"], group=64, pads=[1] * 4),
             helper.make_node("Clip", ["d", "lo", "hi"], ["d6"]),
             helper.make_node("Conv", ["d6", "wp", "bp"], ["p"]), helper.make_node("Add", ["p", "x"], ["y"])]
    _, kernels = _build_run_and_trace(tmp_path, nodes, init, "block", (1, 16, 14, 14), (1, 16, 14, 14))
    assert len(kernels) == 3 and "depthwise_nchwc" in kernels[1], kernels
    # the depthwise result also leaves the block: the NCHW kernels as before
    nodes[-1] = helper.make_node("Add", ["p", "x"], ["s"])
    nodes += [helper.make_node("ReduceMean", ["d6"], ["m"], keepdims=1, axes=[1]),
              helper.make_node("Add", ["s", "m"], ["y"])]
    _, kernels = _build_run_and_trace(tmp_path, nodes, init, "leaks", (1, 16, 14, 14), (1, 16, 14, 14))
    assert not any("nchwc" in s for s in kernels), kernels


def test_a_residual_network_computes_in_nchwc_from_its_first_convolution_to_its_global_pooling(tmp_path):
    """ResNet's shape: a stem, a max pooling, two blocks, a downsampling block (3x3 stride 2 with a 1x1
    stride-2 shortcut), a global average pooling. Every tensor that only convolutions and max poolings
    read, as data or as the residual a convolution adds, and the global average pooling's data is
    NCHW16c, so nothing converts between layouts: the stem reads the NCHW input and writes NCHW16c,
    the pooling reads NCHW16c and its result is the NCHW output."""
    rng = np.random.default_rng(10)
    shapes = [("w0", (16, 3, 3, 3))] + [(f"w{i}", (16, 16, 3, 3)) for i in "abcd"] + [
        ("we", (32, 16, 3, 3)), ("wf", (32, 32, 3, 3)), ("wg", (32, 16, 1, 1))]
    init = [numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name) for name, shape in shapes]
    init += [numpy_helper.from_array((rng.standard_normal(shape[0]) * 0.1).astype(np.float32), "b" + name[1:])
             for name, shape in shapes]

    def conv(name, data, out, stride=1):
        pads = [0] * 4 if name == "g" else [1] * 4
        return helper.make_node("Conv", [data, "w" + name, "b" + name], [out], pads=pads, strides=[stride] * 2)

    def relu(data, out):
        return helper.make_node("Relu", [data], [out])

    nodes = [conv("0", "x", "c0"), relu("c0", "r0"),
             helper.make_node("MaxPool", ["r0"], ["p"], kernel_shape=[3, 3], pads=[1] * 4),
             conv("a", "p", "ca"), relu("ca", "ra"), conv("b", "ra", "cb"), helper.make_node("Add", ["cb", "p"], ["sb"]),
             relu("sb", "r1"),
             conv("c", "r1", "cc"), relu("cc", "rc"), conv("d", "rc", "cd"), helper.make_node("Add", ["cd", "r1"], ["sd"]),
             relu("sd", "r2"),
             conv("e", "r2", "ce", 2), relu("ce", "re"), conv("f", "re", "cf"), conv("g", "r2", "cg", 2),
             helper.make_node("Add", ["cf", "cg"], ["sf"]), relu("sf", "r3"),
             helper.make_node("GlobalAveragePool", ["r3"], ["y"])]
    _, kernels = _build_run_and_trace(tmp_path, nodes, init, "resnet", (1, 3, 16, 16), (1, 32, 1, 1), with_shapes=True)
    assert len(kernels) == 10, kernels  # 8 convolutions, 2 poolings: no layout transforms, no reshape
    # every kernel writes NCHW16c: the mean [1, 2, 1, 1, 16], which is the output's [1, 32, 1, 1] in memory (a view)
    assert [len(shape) for _, shape in kernels] == [5] * 10, kernels


def test_an_inception_block_computes_in_nchwc_through_its_concatenation(tmp_path):
    """GoogLeNet's block: four branches (1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max pooling -> 1x1) whose
    outputs, 16 channels each, are concatenated, then read by a convolution and by a second
    concatenation that a global average pooling reads. Every tensor from the stem's output to the
    pooling is NCHW16c, the concatenations too, and nothing converts between layouts."""
    rng = np.random.default_rng(12)
    shapes = [("w0", (32, 3, 3, 3)), ("w1", (16, 32, 1, 1)), ("w2", (16, 32, 1, 1)), ("w3", (16, 16, 3, 3)),
              ("w4", (16, 32, 1, 1)), ("w5", (16, 16, 5, 5)), ("w6", (16, 32, 1, 1)), ("w7", (32, 64, 1, 1))]
    init = [numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name) for name, shape in shapes]

    def conv(name, data, out, pads=0):
        return [helper.make_node("Conv", [data, "w" + name], ["c" + out], pads=[pads] * 4),
                helper.make_node("Relu", ["c" + out], [out])]

    nodes = [*conv("0", "x", "s", 1), *conv("1", "s", "b1"), *conv("2", "s", "r2"), *conv("3", "r2", "b2", 1),
             *conv("4", "s", "r3"), *conv("5", "r3", "b3", 2),
             helper.make_node("MaxPool", ["s"], ["p"], kernel_shape=[3, 3], pads=[1] * 4), *conv("6", "p", "b4"),
             helper.make_node("Concat", ["b1", "b2", "b3", "b4"], ["cat"], axis=1), *conv("7", "cat", "n"),
             helper.make_node("Concat", ["cat", "n"], ["both"], axis=1),
             helper.make_node("GlobalAveragePool", ["both"], ["y"])]
    _, kernels = _build_run_and_trace(tmp_path, nodes, init, "inception", (1, 3, 12, 12), (1, 96, 1, 1),
                                      with_shapes=True)
    assert sum(name.startswith("concatenate") for name, _ in kernels) == 2, kernels
    # no layout transforms: every kernel writes NCHW16c (the mean [1, 6, 1, 1, 16], the output's [1, 96, 1, 1] in memory)
    assert len(kernels) == 12 and all(len(shape) == 5 for _, shape in kernels), kernels

