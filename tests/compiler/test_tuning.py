"""Tuning: distinct workloads across segments, a database that compiles apply, reuse across models,
the budget, and targets that cannot be timed here."""

from __future__ import annotations

import json
import shutil
import socket

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from neurosurgeon.cli import main
from neurosurgeon.compiler.analysis import analyse
from neurosurgeon.compiler.pipeline import CompileOptions, compile_model  # no cost stage: these bundles only run
from neurosurgeon.compiler.tiled_kernels import conv_key, conv_variants
from neurosurgeon.compiler.tuning import TuneOptions, TuningError, read_tuning_info, segment_workloads, tune
from neurosurgeon.runtime.errors import NeurosurgeonError
from neurosurgeon.runtime.bundle import Bundle, SegmentExecutor
from neurosurgeon.tools.verify import run_cut, verify_bundle


def conv_net(channels: list[int], size: int = 16, seed: int = 0, name: str = "convnet") -> onnx.ModelProto:
    """x -> (conv 3x3 + relu) per entry of `channels` -> global average pool. Same channels at the
    same depth give the same workloads, whatever the seed (weights are arguments, not code)."""
    rng = np.random.default_rng(seed)
    nodes, weights, previous, width = [], [], "x", 3
    for i, out in enumerate(channels):
        w = numpy_helper.from_array((rng.standard_normal((out, width, 3, 3)) / np.sqrt(9 * width)).astype(np.float32),
                                    f"w{i}")
        b = numpy_helper.from_array((rng.standard_normal(out) * 0.1).astype(np.float32), f"b{i}")
        weights += [w, b]
        nodes.append(helper.make_node("Conv", [previous, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        previous, width = f"r{i}", out
    nodes.append(helper.make_node("GlobalAveragePool", [previous], ["y"], name="pool"))
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width, 1, 1])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize("kernels, conv_part", [("blas", "im2col"), ("naive", "conv2d")])
def test_workloads_are_deduplicated_across_segments(kernels, conv_part):
    # conv1 and conv2 have the same shape (8 -> 8 channels): one workload, called by two segments.
    # With GEMMs offloaded to BLAS, what TVM generates (and tuning tunes) for a conv is its im2col.
    _, _, plan = analyse(conv_net([8, 8, 8]), partitioner="fused-layers", name="convnet")
    workloads = segment_workloads(plan, "x86-host", kernels)
    assert not [w for w in workloads if "conv2d" in w.name and kernels == "blas"]
    convs = [w for w in workloads if conv_part in w.name]
    assert len(convs) == 2  # 3 -> 8, and 8 -> 8 twice
    shared = next(w for w in convs if w.weight == 2)
    assert shared.graphs == ["segment 1", "segment 2"]  # conv + ReLU per segment (fused-layers)
    assert len({w.key for w in workloads}) == len(workloads)


def test_tiled_convolutions_are_not_tuning_tasks():
    # With the default kernels the convolutions are tiled kernels, scheduled where they are made,
    # their bias and ReLU applied as they write: tuning gets what is left (the pooling).
    _, _, plan = analyse(conv_net([8, 8, 8]), name="convnet")
    workloads = segment_workloads(plan, "x86-host")
    assert workloads and not [w for w in workloads if "conv2d" in w.name]
    assert len({w.key for w in workloads}) == len(workloads)


def test_each_convolutions_tiles_are_timed_and_a_tuned_build_applies_them_bit_for_bit(tmp_path):
    # The tiled convolutions' tiles are made where the kernels are, out of MetaSchedule's reach:
    # tuning times every choice (tiled_kernels.conv_variants) of each and records the fastest, which a
    # tuned build applies. Every choice sums each output in the same order: the answers are the same bits.
    model = conv_net([8, 32])  # 3 -> 8 and 8 -> 32: neither has whole vectors of input channels (Winograd's, no choice)
    folder = tmp_path / "x86-host.tuning"
    report = tune(model, TuneOptions("x86-host", folder, budget_s=300, trials_per_task=1, progress=False), name="convnet")
    assert report.measured and report.complete and (report.convolutions, report.tiles_chosen) == (2, 2)
    assert "tiles timed for 2 of 2 convolutions" in report.summary()
    specs = [((1, 3, 16, 16), (8, 3, 3, 3)), ((1, 8, 16, 16), (32, 8, 3, 3))]
    geometry = ((1, 1), (1, 1, 1, 1), (1, 1))
    info = read_tuning_info(folder)
    assert set(info["tiles"]) == {conv_key(data, weight, *geometry) for data, weight in specs}
    for data, weight in specs:
        entry = info["tiles"][conv_key(data, weight, *geometry)]
        variants = conv_variants(data, weight, *geometry, lanes=16)
        assert entry["choice"] in variants and entry["variants"] == len(variants) >= 3
        assert 0 < entry["us"] <= entry["default_us"]
    # the choices other than the default, each the fastest alone, were then timed on the whole model (built
    # with them and without): kept, or dropped back to the default with what was fastest alone
    check, new = info["runs"][-1].get("tiles_check"), [e for e in info["tiles"].values() if e["choice"] or "alone" in e]
    assert report.tiles_check == check and (check is None) == (not new)
    if check:
        assert check["convolutions"] == len(new) and check["with_ms"] > 0 and check["without_ms"] > 0
        assert check["kept"] == (check["with_ms"] < min(check["without_ms"], check["without_again_ms"]))
        assert all(bool(e["choice"]) == check["kept"] and ("alone" in e) != check["kept"] for e in new)
        assert f"new tile choices {'kept' if check['kept'] else 'dropped'}" in report.summary()

    def build_and_run(tiles: dict, out):
        info["tiles"] = {key: {**entry, "choice": tiles} for key, entry in info["tiles"].items()}
        (folder / "tuning.json").write_text(json.dumps(info))
        compile_model(model, out, CompileOptions("x86-host", "x86-host", tuning=folder, progress=False), name="convnet")
        bundle = Bundle(out)
        mobile, server = (SegmentExecutor(bundle, side) for side in ("mobile", "server"))
        x = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
        return [run_cut(bundle, mobile, server, cut, {"x": x})[0]["y"] for cut in range(len(bundle.cuts))]

    chosen = build_and_run({}, tmp_path / "defaults")
    forced = build_and_run({"block": 16, "tile": 8, "rows_outer": False}, tmp_path / "forced")
    differ = [p.name for p in (tmp_path / "defaults/artifacts/x86-host").iterdir()
              if p.read_bytes() != (tmp_path / "forced/artifacts/x86-host" / p.name).read_bytes()]
    assert differ  # the choice reached the code, and the manifests say which choices they were built with
    identities = [json.loads((tmp_path / name / "manifest.json").read_text())["identity"] for name in ("defaults", "forced")]
    assert identities[0]["options"]["tuning"]["tiles_sha256"] != identities[1]["options"]["tuning"]["tiles_sha256"]
    assert identities[0]["bundle_id"] != identities[1]["bundle_id"]
    assert all(np.array_equal(a, b) for a, b in zip(chosen, forced, strict=True))
    assert all(c.ok for c in verify_bundle(tmp_path / "forced", model))
    # a hand-edited choice that names no knob is refused in a line, and no bundle is left behind
    info["tiles"][next(iter(info["tiles"]))]["choice"] = {"blocks": 16}
    (folder / "tuning.json").write_text(json.dumps(info))
    with pytest.raises(TuningError, match=r"tuning.json: tiles of 'conv2d .*: expected a choice of block, tile, rows_outer"):
        compile_model(model, tmp_path / "bad", CompileOptions("x86-host", "x86-host", tuning=folder, progress=False),
                      name="convnet")
    assert not (tmp_path / "bad").exists()


def test_bad_arguments_leave_nothing_on_disk(tmp_path):
    model = conv_net([4])
    with pytest.raises(TuningError, match="budget"):
        tune(model, TuneOptions("x86-host", tmp_path / "t", budget_s=0))
    with pytest.raises(NeurosurgeonError, match="unknown target preset"):
        tune(model, TuneOptions("no-such-preset", tmp_path / "t", budget_s=10))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("not a tuning folder")
    with pytest.raises(TuningError, match="not a tuning folder"):
        tune(model, TuneOptions("x86-host", tmp_path / "other", budget_s=10))
    assert not (tmp_path / "t").exists()
    with pytest.raises(TuningError, match="tuning.json is missing"):
        compile_model(model, tmp_path / "b", CompileOptions("x86-host", "x86-host", tuning=tmp_path / "other"))
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_tune_then_compile_applies_and_reuses(tmp_path):
    # With the convolutions as im2col + BLAS, TVM generates their im2col, bias + ReLU and the pool:
    # workloads to tune, shared between models. (Tiled convolutions take their bias and ReLU and leave
    # the pool alone.)
    model = conv_net([8, 8])
    folder = tmp_path / "x86-host.tuning"
    blas = dict(kernels="blas", progress=False)
    report = tune(model, TuneOptions("x86-host", folder, budget_s=120, trials_per_task=2, **blas), name="convnet")
    assert report.measured and report.complete and report.tuned == report.tasks and report.skipped == 0
    info = read_tuning_info(folder)
    assert info["measured"] is True and info["preset"] == "x86-host"
    assert all(task["trials"] == 2 and task["best_us"] > 0 for task in info["tasks"].values())
    assert (folder / "database_tuning_record.json").stat().st_size > 0

    untuned, tuned = tmp_path / "untuned", tmp_path / "tuned"
    compile_model(model, untuned, CompileOptions("x86-host", "x86-host", **blas), name="convnet")
    result = compile_model(model, tuned, CompileOptions("x86-host", "x86-host", tuning=folder, **blas), name="convnet")
    identity = result.manifest["identity"]["options"]["tuning"]
    assert identity["dir"] == "x86-host.tuning" and identity["measured"] is True and identity["measured_on"] == "here"
    # every TVM-generated kernel of every segment has its schedule from the database; the GEMMs go to BLAS
    counts = result.manifest["build"]["kernels"]["x86-host"]
    assert counts["tuned"] == counts["kernels"] > 0 and counts["tiled"] == 0 and counts["externs"] == 2
    assert len(identity["database_sha256"]) == 64
    # Our default schedule is candidate zero of every task: where no searched schedule beat it, the
    # tuned build's code is the untuned build's. (Where one did, the code usually differs, but need not:
    # two traces can lower to the same kernel.)
    tasks = read_tuning_info(folder)["tasks"].values()
    assert all(t["default_us"] > 0 and t["best_us"] <= t["default_us"] for t in tasks)
    assert all(t["schedule"] in ("default", "searched") for t in tasks)
    assert all(t["best_us"] == t["default_us"] for t in tasks if t["schedule"] == "default")
    differ = [p.name for p in (untuned / "artifacts/x86-host").iterdir()
              if p.read_bytes() != (tuned / "artifacts/x86-host" / p.name).read_bytes()]
    if all(t["schedule"] == "default" for t in tasks):
        assert not differ, differ
    checks = verify_bundle(tuned, model)
    assert len(checks) == len(result.plan.cuts) and all(c.ok for c in checks)

    # Another model (other weights, one more conv of a shape already tuned, a new first conv)
    # tunes only the workload it does not share.
    other = conv_net([8, 8, 8], seed=1)
    again = tune(other, TuneOptions("x86-host", folder, budget_s=120, trials_per_task=2, **blas), name="other")
    assert again.tasks == report.tasks  # 3 -> 8 conv, 8 -> 8 conv, relu, pool: all known already
    assert again.skipped == again.tasks and again.tuned == 0 and again.trials == 0
    wider = conv_net([16, 8], seed=2)
    third = tune(wider, TuneOptions("x86-host", folder, budget_s=120, trials_per_task=2, **blas), name="wider")
    assert third.skipped >= 1 and 1 <= third.tuned < third.tasks  # the new convs (3->16, 16->8), relu/pool shapes
    info = read_tuning_info(folder)
    assert [run["model"] for run in info["runs"]] == ["convnet", "other", "wider"]
    assert info["runs"][1]["trials"] == 0


@pytest.mark.slow
def test_budget_stops_between_tasks_and_a_rerun_resumes(tmp_path):
    # 25 workloads with the convolutions as im2col + BLAS (their im2col, bias + ReLU and the pool are
    # tuned; tiled convolutions would leave the pool alone) in fused-layers' segments (the default's
    # upload envelope makes longer segments: 10), a second or two each at 4 trials
    model = conv_net([4, 8, 12, 16, 20, 24, 28, 32])
    folder = tmp_path / "t"
    options = dict(trials_per_task=4, kernels="blas", partitioner="fused-layers", progress=False)
    # The budget counts from the start, analysis and the default schedules included. A budget that
    # leaves no time for a task tunes none, but keeps the default schedules it timed.
    setup = tune(model, TuneOptions("x86-host", folder, budget_s=0.1, **options), name="convnet")
    assert not setup.complete and setup.tuned == 0 and setup.remaining == setup.tasks > 10
    assert all(t["default_us"] > 0 and t["trials"] == 0 for t in read_tuning_info(folder)["tasks"].values())
    # Sized on this machine's own setup time, so that some tasks fit and not all of them do.
    budget = setup.seconds + 5
    first = tune(model, TuneOptions("x86-host", folder, budget_s=budget, **options), name="convnet")
    assert not first.complete and first.remaining > 0 and first.tuned > 0, first
    assert first.seconds < budget + 5  # a task starts only if it is expected to fit; one may run a little over
    done = {k for k, t in read_tuning_info(folder)["tasks"].items() if t["trials"] == 4}
    assert len(done) == first.tuned
    second = tune(model, TuneOptions("x86-host", folder, budget_s=600, **options), name="convnet")
    assert second.complete and second.skipped == len(done) and second.tuned == second.tasks - len(done)


@pytest.mark.slow
def test_targets_that_do_not_run_here_are_tuned_without_measurement(tmp_path):
    model = conv_net([8, 8])
    folder = tmp_path / "aarch64-neon.tuning"
    report = tune(model, TuneOptions("aarch64-neon", folder, budget_s=120, progress=False), name="convnet")
    assert not report.measured and report.complete
    info = read_tuning_info(folder)
    assert info["measured"] is False and "best_us" not in json.dumps(info["tasks"])
    bundle = tmp_path / "b"
    result = compile_model(model, bundle, CompileOptions("aarch64-neon", "x86-host", tuning=folder, progress=False),
                           name="convnet")
    assert result.manifest["identity"]["options"]["tuning"]["measured"] is False
    # The x86 side is not the folder's preset: it is built untuned, so one folder cannot leak into another target.
    with pytest.raises(NeurosurgeonError, match="tuned for aarch64-neon"):
        compile_model(model, tmp_path / "c", CompileOptions("x86-host", "x86-host", tuning=folder, progress=False))
    shutil.rmtree(bundle)


def test_tune_command(tmp_path, capsys):
    model = tmp_path / "net.onnx"
    onnx.save(conv_net([4]), model)
    assert main(["tune", str(model), "--target", "aarch64-neon", "--budget", "60", "-o", str(tmp_path / "t"),
                 "--trials-per-task", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    # the pool over the convolution's NCHW4c result and the reshape of its [1, 1, 1, 1, 4] to the output's
    # [1, 4, 1, 1] (the convolution with its bias and ReLU is a tiled kernel, not tuned)
    assert "2 workloads: 2 tuned" in out and "measured: false" in out
    assert read_tuning_info(tmp_path / "t")["runs"][0]["model"] == "net"


def test_poolings_tune_without_a_warning_per_design_space(tmp_path, capfd):
    # Relax's poolings name MetaSchedule rules (meta_schedule.pool_max / pool_avg) that TVM defines
    # for no target: unanswered, TVM printed a warning from C++ for every design space it built.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    nodes = [helper.make_node("MaxPool", ["x"], ["m"], kernel_shape=[2, 2], strides=[2, 2], name="max"),
             helper.make_node("AveragePool", ["m"], ["y"], kernel_shape=[2, 2], strides=[2, 2], name="avg")]
    graph = helper.make_graph(nodes, "pools", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2, 2])])
    model = tmp_path / "pools.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), model)
    assert main(["tune", str(model), "--target", "aarch64-neon", "--budget", "60", "-o", str(tmp_path / "t"),
                 "--trials-per-task", "2", "--quiet"]) == 0
    out, err = capfd.readouterr()
    assert "2 workloads: 2 tuned" in out
    assert "schedule rule" not in err


def test_unreachable_board_falls_back_to_unmeasured_tuning_and_says_so(tmp_path, capsys):
    model = conv_net([4])
    folder = tmp_path / "aarch64-neon.tuning"
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    report = tune(model, TuneOptions("aarch64-neon", folder, budget_s=60, trials_per_task=1, progress=False, rpc=f"127.0.0.1:{port}"), name="convnet")
    assert not report.measured and report.complete
    assert f"no board reachable at 127.0.0.1:{port}" in report.unmeasured_reason
    assert "fell back to tuning without measurement" in capsys.readouterr().err
    info = read_tuning_info(folder)
    assert info["measured"] is False and info["measured_on"] is None and "127.0.0.1" in info["unmeasured_reason"]
    result = compile_model(model, tmp_path / "b", CompileOptions("aarch64-neon", "x86-host", tuning=folder,
                                                                 progress=False), name="convnet")
    tuning = result.manifest["identity"]["options"]["tuning"]
    assert tuning["measured"] is False and "no board reachable" in tuning["unmeasured_reason"]
    with pytest.raises(TuningError, match="expected HOST:PORT"):
        tune(model, TuneOptions("aarch64-neon", folder, budget_s=60, progress=False, rpc="no-port"))
    # A folder holds one kind of schedules: measured ones do not join unmeasured ones later.
    x86 = tmp_path / "x86-host.tuning"
    assert not tune(model, TuneOptions("x86-host", x86, budget_s=60, trials_per_task=1, progress=False, rpc=f"127.0.0.1:{port}")).measured
    with pytest.raises(TuningError, match="was tuned without measurement, this run would tune measured"):
        tune(model, TuneOptions("x86-host", x86, budget_s=60, trials_per_task=1, progress=False))


@pytest.mark.slow
def test_cuda_workloads_are_tuned_and_the_tuned_build_carries_device_code(tmp_path):
    """The server side: CUDA workloads go through the same tuning path (unmeasured here, no GPU), and
    a bundle compiled with the database still carries compiled device code for its arch."""
    from neurosurgeon.runtime.cuda import device_code_archs

    model = conv_net([8])
    folder = tmp_path / "cuda-sm80.tuning"
    report = tune(model, TuneOptions("cuda-sm80", folder, budget_s=300, trials_per_task=1, progress=False), name="convnet")
    assert report.complete and not report.measured and report.tasks > 0
    result = compile_model(model, tmp_path / "b", CompileOptions("x86-host", "cuda-sm80", tuning=folder, progress=False),
                           name="convnet")
    counts = result.manifest["build"]["kernels"]["cuda-sm80"]
    assert counts["tuned"] == counts["kernels"] > 0
    for entry in result.manifest["artifacts"]["cuda-sm80"]:
        assert device_code_archs(result.path / entry["file"]) == {"sm_80"}


def test_a_candidate_whose_compile_never_ends_is_dropped_and_the_others_still_build():
    # LLVM never finished one candidate of AlexNet's LRN pooling, and the whole tuning run waited on
    # it: each candidate is first built in a forked child with a deadline (measure.within_deadline).
    import os
    import signal
    import time

    from neurosurgeon.compiler.tuning.measure import within_deadline

    def build(item):
        if item == "hangs":
            time.sleep(3600)
        if item == "crashes":
            os.kill(os.getpid(), signal.SIGSEGV)
        if item == "invalid":
            raise ValueError("an invalid candidate: the caller's own build reports it")
        return item

    items = ["a", "hangs", "b", "invalid", "crashes", "c"]
    started = time.perf_counter()
    verdicts = list(within_deadline(items, build, seconds=2.0))
    assert time.perf_counter() - started < 10
    assert [item for item, _ in verdicts] == items
    assert {item: why for item, why in verdicts if why} == {
        "hangs": "its compile took over 2 s", "crashes": "its compile ended the process that ran it"}
