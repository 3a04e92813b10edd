"""`neurosurgeon bench memory` on a small model: every figure is a real process's high-water mark."""

import pytest

from neurosurgeon.tools.bench.memory import bench_memory, memory_table


@pytest.mark.slow
def test_bench_memory_on_lenet(tmp_path):
    result = bench_memory(["lenet"], None, tmp_path, progress=False)
    floors = result["floors_mib"]
    assert 10 < floors["onnxruntime"] < 1000 and 10 < floors["tvm_runtime"] < 1000
    (row,) = result["rows"]
    assert row["model"] == "lenet" and row["device_cut"] == row["segments"] // 2
    # each process holds at least its libraries; the server at least what it held once ready
    assert row["onnxruntime_mib"] >= floors["onnxruntime"] * 0.9
    assert min(row["device_all_mib"], row["device_cut_mib"]) >= floors["tvm_runtime"] * 0.9
    assert row["server_mib"] >= row["server_ready_mib"] > 0
    assert "lenet" in memory_table(result) and "Peak resident memory" in memory_table(result)
