"""CUDA builds whose artifacts carry compiled device code (a fatbin for the target's arch), made
on a machine with nvcc but no GPU driver; and checks of an exported artifact that never load it.

How TVM 0.27 decides what a CUDA device module holds (src/backend/cuda/codegen/codegen_cuda.cc,
codegen/cuda_fallback_module.h, runtime/cuda_module.cc):
  BuildCUDA emits CUDA C++ and calls CUDAModuleCreateWithFallback(source, fmt="cuda").
  - If the global "ffi.Module.create.cuda" exists, the real CUDAModuleNode is built. Given
    fmt "cuda" it calls the global "tvm_callback_cuda_compile"(source) and keeps what that
    returns: tagged "ptx" if it starts with '/', else "cubin" (a fatbin gets the "cubin" tag too;
    cuModuleLoadData takes either).
  - Otherwise (or with TVM_COMPILE_FORCE_FALLBACK=1) a CUDAFallbackModuleNode keeps the CUDA
    *source* with fmt "cuda", and whoever loads the artifact has to compile it at load time.
  "ffi.Module.create.cuda" is registered by libtvm_runtime_cuda.so. `import tvm` dlopens that
  library and silently skips it if the dlopen fails, and it always fails without a driver
  because the library links libcuda.so.1. So the decision is not a device probe: it depends on
  whether the CUDA runtime plugin could be loaded. Without it, tvm_callback_cuda_compile is never
  called, so TVM_CUDA_COMPILE_MODE=nvcc (which only changes what that callback does) has no effect.

The recipe (`nvcc_device_compile`): satisfy libcuda.so.1 with a stub whose entry points all return
CUDA_ERROR_STUB_LIBRARY, load the plugin, and override tvm_callback_cuda_compile with nvcc for the
target's own arch. Nothing calls the driver during a build, so the stub is never asked to do real work.

Where the device code ends up, and how to read it back: runtime/cuda.py.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..runtime.cuda import SM_ARCH, CudaRuntimeUnavailable, load_cuda_plugin
from ..runtime.errors import NeurosurgeonError

__all__ = ["CudaCompileError", "compile_cuda", "cuda_arch", "enable_cuda_codegen", "find_nvcc", "nvcc_compile",
           "nvcc_device_compile"]


class CudaCompileError(NeurosurgeonError, RuntimeError):
    """nvcc (or the setup that lets TVM call it) failed; the message carries nvcc's output tail."""


# The undefined driver symbols of the wheel's libtvm_runtime_cuda.so (`nm -D --undefined-only`).
# Each returns CUDA_ERROR_STUB_LIBRARY (34), the code NVIDIA's own link-time stub returns.
_STUB_SOURCE = r"""
#define STUB(name) int name(void) { return 34; }
STUB(cuDeviceGetName) STUB(cuFuncSetAttribute) STUB(cuLaunchKernelEx) STUB(cuModuleGetFunction)
STUB(cuModuleLoadData) STUB(cuModuleUnload) STUB(cuTensorMapEncodeTiled)
int cuGetErrorName(int error, const char** out) { (void)error; *out = "CUDA_ERROR_STUB_LIBRARY"; return 0; }
int cuGetErrorString(int error, const char** out) {
  (void)error; *out = "neurosurgeon build-time stub of libcuda.so.1: no CUDA driver"; return 0;
}
"""

# The same preprocessor and language flags TVM's own nvcc/NVRTC paths pass (tvm/support/nvcc.py),
# so kernels compile here exactly as TVM would compile them on a GPU machine. ptxas's -v is left out
# (diagnostics only). -w drops the hundreds of unused-variable warnings TVM's code triggers, so a
# failure's output ends with the actual error.
_NVCC_FLAGS = (
    "-O3", "-w",
    "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
    "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math",
    "--ptxas-options=--register-usage-level=10",
)



# ---------------------------------------------------------------------------------------------
# Building


def cuda_arch(target) -> str:
    """The `sm_XX` arch of a CUDA Target (or of its dict form); an error if it has none."""
    attrs = target if isinstance(target, dict) else target.attrs
    kind = attrs.get("kind") if isinstance(target, dict) else target.kind.name
    arch = attrs.get("arch")
    if kind != "cuda" or not arch:
        raise CudaCompileError(f"expected a CUDA target with an explicit arch such as sm_80, got {target}")
    if not SM_ARCH.fullmatch(str(arch)):
        raise CudaCompileError(f"CUDA arch {arch!r} is not of the form sm_XX")
    return str(arch)


def find_nvcc() -> str:
    """nvcc from PATH, else from $CUDA_PATH or /usr/local/cuda."""
    for candidate in (shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_PATH", ""), "bin", "nvcc"),
                      "/usr/local/cuda/bin/nvcc"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise CudaCompileError("nvcc not found: put the CUDA toolkit's bin/ on PATH or set CUDA_PATH")


def nvcc_compile(source: str, arch: str, *, fmt: str = "fatbin", options: Sequence[str] = (),
                 nvcc: str | None = None) -> bytes:
    """Compile CUDA source to SASS for exactly `arch` (e.g. sm_87), as a fatbin or a cubin.

    No PTX is embedded, so nothing can be JIT-compiled where it runs."""
    if fmt not in ("fatbin", "cubin"):
        raise ValueError(f"fmt must be 'fatbin' or 'cubin', not {fmt!r}")
    if not SM_ARCH.fullmatch(arch):
        raise CudaCompileError(f"CUDA arch {arch!r} is not of the form sm_XX")
    with tempfile.TemporaryDirectory(prefix="neurosurgeon-nvcc-") as tmp:
        src, out = Path(tmp, "kernels.cu"), Path(tmp, f"kernels.{fmt}")
        src.write_text(source)
        cmd = [nvcc or find_nvcc(), f"--{fmt}", f"-gencode=arch=compute_{arch[3:]},code={arch}",
               *_NVCC_FLAGS, *options, "-o", str(out), str(src)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
        except OSError as err:
            raise CudaCompileError(f"cannot run nvcc ({cmd[0]}): {err}") from None
        if proc.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
            tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-30:])
            raise CudaCompileError(f"nvcc failed for {arch} (exit {proc.returncode}):\n{tail}")
        return out.read_bytes()


def _stub_libcuda() -> str:
    """Build (once per user and stub version) the stub libcuda.so.1 and return its path."""
    digest = hashlib.sha256(_STUB_SOURCE.encode()).hexdigest()[:12]
    cache = Path(tempfile.gettempdir(), f"neurosurgeon-{os.getuid()}", f"libcuda-stub-{digest}")
    lib = cache / "libcuda.so.1"
    if lib.is_file():
        return str(lib)
    cache.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise CudaCompileError("building the stub libcuda.so.1 needs a C compiler (gcc or $CC)")
    src = cache / "stub.c"
    src.write_text(_STUB_SOURCE)
    partial = cache / f"libcuda.so.1.{os.getpid()}"
    # The soname must be libcuda.so.1: the dynamic loader satisfies the plugin's DT_NEEDED entry
    # with an already loaded library of that soname.
    proc = subprocess.run([cc, "-x", "c", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(partial),
                           str(src)], capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        raise CudaCompileError(f"building the stub libcuda.so.1 with {cc} failed:\n{proc.stderr.strip()}")
    os.replace(partial, lib)  # atomic, so concurrent builds never load a half-written file
    return str(lib)


def _load_plugin() -> None:
    """Load TVM's CUDA plugin; on a build machine its libcudart.so.13 may only be in nvcc's toolkit."""
    try:
        load_cuda_plugin()
        return
    except CudaRuntimeUnavailable as err:
        first_error = err
    toolkit = Path(find_nvcc()).resolve().parent.parent
    for libdir in ("lib64", "lib", "targets/x86_64-linux/lib"):
        if (toolkit / libdir / "libcudart.so.13").is_file():
            ctypes.CDLL(str(toolkit / libdir / "libcudart.so.13"), mode=ctypes.RTLD_GLOBAL)
            break
    try:
        load_cuda_plugin()
    except CudaRuntimeUnavailable:
        raise first_error from None


def enable_cuda_codegen() -> None:
    """Make TVM build real CUDA modules, so that it calls tvm_callback_cuda_compile, even without
    a GPU driver. Idempotent, process-wide and permanent (a loaded library stays loaded). Uses
    the real libcuda.so.1 if there is one, else the stub."""
    import tvm_ffi

    if tvm_ffi.get_global_func("ffi.Module.create.cuda", allow_missing=True) is not None:
        return
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        ctypes.CDLL(_stub_libcuda(), mode=ctypes.RTLD_GLOBAL)
    _load_plugin()
    if tvm_ffi.get_global_func("ffi.Module.create.cuda", allow_missing=True) is None:
        raise CudaCompileError("libtvm_runtime_cuda.so loaded but did not register ffi.Module.create.cuda")


@contextlib.contextmanager
def nvcc_device_compile(target, *, fmt: str = "fatbin", options: Sequence[str] = ()) -> Iterator[object]:
    """Within this block, TVM compiles CUDA device code with nvcc for `target`'s arch (never a
    probed one) and keeps the binary. Also enters `target`, which tvm.compile needs for CUDA.

    `target`: a tvm Target of kind cuda, usually with a host (or its dict form). The previous
    compile callback is restored on exit."""
    import tvm_ffi
    from tvm.target import Target

    # Read the arch before making a Target: with no arch and no driver, Target() fills in sm_50.
    arch = cuda_arch(target)
    target = target if isinstance(target, Target) else Target(target)
    enable_cuda_codegen()
    failures: list[CudaCompileError] = []

    def compile_callback(source, *_ignored):  # older TVM also passed the target
        try:
            return nvcc_compile(str(source), arch, fmt=fmt, options=options)
        except CudaCompileError as err:
            failures.append(err)  # the FFI turns it into a plain RuntimeError on the way out
            raise

    name = "tvm_callback_cuda_compile"
    previous = tvm_ffi.get_global_func(name, allow_missing=True)
    tvm_ffi.register_global_func(name, compile_callback, override=True)
    try:
        with target:
            yield target
    except Exception as err:
        if failures:
            raise failures[-1] from err
        raise
    finally:
        if previous is not None:
            tvm_ffi.register_global_func(name, previous, override=True)
        else:
            tvm_ffi.remove_global_func(name)


def compile_cuda(mod, target, *, pipeline: str = "default", fmt: str = "fatbin"):
    """tvm.compile a Relax module for a CUDA Target (with its host) into an executable whose device
    module holds a `fmt` (fatbin or cubin) for the target's arch."""
    import tvm

    with nvcc_device_compile(target, fmt=fmt) as target:
        # The "default" string resolves to the GPU pipeline (dlight schedules) for this target.
        return tvm.compile(mod, target=target, relax_pipeline=pipeline)
