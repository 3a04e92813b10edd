"""The ARM side for real: an aarch64 bundle's own generated run.py runs under qemu-aarch64 against
the x86 server on loopback, completes a request at every cut and matches onnxruntime; with the
server gone, the same process finishes every request on the emulated board."""

import json
import shutil
import time

import numpy as np
import pytest

from neurosurgeon.cli import main
from neurosurgeon.tools import board as emulation, zoo
from neurosurgeon.api import CompileOptions
from neurosurgeon.api import compile as compile_model
from neurosurgeon.runtime.tensors import random_inputs
from neurosurgeon.tools.verify import reference_outputs
from neurosurgeon.runtime.bundle import Bundle
from neurosurgeon.serving import start_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None
                       or shutil.which("qemu-aarch64") is None,
                       reason="the emulated board needs a Debian-based host with qemu-user"),
]

# Small enough that one process sweeping every cut under qemu takes seconds, not minutes.
MODELS = {"alexnet": {"input_size": 64, "width": 0.25}, "inception": {"input_size": 32, "width": 0.125}}


@pytest.fixture(scope="module")
def board():
    return emulation.ensure_board(progress=True)  # the user's cache: built once, then reused


@pytest.fixture(scope="module", params=list(MODELS))
def compiled(request, tmp_path_factory):
    """(folder, bundle, input file, onnxruntime's outputs) for an aarch64-neon / x86-host bundle."""
    name = request.param
    root = tmp_path_factory.mktemp(name)
    zoo.save(zoo.build(name, **MODELS[name]), root / f"{name}.onnx")
    compile_model(root / f"{name}.onnx", root / "bundle", CompileOptions("aarch64-neon", "x86-host", progress=False))
    bundle = Bundle(root / "bundle")
    feeds = random_inputs(bundle.inputs, seed=5)
    np.save(root / "x.npy", feeds[bundle.inputs[0].name])
    return root, bundle, root / "x.npy", reference_outputs(root / f"{name}.onnx", feeds)


def run_emulated(board, bundle, args, out):
    """run.py under qemu with `args`; its JSON records, its outputs by cut, and the wall time."""
    start = time.perf_counter()
    result = emulation.run_bundle(bundle.path, [*args, "-o", str(out), "--json"], board=board, timeout=600)
    wall = time.perf_counter() - start
    assert result.returncode == 0, result.stdout + result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    saved = np.load(out)
    outputs = {}
    for key in saved.files:
        cut, name = key.split("/", 1)
        outputs.setdefault(int(cut.removeprefix("cut")), {})[name] = saved[key]
    return records, outputs, wall


def assert_matches(outputs, reference):
    assert set(outputs) == set(reference)
    for name in reference:
        np.testing.assert_allclose(outputs[name], reference[name], rtol=1e-4, atol=1e-5)


def test_every_cut_over_loopback_then_without_the_server(board, compiled):
    root, bundle, x, reference = compiled
    n = len(bundle.segments)
    with start_server(bundle.path) as server:
        records, outputs, wall = run_emulated(board, bundle, ["--server", server.url, "--cut", "all", "--input", str(x)],
                                              root / "online.npz")
    assert [r["cut"] for r in records] == list(range(n + 1)) and sorted(outputs) == list(range(n + 1))
    for record in records:
        assert not record["fell_back"], record
        if record["cut"] < n:  # the server did the rest: it reported compute, and the tensors went up (raw plus
            # a header, or coded where that pays at the link's rate: tests/runtime/test_compression.py)
            assert record["server_s"] > 0 and record["upload_bytes"] > 0, record
        else:
            assert record["upload_bytes"] == 0
        assert_matches(outputs[record["cut"]], reference)
    requests = sum(r["total_s"] for r in records)
    print(f"\n{bundle.name}: {n + 1} cuts over loopback under qemu in {wall:.1f} s "
          f"(requests {requests:.1f} s, {requests / (n + 1) * 1e3:.0f} ms each; start-up and exit {wall - requests:.1f} s)")

    # The server is gone now: every request that would offload finishes on the emulated board.
    records, outputs, wall = run_emulated(board, bundle, ["--server", server.url, "--cut", "all", "--input", str(x),
                                                           "--deadline", "2"], root / "offline.npz")
    assert [r["cut"] for r in records] == list(range(n + 1))
    assert "refused" in records[0]["fallback_reason"].lower()
    for record in records[:-1]:
        # after the first refusal the runtime marks the server down and stops dialling it for a while
        assert record["fell_back"] and ("refused" in record["fallback_reason"].lower()
                                        or "marked down" in record["fallback_reason"]), record
        assert record["upload_bytes"] == 0 and record["fallback_s"] > 0
    assert not records[-1]["fell_back"]  # mobile-only: nothing to send
    assert sorted(outputs) == list(range(n + 1))
    for values in outputs.values():  # the segments the server would have run ran under emulation
        assert_matches(values, reference)
    print(f"{bundle.name}: {n + 1} cuts with the server gone under qemu in {wall:.1f} s")


@pytest.mark.parametrize("compiled", ["alexnet"], indirect=True)
def test_emulate_verb_runs_the_bundle_on_the_board(compiled, board, capfd):
    _, bundle, x, reference = compiled
    n = len(bundle.segments)
    # --cpu between BUNDLE and `--` is the verb's own option; what follows `--` is run.py's
    assert main(["emulate", str(bundle.path), "--cpu", "cortex-a53", "--", "--cut", str(n), "--input", str(x),
                 "--json"]) == 0
    record = json.loads(capfd.readouterr().out.splitlines()[-1])
    assert record["cut"] == n and not record["fell_back"]

    assert main(["emulate", str(bundle.path), "--", "--cut", str(n + 1)]) == 2  # run.py's exit code comes back
    assert f"cuts 0..{n}" in capfd.readouterr().err


def test_emulate_verb_refuses_bundles_that_are_not_aarch64_cpu(tmp_path, capfd):
    compile_model(zoo.build("lenet", width=0.25), tmp_path / "x86.bundle",
                  CompileOptions("x86-host", "x86-host", progress=False), name="lenet")
    assert main(["emulate", str(tmp_path / "x86.bundle"), "--", "--cut", "0"]) == 2
    err = capfd.readouterr().err
    assert "mobile side is x86-host" in err and "x86_64, not aarch64" in err

    # A Jetson bundle's segments are CUDA code: qemu cannot run them. Only the manifest matters here.
    from neurosurgeon.targets import get_preset

    jetson = tmp_path / "jetson.bundle"
    jetson.mkdir()
    manifest = json.loads((tmp_path / "x86.bundle" / "manifest.json").read_text())
    manifest["sides"]["mobile"] = get_preset("jetson-orin").to_json()
    manifest["artifacts"]["jetson-orin"] = manifest["artifacts"]["x86-host"]  # the manifest must add up
    (jetson / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(emulation.NotEmulatable, match="jetson-orin.*cuda GPU; qemu emulates the ARM CPU only"):
        emulation.run_bundle(jetson, ["--cut", "0"])


def test_tuning_through_rpc_times_candidates_on_the_board(board, tmp_path):
    """`tune --rpc`: the runtime's RPC server runs on the emulated aarch64 board, every candidate is
    cross-compiled here, uploaded, loaded and timed there; the tuned bundle runs on the board and
    matches onnxruntime."""
    import socket

    from neurosurgeon.compiler.tuning import TuneOptions, read_tuning_info, tune

    model = zoo.build("lenet", width=0.25)
    zoo.save(model, tmp_path / "lenet.onnx")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tmp_path / "aarch64-neon.tuning"
    with emulation.start_rpc_server(port, board=board) as server:
        report = tune(tmp_path / "lenet.onnx", TuneOptions("aarch64-neon", folder, budget_s=300, trials_per_task=2, progress=False, rpc=server.address), name="lenet")
    assert report.measured and report.complete and report.measured_on == f"rpc://127.0.0.1:{port}"
    info = read_tuning_info(folder)
    assert info["measured"] is True and info["measured_on"] == f"rpc://127.0.0.1:{port}"
    assert all(task["trials"] == 2 and task["best_us"] > 0 for task in info["tasks"].values())

    result = compile_model(tmp_path / "lenet.onnx", tmp_path / "bundle",
                           CompileOptions("aarch64-neon", "x86-host", tuning=folder, progress=False), name="lenet")
    assert result.manifest["identity"]["options"]["tuning"]["measured_on"] == f"rpc://127.0.0.1:{port}"
    bundle = Bundle(result.path)
    feeds = random_inputs(bundle.inputs, seed=2)
    np.save(tmp_path / "x.npy", feeds["input"])
    n = len(bundle.segments)
    run = emulation.run_bundle(bundle.path, ["--cut", str(n), "--input", str(tmp_path / "x.npy"),
                                           "-o", str(tmp_path / "y.npz"), "--json"], board=board, timeout=600)
    assert run.returncode == 0, run.stderr
    outputs = dict(np.load(tmp_path / "y.npz"))
    reference = reference_outputs(tmp_path / "lenet.onnx", feeds)
    for name, value in reference.items():
        np.testing.assert_allclose(outputs[name], value, rtol=1e-4, atol=1e-5)
