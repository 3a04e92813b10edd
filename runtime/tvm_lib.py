"""TVM's runtime library reached through tvm-ffi alone, without the `tvm` Python package.

`import tvm`, even runtime-only (TVM_USE_RUNTIME_LIB=1), imports some 230 modules and holds 36 MiB
more than loading libtvm_runtime.so and calling it through tvm_ffi: numpy + tvm 80-84 MiB resident,
numpy + tvm_ffi + the library 44-48 (AMD EPYC, CPython 3.11, one artifact run either way). Every
device runtime and server process paid it. This module is what the runtime uses of TVM on a CPU:
the library, an artifact's module and VM, devices, synchronisation, the thread pool and the errors
a call raises. A CUDA side still imports tvm for its host-device copies (runtime/bundle.py), as
does a process that compiles; the library is then the one tvm loaded, and this works the same.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from pathlib import Path

import tvm_ffi

__all__ = ["ERRORS", "Tensor", "cpu", "device_name", "function_arity", "lib_dir", "load_library", "load_module",
           "set_threads", "sync", "version", "virtual_machine"]

# What a failing TVM call raises: tvm-ffi maps the C++ error kinds onto these (a failed check is a
# RuntimeError, a wrong dtype a ValueError, a wrong argument a TypeError).
ERRORS = (RuntimeError, ValueError, TypeError, IndexError)
Tensor = tvm_ffi.Tensor  # what a compiled function returns (tvm.runtime.Tensor, where tvm is imported, is one)
DLPACK_CPU = 1
POOLED_ALLOCATOR = 2  # the Relax VM's allocator kinds: 1 naive, 2 pooled (tvm.runtime.vm.VirtualMachine's)

_LIBS: dict[str, ctypes.CDLL] = {}


def lib_dir() -> Path:
    """The folder of TVM's shared libraries: TVM_LIBRARY_PATH where set (TVM's own variable for a build
    from source), else the tvm package's lib/, found without importing tvm."""
    if os.environ.get("TVM_LIBRARY_PATH"):
        return Path(os.environ["TVM_LIBRARY_PATH"])
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("TVM's runtime is not installed here (no tvm package on the path)")
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


def load_library(name: str = "libtvm_runtime.so") -> ctypes.CDLL:
    """dlopen one of TVM's libraries (once), its symbols global: loading registers its functions."""
    if name not in _LIBS:
        path = lib_dir() / name
        try:
            _LIBS[name] = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as err:
            raise ImportError(f"cannot load {path}: {err}") from None
    return _LIBS[name]


def _global(name: str):
    """A function TVM's runtime library registers, looked up at every call: one looked-up function
    object shared by a server's worker threads (functools.cache) corrupted the heap now and then at
    start-up, when each worker sets its thread pool ("free(): unaligned chunk detected in tcache 2": one
    run in three of tests/tools/test_evaluate.py, and in CI; none in six without it). A lookup costs 0.5 us."""
    load_library()
    return tvm_ffi.get_global_func(name)


def load_module(path: str | Path):
    """An exported artifact's module (loading a shared object runs its code: check it first)."""
    load_library()
    return tvm_ffi.load_module(str(path))


def cpu():
    return tvm_ffi.device("cpu", 0)


def virtual_machine(module, device, allocator: int = POOLED_ALLOCATOR):
    """The Relax VM of a loaded artifact on `device` (and on the CPU, which runs its shape code), as
    tvm.runtime.vm.VirtualMachine makes it; `vm["main"]` is the model's function."""
    vm = module["vm_load_executable"]()
    init = [device.dlpack_device_type(), device.index, allocator]
    if device.dlpack_device_type() != DLPACK_CPU:
        init += [DLPACK_CPU, 0, allocator]
    vm["vm_initialization"](*init)
    return vm


def function_arity(vm, name: str = "main") -> int:
    return int(vm["get_function_arity"](name))


def sync(device) -> None:
    """Wait until `device` has finished what was queued on it (nothing to wait for on the CPU)."""
    _global("runtime.Device_StreamSync")(device, 0)


def device_name(device) -> str:
    """The device's name as its driver gives it (a GPU's model)."""
    return str(_global("runtime.GetDeviceAttr")(device.dlpack_device_type(), device.index, 5))


def set_threads(n: int) -> None:
    """This thread's TVM thread pool gets `n` workers (TVM keeps one pool per calling thread)."""
    _global("runtime.config_threadpool")(1, n)  # 1: no core pinning


def version() -> str:
    """The TVM release whose runtime this is (its package's metadata; tvm.__version__ without tvm)."""
    from importlib import metadata

    try:
        return metadata.version("apache-tvm")
    except metadata.PackageNotFoundError:
        return "unknown"
