"""Load an ONNX model, freeze its input shapes, fold shape arithmetic, and check that TVM can import it.

Stage 1 of the pipeline: everything later may assume a `FrozenModel` has a static shape and dtype
for every tensor, no Constant nodes, no dead nodes, and only operators TVM's importer knows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from ..runtime.errors import NeurosurgeonError, first_line
from ..runtime.tensors import TensorInfo

__all__ = ["CONTROL_FLOW_OPS", "NONDETERMINISTIC_OPS", "ONNX_IR_VERSION", "ONNX_OPSET", "FrozenModel", "ModelError",
           "load_model", "parse_input_shapes"]

# The opset and IR version of the ONNX models neurosurgeon writes itself (the zoo, the microbenchmarks):
# onnxruntime and TVM both accept IR 9; newer IR versions buy nothing for opset 17.
ONNX_OPSET = 17
ONNX_IR_VERSION = 9
CONTROL_FLOW_OPS = ("If", "Loop", "Scan")
# Folding these would bake randomness into the bundle.
NONDETERMINISTIC_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


class ModelError(NeurosurgeonError):
    """The model file, its operators, or the shapes given for it are not usable."""


@dataclass
class FrozenModel:
    """An ONNX model with static shapes, ready to be grouped into layers and sliced."""

    model: onnx.ModelProto
    name: str
    sha256: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    tensors: dict[str, TensorInfo] = field(repr=False)

    @property
    def graph(self) -> onnx.GraphProto:
        return self.model.graph

    def constant_names(self) -> set[str]:
        return {init.name for init in self.graph.initializer}


def parse_input_shapes(specs: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse `name=1,3,224,224` strings from the command line."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition("=")
        if not sep or not name:
            raise ModelError(f"--input-shape {spec!r}: expected NAME=D1,D2,... (e.g. input=1,3,224,224)")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise ModelError(f"--input-shape {spec!r}: dimensions must be integers") from None
        if not shape or any(d <= 0 for d in shape):
            raise ModelError(f"--input-shape {spec!r}: dimensions must be positive integers")
        shapes[name] = shape
    return shapes


def load_model(source: str | Path | onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None,
               name: str | None = None, batch: int = 1) -> FrozenModel:
    """Read, validate, freeze and fold a model. Raises `ModelError` with a one-line message. With
    `batch` above 1, every input's first dimension, the batch, is that size instead of 1 (the model
    may declare it fixed at 1: exporters do)."""
    model, raw, label = _read(source)
    if name is None:
        name = Path(label).stem if isinstance(source, (str, Path)) else (model.graph.name or "model")
    name = _safe_name(name)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise ModelError(f"{label}: invalid ONNX model: {first_line(err)}") from None

    _refuse_unknown_opset(model, label)
    _refuse_unsupported_ops(model, label)
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    # Old exporters list initializers among the inputs too; they are weights, not inputs.
    real_inputs = [i for i in graph.input if i.name not in init_names]
    del graph.input[:]
    graph.input.extend(real_inputs)

    declared = {o.name: _declared(o.type.tensor_type) for o in graph.output}
    _freeze_inputs(graph, input_shapes or {}, label, batch)
    model = _fold_and_infer(model, label)
    _refuse_unsupported_ops(model, label)  # folding may have exposed or removed nodes; check the final graph
    tensors = _tensor_table(model, label)
    _check_declared_outputs(declared, tensors, label, batch)
    return FrozenModel(
        model=model,
        name=name,
        sha256=hashlib.sha256(raw).hexdigest(),
        inputs=[tensors[i.name] for i in model.graph.input],
        outputs=[tensors[o.name] for o in model.graph.output],
        tensors=tensors,
    )


def _read(source) -> tuple[onnx.ModelProto, bytes, str]:
    if isinstance(source, onnx.ModelProto):
        return onnx.ModelProto.FromString(source.SerializeToString()), source.SerializeToString(), source.graph.name or "<model>"
    path = Path(source)
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        model = onnx.load_from_string(raw)
    except Exception as err:  # protobuf raises DecodeError or RuntimeWarning-like errors
        raise ModelError(f"{path}: not an ONNX model (protobuf decode failed: {first_line(err)})") from None
    if not model.graph.node:
        raise ModelError(f"{path}: not an ONNX model, or its graph has no nodes")
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as err:
            raise ModelError(f"{path}: cannot load external weight data: {first_line(err)}") from None
        raw = model.SerializeToString()
    return model, raw, str(path)


def _refuse_unsupported_ops(model: onnx.ModelProto, label: str) -> None:
    """List every operator TVM cannot import, with its nodes, in one error."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = set(_get_convert_map()) | {"Constant"}
    control: dict[str, list[str]] = {}
    unsupported: dict[str, list[str]] = {}
    for index, node in enumerate(model.graph.node):
        node_name = node.name or f"#{index}"
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if node.op_type in CONTROL_FLOW_OPS and node.domain in ("", "ai.onnx"):
            control.setdefault(op, []).append(node_name)
        elif op not in known:
            unsupported.setdefault(op, []).append(node_name)
    problems = []
    if control:
        problems.append("control flow is not supported (a cut must fall between layers of a static graph): "
                        + _list_nodes(control))
    if unsupported:
        problems.append("operators TVM 0.27's ONNX importer cannot import: " + _list_nodes(unsupported))
    if problems:
        raise ModelError(f"{label}: " + "; ".join(problems))


def _list_nodes(by_op: dict[str, list[str]]) -> str:
    parts = []
    for op, nodes in sorted(by_op.items()):
        shown = ", ".join(repr(n) for n in nodes[:5]) + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "")
        parts.append(f"{op} (node{'s' if len(nodes) > 1 else ''} {shown})")
    return ", ".join(parts)


def _freeze_inputs(graph: onnx.GraphProto, shapes: dict[str, tuple[int, ...]], label: str, batch: int = 1) -> None:
    names = [i.name for i in graph.input]
    for given in shapes:
        if given not in names:
            raise ModelError(f"{label}: --input-shape names {given!r}, but the model's inputs are: {', '.join(names)}")
    for value in graph.input:
        ttype = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise ModelError(f"{label}: input {value.name!r} is not a tensor (sequences and maps are not supported)")
        dims = list(ttype.shape.dim)
        declared = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
        if value.name in shapes:
            shape = shapes[value.name]
            if ttype.HasField("shape") and len(dims) != len(shape):
                raise ModelError(f"{label}: input {value.name!r} has rank {len(dims)} ({_fmt(declared)}), "
                                 f"--input-shape gave {len(shape)} dims ({_fmt(shape)})")
            for axis, (want, got) in enumerate(zip(declared, shape)):
                if isinstance(want, int) and want != got:
                    raise ModelError(f"{label}: input {value.name!r} dim {axis} is fixed at {want} in the model, "
                                     f"--input-shape gave {got}")
        else:
            if not ttype.HasField("shape"):
                raise ModelError(f"{label}: input {value.name!r} has no declared shape; give --input-shape {value.name}=D1,D2,...")
            dynamic = [axis for axis, d in enumerate(declared) if not isinstance(d, int) or d <= 0]
            if dynamic:
                raise ModelError(f"{label}: input {value.name!r} has dynamic dims ({_fmt(declared)}); "
                                 f"freeze them with --input-shape {value.name}=" + ",".join(
                                     str(d) if isinstance(d, int) and d > 0 else "N" for d in declared))
            shape = tuple(declared)
        if batch != 1:
            if not shape or shape[0] != 1:
                raise ModelError(f"{label}: cannot batch input {value.name!r} of shape {_fmt(shape)}: its first "
                                 "dimension, the batch, must be 1")
            shape = (batch, *shape[1:])
        ttype.shape.Clear()
        for d in shape:
            ttype.shape.dim.add().dim_value = int(d)


def _fmt(dims) -> str:
    return "x".join(str(d) for d in dims)


def _infer(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    # Drop stale annotations so that they cannot contradict the frozen input shapes.
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    try:
        return shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as err:
        raise ModelError(f"{label}: shape inference failed with the frozen input shapes: {first_line(err)}") from None


def _fold_and_infer(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """Infer shapes, then fold every node whose value no longer depends on the inputs, until nothing changes.

    Freezing the inputs turns `Shape` nodes into constants; folding them (and the Gather/Concat/
    Reshape arithmetic fed by them) leaves static Reshape targets that TVM's importer accepts.
    """
    for _ in range(64):
        model = _infer(model, label)
        if not _fold_once(model, label):
            break
    _remove_dead_nodes(model)
    return _infer(model, label)


def _fold_once(model: onnx.ModelProto, label: str) -> bool:
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    opsets = {o.domain or "": o.version for o in model.opset_import}
    shapes = _static_shapes(graph)
    constants = {init.name: init for init in graph.initializer}
    kept, folded = [], False
    for node in graph.node:
        values = None
        if node.op_type == "Shape" and node.domain in ("", "ai.onnx") and shapes.get(node.input[0]) is not None:
            full = np.array(shapes[node.input[0]], dtype=np.int64)
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            values = [full[attrs.get("start", 0): attrs.get("end", len(full))]]
        elif (node.domain in ("", "ai.onnx") and node.op_type not in NONDETERMINISTIC_OPS
              and node.op_type not in CONTROL_FLOW_OPS
              and all(name == "" or name in constants for name in node.input)):
            feeds = {name: numpy_helper.to_array(constants[name]) for name in node.input if name}
            try:
                values = ReferenceEvaluator(node, opsets=opsets).run(None, feeds)
            except Exception as err:
                raise ModelError(f"{label}: node {node.name or node.op_type!r} ({node.op_type}) has constant inputs "
                                 f"but cannot be evaluated: {first_line(err)}") from None
        if values is None:
            kept.append(node)
            continue
        folded = True
        for name, value in zip(node.output, values):
            if name:
                tensor = numpy_helper.from_array(np.asarray(value), name)
                graph.initializer.append(tensor)
                constants[name] = tensor
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
    return folded


def _static_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int, ...] | None]:
    shapes: dict[str, tuple[int, ...] | None] = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        ttype = value.type.tensor_type
        if not ttype.HasField("shape"):
            shapes[value.name] = None
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
        shapes[value.name] = None if any(d is None for d in dims) else tuple(dims)
    return shapes


def _remove_dead_nodes(model: onnx.ModelProto) -> None:
    graph = model.graph
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(i for i in node.input if i)
    live.reverse()
    del graph.node[:]
    graph.node.extend(live)
    used = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)


def _tensor_table(model: onnx.ModelProto, label: str) -> dict[str, TensorInfo]:
    graph = model.graph
    table: dict[str, TensorInfo] = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        ttype = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim] if ttype.HasField("shape") else None
        if dims is not None and all(d is not None for d in dims) and ttype.elem_type:
            table[value.name] = TensorInfo(value.name, tuple(dims), helper.tensor_dtype_to_np_dtype(ttype.elem_type).name)
    for init in graph.initializer:
        table[init.name] = TensorInfo(init.name, tuple(init.dims), helper.tensor_dtype_to_np_dtype(init.data_type).name)
    for index, node in enumerate(graph.node):
        for out in node.output:
            if out and out not in table:
                raise ModelError(f"{label}: tensor {out!r} (output of node {node.name or '#' + str(index)!r}, op {node.op_type}) "
                                 "has no static shape after freezing the inputs; give --input-shape for every dynamic input")
    return table


def _refuse_unknown_opset(model: onnx.ModelProto, label: str) -> None:
    """An opset newer than the installed onnx package knows: its operators' meaning is unknown here
    (the checker lets such models through)."""
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            raise ModelError(f"{label}: the model uses ONNX opset {opset.version}; this installation knows opsets up "
                             f"to {newest} (onnx {onnx.__version__}); export with opset <= {newest}")


def _declared(ttype) -> tuple[str | None, list[int | None] | None]:
    """(dtype, dims with None for a symbolic or missing one) as the model declares a tensor; None: not said."""
    dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type).name if ttype.elem_type else None
    dims = ([d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
            if ttype.HasField("shape") else None)
    return dtype, dims


def _check_declared_outputs(declared: dict, tensors: dict[str, TensorInfo], label: str, batch: int = 1) -> None:
    """Shape inference ran without the outputs' declared shapes (freezing a dynamic input changes them);
    a fixed dimension or a type the model declares must still be what the graph computes, or
    onnxruntime and the bundle would disagree about the model. Batched, a first dimension declared 1
    is the batch."""
    for name, (dtype, dims) in declared.items():
        got = tensors[name]
        if batch != 1 and dims and dims[0] == 1:
            dims = [None, *dims[1:]]
        shape_ok = dims is None or (len(dims) == len(got.shape)
                                    and all(d is None or d == g for d, g in zip(dims, got.shape)))
        if not shape_ok or dtype not in (None, got.dtype):
            said = f"{dtype or '?'}[{', '.join('?' if d is None else str(d) for d in dims or [])}]"
            raise ModelError(f"{label}: output {name!r} is declared {said} but the graph computes "
                             f"{got.dtype}{list(got.shape)}")


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")
    return cleaned or "model"

