"""Fit Neurosurgeon's per-layer-type latency regressions to a measured profile, and export them as
plain JSON coefficients that `runtime.costmodel.CostModel` evaluates with numpy alone.

For each layer type the profile measured, every candidate form (linear, log-log, boosted shallow
trees on log features) is tried on the paper's regression variables alone, with FLOPs added, and
with FLOPs and bytes added; the one with the lowest cross-validated MAPE on held-out configurations wins and is
refitted on all of that type's samples. A fallback over (FLOPs, input bytes, output bytes), fitted
on every sample, predicts the layer types the profile lacks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GroupKFold, LeaveOneGroupOut

from ..compiler.layers import LAYER_TYPES
from ..runtime.profile import PROFILE_FORMAT, ProfileError
from .model import COMMON_FEATURES, COSTMODEL_FORMAT, FORMS, PAPER_VARIABLES, clamp_seconds, log_features

__all__ = ["FALLBACK", "FORM_CLASSES", "KNOWN_TYPES", "Fit", "Form", "LinearForm", "LogForm", "ProfileError", "TreeForm",
           "TypeFit", "cross_validated", "feature_matrix", "fit", "fit_profile", "load_profile", "paper_variables",
           "select", "validate_profile"]

REQUIRED_SAMPLE_FIELDS = ("key", "type", "features", "seconds")
KNOWN_TYPES = set(LAYER_TYPES) | {"reshape", "other"}

MIN_SAMPLES = 4  # below this a type gets seconds = a * flops + b, too few points to choose a form
LEAVE_ONE_OUT_BELOW = 20  # up to this many configurations, hold each out in turn; 5 folds above
FALLBACK = "fallback"


def paper_variables(layer_type: str) -> tuple[str, ...]:
    return PAPER_VARIABLES.get(layer_type, ("neurons",))


# ---------------------------------------------------------------------------------------------
# Reading and checking a profile


def load_profile(path: str | Path) -> dict:
    """Read a profile written by the profiler; any problem is a one-line `ProfileError` naming the file."""
    profile = PROFILE_FORMAT.read(path)
    validate_profile(profile, str(path))
    return profile


def validate_profile(profile, source: str = "profile") -> list[str]:
    """Raise `ProfileError` if the profile cannot be fitted; return notes about what it can but
    should not be (an incomplete run, layer types the compiler does not produce)."""
    PROFILE_FORMAT.check(profile, source)
    samples = profile.get("samples")
    if not isinstance(samples, list) or not samples:
        raise ProfileError(f"{source}: the profile has no samples")
    for i, sample in enumerate(samples):
        if not isinstance(sample, dict):
            raise ProfileError(f"{source}: sample {i} is not an object")
        what = f"{source}: sample {i} ({sample.get('key', '?')})"
        missing = [name for name in REQUIRED_SAMPLE_FIELDS if name not in sample]
        if missing:
            raise ProfileError(f"{what} lacks {', '.join(missing)}")
        seconds = sample["seconds"]
        if not _is_number(seconds) or not math.isfinite(seconds) or seconds <= 0:
            raise ProfileError(f"{what}: seconds must be a positive finite number, got {seconds!r}")
        features = sample["features"]
        if not isinstance(features, dict):
            raise ProfileError(f"{what}: features must be an object of name: number")
        needed = paper_variables(sample["type"]) + COMMON_FEATURES
        absent = [name for name in needed if name not in features]
        if absent:
            raise ProfileError(f"{what}: features lack {', '.join(absent)}")
        bad = [name for name in needed if not _is_number(features[name]) or not math.isfinite(features[name])]
        if bad:
            raise ProfileError(f"{what}: features {', '.join(bad)} are not finite numbers")
    notes = []
    if not profile.get("complete", True):
        notes.append("the profile is marked incomplete (the profiler stopped early): fits use what it measured")
    unknown = sorted({s["type"] for s in samples} - KNOWN_TYPES)
    if unknown:
        notes.append(f"layer types the compiler does not produce, fitted anyway: {', '.join(unknown)}")
    return notes


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------
# The three forms, each a thin wrapper over scikit-learn that predicts seconds and exports JSON


class Form:
    """A regression as scikit-learn fits it: a design matrix made from the features, an estimator on
    it, and a link back to seconds (identity or exp). `export` gives what `runtime.costmodel`
    evaluates."""

    name = ""
    log_target = True  # the estimator predicts log(seconds)

    def design(self, x: np.ndarray) -> np.ndarray:
        return log_features(x)

    def fit(self, x: np.ndarray, seconds: np.ndarray) -> Form:
        self.estimator.fit(self.design(x), np.log(seconds) if self.log_target else seconds)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        raw = self.estimator.predict(self.design(x))
        return clamp_seconds(np.exp(np.minimum(raw, 700.0)) if self.log_target else raw)


class LinearForm(Form):
    """seconds = intercept + coef . x with every term non-negative: more work never takes less time,
    and a layer call always costs something."""

    name = "linear"
    log_target = False

    def __init__(self, seed: int = 0):
        # The intercept is a column of ones so that it is constrained too; columns are scaled to a
        # maximum of 1 so that the non-negative least squares is well conditioned (FLOPs reach 1e10).
        self.estimator = LinearRegression(positive=True, fit_intercept=False)
        self.scale: np.ndarray | None = None

    def design(self, x: np.ndarray) -> np.ndarray:
        return np.column_stack([np.ones(len(x)), x]) / self.scale

    def fit(self, x: np.ndarray, seconds: np.ndarray) -> LinearForm:
        largest = np.abs(x).max(axis=0)
        self.scale = np.concatenate(([1.0], np.where(largest > 0, largest, 1.0)))
        # Weighting by 1/seconds^2 minimises the squared relative error, the quantity MAPE scores;
        # unweighted least squares would fit the largest layers and miss the small ones by orders.
        self.estimator.fit(self.design(x), seconds, sample_weight=1.0 / seconds**2)
        return self

    def export(self) -> dict:
        coef = self.estimator.coef_ / self.scale
        return {"intercept": float(coef[0]), "coef": [float(c) for c in coef[1:]]}


class LogForm(Form):
    """log(seconds) = intercept + coef . log(x): power laws, the paper's "log" fits."""

    name = "log"

    def __init__(self, seed: int = 0):
        self.estimator = LinearRegression()

    def export(self) -> dict:
        return {"intercept": float(self.estimator.intercept_), "coef": [float(c) for c in self.estimator.coef_]}


class TreeForm(Form):
    """log(seconds) by gradient-boosted depth-2 trees on log features: catches steps and bends the
    log-log line misses (cache sizes, vector widths), exported as per-tree node arrays."""

    name = "tree"

    def __init__(self, seed: int = 0):
        self.estimator = GradientBoostingRegressor(n_estimators=100, max_depth=2, learning_rate=0.1,
                                                   min_samples_leaf=2, random_state=seed)

    def export(self) -> dict:
        est = self.estimator
        trees = []
        for (tree,) in est.estimators_:
            t = tree.tree_
            trees.append({"feature": t.feature.tolist(), "threshold": t.threshold.tolist(),
                          "left": t.children_left.tolist(), "right": t.children_right.tolist(),
                          "value": t.value[:, 0, 0].tolist()})
        init = float(est.init_.predict(np.zeros((1, est.n_features_in_)))[0])
        return {"init": init, "learning_rate": float(est.learning_rate), "trees": trees}


FORM_CLASSES = {cls.name: cls for cls in (LinearForm, LogForm, TreeForm)}


# ---------------------------------------------------------------------------------------------
# Choosing and fitting


@dataclass
class TypeFit:
    """One layer type's (or the fallback's) chosen regression, with what chose it."""

    layer_type: str
    form: Form
    features: list[str]
    n: int
    cv_mape: float | None
    candidates: dict[str, float]  # form -> its best CV MAPE over the feature sets tried
    measured: np.ndarray  # the type's samples, seconds
    heldout: np.ndarray | None  # the chosen form's cross-validated predictions of them

    def to_json(self) -> dict:
        return {"form": self.form.name, "features": self.features, **self.form.export(), "cv_mape": self.cv_mape,
                "n": self.n, "candidates": self.candidates}


@dataclass
class Fit:
    model: dict  # the cost model JSON
    types: dict[str, TypeFit]  # layer type (and "fallback") -> its fit
    notes: list[str] = field(default_factory=list)


def fit(profile: dict, seed: int = 0, forms: tuple[str, ...] = FORMS) -> Fit:
    """Fit every layer type of a profile and the fallback; `forms` restricts the candidates."""
    unknown = [f for f in forms if f not in FORM_CLASSES]
    if unknown or not forms:
        raise ValueError(f"unknown regression forms {unknown}; valid: {', '.join(FORMS)}")
    notes = validate_profile(profile)
    samples = profile["samples"]
    by_type: dict[str, list[dict]] = {}
    for sample in samples:
        by_type.setdefault(sample["type"], []).append(sample)

    fits: dict[str, TypeFit] = {}
    for layer_type, group in sorted(by_type.items()):
        paper = list(paper_variables(layer_type))
        if len(group) < MIN_SAMPLES:
            if len(group) == 1:
                notes.append(f"{layer_type}: one sample, predicted by the fallback")
                continue
            notes.append(f"{layer_type}: {len(group)} samples, fitted as seconds = a * flops + b")
            fits[layer_type] = select(layer_type, group, [["flops"]], ("linear",), seed)
        else:
            feature_sets = [paper, paper + ["flops"], paper + list(COMMON_FEATURES)]
            fits[layer_type] = select(layer_type, group, feature_sets, forms, seed)
    fits[FALLBACK] = select(FALLBACK, samples, [list(COMMON_FEATURES)], forms, seed)

    model = {
        **COSTMODEL_FORMAT.stamp(),
        "target": profile.get("target", {}),
        "hardware": profile.get("hardware", {}),
        "tvm_version": profile.get("tvm_version"),
        "profile_kit_id": profile.get("kit_id"),
        "types": {name: f.to_json() for name, f in fits.items() if name != FALLBACK},
        "fallback": fits[FALLBACK].to_json(),
        "per_segment_overhead_s": float(profile.get("per_segment_overhead_s", 0.0)),
        "notes": notes,
    }
    return Fit(model, fits, notes)


def fit_profile(profile: dict, seed: int = 0, forms: tuple[str, ...] = FORMS) -> dict:
    """The cost model JSON ("neurosurgeon-costmodel" v1) for a profile."""
    return fit(profile, seed, forms).model


def select(layer_type: str, samples: list[dict], feature_sets: list[list[str]], forms, seed: int) -> TypeFit:
    """The (form, feature set) with the lowest cross-validated MAPE, refitted on all samples."""
    seconds = np.array([s["seconds"] for s in samples], dtype=np.float64)
    keys = [s["key"] for s in samples]
    scores: dict[tuple[str, int], tuple[float, np.ndarray | None]] = {}
    for form in forms:
        for i, names in enumerate(feature_sets):
            x = feature_matrix(samples, names)
            heldout = cross_validated(form, x, seconds, keys, seed)
            mape = float(np.mean(np.abs(heldout - seconds) / seconds)) if heldout is not None else math.inf
            scores[form, i] = (mape, heldout)
    # Ties (e.g. no held-out estimate at all) go to the earlier form and the smaller feature set.
    (form, i), (mape, heldout) = min(scores.items(), key=lambda item: item[1][0])
    names = feature_sets[i]
    chosen = FORM_CLASSES[form](seed).fit(feature_matrix(samples, names), seconds)
    candidates = {f: _json_float(min(scores[f, j][0] for j in range(len(feature_sets)))) for f in forms}
    return TypeFit(layer_type, chosen, names, len(samples), _json_float(mape), candidates, seconds, heldout)


def feature_matrix(samples: list[dict], names: list[str]) -> np.ndarray:
    return np.array([[float(s["features"][name]) for name in names] for s in samples], dtype=np.float64)


def cross_validated(form: str, x: np.ndarray, seconds: np.ndarray, keys: list[str], seed: int) -> np.ndarray | None:
    """Each sample predicted by the form fitted without its configuration (all samples sharing its
    key are held out together, so a repeated measurement never scores its twin); None if there
    are fewer than two configurations."""
    groups = np.unique(keys, return_inverse=True)[1]
    n_groups = int(groups.max()) + 1
    if n_groups < 2:
        return None
    if n_groups <= LEAVE_ONE_OUT_BELOW:
        splitter = LeaveOneGroupOut()
    else:
        splitter = GroupKFold(n_splits=5, shuffle=True, random_state=seed)
    heldout = np.empty_like(seconds)
    for train, test in splitter.split(x, seconds, groups):
        heldout[test] = FORM_CLASSES[form](seed).fit(x[train], seconds[train]).predict(x[test])
    return heldout


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None  # JSON has no inf or NaN
