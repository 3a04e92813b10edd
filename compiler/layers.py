"""Group a frozen model's operators into layers in the Neurosurgeon sense, as a networkx DAG.

A layer is one compute operator (conv, fully connected, pooling, activation, normalisation, ...)
plus the cheap shape-only operators around it (Reshape, Flatten, Dropout at inference, ...): those
move no data worth a cut of their own, so a boundary next to them would duplicate its neighbour.
Each layer records the paper's regression variables (its "configuration"), FLOPs and its outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import networkx as nx
import onnx
from onnx import helper

from ..runtime.tensors import TensorInfo
from .frontend import FrozenModel

LAYER_TYPES: dict[str, set[str]] = {
    "conv": {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "DeformConv"},
    "fc": {"Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "Einsum"},
    "pooling": {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool", "MaxRoiPool", "RoiAlign"},
    "activation": {"Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish", "Clip",
                   "Softplus", "Softsign", "PRelu", "Gelu", "Mish", "ThresholdedRelu", "Erf", "Swish"},
    "normalization": {"BatchNormalization", "LRN", "LayerNormalization", "InstanceNormalization",
                      "GroupNormalization", "MeanVarianceNormalization", "LpNormalization", "RMSNormalization"},
    "softmax": {"Softmax", "LogSoftmax", "Hardmax"},
    "argmax": {"ArgMax", "ArgMin", "TopK"},
    "elementwise": {"Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean", "Pow", "Sqrt", "Exp", "Log", "Abs", "Neg",
                    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Where", "Not", "And", "Or",
                    "Equal", "Less", "Greater", "Mod"},
    "concat": {"Concat"},
    "reduce": {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceL1",
               "ReduceLogSumExp", "ReduceSumSquare"},
    "resize": {"Resize", "Upsample", "DepthToSpace", "SpaceToDepth"},
    "data": {"Gather", "GatherElements", "GatherND", "ScatterND", "ScatterElements", "Slice", "Split", "Pad",
             "Tile", "Expand", "Transpose", "Cast", "OneHot", "Range", "ConstantOfShape", "NonZero"},
}
# Operators that only relabel a tensor's shape (or pass it through at inference): no cut of their own.
__all__ = ["LAYER_TYPES", "SHAPE_ONLY_OPS", "Layer", "LayerGraph", "build_layer_graph", "layer_config", "layer_type",
           "node_flops"]

SHAPE_ONLY_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"}
_TYPE_OF_OP = {op: kind for kind, ops in LAYER_TYPES.items() for op in ops}


def layer_type(op_type: str) -> str:
    if op_type in SHAPE_ONLY_OPS:
        return "reshape"
    return _TYPE_OF_OP.get(op_type, "other")


@dataclass
class Layer:
    index: int
    name: str
    type: str
    ops: list[str]
    nodes: list[int]  # indices into the frozen model's node list
    config: dict
    flops: int
    inputs: list[str] = field(default_factory=list)  # tensors produced outside the layer
    outputs: list[TensorInfo] = field(default_factory=list)  # tensors used outside the layer or as graph outputs

    input_bytes: int = 0  # bytes of the tensors it reads from other layers or the model inputs
    weight_bytes: int = 0  # bytes of the constants (weights, biases, statistics) it reads

    @property
    def output_bytes(self) -> int:
        return sum(t.nbytes for t in self.outputs)

    def to_json(self) -> dict:
        return {"index": self.index, "name": self.name, "type": self.type, "ops": self.ops, "config": self.config,
                "flops": self.flops, "inputs": self.inputs, "input_bytes": self.input_bytes,
                "weight_bytes": self.weight_bytes,
                "outputs": [t.to_json() for t in self.outputs]}


@dataclass
class LayerGraph:
    """Layers in a topological order, and the DAG of tensors flowing between them."""

    model: FrozenModel
    layers: list[Layer]
    dag: nx.DiGraph

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self.model.graph.node)

    def producer_layer(self) -> dict[str, int]:
        """Tensor name -> index of the layer that produces it (graph inputs and weights are absent)."""
        graph = self.model.graph
        return {out: layer.index for layer in self.layers for n in layer.nodes for out in graph.node[n].output if out}


def build_layer_graph(frozen: FrozenModel) -> LayerGraph:
    graph = frozen.graph
    nodes = list(graph.node)
    constants = frozen.constant_names()
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            if name and name not in constants:
                consumers.setdefault(name, []).append(i)

    owner = _assign_owners(nodes, producer, consumers, constants)
    groups: dict[int, list[int]] = {}
    for i in range(len(nodes)):
        groups.setdefault(owner[i], []).append(i)

    # Order groups topologically, preferring the model's own order so that layer indices read naturally.
    group_dag = nx.DiGraph()
    group_dag.add_nodes_from(groups)
    for i, node in enumerate(nodes):
        for name in node.input:
            if name in producer and owner[producer[name]] != owner[i]:
                group_dag.add_edge(owner[producer[name]], owner[i])
    order = list(nx.lexicographical_topological_sort(group_dag, key=lambda g: min(groups[g])))

    graph_outputs = {o.name for o in graph.output}
    layers: list[Layer] = []
    for index, group in enumerate(order):
        members = groups[group]
        produced = {out for i in members for out in nodes[i].output if out}
        main = next((i for i in members if nodes[i].op_type not in SHAPE_ONLY_OPS), members[0])
        inputs = _unique(name for i in members for name in nodes[i].input
                         if name and name not in constants and name not in produced)
        outputs = [frozen.tensors[name] for i in members for name in nodes[i].output if name
                   and (name in graph_outputs or any(owner[c] != group for c in consumers.get(name, [])))]
        layers.append(Layer(
            index=index,
            name=nodes[main].name or f"{nodes[main].op_type}_{main}",
            type=layer_type(nodes[main].op_type),
            ops=[nodes[i].op_type for i in members],
            nodes=members,
            config=layer_config(nodes[main], frozen),
            flops=sum(node_flops(nodes[i], frozen) for i in members),
            inputs=inputs,
            outputs=outputs,
            input_bytes=sum(frozen.tensors[name].nbytes for name in inputs),
            weight_bytes=sum(frozen.tensors[name].nbytes
                             for name in _unique(n for i in members for n in nodes[i].input if n in constants)),
        ))

    dag = nx.DiGraph()
    index_of_group = {group: index for index, group in enumerate(order)}
    for layer in layers:
        dag.add_node(layer.index, name=layer.name, type=layer.type, flops=layer.flops, bytes=layer.output_bytes)
    for u, v in group_dag.edges:
        dag.add_edge(index_of_group[u], index_of_group[v])
    return LayerGraph(model=frozen, layers=layers, dag=dag)


def _assign_owners(nodes, producer, consumers, constants) -> list[int]:
    """Each node's layer, named by a representative node: shape-only nodes join a neighbour's layer."""
    owner = list(range(len(nodes)))

    def resolve(i: int, seen: set[int]) -> int:
        node = nodes[i]
        if node.op_type not in SHAPE_ONLY_OPS or i in seen:
            return i
        seen.add(i)
        data_inputs = [name for name in node.input if name and name not in constants]
        # Follow the data input back to the layer that made it; a tensor that comes straight from a
        # graph input instead joins its only consumer (a leading Flatten belongs to the first fc).
        if data_inputs and data_inputs[0] in producer:
            return resolve(producer[data_inputs[0]], seen)
        users = [c for out in node.output for c in consumers.get(out, [])]
        if len(users) == 1:
            return resolve(users[0], seen)
        return i

    for i in range(len(nodes)):
        owner[i] = resolve(i, set())
    return owner


def _unique(names) -> list[str]:
    return list(dict.fromkeys(names))


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _shape(frozen: FrozenModel, name: str) -> tuple[int, ...]:
    return frozen.tensors[name].shape if name in frozen.tensors else ()


def layer_config(node: onnx.NodeProto, frozen: FrozenModel) -> dict:
    """The paper's regression variables for this layer type, plus the raw geometry they come from."""
    kind = layer_type(node.op_type)
    in_shape = _shape(frozen, node.input[0]) if node.input else ()
    out_shape = _shape(frozen, node.output[0])
    attrs = _attrs(node)
    if kind == "conv" and len(in_shape) >= 3 and len(node.input) > 1:
        w_shape = _shape(frozen, node.input[1])
        kernel = list(w_shape[2:])
        strides = list(attrs.get("strides", [1] * len(kernel)))
        groups = int(attrs.get("group", 1))
        filters = int(out_shape[1]) if len(out_shape) > 1 else int(w_shape[0])
        ratio = prod(k / s for k, s in zip(kernel, strides))
        return {
            "in_channels": int(in_shape[1]), "in_spatial": list(in_shape[2:]),
            "out_channels": filters, "out_spatial": list(out_shape[2:]),
            "kernel": kernel, "stride": strides, "groups": groups,
            "in_features": prod(in_shape[1:]),
            "filter_term": ratio * filters,  # (filter size / stride)^2 x filters
        }
    if kind == "fc":
        k = int(in_shape[-1]) if in_shape else 0
        if node.op_type == "Gemm" and attrs.get("transA", 0) and len(in_shape) == 2:
            k = int(in_shape[0])
        n = int(out_shape[-1]) if out_shape else 0
        rows = prod(out_shape[:-1]) if len(out_shape) > 1 else 1
        return {"in_neurons": k, "out_neurons": n, "rows": rows}
    if kind == "pooling":
        config = {"in_size": prod(in_shape[1:]), "out_size": prod(out_shape[1:]), "channels": int(in_shape[1]) if len(in_shape) > 1 else 1}
        if "kernel_shape" in attrs:
            config["kernel"] = list(attrs["kernel_shape"])
            config["stride"] = list(attrs.get("strides", [1] * len(attrs["kernel_shape"])))
        return config
    if kind == "argmax":
        return {"in_neurons": prod(in_shape), "out_neurons": prod(out_shape)}
    if kind == "softmax":
        return {"neurons": prod(in_shape)}
    config = {"neurons": prod(out_shape)}
    if node.op_type == "LRN":
        config["size"] = int(attrs.get("size", 1))
    return config


def node_flops(node: onnx.NodeProto, frozen: FrozenModel) -> int:
    """Floating point operations of one node (multiply-add counts 2); shape-only nodes are free."""
    op = node.op_type
    if op in SHAPE_ONLY_OPS:
        return 0
    out_shape = _shape(frozen, node.output[0])
    out_elems = prod(out_shape) if out_shape else 1
    in_shape = _shape(frozen, node.input[0]) if node.input else ()
    attrs = _attrs(node)
    if op in ("Conv", "ConvTranspose") and len(node.input) > 1:
        w_shape = _shape(frozen, node.input[1])
        per_weight = prod(w_shape[1:])  # (C_in / groups) x kernel for Conv
        if op == "Conv":
            return 2 * out_elems * per_weight
        return 2 * prod(in_shape) * per_weight
    if op in ("Gemm", "MatMul"):
        k = int(in_shape[-1]) if in_shape else 1
        if op == "Gemm" and attrs.get("transA", 0) and len(in_shape) == 2:
            k = int(in_shape[0])
        return 2 * out_elems * k
    if op in ("MaxPool", "AveragePool", "LpPool"):
        return out_elems * prod(attrs.get("kernel_shape", [1]))
    if op in ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"):
        return prod(in_shape)
    if op == "LRN":
        return out_elems * (int(attrs.get("size", 1)) + 3)
    if op in ("BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization"):
        return 2 * out_elems if op == "BatchNormalization" else 5 * out_elems
    if op in ("Softmax", "LogSoftmax"):
        return 3 * out_elems
    if op in ("Sigmoid", "Tanh", "Gelu", "Erf", "Mish", "Softplus", "Elu", "Selu", "HardSwish"):
        return 4 * out_elems
    return out_elems
