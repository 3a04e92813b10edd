"""Layer microbenchmarks and the profile kit: Neurosurgeon's deployment phase, compiler side.

`grid(scale)` lists single-layer ONNX models, one layer type each, over configurations that cover
the zoo networks and common CNN/MLP shapes. Their configuration, FLOPs and bytes come from the
project's own pipeline (`analyse`), so a microbenchmark is described exactly as the same layer
inside a real model is. `build_kit` builds every one of them with TVM for a target preset, ahead of
time, into a kit that a board with only numpy and TVM's runtime times with `python kit/profile.py`
(runtime/profile.py does the timing, here or there).

Each microbenchmark is one layer and one segment, as in a bundle cut at every layer boundary, so
TVM compiles it exactly as it would compile that layer's segment (no fusion with neighbours).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import __version__
from ..compiler.frontend import ONNX_IR_VERSION, ONNX_OPSET
from ..runtime.bundle import sha256_file
from ..runtime.errors import NeurosurgeonError
from ..runtime.profile import KIT_FILE, KIT_FORMAT, read_kit
from ..runtime.progress import Progress
from .model import PAPER_VARIABLES, layer_features

__all__ = ["SCALES", "Const", "KitError", "MicroBench", "activation", "add", "argmax", "batchnorm", "build_kit", "concat",
           "conv", "fc", "grid", "kit_identity", "lrn", "main_features", "pool", "reduce_mean", "softmax", "transpose",
           "uncovered", "upsample"]

SCALES = ("default", "small")
_OUTPUT = "output"


class KitError(NeurosurgeonError):
    pass


@dataclass(frozen=True)
class Const:
    """A constant input of the layer (weights, statistics, bounds), drawn deterministically."""

    name: str
    shape: tuple[int, ...]
    fill: str  # "he" (uniform, variance 2/fan_in), "bias", "positive", "small" or "value"
    value: tuple = ()  # for fill == "value"
    dtype: str = "float32"

    def array(self, rng: np.random.Generator) -> np.ndarray:
        if self.fill == "value":
            return np.array(self.value, dtype=self.dtype).reshape(self.shape)
        if self.fill == "he":
            fan_in = max(1, math.prod(self.shape[1:]))
            limit = np.float32(math.sqrt(6.0 / fan_in))
            w = rng.random(self.shape, dtype=np.float32)
            w *= 2 * limit
            w -= limit
            return w
        if self.fill == "positive":  # BN scale and variance: away from zero
            return rng.uniform(0.8, 1.2, self.shape).astype(np.float32)
        scale = 0.01 if self.fill == "bias" else 0.05
        return (scale * rng.standard_normal(self.shape)).astype(np.float32)


@dataclass(eq=False)
class MicroBench:
    """One layer as a one-node ONNX model: `op` reads the data `inputs` (graph inputs, batch 1) and
    the `consts`, in `node_inputs` order. The model is made on demand (weights can be 150 MB)."""

    key: str
    type: str
    op: str
    inputs: dict[str, tuple[int, ...]]
    consts: tuple[Const, ...] = ()
    attrs: dict = field(default_factory=dict)
    node_inputs: tuple[str, ...] = ()
    output_dtype: int = TensorProto.FLOAT

    @property
    def spec(self) -> dict:
        """Everything the model is made from: a change here is a different microbenchmark."""
        return {"key": self.key, "type": self.type, "op": self.op,
                "inputs": {k: list(v) for k, v in self.inputs.items()},
                "consts": [[c.name, list(c.shape), c.fill, list(c.value), c.dtype] for c in self.consts],
                "attrs": self.attrs, "node_inputs": list(self.node_inputs), "output_dtype": self.output_dtype}

    def model(self) -> onnx.ModelProto:
        rng = np.random.default_rng(zlib.crc32(self.key.encode()))
        model = self._skeleton(self._output)
        for const in self.consts:  # appended, not passed to make_graph: big weights are copied once
            model.graph.initializer.append(numpy_helper.from_array(const.array(rng), const.name))
        return model

    def _skeleton(self, output: onnx.ValueInfoProto, extra_inputs: tuple = ()) -> onnx.ModelProto:
        node = helper.make_node(self.op, list(self.node_inputs or self.inputs), [_OUTPUT], name=self.key, **self.attrs)
        inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))
                  for name, shape in self.inputs.items()]
        graph = helper.make_graph([node], self.key, inputs + list(extra_inputs), [output])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=ONNX_IR_VERSION,
                                 producer_name="neurosurgeon.cost_models.microbench")

    @functools.cached_property
    def _output(self) -> onnx.ValueInfoProto:
        """The output's type and shape (the checker wants them declared), inferred by ONNX from a
        weightless copy where the constants are typed inputs, so no weights are drawn for it."""
        consts = tuple(helper.make_tensor_value_info(c.name, helper.np_dtype_to_tensor_dtype(np.dtype(c.dtype)),
                                                     list(c.shape)) for c in self.consts)
        unknown = helper.make_tensor_value_info(_OUTPUT, self.output_dtype, None)
        inferred = onnx.shape_inference.infer_shapes(self._skeleton(unknown, consts), strict_mode=True)
        return inferred.graph.output[0]

    def analyse(self):
        """The pipeline's stages on this model: (frozen model, layer graph, partition plan)."""
        from ..compiler.analysis import analyse

        frozen, graph, plan = analyse(self.model(), name=self.key)
        self.__dict__["record"] = _record(self, frozen, graph)
        return frozen, graph, plan

    @functools.cached_property
    def record(self) -> dict:
        """The layer as the pipeline sees it: type, ops, config, flops, in_bytes, out_bytes, inputs."""
        self.analyse()
        return self.__dict__["record"]

    @property
    def features(self) -> dict[str, float]:
        r = self.record
        return layer_features(r["type"], r["config"], r["flops"], r["in_bytes"], r["out_bytes"])


def _record(bench: MicroBench, frozen, graph) -> dict:
    if len(graph.layers) != 1:
        raise KitError(f"microbenchmark {bench.key}: the pipeline made {len(graph.layers)} layers of it, not one")
    layer = graph.layers[0]
    if layer.type != bench.type:
        raise KitError(f"microbenchmark {bench.key}: the pipeline calls it {layer.type!r}, not {bench.type!r}")
    return {"type": layer.type, "ops": layer.ops, "config": layer.config, "flops": layer.flops,
            "in_bytes": layer.input_bytes, "out_bytes": layer.output_bytes,
            "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in frozen.inputs]}


# -- constructors, one per layer family --------------------------------------------------------------

def _dims(shape) -> str:
    return "x".join(str(d) for d in shape)


def conv(cin: int, size: int | tuple[int, int], cout: int, kernel: int, stride: int = 1, pad: int | None = None,
         groups: int = 1) -> MicroBench:
    """Conv2d with bias on a 1 x cin x H x W input; pad defaults to "same" (kernel // 2)."""
    h, w = (size, size) if isinstance(size, int) else size
    pad = kernel // 2 if pad is None else pad
    key = f"conv_i{cin}x{h}x{w}_o{cout}_k{kernel}_s{stride}_p{pad}" + (f"_g{groups}" if groups > 1 else "")
    return MicroBench(key, "conv", "Conv", {"input": (1, cin, h, w)},
                      (Const("weight", (cout, cin // groups, kernel, kernel), "he"), Const("bias", (cout,), "bias")),
                      {"kernel_shape": [kernel, kernel], "strides": [stride, stride], "pads": [pad] * 4,
                       "group": groups},
                      ("input", "weight", "bias"))


def fc(n_in: int, n_out: int, rows: int = 1) -> MicroBench:
    """Gemm with transposed weight and bias, as PyTorch and the zoo export a Linear layer."""
    key = f"fc_i{rows}x{n_in}_o{n_out}"
    return MicroBench(key, "fc", "Gemm", {"input": (rows, n_in)},
                      (Const("weight", (n_out, n_in), "he"), Const("bias", (n_out,), "bias")), {"transB": 1},
                      ("input", "weight", "bias"))


def pool(op: str, shape: tuple[int, ...], kernel: int = 0, stride: int = 1, pad: int = 0) -> MicroBench:
    """MaxPool / AveragePool with a square window, or GlobalAveragePool / GlobalMaxPool."""
    if op.startswith("Global"):
        return MicroBench(f"{op.lower()}_i{_dims(shape)}", "pooling", op, {"input": (1, *shape)})
    key = f"{op.lower()}_i{_dims(shape)}_k{kernel}_s{stride}_p{pad}"
    return MicroBench(key, "pooling", op, {"input": (1, *shape)},
                      attrs={"kernel_shape": [kernel, kernel], "strides": [stride, stride], "pads": [pad] * 4})


def activation(op: str, shape: tuple[int, ...]) -> MicroBench:
    """Relu, Sigmoid, Tanh, or Clip(-1, 1) (hardtanh, bounds as inputs since opset 11)."""
    key = f"{'hardtanh' if op == 'Clip' else op.lower()}_i{_dims(shape)}"
    if op == "Clip":
        return MicroBench(key, "activation", op, {"input": (1, *shape)},
                          (Const("min", (), "value", (-1.0,)), Const("max", (), "value", (1.0,))),
                          node_inputs=("input", "min", "max"))
    return MicroBench(key, "activation", op, {"input": (1, *shape)})


def batchnorm(shape: tuple[int, ...]) -> MicroBench:
    c = shape[0]
    return MicroBench(f"batchnorm_i{_dims(shape)}", "normalization", "BatchNormalization", {"input": (1, *shape)},
                      (Const("scale", (c,), "positive"), Const("bias", (c,), "small"), Const("mean", (c,), "small"),
                       Const("var", (c,), "positive")), {"epsilon": 1e-5}, ("input", "scale", "bias", "mean", "var"))


def lrn(shape: tuple[int, ...], size: int = 5) -> MicroBench:
    return MicroBench(f"lrn_i{_dims(shape)}_n{size}", "normalization", "LRN", {"input": (1, *shape)},
                      attrs={"size": size, "alpha": 1e-4, "beta": 0.75, "bias": 1.0})


def softmax(n: int) -> MicroBench:
    return MicroBench(f"softmax_i1x{n}", "softmax", "Softmax", {"input": (1, n)}, attrs={"axis": -1})


def argmax(n: int) -> MicroBench:
    return MicroBench(f"argmax_i1x{n}", "argmax", "ArgMax", {"input": (1, n)}, attrs={"axis": -1, "keepdims": 1},
                      output_dtype=TensorProto.INT64)


def add(shape: tuple[int, ...]) -> MicroBench:
    """Add of two tensors of the same shape (a residual join): two inputs, as in ResNet."""
    return MicroBench(f"add_i{_dims(shape)}", "elementwise", "Add", {"a": (1, *shape), "b": (1, *shape)})


def concat(channels: tuple[int, ...], size: int) -> MicroBench:
    """Channel concat of len(channels) feature maps of size x size (an Inception module's join)."""
    inputs = {f"x{i}": (1, c, size, size) for i, c in enumerate(channels)}
    return MicroBench(f"concat_i{'+'.join(map(str, channels))}x{size}x{size}", "concat", "Concat", inputs,
                      attrs={"axis": 1})


def reduce_mean(shape: tuple[int, ...]) -> MicroBench:
    """Mean over the spatial axes (global average pooling written as a reduction)."""
    return MicroBench(f"reducemean_i{_dims(shape)}", "reduce", "ReduceMean", {"input": (1, *shape)},
                      attrs={"axes": [2, 3], "keepdims": 1})


def upsample(shape: tuple[int, ...], factor: int = 2) -> MicroBench:
    """Nearest-neighbour Resize by an integer factor (FPN / U-Net decoders)."""
    return MicroBench(f"resize_i{_dims(shape)}_x{factor}", "resize", "Resize", {"input": (1, *shape)},
                      (Const("roi", (0,), "value"), Const("scales", (4,), "value", (1.0, 1.0, factor, factor))),
                      {"mode": "nearest"}, ("input", "roi", "scales"))


def transpose(shape: tuple[int, ...]) -> MicroBench:
    """NCHW -> NHWC, a pure data movement layer."""
    return MicroBench(f"transpose_i{_dims(shape)}", "data", "Transpose", {"input": (1, *shape)},
                      attrs={"perm": [0, 2, 3, 1]})


# -- the grids -----------------------------------------------------------------------------------

def _default_grid() -> list[MicroBench]:
    """Chosen so that every layer of the 10 zoo networks at their default sizes has a sample of
    its type within 4x on FLOPs and on each of the paper's variables, plus common CNN/MLP shapes.

    Capped by TVM 0.27's untuned speed (x86-host on a 2-core EPYC, one thread): conv runs at
    1.1-1.5 GFLOP/s, so no conv beyond ~1.4 GFLOP (about 1.1 s a run); dense at 0.07-0.08 GFLOP/s,
    so no fc beyond AlexNet's fc6, 9216 x 4096 (1.16 s a run, 151 MB of weights). VGG's 3.7 GFLOP
    convolutions and its 25088 x 4096 fc6 are covered from below, within 2.7x. There, the kit
    (196 layers, 394 MB, most of it fc weights) builds in about 65 s and profiles in about 2 min.
    """
    c = conv
    convs = [
        # 3x3 "same", the VGG / ResNet body
        c(3, 224, 64, 3), c(32, 224, 48, 3), c(64, 112, 64, 3), c(16, 112, 64, 3), c(128, 56, 128, 3),
        c(64, 56, 64, 3), c(16, 56, 16, 3), c(256, 28, 256, 3), c(128, 28, 128, 3), c(32, 28, 32, 3),
        c(96, 28, 128, 3), c(512, 14, 512, 3), c(256, 14, 256, 3), c(512, 14, 128, 3), c(64, 14, 64, 3),
        c(96, 14, 208, 3), c(16, 14, 16, 3), c(512, 7, 512, 3), c(256, 7, 256, 3), c(128, 7, 128, 3),
        c(32, 7, 32, 3), c(64, 56, 192, 3), c(128, 56, 192, 3),
        # 3x3 stride 2 (ResNet and MobileNet downsampling)
        c(3, 224, 32, 3, 2), c(32, 112, 64, 3, 2), c(64, 56, 128, 3, 2), c(128, 28, 256, 3, 2),
        c(256, 14, 512, 3, 2),
        # 1x1 (bottlenecks, Inception reductions, pointwise)
        c(64, 56, 64, 1), c(64, 56, 256, 1), c(256, 56, 64, 1), c(32, 112, 64, 1), c(192, 28, 64, 1),
        c(256, 28, 32, 1), c(480, 14, 192, 1), c(480, 14, 16, 1), c(1024, 14, 256, 1), c(1024, 7, 1024, 1),
        c(512, 7, 2048, 1), c(16, 28, 16, 1), c(64, 56, 128, 1, 2), c(256, 14, 512, 1, 2),
        # 5x5
        c(96, 27, 256, 5), c(64, 28, 64, 5), c(32, 28, 96, 5), c(16, 28, 32, 5), c(16, 14, 48, 5),
        c(1, 28, 20, 5, pad=0), c(20, 12, 50, 5, pad=0), c(16, 25, 16, 5, pad=0),
        # 7x7, 9x9, 11x11 (stems; DeepFace's stand-ins for its locally connected layers)
        c(3, 224, 64, 7, 2, 3), c(3, 112, 32, 7, 2, 3), c(16, 55, 16, 7, 2, pad=0), c(32, 28, 32, 7),
        c(16, 63, 16, 9, pad=0), c(32, 71, 16, 9, pad=0),
        c(3, 224, 96, 11, 4, 2), c(3, 152, 32, 11, pad=0), c(3, 112, 48, 11, 4, 2),
        # depthwise and grouped (MobileNet, AlexNet's original two-GPU split, ResNeXt)
        c(32, 112, 32, 3, groups=32), c(64, 112, 64, 3, 2, groups=64), c(128, 56, 128, 3, groups=128),
        c(256, 28, 256, 3, 2, groups=256), c(512, 14, 512, 3, groups=512), c(1024, 7, 1024, 3, groups=1024),
        c(96, 28, 96, 5, groups=96), c(96, 27, 256, 5, groups=2), c(256, 14, 256, 3, groups=32),
    ]
    fcs = [fc(i, o) for i, o in [
        (16, 16), (64, 64), (256, 256), (1024, 1024), (4096, 4096), (16, 4096), (4096, 16), (64, 1024),
        (1024, 64), (1024, 4096), (4096, 1024), (10, 1000), (1000, 10), (250, 300), (300, 45), (300, 17),
        (440, 2048), (800, 500), (500, 10), (512, 1000), (256, 1000), (2048, 2048), (2048, 1706),
        (4096, 1000), (2048, 512), (9216, 4096), (25088, 256)]]
    fcs += [fc(512, 512, rows=16), fc(256, 1024, rows=64), fc(1024, 1024, rows=8)]  # token-wise MLPs
    pools = [pool("MaxPool", shape, k, s, p) for shape, k, s, p in [
        ((64, 112, 112), 3, 2, 1), ((96, 55, 55), 3, 2, 0), ((256, 27, 27), 3, 2, 0), ((192, 56, 56), 3, 2, 1),
        ((480, 28, 28), 3, 2, 1), ((256, 13, 13), 3, 2, 0), ((32, 142, 142), 3, 2, 0), ((64, 224, 224), 2, 2, 0),
        ((128, 112, 112), 2, 2, 0), ((256, 56, 56), 2, 2, 0), ((512, 28, 28), 2, 2, 0), ((512, 14, 14), 2, 2, 0),
        ((20, 24, 24), 2, 2, 0), ((50, 8, 8), 2, 2, 0), ((192, 28, 28), 3, 1, 1), ((480, 14, 14), 3, 1, 1),
        ((16, 14, 14), 3, 1, 1)]]
    pools += [
        pool("AveragePool", (64, 56, 56), 2, 2), pool("AveragePool", (256, 28, 28), 3, 1, 1),
        pool("AveragePool", (1024, 7, 7), 7, 1),
        pool("GlobalAveragePool", (512, 7, 7)), pool("GlobalAveragePool", (256, 28, 28)),
        pool("GlobalAveragePool", (2048, 7, 7)), pool("GlobalAveragePool", (64, 56, 56)),
        pool("GlobalAveragePool", (16, 8, 8)), pool("GlobalMaxPool", (512, 7, 7)),
    ]
    activations = [activation("Relu", s) for s in [
        (4096,), (500,), (16, 14, 14), (512, 7, 7), (512, 14, 14), (256, 28, 28), (128, 56, 56), (96, 55, 55),
        (64, 112, 112), (64, 224, 224), (32, 142, 142)]]
    activations += [activation("Sigmoid", s) for s in [(300,), (2048,), (64, 56, 56), (64, 112, 112)]]
    activations += [activation("Tanh", s) for s in [(300,), (4096,), (256, 28, 28)]]
    activations += [activation("Clip", s) for s in [(300,), (2048,), (128, 56, 56)]]
    norms = [batchnorm(s) for s in [(64, 112, 112), (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7),
                                     (32, 224, 224), (16, 14, 14)]]
    norms += [lrn(s) for s in [(96, 55, 55), (256, 27, 27), (64, 56, 56), (192, 28, 28), (16, 13, 13)]]
    return [
        *convs, *fcs, *pools, *activations, *norms,
        *[softmax(n) for n in (10, 100, 1000, 1706, 4096, 10000, 32000)],
        *[argmax(n) for n in (10, 100, 1000, 4096, 32000)],
        *[add(s) for s in [(1000,), (16, 14, 14), (512, 7, 7), (256, 14, 14), (128, 28, 28), (64, 56, 56),
                           (64, 112, 112), (256, 56, 56)]],
        concat((64, 128, 32, 32), 28), concat((128, 192, 96, 64), 28), concat((192, 208, 48, 64), 14),
        concat((64, 64), 56), concat((256, 256), 14), concat((16, 16), 8), concat((32, 32, 32), 112),
        # a few of the types the papers' networks lack, so the fitter has at least 4 points each
        *[reduce_mean(s) for s in [(512, 7, 7), (2048, 7, 7), (256, 28, 28), (64, 56, 56)]],
        *[upsample(s) for s in [(256, 14, 14), (128, 28, 28), (64, 56, 56), (32, 112, 112)]],
        *[transpose(s) for s in [(16, 8, 8), (512, 7, 7), (256, 28, 28), (64, 56, 56)]],
    ]


def _small_grid() -> list[MicroBench]:
    """A handful of tiny layers, one or two per type, for tests (builds in seconds)."""
    return [
        conv(3, 16, 8, 3), conv(8, 8, 8, 3, groups=8), fc(64, 32), fc(16, 8),
        pool("MaxPool", (8, 16, 16), 2, 2), pool("GlobalAveragePool", (8, 8, 8)),
        activation("Relu", (8, 16, 16)), activation("Sigmoid", (64,)), batchnorm((8, 8, 8)), lrn((8, 8, 8)),
        softmax(10), add((8, 8, 8)), concat((4, 4), 8),
    ]


def grid(scale: str = "default") -> list[MicroBench]:
    """The microbenchmarks of a scale, in profiling order: types take turns and each type's
    configurations come spread over its size range, so a profile cut short by its time budget
    still has samples of every type, small and large."""
    if scale not in SCALES:
        raise KitError(f"unknown grid scale {scale!r}; valid: {', '.join(SCALES)}")
    benches = _default_grid() if scale == "default" else _small_grid()
    keys = [b.key for b in benches]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise KitError(f"duplicate microbenchmark keys: {', '.join(duplicates)}")
    by_type: dict[str, list[MicroBench]] = {}
    for bench in benches:
        by_type.setdefault(bench.type, []).append(bench)
    queues = [[group[i] for i in _spread(len(group), key=lambda i, g=group: _size(g[i]))] for group in by_type.values()]
    ordered = []
    for turn in range(max(map(len, queues))):
        ordered.extend(queue[turn] for queue in queues if turn < len(queue))
    return ordered


def _size(bench: MicroBench) -> float:
    """A rough work measure, only to order a type's configurations (the real FLOPs come later)."""
    elements = sum(math.prod(shape) for shape in bench.inputs.values())
    weights = bench.consts[0].shape if bench.consts else ()
    if bench.op == "Conv":
        _, _, h, w = bench.inputs["input"]
        stride = bench.attrs["strides"][0]
        return math.prod(weights) * (h // stride) * (w // stride)
    if bench.op == "Gemm":
        return math.prod(weights) * bench.inputs["input"][0]
    return elements


def _spread(n: int, key) -> list[int]:
    """Indices 0..n-1 sorted by `key`, then taken smallest, largest, middle, quarter points, ...
    (midpoints breadth first), so that any prefix spans the whole range."""
    by_size = sorted(range(n), key=key)
    order = list(dict.fromkeys([0, n - 1]))[:n]
    intervals = [(0, n - 1)]
    while intervals:
        lo, hi = intervals.pop(0)
        if hi - lo >= 2:
            mid = (lo + hi) // 2
            order.append(mid)
            intervals += [(lo, mid), (mid, hi)]
    return [by_size[i] for i in order]


# -- coverage ------------------------------------------------------------------------------------

def main_features(layer_type: str, features: dict[str, float]) -> dict[str, float]:
    """The features coverage is judged on: the paper's variables for the type, and FLOPs."""
    names = (*PAPER_VARIABLES.get(layer_type, ("neurons",)), "flops")
    return {name: features[name] for name in names}


def uncovered(layers: list[tuple[str, str, dict]], samples: list[tuple[str, dict]], factor: float = 4.0) -> list[dict]:
    """Layers (name, type, features) with no sample (type, features) of their type whose main
    features are all within `factor` of theirs; each with its nearest sample and the worst ratio."""
    gaps = []
    for name, layer_type, features in layers:
        target = main_features(layer_type, features)
        best, best_ratio = None, math.inf
        for sample_type, sample_features in samples:
            if sample_type != layer_type:
                continue
            theirs = main_features(layer_type, sample_features)
            ratio = max(_ratio(target[k], theirs[k]) for k in target)
            if ratio < best_ratio:
                best, best_ratio = sample_features, ratio
        if best_ratio > factor:
            gaps.append({"layer": name, "type": layer_type, "ratio": best_ratio, "features": target,
                         "nearest": main_features(layer_type, best) if best else None})
    return gaps


def _ratio(a: float, b: float) -> float:
    a, b = max(a, 1.0), max(b, 1.0)
    return max(a / b, b / a)


# -- the kit -------------------------------------------------------------------------------------

def kit_identity(target: str, scale: str, benches: list[MicroBench] | None = None) -> dict:
    """What a kit's contents depend on: target, TVM, the grid's models, and the code that
    describes a layer (its config and features). Equal identities mean a kit can be reused."""
    import tvm

    from ..targets import get_preset

    benches = grid(scale) if benches is None else benches
    here = Path(__file__).resolve().parent.parent
    describe = hashlib.sha256()
    for source in ("compiler/layers.py", "cost_models/model.py"):
        describe.update((here / source).read_bytes())
    identity = {
        **KIT_FORMAT.stamp(), "scale": scale,
        "target": get_preset(target).to_json(), "tvm_version": tvm.__version__,
        "grid_sha256": hashlib.sha256(json.dumps([b.spec for b in benches], sort_keys=True).encode()).hexdigest(),
        "layer_code_sha256": describe.hexdigest(),
    }
    identity["kit_id"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return identity


def build_kit(target: str, out_dir: str | Path, scale: str = "default", progress: bool = True) -> Path:
    """Build every microbenchmark of `scale` for preset `target` into the kit folder `out_dir`
    (kit.json, artifacts/, the runtime package and profile.py). Written atomically; a kit with the
    same identity already there is reused (only its runtime copy is refreshed)."""
    from ..compiler.build import build_graph
    from ..compiler.bundle import publish, staging_dir
    from ..compiler.codegen import copy_runtime, generate_profile_script
    from ..compiler.pipeline import check_toolchain
    from ..targets import get_preset

    preset = get_preset(target)
    out = Path(out_dir)
    benches = grid(scale)
    identity = kit_identity(target, scale, benches)
    if _reusable(out, identity):
        _refresh_runtime(out)
        return out
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / KIT_FILE).is_file())):
        raise KitError(f"{out}: exists and is not a profile kit; refusing to replace it")
    check_toolchain(preset)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with staging_dir(out) as staged:
        entries = []
        report = Progress(len(benches), f"profile kit for {target}", unit="layer", enabled=progress)
        for bench in benches:
            frozen, graph, plan = bench.analyse()
            (segment,) = plan.segments  # one layer, one segment: built as a bundle would build it
            path = staged / "artifacts" / f"{bench.key}.so"
            build_graph(segment.model, segment.inputs, preset, path, f"microbenchmark {bench.key}")
            r = bench.record
            entries.append({
                "key": bench.key, "type": r["type"], "ops": r["ops"], "config": r["config"], "flops": r["flops"],
                "in_bytes": r["in_bytes"], "out_bytes": r["out_bytes"],
                "features": layer_features(r["type"], r["config"], r["flops"], r["in_bytes"], r["out_bytes"]),
                "file": path.relative_to(staged).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size,
                "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in segment.inputs],
            })
            del frozen, graph, plan, segment  # big weights: one microbenchmark in memory at a time
            report.update(note=bench.key)
        report.close()
        kit = {**identity, "tool_version": __version__, "created_unix": int(time.time()),
               "build_seconds": round(time.perf_counter() - started, 1), "entries": entries}
        KIT_FORMAT.write(staged / KIT_FILE, kit)
        copy_runtime(staged)
        generate_profile_script(staged, kit)
        publish(staged, out, as_tar=False)
    return out


def _reusable(out: Path, identity: dict) -> bool:
    if not (out / KIT_FILE).is_file():
        return False
    try:
        kit = read_kit(out)
    except NeurosurgeonError:
        return False
    if kit.get("kit_id") != identity["kit_id"]:
        return False
    return all((out / e["file"]).is_file() and sha256_file(out / e["file"]) == e["sha256"] for e in kit["entries"])


def _refresh_runtime(out: Path) -> None:
    """Bring a reused kit's runtime copy and script up to date with this tree (small text files,
    each replaced atomically)."""
    import tempfile

    from ..compiler.codegen import copy_runtime, generate_profile_script

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        fresh = Path(tmp)
        copy_runtime(fresh)
        generate_profile_script(fresh, read_kit(out))
        for path in [fresh / "profile.py", *sorted(fresh.glob("*/*.py"))]:
            target = out / path.relative_to(fresh)
            if not target.is_file() or target.read_bytes() != path.read_bytes():
                target.parent.mkdir(exist_ok=True)
                os.replace(path, target)
