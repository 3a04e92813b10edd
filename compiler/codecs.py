"""How well each tensor that may cross a cut compresses: measured at compile time on calibration
inputs, stored in the manifest (`codecs`), read by the planners (upload time = coded bytes / bandwidth
+ coding time, where that is shorter than the raw upload) and by the device, which codes a tensor
only where it pays at the bandwidth it sees.

The calibration inputs are seeded random inputs (runtime/tensors.random_inputs), run through the
frozen model by onnxruntime with every crossing tensor as an extra output. Real inputs may compress
differently (an image's activations are smoother than noise's): the manifest says which inputs were used.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..runtime.codec import CODECS, measure_codec, probe_seconds
from ..runtime.errors import NeurosurgeonError
from ..runtime.tensors import random_inputs
from .frontend import FrozenModel
from .partition import PartitionPlan

__all__ = ["CALIBRATION", "calibration", "crossing_tensors", "measure_codecs"]

CALIBRATION = {"inputs": "random_inputs (standard normal floats, 0/1 integers)", "seeds": [0, 1, 2]}


def calibration() -> dict:
    """How the codecs were measured, and this machine's probe time per codec (runtime/codec.probe_seconds)."""
    return {**CALIBRATION, "probe_s": {name: probe_seconds(codec) for name, codec in CODECS.items()}}


def crossing_tensors(plan: PartitionPlan) -> list[str]:
    """Every tensor some cut uploads, in the order they come into being."""
    return list(dict.fromkeys(t.name for cut in plan.cuts for t in cut.crossing))


def measure_codecs(frozen: FrozenModel, plan: PartitionPlan) -> dict:
    """codec -> tensor -> CodecStats as JSON, for every tensor some cut uploads and every codec."""
    import onnxruntime as ort

    names = crossing_tensors(plan)
    model = onnx.ModelProto()
    model.CopyFrom(frozen.model)
    present = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
    for name in names:
        if name not in present:
            t = frozen.tensors[name]
            model.graph.output.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)), list(t.shape)))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 (onnxruntime's exception types have no stable import path)
        raise NeurosurgeonError(f"{frozen.name}: onnxruntime cannot run the model to calibrate the codecs: "
                                f"{str(err).splitlines()[0]}") from None
    samples: dict[str, list] = {name: [] for name in names}
    for seed in CALIBRATION["seeds"]:
        feeds = random_inputs(frozen.inputs, seed)
        values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        for name in names:
            samples[name].append(feeds[name] if name in feeds else values[name])
    return {codec.name: {name: measure_codec(codec, samples[name], repeats=2).to_json() for name in names}
            for codec in CODECS.values()}
