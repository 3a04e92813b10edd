"""`bench load` end to end on a small mix: simulated devices over real sockets against real servers,
every answer checked against onnxruntime."""

from __future__ import annotations

import pytest

from neurosurgeon.tools.bench.load import CONFIGS, LoadOptions, bench_load, load_table

pytestmark = pytest.mark.slow


def test_bench_load_runs_every_configuration_and_network_without_errors(tmp_path):
    pytest.importorskip("ray.serve", reason="the Ray Serve configuration needs the optional extra")
    result = bench_load(LoadOptions(mix={"lenet": {"width": 0.25}, "chk": {"width": 0.25}}, devices=(1, 2),
                                    seconds=2.0, networks=("wifi", "3g"), datacenter_devices=4,
                                    focus={"chk": {"width": 0.25}}, focus_devices=2,
                                    workdir=str(tmp_path), progress=False))
    table = load_table(result)
    assert len(result.capacity) == 2 * len(CONFIGS), table
    assert all(c.requests > 0 and c.errors == 0 for c in result.capacity), table
    assert {c.config for c in result.capacity} == set(CONFIGS)
    assert all(set(c.per_model) <= {"lenet", "chk"} for c in result.capacity)
    assert [c.config for c in result.focus] == [f"chk: {c}" for c in CONFIGS if not c.startswith("Ray")]
    assert all(c.requests > 0 and c.errors == 0 for c in result.focus), table
    for row in result.datacenter:
        assert row["cloud"]["errors"] == row["neurosurgeon"]["errors"] == 0, table
        assert row["cloud"]["server_share"] == 1.0 and row["cloud"]["sustained_s"] > 0, table
    assert "datacenter throughput" in table and "capacity" in table
