"""The CLI verbs end to end, as a user types them."""

import json
import tarfile

from neurosurgeon.cli import main


def test_zoo_compile_verify(tmp_path, capsys):
    assert main(["zoo", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("alexnet", "vgg16", "deepface", "lenet", "asr", "pos", "ner", "chk",
                                            "resnet18", "inception"))
    model = tmp_path / "lenet.onnx"
    assert main(["zoo", "lenet", "-o", str(model), "--width", "0.25"]) == 0
    assert main(["zoo", "lenet-5", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "lenet" in capsys.readouterr().err

    bundle = tmp_path / "lenet.bundle"
    assert main(["compile", str(model), "--mobile", "x86-host", "--server", "x86-host", "-o", str(bundle), "--quiet"]) == 0
    # upload-envelope, the default: of fused-layers' 8 cuts (ip1 and its ReLU one segment), those that
    # upload less than every cut before them (not after conv1 nor conv2: each uploads more than its input)
    assert "6 cuts (upload-envelope)" in capsys.readouterr().out
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["name"] == "lenet" and len(manifest["cuts"]) == 6

    assert main(["verify", str(bundle), str(model)]) == 0
    assert "6 of 6 cuts reproduce onnxruntime" in capsys.readouterr().out
    fused = tmp_path / "fused.bundle"
    assert main(["compile", str(model), "--mobile", "x86-host", "--server", "x86-host", "-o", str(fused), "--quiet",
                 "--partitioner", "fused-layers"]) == 0
    assert "8 cuts (fused-layers)" in capsys.readouterr().out
    every = tmp_path / "every.bundle"
    assert main(["compile", str(model), "--mobile", "x86-host", "--server", "x86-host", "-o", str(every), "--quiet",
                 "--partitioner", "layer-boundaries"]) == 0
    assert "9 cuts" in capsys.readouterr().out
    assert main(["verify", str(every), str(model)]) == 0
    assert "9 of 9 cuts reproduce onnxruntime" in capsys.readouterr().out

    # a second compile to the same place needs --force; --tar writes one file
    assert main(["compile", str(model), "--mobile", "x86-host", "--server", "x86-host", "-o", str(bundle), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    tar = tmp_path / "lenet.tar"
    assert main(["compile", str(model), "--mobile", "aarch64-neon", "--server", "x86-host", "-o", str(tar), "--tar",
                 "--quiet"]) == 0
    with tarfile.open(tar) as archive:
        assert any(n.startswith("artifacts/aarch64-neon/lenet_aarch64-neon_seg") for n in archive.getnames())


def test_bench_speed_compares_with_onnxruntime_side_by_side(capsys):
    assert main(["bench", "speed", "lenet", "--steps", "--repeats", "3", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["label"]: r for r in result["rows"]}
    ours = ["TVM default pipeline", "ours, im2col + BLAS"]
    threads = result["threads"]
    if threads > 1:  # the BLAS build as the runtime shared the threads before: both pools at every thread
        ours.append(f"ours, im2col + BLAS, pools {threads}+{threads}")
    ours += ["ours, tiled, direct 3x3", "ours, untuned"]
    assert list(rows) == ["onnxruntime", *ours]
    assert rows["onnxruntime"]["ratio_to_onnxruntime"] == 1.0
    assert f"threads TVM 1, BLAS {threads}" in rows["ours, im2col + BLAS"]["note"]  # the GEMMs get the threads
    assert f"threads TVM {threads}, BLAS 1" in rows["ours, untuned"]["note"]  # tiled products: TVM has them
    for label in ours:
        r = rows[label]
        assert r["samples"] >= 3 and r["median_ms"] > 0 and r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert abs(r["ratio_to_onnxruntime"] - r["median_ms"] / rows["onnxruntime"]["median_ms"]) < 1e-6
        assert float(r["note"].rsplit(" ", 1)[1]) < 1e-4  # max |error| against onnxruntime
    assert result["model"] == "lenet" and result["input_shapes"] == {"input": [1, 1, 28, 28]}


def test_bench_speed_times_every_cut_against_the_monolithic_build(capsys):
    segments = {}
    for partitioner in ("fused-layers", "layer-boundaries"):
        assert main(["bench", "speed", "lenet", "--cuts", "--partitioner", partitioner, "--repeats", "3", "--json",
                     "--quiet"]) == 0
        cuts = json.loads(capsys.readouterr().out)["cuts"]
        assert cuts["partitioner"] == partitioner and len(cuts["cut_ms"]) == cuts["segments"] + 1
        assert cuts["ratio_min"] <= cuts["ratio_median"] <= cuts["ratio_max"] and cuts["monolithic_ms"] > 0
        segments[partitioner] = cuts["segments"]
    assert segments == {"fused-layers": 7, "layer-boundaries": 8}  # ip1 and its ReLU: one segment


def test_bench_speed_refuses_targets_that_do_not_run_here(capsys):
    assert main(["bench", "speed", "lenet", "--target", "aarch64-neon"]) == 2
    assert "aarch64-neon does not run on this machine" in capsys.readouterr().err


def test_bench_decisions_compares_the_planners(capsys):
    assert main(["bench", "decisions", "--models", "lenet", "asr", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)["schedules"]
    rows = result["rows"]
    assert len(rows) == 2 * 2 * 2 * 3  # models x mobile devices x servers x networks
    for r in rows:
        for objective, key in (("latency", "latency_s"), ("energy", "energy_j")):
            cut, path = r[f"prefix/{objective}"][key], r[f"shortest-path/{objective}"][key]
            # several transfers can only do better than the best cut, the best cut than cloud-only
            assert path <= cut * (1 + 1e-9) and cut <= r["cloud_only"][key] * (1 + 1e-9)
    assert {d["planner"] for d in result["decision_times"]} >= {"prefix", "shortest-path", "min-cut"}
    assert all(d["median_us"] > 0 for d in result["decision_times"])
