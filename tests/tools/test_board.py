"""The emulated aarch64 board: built from Debian's and PyPI's packages, small, runtime-only TVM,
and an aarch64 bundle built by the project runs on it and matches onnxruntime and the x86 build."""

import json
import shutil
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from neurosurgeon.tools import board as emulation

needs_debian = pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None,
                                  reason="building the board needs a Debian-based host (apt-get, dpkg-deb)")

# Measured: 132 MB (36 MB sysroot, 96 MB site-packages, of which 26 MB is ml_dtypes' debug info).
MAX_DEVICE_BYTES = 150_000_000


def test_debian_sources_follow_the_hosts_mirrors(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian bookworm main contrib\n"
        "deb https://packages.example/apt cloud-sdk-bookworm main\n# deb http://old.example/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n"
        "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n -----END PGP PUBLIC KEY BLOCK-----\n")
    if not Path(emulation.DEBIAN_KEYRING).is_file():
        pytest.skip("no Debian archive keyring on this host")
    lines = emulation.debian_sources(emulation.BOARD_RECIPE["debian"], etc=tmp_path)
    key = f"signed-by={emulation.DEBIAN_KEYRING}"
    assert lines == [f"deb [arch=arm64 {key}] http://mirror.example/debian bookworm main\n",
                     f"deb [arch=arm64 {key}] http://mirror.example/debian bookworm-updates main\n",
                     f"deb [arch=arm64 {key}] http://security.example/debian-security bookworm-security main\n"]


def test_missing_qemu_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    board = emulation.EmulatedBoard.at(tmp_path / "device")
    with pytest.raises(emulation.EmulationError, match="apt-get install qemu-user"):
        board.command(["-c", "pass"])


@pytest.fixture(scope="module")
def board():
    # The user's cache: built once (about 30 s) and reused by every later run.
    return emulation.ensure_board(progress=True)


@pytest.mark.slow
@needs_debian
def test_board_is_cached_and_ships_only_the_runtime(board):
    start = time.perf_counter()
    again = emulation.ensure_board(progress=False)
    assert time.perf_counter() - start < 2.0 and again == board
    assert board.root.name == emulation.recipe_hash()
    assert board.python.is_file() and board.python.is_relative_to(board.sysroot)

    files = [p.name for p in board.root.rglob("*")]
    assert not [n for n in files if n.startswith(("libtvm_compiler", "libtvm.so", "libtvm_runtime_cuda"))]
    for lib in emulation.RUNTIME_LIBS:
        assert (board.site_packages / lib).is_file()
    sizes = board.sizes()
    print(f"\ndevice sizes (MB): { {k: round(v / 1e6, 1) for k, v in sizes.items()} }")
    assert sizes["total"] < MAX_DEVICE_BYTES
    assert sizes["runtime_libs"] < 8_000_000

    manifest = board.manifest()
    assert manifest["recipe_hash"] == emulation.recipe_hash()
    assert set(manifest["debian_versions"]) == set(emulation.BOARD_RECIPE["debian"]["packages"])


@pytest.mark.slow
@needs_debian
def test_python_starts_tvm_runtime_only_under_qemu(board):
    script = textwrap.dedent("""
        import json, platform, time
        start = time.perf_counter()
        import numpy, tvm, tvm.runtime.vm
        maps = open("/proc/self/maps").read()
        print(json.dumps({"machine": platform.machine(), "numpy": numpy.__version__, "tvm": tvm.__version__,
                          "runtime_only": tvm.base._RUNTIME_ONLY, "import_s": time.perf_counter() - start,
                          "runtime": "libtvm_runtime.so" in maps, "compiler": "libtvm_compiler" in maps}))
    """)
    start = time.perf_counter()
    result = board.run(["-c", script], timeout=300)
    wall = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout.splitlines()[-1])
    print(f"\nstartup under qemu: {wall:.1f} s (import numpy+tvm {info['import_s']:.1f} s)")
    assert info["machine"] == "aarch64" and info["runtime_only"]
    assert info["runtime"] and not info["compiler"]
    assert info["numpy"] == emulation.BOARD_RECIPE["wheels"]["pins"]["numpy"][0]


@pytest.mark.slow
@needs_debian
def test_command_is_explicit_qemu_and_clean_env(board, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/host/only")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/host/lib")
    cmd, env = board.command(["-c", "pass"], cpu="cortex-a53", env={"PYTHONPATH": "/extra", "X": "1"})
    assert Path(cmd[0]).name == "qemu-aarch64"
    assert cmd[1:6] == ["-L", str(board.sysroot), "-cpu", "cortex-a53", str(board.python)]
    assert env["PYTHONPATH"].split(":") == ["/extra", str(board.site_packages)]
    assert env["TVM_USE_RUNTIME_LIB"] == "1" and env["X"] == "1" and "LD_LIBRARY_PATH" not in env


@pytest.mark.slow
@needs_debian
@pytest.mark.parametrize("name", ["lenet", "windowed"])
def test_aarch64_bundle_runs_on_the_board_and_matches(board, tmp_path, name):
    """`windowed`: depthwise convolutions and pooling, among them a stride-2 window over rows of 14,
    which NEON loads as two vectors and de-interleaves (compiler/kernels.py strided_loads_as_shuffles)."""
    from models import windowed_reductions

    from neurosurgeon import runtime
    from neurosurgeon.tools import zoo
    from neurosurgeon.compiler.pipeline import CompileOptions, compile_model
    from neurosurgeon.runtime.tensors import random_inputs
    from neurosurgeon.tools.verify import reference_outputs
    from neurosurgeon.runtime.bundle import Bundle, SegmentExecutor, elf_machine, fetch

    model = zoo.build("lenet", width=0.25) if name == "lenet" else windowed_reductions()
    bundle_path = tmp_path / f"{name}.bundle"
    compile_model(model, bundle_path, CompileOptions("aarch64-neon", "x86-host", progress=False), name=name)
    bundle = Bundle(bundle_path)
    assert all(elf_machine(bundle.artifact("mobile", i)[0]) == "aarch64" for i in range(len(bundle.segments)))
    feeds = random_inputs(bundle.inputs, seed=1)
    np.savez(tmp_path / "inputs.npz", **feeds)

    # The board has no neurosurgeon package: ship the runtime's modules as a package of their own.
    package = tmp_path / "pkgs" / "ns_runtime"
    package.mkdir(parents=True)
    for source in Path(runtime.__file__).parent.glob("*.py"):
        shutil.copy(source, package / source.name)
    script = textwrap.dedent("""
        import json, sys, time
        import numpy as np
        from ns_runtime.bundle import Bundle, SegmentExecutor, fetch
        bundle_path, inputs, outputs = sys.argv[1:]
        bundle = Bundle(bundle_path)
        executor = SegmentExecutor(bundle, "mobile")
        segments = range(len(bundle.segments))
        start = time.perf_counter()
        for index in segments:
            executor.load(index)
        loaded = time.perf_counter()
        env = dict(np.load(inputs))
        executor.run(env, segments)
        done = time.perf_counter()
        np.savez(outputs, **{t.name: fetch(env[t.name]) for t in bundle.outputs})
        print(json.dumps({"segments": len(segments), "load_s": loaded - start, "run_s": done - loaded}))
    """)
    start = time.perf_counter()
    result = board.run(["-c", script, str(bundle_path), str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
                        env={"PYTHONPATH": str(package.parent)}, timeout=600)
    wall = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout.splitlines()[-1])
    print(f"\n{name} on the emulated board: {info['segments']} segments, load {info['load_s']:.2f} s, "
          f"run {info['run_s']:.3f} s, whole process {wall:.1f} s")

    device_out = dict(np.load(tmp_path / "out.npz"))
    reference = reference_outputs(model, feeds)
    env = dict(feeds)
    SegmentExecutor(bundle, "server").run(env, range(len(bundle.segments)))  # the x86 build, on this host
    assert set(device_out) == {t.name for t in bundle.outputs}
    for name, value in device_out.items():
        np.testing.assert_allclose(value, reference[name], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(value, fetch(env[name]), rtol=1e-4, atol=1e-5)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-s"]))
