"""The benchmark networks of Neurosurgeon (Kang et al. 2017) plus two DAGs, as ONNX models.

Every model is built with ``onnx.helper`` (opset 17, float32, batch 1, static shapes) and
deterministic random weights, so tests and demos need no downloads. Weights are He/LeCun
scaled so activations stay in a sane range through deep stacks; the outputs are meaningless
but finite and input dependent. Node names are unique and become the layer names.

    model = build("alexnet")                           # the paper's input size
    tiny = build("vgg16", input_size=32, width=0.125)  # a fast variant for tests
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..compiler.frontend import ONNX_IR_VERSION, ONNX_OPSET
from ..runtime.errors import NeurosurgeonError

__all__ = ["MODELS", "GraphBuilder", "UnknownModelError", "build", "min_input_size", "own_input_size", "resolve", "save"]

INPUT_NAME = "input"


class UnknownModelError(KeyError, ValueError):
    """Unknown model name; catchable as KeyError (a lookup) or ValueError (a bad argument)."""

    def __str__(self) -> str:
        # KeyError would print repr(message), quotes and all.
        return str(self.args[0]) if self.args else ""


class _Collapsed(Exception):
    """A feature map shrank below 1x1: the input is too small for the network."""

    def __init__(self, node: str, shape: tuple[int, ...]):
        super().__init__(f"node {node!r} would output shape {list(shape)}")
        self.node = node
        self.shape = shape


def _window_out(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int) -> int:
    """Output length of a conv/pool window along one axis (floor mode)."""
    return (size + pad_begin + pad_end - kernel) // stride + 1


class GraphBuilder:
    """Appends named layers to an ONNX graph, tracking every tensor's static shape.

    Each method takes the input tensor name and a node name, and returns the output tensor
    name, which equals the node name unless ``out`` gives the name of a graph output.
    With ``rng=None`` no weights are made: a cheap dry run that only checks shapes.
    """

    def __init__(self, input_shape: Sequence[int], rng: np.random.Generator | None = None,
                 width: float = 1.0):
        self.rng = rng
        self.width = width
        # Nodes and weights go straight into the final proto: the big weights (half a GB for
        # VGG-16) are then copied once, not again by make_graph and make_model.
        self.model = onnx.ModelProto()
        self.shapes: dict[str, tuple[int, ...]] = {INPUT_NAME: tuple(input_shape)}
        self._node_names: set[str] = set()

    def ch(self, n: int) -> int:
        """A hidden channel/neuron count scaled by ``width`` (at least 1)."""
        return max(1, round(n * self.width))

    # -- plumbing ---------------------------------------------------------------------------
    def _node(self, op: str, name: str, inputs: Sequence[str], shape: Sequence[int],
              out: str | None = None, **attrs) -> str:
        out = out or name
        if name in self._node_names or out in self.shapes:
            raise ValueError(f"duplicate node or tensor name {name!r}")
        shape = tuple(int(d) for d in shape)
        if any(d < 1 for d in shape):
            raise _Collapsed(name, shape)
        self._node_names.add(name)
        self.model.graph.node.append(helper.make_node(op, list(inputs), [out], name=name, **attrs))
        self.shapes[out] = shape
        return out

    def _const(self, name: str, make: Callable[[np.random.Generator], np.ndarray]) -> str:
        if self.rng is not None:
            value = np.asarray(make(self.rng), dtype="<f4")  # raw_data is little-endian
            tensor = self.model.graph.initializer.add()
            tensor.name = name
            tensor.data_type = TensorProto.FLOAT
            tensor.dims.extend(value.shape)
            tensor.raw_data = value.tobytes()
        return name

    def _weight(self, name: str, shape: tuple[int, ...], fan_in: int, gain: float) -> str:
        # Variance gain / fan_in: gain 2 (He) keeps the second moment through ReLU, gain 1
        # (LeCun) suits linear layers. Uniform, as in PyTorch's default init, because numpy
        # draws uniforms several times faster than normals (VGG-16 has 138M weights).
        limit = math.sqrt(3.0 * gain / fan_in)

        def draw(rng: np.random.Generator) -> np.ndarray:
            w = rng.random(shape, dtype=np.float32)
            w *= np.float32(2 * limit)
            w -= np.float32(limit)
            return w
        return self._const(name, draw)

    def _bias(self, name: str, n: int) -> str:
        # Small non-zero biases so that even constant inputs give varied outputs.
        return self._const(name, lambda rng: 0.01 * rng.standard_normal(n, dtype=np.float32))

    # -- layers -----------------------------------------------------------------------------
    def conv(self, x: str, name: str, out_ch: int, kernel: int, stride: int = 1, pad: int = 0,
             bias: bool = True, gain: float = 2.0, groups: int = 1) -> str:
        """``groups`` = in channels = ``out_ch`` is a depthwise convolution."""
        n, c, h, w = self.shapes[x]
        inputs = [x, self._weight(f"{name}.weight", (out_ch, c // groups, kernel, kernel),
                                  c // groups * kernel * kernel, gain)]
        if bias:
            inputs.append(self._bias(f"{name}.bias", out_ch))
        shape = (n, out_ch, _window_out(h, kernel, stride, pad, pad),
                 _window_out(w, kernel, stride, pad, pad))
        extra = {"group": groups} if groups != 1 else {}
        return self._node("Conv", name, inputs, shape, kernel_shape=[kernel, kernel],
                          strides=[stride, stride], pads=[pad] * 4, **extra)

    def maxpool(self, x: str, name: str, kernel: int, stride: int,
                pads: tuple[int, int, int, int] = (0, 0, 0, 0)) -> str:
        """``pads`` in ONNX order: (top, left, bottom, right)."""
        n, c, h, w = self.shapes[x]
        shape = (n, c, _window_out(h, kernel, stride, pads[0], pads[2]),
                 _window_out(w, kernel, stride, pads[1], pads[3]))
        return self._node("MaxPool", name, [x], shape, kernel_shape=[kernel, kernel],
                          strides=[stride, stride], pads=list(pads))

    def global_avgpool(self, x: str, name: str) -> str:
        n, c = self.shapes[x][:2]
        return self._node("GlobalAveragePool", name, [x], (n, c, 1, 1))

    def flatten(self, x: str, name: str) -> str:
        n, *rest = self.shapes[x]
        return self._node("Flatten", name, [x], (n, math.prod(rest)), axis=1)

    def fc(self, x: str, name: str, n_out: int, gain: float = 2.0, out: str | None = None) -> str:
        n, n_in = self.shapes[x]
        inputs = [x, self._weight(f"{name}.weight", (n_out, n_in), n_in, gain),
                  self._bias(f"{name}.bias", n_out)]
        return self._node("Gemm", name, inputs, (n, n_out), out=out, transB=1)

    def batchnorm(self, x: str, name: str, gamma: tuple[float, float] = (0.8, 1.2)) -> str:
        c = self.shapes[x][1]
        # Random statistics, var > 0; gamma drawn from the given range.
        inputs = [x,
                  self._const(f"{name}.scale", lambda rng: rng.uniform(*gamma, c)),
                  self._const(f"{name}.bias", lambda rng: 0.05 * rng.standard_normal(c)),
                  self._const(f"{name}.mean", lambda rng: 0.05 * rng.standard_normal(c)),
                  self._const(f"{name}.var", lambda rng: rng.uniform(0.8, 1.2, c))]
        return self._node("BatchNormalization", name, inputs, self.shapes[x], epsilon=1e-5)

    def lrn(self, x: str, name: str, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
            bias: float = 1.0) -> str:
        return self._node("LRN", name, [x], self.shapes[x], size=size, alpha=alpha, beta=beta,
                          bias=bias)

    def relu(self, x: str, name: str) -> str:
        return self._node("Relu", name, [x], self.shapes[x])

    def sigmoid(self, x: str, name: str) -> str:
        return self._node("Sigmoid", name, [x], self.shapes[x])

    def hardtanh(self, x: str, name: str) -> str:
        # Opset >= 11 Clip takes its bounds as inputs, not attributes.
        lo = self._const(f"{name}.min", lambda rng: np.array(-1.0))
        hi = self._const(f"{name}.max", lambda rng: np.array(1.0))
        return self._node("Clip", name, [x, lo, hi], self.shapes[x])

    def relu6(self, x: str, name: str) -> str:
        lo = self._const(f"{name}.min", lambda rng: np.array(0.0))
        hi = self._const(f"{name}.max", lambda rng: np.array(6.0))
        return self._node("Clip", name, [x, lo, hi], self.shapes[x])

    def dropout(self, x: str, name: str) -> str:
        # Identity at inference (no training_mode input); kept because the paper counts it.
        return self._node("Dropout", name, [x], self.shapes[x])

    def softmax(self, x: str, name: str, out: str | None = None) -> str:
        return self._node("Softmax", name, [x], self.shapes[x], out=out, axis=-1)

    def add(self, a: str, b: str, name: str) -> str:
        return self._node("Add", name, [a, b], self.shapes[a])

    def concat(self, xs: Sequence[str], name: str) -> str:
        first = self.shapes[xs[0]]
        shape = (first[0], sum(self.shapes[x][1] for x in xs), *first[2:])
        return self._node("Concat", name, xs, shape, axis=1)

    # -- result -----------------------------------------------------------------------------
    def to_model(self, outputs: Sequence[str], graph_name: str, doc: str) -> onnx.ModelProto:
        """Finish and return the model; the builder must not be used afterwards."""
        def info(t: str) -> onnx.ValueInfoProto:
            return helper.make_tensor_value_info(t, TensorProto.FLOAT, list(self.shapes[t]))

        model, graph = self.model, self.model.graph
        model.ir_version = ONNX_IR_VERSION
        model.opset_import.append(helper.make_opsetid("", ONNX_OPSET))
        model.producer_name = "neurosurgeon.compiler.zoo"
        model.doc_string = doc
        graph.name = graph_name
        graph.doc_string = doc
        graph.input.append(info(INPUT_NAME))
        graph.output.extend(info(t) for t in outputs)
        # Intermediate shapes are declared too: the full checker then cross-checks this
        # builder's shape arithmetic against ONNX shape inference.
        graph.value_info.extend(info(n.output[0]) for n in graph.node
                                if n.output[0] not in outputs)
        return model


# -- the networks ----------------------------------------------------------------------------
def _classifier_head(g: GraphBuilder, x: str, classes: int) -> str:
    """fc6 -> relu -> dropout -> fc7 -> relu -> dropout -> fc8 -> softmax (AlexNet, VGG)."""
    for i in (6, 7):
        x = g.dropout(g.relu(g.fc(x, f"fc{i}", g.ch(4096)), f"relu{i}"), f"drop{i}")
    return g.softmax(g.fc(x, "fc8", classes, gain=1.0), "softmax", out="output")


def _alexnet(g: GraphBuilder) -> list[str]:
    # conv1 pads 2 (as torchvision) so a 224 input gives Caffe's 227-input shapes: 55, 27, 13, 6.
    x = g.conv(INPUT_NAME, "conv1", g.ch(96), 11, stride=4, pad=2)
    x = g.maxpool(g.lrn(g.relu(x, "relu1"), "lrn1"), "pool1", 3, 2)
    x = g.conv(x, "conv2", g.ch(256), 5, pad=2)
    x = g.maxpool(g.lrn(g.relu(x, "relu2"), "lrn2"), "pool2", 3, 2)
    for i, c in ((3, 384), (4, 384), (5, 256)):
        x = g.relu(g.conv(x, f"conv{i}", g.ch(c), 3, pad=1), f"relu{i}")
    x = g.flatten(g.maxpool(x, "pool5", 3, 2), "flatten")
    return [_classifier_head(g, x, 1000)]


_VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _vgg16(g: GraphBuilder) -> list[str]:
    x = INPUT_NAME
    for s, stage in enumerate(_VGG16_STAGES, 1):
        for i, c in enumerate(stage, 1):
            x = g.relu(g.conv(x, f"conv{s}_{i}", g.ch(c), 3, pad=1), f"relu{s}_{i}")
        x = g.maxpool(x, f"pool{s}", 2, 2)
    return [_classifier_head(g, g.flatten(x, "flatten"), 1000)]


def _deepface(g: GraphBuilder) -> list[str]:
    x = g.relu(g.conv(INPUT_NAME, "c1", g.ch(32), 11), "relu1")
    # End padding 1 = Caffe's ceil-mode pooling (71x71 in the paper), without relying on
    # ceil_mode semantics, which differ between ONNX versions and runtimes.
    x = g.maxpool(x, "m2", 3, 2, pads=(0, 0, 1, 1))
    x = g.relu(g.conv(x, "c3", g.ch(16), 9), "relu3")
    # L4-L6 are locally connected (unshared weights) in DeepFace; ONNX has no such op, so
    # convolutions with the same kernels, strides and filter counts stand in for them.
    for name, kernel, stride in (("l4", 9, 1), ("l5", 7, 2), ("l6", 5, 1)):
        x = g.relu(g.conv(x, name, g.ch(16), kernel, stride=stride), f"relu{name[1:]}")
    x = g.relu(g.fc(g.flatten(x, "flatten"), "f7", g.ch(4096)), "relu7")
    return [g.softmax(g.fc(x, "f8", 4030, gain=1.0), "softmax", out="output")]


def _lenet(g: GraphBuilder) -> list[str]:
    # Caffe's LeNet has no activation after its convolutions, hence gain 1.
    x = g.maxpool(g.conv(INPUT_NAME, "conv1", g.ch(20), 5, gain=1.0), "pool1", 2, 2)
    x = g.maxpool(g.conv(x, "conv2", g.ch(50), 5, gain=1.0), "pool2", 2, 2)
    x = g.relu(g.fc(g.flatten(x, "flatten"), "ip1", g.ch(500)), "relu1")
    return [g.softmax(g.fc(x, "ip2", 10, gain=1.0), "softmax", out="output")]


def _asr(g: GraphBuilder) -> list[str]:
    x = INPUT_NAME
    for i in range(1, 7):
        # Sigmoid outputs have second moment ~1/4, so gain 4 keeps pre-activations near unit
        # variance (the first layer sees unit-variance features and gets gain 1).
        x = g.sigmoid(g.fc(x, f"fc{i}", g.ch(2048), gain=1.0 if i == 1 else 4.0), f"sigmoid{i}")
    return [g.softmax(g.fc(x, "fc7", 1706, gain=4.0), "softmax", out="output")]


def _senna(classes: int) -> Callable[[GraphBuilder], list[str]]:
    def build_tagger(g: GraphBuilder) -> list[str]:
        x = g.hardtanh(g.fc(INPUT_NAME, "fc1", g.ch(300), gain=1.0), "hardtanh")
        # SENNA outputs raw tag scores (decoded by Viterbi/argmax), so no softmax.
        return [g.fc(x, "fc2", classes, gain=1.0, out="output")]
    return build_tagger


def _basic_block(g: GraphBuilder, x: str, prefix: str, channels: int, stride: int) -> str:
    y = g.relu(g.batchnorm(g.conv(x, f"{prefix}.conv1", channels, 3, stride, 1, bias=False),
                           f"{prefix}.bn1"), f"{prefix}.relu1")
    # A small gamma on the last BN of each residual branch (the idea of torchvision's
    # zero_init_residual) stops the residual stream from growing block after block.
    y = g.batchnorm(g.conv(y, f"{prefix}.conv2", channels, 3, 1, 1, bias=False), f"{prefix}.bn2",
                    gamma=(0.2, 0.4))
    if stride != 1 or g.shapes[x][1] != channels:
        x = g.batchnorm(g.conv(x, f"{prefix}.downsample.conv", channels, 1, stride, bias=False,
                               gain=1.0), f"{prefix}.downsample.bn")
    return g.relu(g.add(y, x, f"{prefix}.add"), f"{prefix}.relu2")


def _resnet18(g: GraphBuilder) -> list[str]:
    x = g.relu(g.batchnorm(g.conv(INPUT_NAME, "conv1", g.ch(64), 7, 2, 3, bias=False), "bn1"),
               "relu1")
    x = g.maxpool(x, "maxpool", 3, 2, pads=(1, 1, 1, 1))
    for stage, c in enumerate((64, 128, 256, 512), 1):
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            x = _basic_block(g, x, f"layer{stage}.{block}", g.ch(c), stride)
    x = g.flatten(g.global_avgpool(x, "avgpool"), "flatten")
    return [g.softmax(g.fc(x, "fc", 1000, gain=1.0), "softmax", out="output")]


def _inverted_residual(g: GraphBuilder, x: str, p: str, expand: int, out_ch: int, stride: int) -> str:
    in_ch = g.shapes[x][1]
    hidden = in_ch * expand
    y = x
    if expand != 1:
        y = g.relu6(g.batchnorm(g.conv(y, f"{p}.expand", hidden, 1, bias=False), f"{p}.expand_bn"),
                    f"{p}.expand_relu6")
    y = g.relu6(g.batchnorm(g.conv(y, f"{p}.dw", hidden, 3, stride, 1, bias=False, groups=hidden),
                            f"{p}.dw_bn"), f"{p}.dw_relu6")
    y = g.batchnorm(g.conv(y, f"{p}.project", out_ch, 1, bias=False, gain=1.0), f"{p}.project_bn",
                    gamma=(0.2, 0.4) if stride == 1 and in_ch == out_ch else (0.8, 1.2))
    return g.add(y, x, f"{p}.add") if stride == 1 and in_ch == out_ch else y


def _mobilenetv2(g: GraphBuilder) -> list[str]:
    x = g.relu6(g.batchnorm(g.conv(INPUT_NAME, "conv1", g.ch(32), 3, 2, 1, bias=False), "bn1"), "relu6_1")
    block = 0
    for expand, c, repeats, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(repeats):
            x = _inverted_residual(g, x, f"block{block}", expand, g.ch(c), stride if i == 0 else 1)
            block += 1
    x = g.relu6(g.batchnorm(g.conv(x, "conv_last", g.ch(1280), 1, bias=False), "bn_last"), "relu6_last")
    x = g.dropout(g.flatten(g.global_avgpool(x, "avgpool"), "flatten"), "dropout")
    return [g.softmax(g.fc(x, "fc", 1000, gain=1.0), "softmax", out="output")]


def _inception_module(g: GraphBuilder, x: str, p: str, c1: int, c3r: int, c3: int, c5r: int,
                      c5: int, pool_proj: int) -> str:
    def conv_relu(t: str, name: str, c: int, k: int) -> str:
        return g.relu(g.conv(t, f"{p}.{name}", g.ch(c), k, pad=k // 2), f"{p}.relu_{name}")

    b1 = conv_relu(x, "1x1", c1, 1)
    b2 = conv_relu(conv_relu(x, "3x3_reduce", c3r, 1), "3x3", c3, 3)
    b3 = conv_relu(conv_relu(x, "5x5_reduce", c5r, 1), "5x5", c5, 5)
    b4 = conv_relu(g.maxpool(x, f"{p}.pool", 3, 1, pads=(1, 1, 1, 1)), "pool_proj", pool_proj, 1)
    return g.concat([b1, b2, b3, b4], f"{p}.concat")


def _inception(g: GraphBuilder) -> list[str]:
    # GoogLeNet's stem and modules 3a, 3b, 4a. Pool padding 1 (floor mode) gives the same
    # sizes as GoogLeNet's unpadded ceil-mode pools.
    pad1 = (1, 1, 1, 1)
    x = g.relu(g.conv(INPUT_NAME, "conv1", g.ch(64), 7, 2, 3), "relu1")
    x = g.maxpool(x, "pool1", 3, 2, pads=pad1)
    x = g.relu(g.conv(x, "conv2_reduce", g.ch(64), 1), "relu2_reduce")
    x = g.relu(g.conv(x, "conv2", g.ch(192), 3, pad=1), "relu2")
    x = g.maxpool(x, "pool2", 3, 2, pads=pad1)
    x = _inception_module(g, x, "inception3a", 64, 96, 128, 16, 32, 32)
    # Auxiliary classifier: a second graph output, so multi-output handling gets exercised.
    aux = g.flatten(g.global_avgpool(x, "aux.avgpool"), "aux.flatten")
    aux = g.softmax(g.fc(aux, "aux.fc", 1000, gain=1.0), "aux.softmax", out="aux")
    x = _inception_module(g, x, "inception3b", 128, 128, 192, 32, 96, 64)
    x = g.maxpool(x, "pool3", 3, 2, pads=pad1)
    x = _inception_module(g, x, "inception4a", 192, 96, 208, 16, 48, 64)
    x = g.flatten(g.global_avgpool(x, "avgpool"), "flatten")
    return [g.softmax(g.fc(x, "fc", 1000, gain=1.0), "softmax", out="output"), aux]


@dataclass(frozen=True)
class _Spec:
    description: str
    make: Callable[[GraphBuilder], list[str]]
    input_shape: tuple[int, ...]  # without the batch; (C, H, W) for image models

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3


_SPECS: dict[str, _Spec] = {
    "alexnet": _Spec("AlexNet (IMC): 5 conv with ReLU, LRN and max-pool, fc6-fc8 with dropout, "
                     "softmax over 1000 classes; 224x224 input, conv1 padded so the shapes "
                     "equal Caffe's 227x227 ones", _alexnet, (3, 224, 224)),
    "vgg16": _Spec("VGG-16 (VGG): 13 conv 3x3 + ReLU in 5 stages with max-pool, fc 4096, 4096, "
                   "1000 with dropout, softmax", _vgg16, (3, 224, 224)),
    "deepface": _Spec("DeepFace (FACE): C1 conv, M2 max-pool, C3 conv, L4-L6 as convolutions "
                      "standing in for the locally connected layers, F7 fc 4096, F8 fc 4030 "
                      "identities, softmax", _deepface, (3, 152, 152)),
    "lenet": _Spec("LeNet (DIG): Caffe's MNIST net, conv 20, pool, conv 50, pool, fc 500 + "
                   "ReLU, fc 10, softmax", _lenet, (1, 28, 28)),
    "asr": _Spec("Kaldi-style ASR DNN: 440 features (11 frames x 40 fbank), 6 x (fc 2048 + "
                 "sigmoid), fc 1706 senones, softmax", _asr, (440,)),
    "pos": _Spec("SENNA part-of-speech tagger: 5-word window x 50-d vectors, fc 300, hardtanh, "
                 "fc 45 tag scores (no softmax)", _senna(45), (250,)),
    "ner": _Spec("SENNA named-entity tagger: 5-word window x 50-d vectors, fc 300, hardtanh, "
                 "fc 17 tag scores (no softmax)", _senna(17), (250,)),
    "chk": _Spec("SENNA chunker: 5-word window x 50-d vectors, fc 300, hardtanh, fc 23 tag "
                 "scores (no softmax)", _senna(23), (250,)),
    "resnet18": _Spec("ResNet-18 DAG: conv 7x7 + BN + ReLU + max-pool, 4 stages of 2 basic "
                      "blocks with residual Add (1x1 conv + BN downsample), global average "
                      "pool, fc 1000, softmax", _resnet18, (3, 224, 224)),
    "mobilenetv2": _Spec("MobileNetV2 DAG: conv 3x3/2 + BN + ReLU6, 17 inverted residual blocks "
                         "(1x1 expand, 3x3 depthwise, 1x1 linear projection, residual Add where shapes "
                         "match), conv 1x1 1280, global average pool, fc 1000, softmax",
                         _mobilenetv2, (3, 224, 224)),
    "inception": _Spec("GoogLeNet-style DAG: stem, inception modules 3a, 3b, 4a (4 branches "
                       "joined by Concat), global average pool, fc 1000, softmax as 'output'; "
                       "auxiliary classifier after 3a as second output 'aux'",
                       _inception, (3, 224, 224)),
}

MODELS: dict[str, str] = {name: spec.description for name, spec in _SPECS.items()}


def _spec(name: str) -> _Spec:
    try:
        return _SPECS[name]
    except (KeyError, TypeError):
        raise UnknownModelError(
            f"unknown model {name!r}; valid names: {', '.join(_SPECS)}") from None


def _input_shape(name: str, spec: _Spec, input_size: int | None) -> tuple[int, ...]:
    if input_size is None:
        return (1, *spec.input_shape)
    if not spec.is_image:
        raise ValueError(f"model {name!r} takes a fixed {list(spec.input_shape)} vector input; "
                         f"input_size applies to image models only")
    if not isinstance(input_size, numbers.Integral) or isinstance(input_size, bool):
        raise ValueError(f"input_size must be an integer, got {input_size!r}")
    if input_size < 1:
        raise ValueError(f"input_size must be positive, got {input_size}; the minimum "
                         f"input_size for {name!r} is {min_input_size(name)}")
    return (1, spec.input_shape[0], int(input_size), int(input_size))


def own_input_size(name: str) -> int | None:
    """The spatial input size (H = W) the paper's network takes; None for non-image models."""
    spec = _spec(name)
    return spec.input_shape[-1] if spec.is_image else None


@functools.cache
def min_input_size(name: str) -> int | None:
    """Smallest spatial input size (H = W) that ``name`` accepts; None for non-image models."""
    spec = _spec(name)
    if not spec.is_image:
        return None

    def fits(size: int) -> bool:
        try:
            spec.make(GraphBuilder((1, spec.input_shape[0], size, size)))
        except _Collapsed:
            return False
        return True

    # Output sizes never shrink as the input grows, so binary search works.
    lo, hi = 1, spec.input_shape[1]
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
    return lo


def build(name: str, input_size: int | None = None, width: float = 1.0,
          seed: int = 0) -> onnx.ModelProto:
    """Build benchmark ``name`` (a key of MODELS) as an ONNX model with random weights.

    ``input_size`` sets H = W of image models (default: the paper's size); ``width`` scales
    every hidden channel and neuron count (rounded, at least 1), not inputs or classes.
    The same arguments always give a byte-identical model.
    """
    spec = _spec(name)
    shape = _input_shape(name, spec, input_size)
    if not (isinstance(width, numbers.Real) and math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive number, got {width!r}")
    # Seeded by name too, so that models built with the same seed do not share weights.
    rng = np.random.default_rng([zlib.crc32(name.encode()), seed])
    g = GraphBuilder(shape, rng, width)
    try:
        outputs = spec.make(g)
    except _Collapsed as e:
        raise ValueError(f"input_size {input_size} is too small for {name!r}: {e}; the minimum "
                         f"input_size for {name!r} is {min_input_size(name)}") from None
    model = g.to_model(outputs, name, spec.description)
    helper.set_model_props(model, {"zoo.model": name, "zoo.seed": str(seed),
                                   "zoo.width": repr(float(width))})
    return model


def save(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write ``model`` as a single .onnx file (weights inline, no external data)."""
    onnx.save_model(model, os.fspath(path), save_as_external_data=False)


def resolve(model: str | os.PathLike, input_size: int | None = None) -> tuple[str | os.PathLike | onnx.ModelProto, str | None]:
    """A model as users name it: an ONNX file, or a zoo model (built here, at `input_size` for image
    models). Returns (what the compiler takes, the name to give the model: None keeps the file's)."""
    if os.path.exists(model) or model not in _SPECS:
        if input_size is not None:
            raise NeurosurgeonError(f"{model}: --input-size applies to zoo models ({', '.join(_SPECS)}); "
                                    "use --input-shape NAME=DIMS for a file")
        return model, None
    try:
        return build(str(model), input_size=input_size), str(model)
    except ValueError as err:
        raise NeurosurgeonError(str(err)) from None
