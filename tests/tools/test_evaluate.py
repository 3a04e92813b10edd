"""`neurosurgeon evaluate` end to end on a small model and one network: a real server, a real device
process over a shaped link; the report's numbers are checked against the raw requests they came from."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neurosurgeon.runtime.errors import NeurosurgeonError
from neurosurgeon.tools.evaluate import EvaluateOptions, run_evaluate
from neurosurgeon.tools.evaluate.device import CgroupQuota, Dilation, parse_speed
from neurosurgeon.tools.evaluate.measure import Stats


def test_device_speed_specs():
    assert parse_speed("dilate:4").spec == "dilate:4"
    assert isinstance(parse_speed("quota:0.25:4"), CgroupQuota)
    assert parse_speed("quota:0.5").spec == "quota:0.5:4"
    for bad, says in (("fast", "expected dilate"), ("dilate:0.5", "1 or more"), ("quota:0.1:4", "1 ms at least"),
                      ("quota:2", "(0, 1]"), ("dilate:x", "numbers")):
        with pytest.raises(NeurosurgeonError, match=says.replace("(", r"\(").replace("]", r"\]")):
            parse_speed(bad)


def test_dilation_makes_each_call_take_factor_times_as_long():
    import time

    class Sleeper:
        bundle = device = None

        def sync(self):
            pass

        def run(self, env, segments):
            time.sleep(0.02)
            return env

    slow = Dilation(3).executor(Sleeper())
    slow.run({}, (0,))  # the first call also runs it WARM_RUNS more times, back to back, for its warm time
    # One call can end early by what an earlier sleep overshot (owed back, at most MAX_CREDIT_S) or late by
    # its own overshoot (owed by the next): over several calls, factor x warm time, give or take one of each.
    started = time.perf_counter()
    for _ in range(4):
        slow.run({}, (0,))
    assert 4 * 0.06 - slow.MAX_CREDIT_S <= time.perf_counter() - started < 4 * 0.06 + 0.015


def test_stats():
    s = Stats.of([1, 2, 3, 4, 100])
    assert s.median == 3 and s.n == 5 and s.p10 == pytest.approx(1.4) and s.p90 == pytest.approx(61.6)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    options = EvaluateOptions(models=("lenet",), networks=("lte",), loads=(0,), requests=5, device="dilate:3", spread=False, focus_model=None,
                              workdir=tmp_path_factory.mktemp("work"), progress=False)
    report = run_evaluate(out, options, "neurosurgeon evaluate lenet --networks lte --loads 0 --requests 5")
    return out, options, report


def test_report_numbers_come_from_the_raw_requests(evaluated):
    out, _, report = evaluated
    raw = json.loads((out / "raw" / "lenet" / "dilate-3" / "lte-0c.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["objective"]: r for r in summary["rows"]}
    assert set(rows) == {"latency", "energy"}
    cuts = {int(k): v for k, v in raw["cuts"].items()}
    n = max(cuts)
    full = [k for k, v in cuts.items() if len(v) == 5]
    assert 0 in full and n in full  # cloud-only and device-only always run to the full count
    for objective, metric in (("latency", "latency_s"), ("energy", "energy_j")):
        row = rows[objective]
        auto = [r[metric] for r in raw["auto"][objective]]
        assert len(auto) == 5
        assert row["auto"]["median"] == pytest.approx(float(np.median(auto)))
        assert row["cloud_only"]["median"] == pytest.approx(float(np.median([r[metric] for r in cuts[0]])))
        assert row["device_only"]["median"] == pytest.approx(float(np.median([r[metric] for r in cuts[n]])))
        medians = {k: float(np.median([r[metric] for r in cuts[k]])) for k in full}
        best = min(medians, key=medians.get)
        assert row["oracle_cut"] == best and row["oracle"]["median"] == pytest.approx(medians[best])
        chosen = max(set(r["schedule"] for r in raw["auto"][objective]),
                     key=[r["schedule"] for r in raw["auto"][objective]].count)
        assert row["chosen"] == chosen
        judged = medians.get(row["chosen_cut"], row["auto"]["median"])
        assert row["vs_oracle"] == pytest.approx(judged / medians[best])
        assert row["vs_cloud"] == pytest.approx(medians[0] / row["auto"]["median"])
        # every request's outputs matched onnxruntime on the whole model
        assert row["max_error"] < 1e-4 and row["fell_back"] == 0
    text = report.read_text()
    latency = rows["latency"]
    assert f"{latency['auto']['median'] * 1e3:.0f} [" in text and f"| {latency['vs_oracle']:.2f}x |" in text
    assert "neurosurgeon evaluate lenet --networks lte" in text
    for png in ("lenet-layers.png", "lenet-cuts.png", "summary.png"):
        assert (out / png).stat().st_size > 1000


def test_a_second_run_resumes_without_measuring_again(evaluated):
    out, options, _ = evaluated
    case = out / "raw" / "lenet" / "dilate-3" / "lte-0c.json"
    before = case.stat().st_mtime_ns, case.read_bytes()
    run_evaluate(out, options)
    assert (case.stat().st_mtime_ns, case.read_bytes()) == before


def test_sweeps_trace_and_hedging_reach_the_report(tmp_path):
    options = EvaluateOptions(models=("lenet",), networks=("lte",), loads=(0,), requests=3, device="dilate:3",
                              spread=False, focus_model="lenet", sweep=(2,), sweep_networks=("lte",),
                              load_sweep=(0, 1), datacenter=False, workdir=tmp_path / "work", progress=False)
    out = tmp_path / "report"
    text = run_evaluate(out, options).read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert [r["device"] for r in summary["sweep"]] == ["dilate:2", "dilate:3"]  # the sweep's point, the main case's
    assert [r["clients"] for r in summary["load_sweep"]] == [0, 1]  # on wifi, the load sweep's network
    assert [r["clients"] for r in summary["hedging"]] == [0, 1]
    trace = json.loads((out / "raw" / "lenet" / "dilate-3" / "trace-lte.json").read_text())["steps"]
    assert len(trace) == 40 and trace[0]["up_mbps"] > 10 * trace[-1]["up_mbps"]
    assert all(s["auto"]["error"] < 1e-4 and s["cloud_only"]["error"] < 1e-4 for s in trace)
    for title in ("Where partitioning pays", "Under rising server load", "Hedging", "A falling lte uplink"):
        assert title in text
    for png in ("device-sweep.png", "load-sweep.png", "trace.png"):
        assert (out / png).stat().st_size > 1000
