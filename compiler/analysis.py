"""The stages every verb shares before anything is built: the frozen model, its layer graph, and the
candidate cuts with the segments between them."""

from __future__ import annotations

from pathlib import Path

import onnx

from .frontend import FrozenModel, load_model
from .layers import LayerGraph, build_layer_graph
from .partition import Partitioner, PartitionPlan, partition

__all__ = ["analyse"]


def analyse(model: str | Path | onnx.ModelProto, input_shapes: dict | None = None, partitioner: Partitioner | str | None = None,
            name: str | None = None, batch: int = 1) -> tuple[FrozenModel, LayerGraph, PartitionPlan]:
    """(frozen model, layer graph, partition plan) of an ONNX file or model (at `batch`: see load_model);
    `partitioner` an instance or a name (None: the default)."""
    frozen = load_model(model, input_shapes, name=name, batch=batch)
    graph = build_layer_graph(frozen)
    return frozen, graph, partition(graph, partitioner)
