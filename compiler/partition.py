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

from ..runtime.tensors import TensorInfo
from .layers import LayerGraph

__all__ = ["Cut", "LayerBoundaryPartitioner", "PartitionPlan", "Partitioner", "Segment", "partition"]


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


def partition(graph: LayerGraph, partitioner: Partitioner | None = None) -> PartitionPlan:
    partitioner = partitioner or LayerBoundaryPartitioner()
    bounds = partitioner.boundaries(graph)
    n_layers = len(graph.layers)
    if not bounds or bounds[0] != 0 or bounds[-1] != n_layers or bounds != sorted(set(bounds)):
        raise ValueError(f"partitioner {partitioner.name} returned invalid boundaries {bounds} for {n_layers} layers")

    frozen = graph.model
    tensors = frozen.tensors
    producer = graph.producer_layer()
    readers: dict[str, list[int]] = {}
    for layer in graph.layers:
        for name in layer.inputs:
            readers.setdefault(name, []).append(layer.index)
    # tensor -> last layer that reads it; model outputs are read "after" every layer
    last_use = {name: max(indices) for name, indices in readers.items()}
    model_outputs = [t.name for t in frozen.outputs]
    for name in model_outputs:
        last_use[name] = n_layers
    # Tensors in the order they come into being: model inputs first, then layer by layer.
    birth_order = [t.name for t in frozen.inputs] + [t.name for layer in graph.layers for t in layer.outputs]

    def made_before(name: str, boundary: int) -> bool:
        return producer.get(name, -1) < boundary

    cuts = []
    for i, b in enumerate(bounds):
        crossing = [tensors[n] for n in birth_order if made_before(n, b) and any(r >= b for r in readers.get(n, []))]
        cuts.append(Cut(
            index=i, layer_boundary=b,
            after_layer=graph.layers[b - 1].name if b > 0 else None,
            crossing=crossing,
            mobile_outputs=[tensors[n] for n in model_outputs if made_before(n, b)],
            server_outputs=[tensors[n] for n in model_outputs if not made_before(n, b)],
        ))

    segments = [_slice(graph, i, start, end, birth_order, last_use)
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
