"""Candidate cuts and the segments between them.

A cut is a prefix of the layers' topological order: cut i runs segments 0..i-1 on the mobile side and
the rest on the server. In a DAG a cut may cross several tensors (a residual branch, the arms of
an inception module). Segments are the slices between consecutive candidate cuts, each a
standalone ONNX graph whose inputs and outputs are crossing tensors, so every cut is served by
the same artifacts and every weight is built once per target.

Which boundaries are candidates is a `Partitioner`'s choice; slicing does not depend on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..runtime.errors import NeurosurgeonError
from ..runtime.tensors import TensorInfo
from .layers import LAYER_TYPES, SHAPE_ONLY_OPS, LayerGraph

__all__ = ["DEFAULT_PARTITIONER", "PARTITIONERS", "Cut", "FusedLayersPartitioner", "LayerBoundaryPartitioner",
           "PartitionPlan", "Partitioner", "Segment", "Traffic", "UploadEnvelopePartitioner", "epilogue_boundaries",
           "get_partitioner", "partition"]


@dataclass
class Cut:
    index: int  # segments [0, index) run on the mobile side
    layer_boundary: int  # layers [0, layer_boundary) run on the mobile side
    after_layer: str | None
    crossing: list[TensorInfo]  # uploaded: made on the mobile side (or a model input), needed by the server
    mobile_outputs: list[TensorInfo]  # model outputs already complete on the mobile side
    server_outputs: list[TensorInfo]  # model outputs the server sends back

    @property
    def upload_bytes(self) -> int:
        return sum(t.nbytes for t in self.crossing)

    @property
    def download_bytes(self) -> int:
        return sum(t.nbytes for t in self.server_outputs)

    def to_json(self) -> dict:
        return {"index": self.index, "layer_boundary": self.layer_boundary, "after_layer": self.after_layer,
                "crossing": [t.to_json() for t in self.crossing], "upload_bytes": self.upload_bytes,
                "mobile_outputs": [t.name for t in self.mobile_outputs],
                "server_outputs": [t.name for t in self.server_outputs], "download_bytes": self.download_bytes}


@dataclass
class Segment:
    index: int
    layers: tuple[int, int]  # [first, end) layer indices
    layer_names: list[str]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    model: onnx.ModelProto
    flops: int

    def to_json(self) -> dict:
        return {"index": self.index, "layers": list(self.layers), "layer_names": self.layer_names, "flops": self.flops,
                "inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs]}


@dataclass
class PartitionPlan:
    partitioner: str
    cuts: list[Cut]
    segments: list[Segment]


class Partitioner(ABC):
    """Chooses which layer boundaries are candidate cuts. A new strategy is a new subclass."""

    name: str

    @abstractmethod
    def boundaries(self, graph: LayerGraph) -> list[int]:
        """Sorted layer boundaries, always including 0 (cloud-only) and len(layers) (mobile-only)."""


class LayerBoundaryPartitioner(Partitioner):
    """Every layer boundary is a candidate (the Neurosurgeon setting)."""

    name = "layer-boundaries"

    def boundaries(self, graph: LayerGraph) -> list[int]:
        return list(range(len(graph.layers) + 1))


class FusedLayersPartitioner(Partitioner):
    """Every layer boundary except those inside what a compiler fuses: a pointwise layer (activation,
    batch norm, an elementwise op whose other operands are constants, a residual add) that alone reads
    the output of the layer just before it stays in that layer's segment (conv + BN + ReLU, depthwise
    + BN + ReLU6, Gemm + bias + activation, conv + BN + the skip connection's add + ReLU).

    Such a boundary never pays: cutting before the pointwise layer uploads the same bytes as cutting
    after it (same shape, and fewer after compression: ReLU's zeros), and only moves that layer to the
    server, where it runs unfused, as a pass over memory of its own, instead of inside the device's
    kernel for nearly nothing. The segments keep the fusion of a whole build, and there are fewer of them."""

    name = "fused-layers"

    def boundaries(self, graph: LayerGraph) -> list[int]:
        inside = set(epilogue_boundaries(graph))
        return [b for b in range(len(graph.layers) + 1) if b not in inside]


class UploadEnvelopePartitioner(Partitioner):
    """The fused-layers boundaries that lie on the lower envelope of the cut costs when the server, under
    whatever load, computes every layer at least as fast as the device: a boundary is kept only where it
    uploads fewer bytes than every boundary before it, or downloads fewer (cloud-only and device-only
    are always kept).

    Why that is the envelope: for prefix cuts j < k, latency_j - latency_k = sum over the layers
    between them of (loaded server time - device time) + (up_j - up_k) / uplink + (down_j - down_k) /
    downlink; the round trip and the server's queue are the same for every cut that offloads. With
    every layer no slower on the server and up_j <= up_k, down_j <= down_k, the difference is <= 0 at
    every bandwidth, round trip and queue: cut k is never better than cut j. Mobile energy likewise,
    where the device's compute power is at least the radio's active power (which it pays while the
    server computes): (device power x device time - radio power x server time) >= 0 per layer. Outside
    that range (a device faster than the loaded server, or coded uploads whose ratios differ a lot
    between the two cuts) a pruned cut could win; `bench decisions` counts how often it would. The
    default."""

    name = "upload-envelope"

    def boundaries(self, graph: LayerGraph) -> list[int]:
        traffic = Traffic(graph)
        n = len(graph.layers)
        kept, best_up, best_down = [], None, None
        for b in FusedLayersPartitioner().boundaries(graph):
            up = sum(t.nbytes for t in traffic.crossing(b))
            down = sum(t.nbytes for t in traffic.server_outputs(b))
            if b in (0, n) or best_up is None or up < best_up or down < best_down:
                kept.append(b)
            if b < n:
                best_up = up if best_up is None else min(best_up, up)
                best_down = down if best_down is None else min(best_down, down)
        return kept


# Operators that map each element on its own (the others' operands constants): a compiler's epilogues.
POINTWISE_OPS = LAYER_TYPES["activation"] | LAYER_TYPES["elementwise"] | {"BatchNormalization"}


def epilogue_boundaries(graph: LayerGraph) -> list[int]:
    """Boundaries b where layer b is a pointwise epilogue of layer b - 1: it reads one computed tensor
    made by layer b - 1 and read by no other layer nor returned, and writes a tensor of the same size;
    any other tensor it reads (a skip connection's, in a residual add) has that size too and comes
    from an earlier layer. Cutting before a residual add uploads both its operands, after it one."""
    producer = graph.producer_layer()
    readers: dict[str, int] = {}
    for layer in graph.layers:
        for name in layer.inputs:
            readers[name] = readers.get(name, 0) + 1
    outputs = {t.name for t in graph.model.outputs}
    tensors = graph.model.tensors
    found = []
    for b in range(1, len(graph.layers)):
        layer = graph.layers[b]
        compute = [op for op in layer.ops if op not in SHAPE_ONLY_OPS]
        if not compute or not set(compute) <= POINTWISE_OPS or len(layer.outputs) != 1:
            continue
        sources = [name for name in layer.inputs if producer.get(name) == b - 1]
        if (len(sources) == 1 and readers[sources[0]] == 1 and sources[0] not in outputs
                and all(tensors[name].nbytes == layer.outputs[0].nbytes for name in layer.inputs)):
            found.append(b)
    return found


PARTITIONERS: dict[str, type[Partitioner]] = {
    p.name: p for p in (FusedLayersPartitioner, LayerBoundaryPartitioner, UploadEnvelopePartitioner)}
# A boundary no planner would choose in the stated range is not a segment boundary: fewer, longer segments
# keep more of a whole build's speed (MobileNetV2's every cut within 1.02-1.09x of its monolithic build,
# against 1.17-1.66x over fused-layers' 55 segments), compile faster and cost fewer calls.
DEFAULT_PARTITIONER = UploadEnvelopePartitioner.name


def get_partitioner(name: str | None = None) -> Partitioner:
    """The partitioner called `name` (None: the default)."""
    name = name or DEFAULT_PARTITIONER
    if name not in PARTITIONERS:
        raise NeurosurgeonError(f"unknown partitioner {name!r}: expected one of {', '.join(sorted(PARTITIONERS))}")
    return PARTITIONERS[name]()


class Traffic:
    """What crosses each layer boundary of `graph` when the layers before it run on the mobile side."""

    def __init__(self, graph: LayerGraph):
        frozen = graph.model
        self.tensors = frozen.tensors
        self.producer = graph.producer_layer()
        self.readers: dict[str, list[int]] = {}
        for layer in graph.layers:
            for name in layer.inputs:
                self.readers.setdefault(name, []).append(layer.index)
        # tensor -> last layer that reads it; model outputs are read "after" every layer
        self.last_use = {name: max(indices) for name, indices in self.readers.items()}
        self.model_outputs = [t.name for t in frozen.outputs]
        for name in self.model_outputs:
            self.last_use[name] = len(graph.layers)
        # Tensors in the order they come into being: model inputs first, then layer by layer.
        self.birth_order = [t.name for t in frozen.inputs] + [t.name for layer in graph.layers for t in layer.outputs]

    def _made_before(self, name: str, boundary: int) -> bool:
        return self.producer.get(name, -1) < boundary

    def crossing(self, b: int) -> list[TensorInfo]:
        """Uploaded at boundary b: made before it (or a model input) and read after it."""
        return [self.tensors[n] for n in self.birth_order
                if self._made_before(n, b) and any(r >= b for r in self.readers.get(n, []))]

    def mobile_outputs(self, b: int) -> list[TensorInfo]:
        return [self.tensors[n] for n in self.model_outputs if self._made_before(n, b)]

    def server_outputs(self, b: int) -> list[TensorInfo]:
        """Downloaded at boundary b: the model outputs the server makes."""
        return [self.tensors[n] for n in self.model_outputs if not self._made_before(n, b)]


def partition(graph: LayerGraph, partitioner: Partitioner | str | None = None) -> PartitionPlan:
    """The candidate cuts of `graph` and the segments between them; `partitioner` an instance or a name
    (None: the default)."""
    partitioner = partitioner if isinstance(partitioner, Partitioner) else get_partitioner(partitioner)
    bounds = partitioner.boundaries(graph)
    n_layers = len(graph.layers)
    if not bounds or bounds[0] != 0 or bounds[-1] != n_layers or bounds != sorted(set(bounds)):
        raise ValueError(f"partitioner {partitioner.name} returned invalid boundaries {bounds} for {n_layers} layers")

    traffic = Traffic(graph)
    cuts = []
    for i, b in enumerate(bounds):
        cuts.append(Cut(index=i, layer_boundary=b, after_layer=graph.layers[b - 1].name if b > 0 else None,
                        crossing=traffic.crossing(b), mobile_outputs=traffic.mobile_outputs(b),
                        server_outputs=traffic.server_outputs(b)))

    segments = [_slice(graph, i, start, end, traffic.birth_order, traffic.last_use)
                for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:]))]
    return PartitionPlan(partitioner=partitioner.name, cuts=cuts, segments=segments)


def _slice(graph: LayerGraph, index: int, start: int, end: int, birth_order: list[str],
           last_use: dict[str, int]) -> Segment:
    frozen = graph.model
    nodes = frozen.graph.node
    layers = graph.layers[start:end]
    member_nodes = [nodes[n] for layer in layers for n in layer.nodes]
    produced = {out for node in member_nodes for out in node.output if out}
    constants = frozen.constant_names()
    read = {name for node in member_nodes for name in node.input if name}
    inputs = [frozen.tensors[n] for n in birth_order if n in read and n not in produced and n not in constants]
    outputs = [frozen.tensors[n] for n in birth_order if n in produced and last_use.get(n, -1) >= end]

    name = f"{frozen.name}_seg{index:03d}"
    internal = [frozen.tensors[n] for n in produced if n in frozen.tensors and n not in {t.name for t in outputs}]
    seg_graph = helper.make_graph(
        nodes=[_copy(node) for node in member_nodes],
        name=name,
        inputs=[_value_info(t) for t in inputs],
        outputs=[_value_info(t) for t in outputs],
        initializer=[_copy(init) for init in frozen.graph.initializer if init.name in read],
        value_info=[_value_info(t) for t in internal],
    )
    model = helper.make_model(seg_graph, opset_imports=list(frozen.model.opset_import),
                              producer_name="neurosurgeon", ir_version=frozen.model.ir_version)
    return Segment(index=index, layers=(start, end), layer_names=[layer.name for layer in layers],
                   inputs=inputs, outputs=outputs, model=model, flops=sum(layer.flops for layer in layers))


def _copy(proto):
    duplicate = type(proto)()
    duplicate.CopyFrom(proto)
    return duplicate


def _value_info(t: TensorInfo) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(t.name, helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)), list(t.shape))
