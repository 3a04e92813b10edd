"""A fitted cost model (plain JSON coefficients, written by cost_models/fit.py) evaluated with numpy:
what the cost stage predicts a bundle's segments with. The same `layer_features` serve the
profiler's samples, the fits and the predictions, so a layer is described identically wherever it
is measured or predicted."""

from __future__ import annotations

import math

import numpy as np

from ..runtime.errors import NeurosurgeonError
from ..runtime.jsonfile import JsonFormat

__all__ = ["COMMON_FEATURES", "COSTMODEL_FORMAT", "FORMS", "FORM_FIELDS", "MAX_SECONDS", "MIN_SECONDS", "PAPER_VARIABLES",
           "CostModel", "CostModelError", "clamp_seconds", "evaluate", "layer_features", "log_features",
           "manifest_layer_features"]

# The paper's regression variables per layer type (Neurosurgeon, section 4.1), plus what a compiler
# makes matter: FLOPs and the bytes a layer reads and writes.
PAPER_VARIABLES = {
    "conv": ("in_features", "filter_term"),
    "fc": ("in_neurons", "out_neurons"),
    "pooling": ("in_size", "out_size"),
    "softmax": ("neurons",),
    "argmax": ("in_neurons", "out_neurons"),
}
COMMON_FEATURES = ("flops", "in_bytes", "out_bytes")


def layer_features(layer_type: str, config: dict, flops: float, in_bytes: float, out_bytes: float) -> dict[str, float]:
    """Named numeric features of one layer: the paper's variables for its type (`neurons` for
    activation, normalisation, elementwise and the rest) and FLOPs and bytes moved."""
    names = PAPER_VARIABLES.get(layer_type, ("neurons",))
    features = {name: float(config.get(name, 0.0)) for name in names}
    if layer_type == "fc":
        features["in_neurons"] *= float(config.get("rows", 1))  # a batch of rows is that many more inputs
    features.update(flops=float(flops), in_bytes=float(in_bytes), out_bytes=float(out_bytes))
    return features


def manifest_layer_features(layer: dict) -> dict[str, float]:
    """`layer_features` of a layer as the manifest records it."""
    out_bytes = sum(t["bytes"] for t in layer["outputs"])
    return layer_features(layer["type"], layer["config"], layer["flops"], layer.get("input_bytes", 0), out_bytes)


# Each regression form and the coefficients it carries besides "features".
FORM_FIELDS = {"linear": ("intercept", "coef"), "log": ("intercept", "coef"),
               "tree": ("init", "learning_rate", "trees")}
FORMS = tuple(FORM_FIELDS)
# Predictions are clamped into [MIN_SECONDS, MAX_SECONDS]: the planner sums and compares them, so a
# negative intercept, an exp() overflow or a NaN must not reach it.
MIN_SECONDS = 1e-7
MAX_SECONDS = 1e4


class CostModelError(NeurosurgeonError):
    """A cost model file that is missing, malformed or of another format or version."""


COSTMODEL_FORMAT = JsonFormat("neurosurgeon-costmodel", 1, "neurosurgeon cost model", CostModelError,
                              hint="fit it again with `neurosurgeon fit`")


def log_features(x: np.ndarray) -> np.ndarray:
    """The log transform of the `log` and `tree` forms: log(max(x, 1)), so a feature of 0 (e.g. no
    input bytes) stays finite."""
    return np.log(np.maximum(np.asarray(x, dtype=np.float64), 1.0))


def clamp_seconds(seconds):
    """Seconds (a number or an array) forced into [MIN_SECONDS, MAX_SECONDS], NaN to the floor."""
    return np.clip(np.nan_to_num(seconds, nan=MIN_SECONDS), MIN_SECONDS, MAX_SECONDS)


def evaluate(entry: dict, x: np.ndarray) -> float:
    """Seconds predicted by one fitted regression (a `types` or `fallback` entry) for the feature
    vector `x`, in the order of `entry["features"]`."""
    form = entry["form"]
    if form == "linear":
        return float(clamp_seconds(entry["intercept"] + float(np.dot(entry["coef"], x))))
    z = log_features(x)
    if form == "log":
        exponent = entry["intercept"] + float(np.dot(entry["coef"], z))
    else:
        # scikit-learn's trees compare float32 features with float64 thresholds: mirror it exactly.
        z32 = z.astype(np.float32).astype(np.float64)
        exponent = entry["init"] + entry["learning_rate"] * sum(_tree_value(tree, z32) for tree in entry["trees"])
    return float(clamp_seconds(math.exp(min(exponent, 700.0))))


def _tree_value(tree: dict, z: np.ndarray) -> float:
    feature, threshold, left, right, value = (tree[k] for k in ("feature", "threshold", "left", "right", "value"))
    node = 0
    while left[node] >= 0:
        node = left[node] if z[feature[node]] <= threshold[node] else right[node]
    return value[node]


class CostModel:
    """A fitted per-layer-type latency model for one target, evaluated with numpy only: one
    regression per layer type the profile measured, and a fallback over FLOPs and bytes for the rest."""

    def __init__(self, doc: dict, source: str = "cost model"):
        COSTMODEL_FORMAT.check(doc, source)
        types = doc.get("types", {})
        if not isinstance(types, dict):
            raise CostModelError(f"{source}: 'types' must map layer types to regressions")
        for name, entry in {**types, "fallback": doc.get("fallback")}.items():
            if not isinstance(entry, dict) or entry.get("form") not in FORMS or not entry.get("features"):
                raise CostModelError(f"{source}: the {name!r} regression is malformed (form must be one of "
                                     f"{', '.join(FORMS)}, with features)")
            missing = [key for key in FORM_FIELDS[entry["form"]] if key not in entry]
            if missing:
                raise CostModelError(f"{source}: the {name!r} {entry['form']} regression lacks {', '.join(missing)}")
        self.doc = doc
        self.source = source
        self.types: dict[str, dict] = types
        self.fallback: dict = doc["fallback"]
        self.per_segment_overhead_s = float(doc.get("per_segment_overhead_s", 0.0))
        self.target = doc.get("target", {})

    @classmethod
    def from_json(cls, doc: dict) -> CostModel:
        return cls(doc)

    @classmethod
    def load(cls, path) -> CostModel:
        return cls(COSTMODEL_FORMAT.read(path), str(path))

    def describe(self) -> str:
        hardware = self.doc.get("hardware", {})
        return (f"{self.target.get('name', '?')} on {hardware.get('cpu', hardware.get('machine', '?'))}, "
                f"{len(self.types)} layer types")

    def type_errors(self) -> dict[str, dict]:
        """Per layer type: the chosen form, its held-out MAPE and how many samples it was fitted on."""
        return {name: {"form": entry["form"], "cv_mape": entry.get("cv_mape"), "n": entry.get("n", 0)}
                for name, entry in {**self.types, "(fallback)": self.fallback}.items()}

    def entry(self, layer_type: str) -> dict:
        """The regression that predicts `layer_type`: its own, or the fallback."""
        return self.types.get(layer_type, self.fallback)

    def predict(self, layer_type: str, features: dict) -> float:
        """Predicted seconds of one layer from its `layer_features`."""
        entry = self.entry(layer_type)
        try:
            x = np.array([features[name] for name in entry["features"]], dtype=np.float64)
        except KeyError as err:
            raise CostModelError(f"{self.source}: the {layer_type!r} regression needs feature {err.args[0]!r}, "
                                 "which the layer's features lack") from None
        return evaluate(entry, x)

    def predict_layers(self, layers: list[dict]) -> np.ndarray:
        """Predicted seconds of each layer of a manifest's layer table."""
        return np.array([self.predict(layer["type"], manifest_layer_features(layer)) for layer in layers],
                        dtype=np.float64)

    def predict_segments(self, manifest: dict) -> np.ndarray:
        """Predicted seconds of each segment of a bundle manifest: its layers plus the per-call overhead."""
        prefix = np.concatenate(([0.0], np.cumsum(self.predict_layers(manifest["layers"]))))
        bounds = np.array([segment["layers"] for segment in manifest["segments"]], dtype=np.int64).reshape(-1, 2)
        return prefix[bounds[:, 1]] - prefix[bounds[:, 0]] + self.per_segment_overhead_s
