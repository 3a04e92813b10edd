"""Costs end to end: a cost model fitted on a real (small) profile predicts a bundle's segments at
compile time, measured mode sits beside the predictions, power per segment, and the server's load model."""

import json
import urllib.request

import numpy as np
import pytest

from neurosurgeon.tools import zoo
from neurosurgeon.api import CompileOptions, CostAnnotation
from neurosurgeon.api import compile as compile_model
from neurosurgeon.cost_models.fit import fit_profile
from neurosurgeon.cost_models.microbench import build_kit
from neurosurgeon.runtime.bundle import LOAD_MODEL_FILE, Bundle
from neurosurgeon.runtime.mobile import load_costs
from neurosurgeon.runtime.errors import BundleError
from neurosurgeon.runtime.estimators import ServerLoadEstimator
from neurosurgeon.runtime.measured import measure_bundle
from neurosurgeon.runtime.profile import profile_kit
from neurosurgeon.serving import start_server


@pytest.fixture(scope="module")
def costed(tmp_path_factory):
    root = tmp_path_factory.mktemp("costs")
    build_kit("x86-host", root / "kit", scale="small", progress=False)
    profile = profile_kit(root / "kit", root / "x86.profile.json", repeats=3, warmup=1, progress=False)
    (root / "x86.costmodel.json").write_text(json.dumps(fit_profile(profile)))
    zoo.save(zoo.build("lenet", width=0.5), root / "lenet.onnx")
    result = compile_model(root / "lenet.onnx", root / "bundle",
                           CompileOptions("x86-host", "x86-host", progress=False),
                           CostAnnotation(root / "x86.costmodel.json", root / "x86.costmodel.json"))
    return root, result.manifest


def test_compile_records_predicted_and_measured_costs(costed):
    _, manifest = costed
    n = len(manifest["segments"])
    for side in ("mobile", "server"):
        costs = manifest["costs"][side]
        assert len(costs["predicted_seconds"]) == len(costs["measured_seconds"]) == n
        assert all(s > 0 and np.isfinite(s) for s in costs["predicted_seconds"])
        assert costs["segment_seconds"] == costs["predicted_seconds"]  # a cost model was given: decide with it
        assert "cost model x86.costmodel.json" in costs["source"] and "measured on the build machine" in costs["measured_source"]
    power = manifest["costs"]["mobile"]["power_w"]
    assert power == [15.0] * n and "laptop-class" in manifest["costs"]["mobile"]["power_source"]


def test_planner_costs_default_measured_predicted(costed, tmp_path):
    import shutil

    root, manifest = costed
    shutil.copytree(root / "bundle", tmp_path / "b")
    bundle = Bundle(tmp_path / "b")
    mobile = manifest["costs"]["mobile"]
    np.testing.assert_allclose(load_costs(bundle).mobile_s, mobile["predicted_seconds"])
    np.testing.assert_allclose(load_costs(bundle, "measured").mobile_s, mobile["measured_seconds"])
    measure_bundle(bundle, "mobile", repeats=3)  # measured on "the device": now the default
    here = json.loads((tmp_path / "b" / "measured" / "mobile.json").read_text())["segment_seconds"]
    np.testing.assert_allclose(load_costs(bundle).mobile_s, here)
    np.testing.assert_allclose(load_costs(bundle, "predicted").mobile_s, mobile["predicted_seconds"])
    with pytest.raises(BundleError, match="cannot read costs"):
        load_costs(bundle, tmp_path / "nope.json")


def test_power_table_weights_layer_types(tmp_path):
    from neurosurgeon.cost_models.power import load_power_table, segment_power

    watts, source = load_power_table(None, "aarch64-neon")
    assert watts["conv"] == 3.2 and "Raspberry Pi" in source
    layers = [{"type": "conv", "flops": 300}, {"type": "pooling", "flops": 100}, {"type": "softmax", "flops": 0}]
    segments = [{"layers": [0, 2]}, {"layers": [2, 3]}]
    assert segment_power(layers, segments, watts) == [pytest.approx((300 * 3.2 + 100 * 2.4) / 400), 3.0]
    (tmp_path / "bad.json").write_text('{"format": "neurosurgeon-power", "version": 1, "presets": {"x": {"active_w": {"conv": 1}}}}')
    with pytest.raises(Exception, match="needs a non-negative 'default'"):
        load_power_table(tmp_path / "bad.json", "x")


def test_server_reports_the_fitted_expected_wait(costed, tmp_path):
    import shutil

    root, _ = costed
    shutil.copytree(root / "bundle", tmp_path / "b")
    (tmp_path / "b" / LOAD_MODEL_FILE).write_text(json.dumps({"format": "neurosurgeon-server-load", "version": 1,
                                                              "alpha": 2.0, "beta": 0.005}))
    with start_server(tmp_path / "b") as server:
        with urllib.request.urlopen(f"{server.url}/v2/health/ready") as answer:
            load = json.loads(answer.read())["load"]
    assert load["expected_wait_s"] == pytest.approx(0.005)  # idle: only beta
    estimator = ServerLoadEstimator()
    estimator.update({"queue_length": 3, "mean_service_s": 0.01, "expected_wait_s": 0.065})
    assert estimator.wait_s() == pytest.approx(0.065, rel=0.01)  # the server's own prediction wins
