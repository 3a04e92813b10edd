"""CUDA presets: artifacts carry compiled device code (a fatbin) for their arch and no CUDA source,
built here without a GPU driver; loading them stops exactly where a driver is needed."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from neurosurgeon.tools import zoo
from neurosurgeon.api import CompileOptions
from neurosurgeon.api import compile as compile_model
from neurosurgeon.tools.verify import verify_bundle
from neurosurgeon.runtime.bundle import Bundle, elf_machine
from neurosurgeon.runtime.cuda import device_code_archs, has_cuda_source

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA 13) is needed to build CUDA artifacts")


def _gpu_present() -> bool:
    try:
        import tvm
        from neurosurgeon.runtime.cuda import load_cuda_runtime

        load_cuda_runtime()
        return tvm.cuda(0).exist
    except Exception:
        return False


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda")
    zoo.save(zoo.build("lenet", width=0.25), root / "lenet.onnx")
    return root


@pytest.mark.parametrize("mobile, server", [("jetson-orin", "cuda-sm80"), ("x86-host", "cuda-sm90")])
def test_cuda_artifacts_carry_device_code_for_their_arch(lenet, mobile, server):
    result = compile_model(lenet / "lenet.onnx", lenet / f"{mobile}-{server}", CompileOptions(mobile, server, progress=False))
    bundle = Bundle(result.path)
    expected = {"jetson-orin": ("aarch64", {"sm_87"}), "x86-host": ("x86_64", set()),
                "cuda-sm80": ("x86_64", {"sm_80"}), "cuda-sm90": ("x86_64", {"sm_90"})}
    for side, preset in (("mobile", mobile), ("server", server)):
        machine, archs = expected[preset]
        for segment in range(len(bundle.segments)):
            path, _ = bundle.artifact(side, segment)
            assert elf_machine(path) == machine
            assert not has_cuda_source(path), f"{path.name} would need JIT compilation at load time"
            # segments with kernels carry exactly their arch; a pure reshape segment may have none
            assert device_code_archs(path) <= archs
        assert set().union(*(device_code_archs(bundle.artifact(side, s)[0]) for s in range(len(bundle.segments)))) == archs


def test_runtime_only_process_loads_up_to_the_driver(lenet):
    """A process with TVM's runtime library only (no compiler) gets as far as the CUDA driver."""
    bundle_path = lenet / "sm80"
    compile_model(lenet / "lenet.onnx", bundle_path, CompileOptions("x86-host", "cuda-sm80", progress=False))
    script = textwrap.dedent(f"""
        import sys
        from neurosurgeon.runtime.bundle import Bundle, SegmentExecutor
        from neurosurgeon.runtime.cuda import CudaRuntimeUnavailable
        try:
            SegmentExecutor(Bundle({str(bundle_path)!r}), "server").load(0)
            print("LOADED")
        except CudaRuntimeUnavailable as err:
            print("NO DRIVER:", err)
        maps = open("/proc/self/maps").read()
        print("compiler loaded" if "libtvm_compiler" in maps else "runtime only")
    """)
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "runtime only" in out.stdout
    if _gpu_present():
        assert "LOADED" in out.stdout
    else:
        assert "NO DRIVER:" in out.stdout and "libcuda.so.1" in out.stdout, out.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_present(), reason="no CUDA GPU and driver here")
def test_cuda_server_segments_match_onnxruntime(lenet):
    import tvm

    preset = {"8.0": "cuda-sm80", "9.0": "cuda-sm90"}.get(tvm.cuda(0).compute_version)
    if preset is None:
        pytest.skip(f"no server preset for this GPU (compute capability {tvm.cuda(0).compute_version})")
    result = compile_model(lenet / "lenet.onnx", lenet / "gpu", CompileOptions("x86-host", preset, progress=False))
    checks = verify_bundle(result.path, lenet / "lenet.onnx")
    assert all(c.ok for c in checks), checks
