"""ONNX graph (a segment, or a whole model) to a Relax IRModule through TVM's ONNX importer, with its
weights as constants: what builds and tuning both start from."""

from __future__ import annotations

import warnings

import onnx

from ..runtime.errors import NeurosurgeonError, first_line
from ..runtime.tensors import TensorInfo

__all__ = ["BuildError", "import_graph"]


class BuildError(NeurosurgeonError):
    """TVM could not import, compile or export a graph; the message names the graph and the step."""


def import_graph(model: onnx.ModelProto, inputs: list[TensorInfo], what: str):
    """The graph as a Relax IRModule; `what` names it in errors ("segment 3 (conv2..relu2)")."""
    from tvm.relax.frontend.onnx import from_onnx

    try:
        with warnings.catch_warnings():  # TVM warns for every ONNX name it sanitises ("conv1.weight")
            warnings.simplefilter("ignore")
            return from_onnx(model, shape_dict={t.name: list(t.shape) for t in inputs},
                             dtype_dict={t.name: t.dtype for t in inputs}, keep_params_in_input=False)
    except Exception as err:
        raise BuildError(f"{what}: TVM's ONNX importer failed: {first_line(err)}") from None
