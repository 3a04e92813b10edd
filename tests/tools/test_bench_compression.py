"""`neurosurgeon bench compression` end to end on one small model: its tables come from the bundle's
measurements and from real requests over a shaped link."""

import pytest

from neurosurgeon.cli import main
from neurosurgeon.runtime.bundle import Bundle
from neurosurgeon.tools.bench.compression import CompressionOptions, bench_compression, compression_tables, cut_rows


@pytest.mark.slow
def test_bench_compression_on_alexnet(tmp_path, capsys):
    options = CompressionOptions(models=["alexnet"], input_size=64, networks=("3g",), requests=3, workdir=tmp_path,
                                 progress=False)
    result = bench_compression(options)
    entry = result["models"]["alexnet"]
    bundle = Bundle(tmp_path / "alexnet-64.bundle")
    assert entry["cuts"] == cut_rows(bundle) and len(entry["cuts"]) == len(bundle.segments)  # every cut but mobile-only
    after_relu = [r for r in entry["cuts"] if r["after"].startswith("relu")]
    assert after_relu and all(r["ratio"] > 1.2 and r["coded_bytes"] < r["raw_bytes"] for r in after_relu)
    for codec, errors in entry["lossy"].items():  # lossy, but close: the same class at most cuts
        assert 0 < errors["max_abs_error"] < 0.1 * errors["output_scale"] and errors["top1_kept"] >= 0.5, codec
    (row,) = entry["end_to_end"]
    assert row["network"] == "3g" and row["off"]["max_error"] < 1e-4 and row["auto"]["max_error"] < 1e-4
    if row["auto"]["cut"] == row["off"]["cut"] and row["off"]["cut"] < len(bundle.segments):
        assert row["auto"]["upload_bytes"] < row["off"]["upload_bytes"]
    table = compression_tables(result)
    assert "alexnet" in table and "lossless uploads" in table and "end to end" in table

    assert main(["bench", "compression", "alexnet", "--input-size", "64", "--networks", "--workdir", str(tmp_path),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "lossy codecs" in out and "end to end" not in out
