"""How a process's threads are shared between the two thread pools a CPU artifact uses: TVM's (the
kernels TVM generated) and the BLAS's (the GEMMs the artifact hands to runtime/kernels.py, numpy's
OpenBLAS).

Given both pools N threads, they fight: after a parallel kernel TVM's workers spin waiting for the
next one, and OpenBLAS's workers, woken for the GEMM that follows, wait for a core while OpenBLAS's
caller waits for them. Measured on an AMD EPYC (Zen 5), 2 cores, 224x224, 200 runs back to back
(median / mean; `neurosurgeon bench speed MODEL --threads 2 --steps` times both ways):

    model        both pools 2 threads                   GEMMs 2, TVM 1     1 thread
    ResNet-18    37.7 / 84.3 ms (89 runs over 50 ms)    34.9 / 36.5 ms     48.8 / 48.6 ms
    AlexNet      82.4 / 70.4 ms                         27.2 / 28.8 ms     40.7 / 40.0 ms
    MobileNetV2  12.6 / 30.7 ms (worst 375 ms)          9.2 / 9.7 ms       12.8 / 12.7 ms

So one pool at a time has the threads: where the artifacts call the BLAS (`--kernels blas`), its GEMMs
get them and TVM's kernels run on the calling thread (its pool never starts, never spins); elsewhere
TVM gets them. TVM's kernels then run serially, which bounds the gain from more cores by their share
of the time (MobileNetV2's depthwise convolutions: about a third on one thread here). The default
build's products are TVM kernels (compiler/tiled_kernels.py): it calls no BLAS, and TVM's one pool
has every thread for everything.

`NEUROSURGEON_THREADS` sets the count (default: every core this process may run on).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

__all__ = ["ThreadShare", "apply_share_here", "blas_config", "cores_here", "requested_threads", "set_blas_threads_here",
           "set_tvm_threads_here", "thread_share", "use_threads_here"]

THREADS_ENV = "NEUROSURGEON_THREADS"
_BLAS_CONFIG = ("scipy_openblas_get_config64_", "openblas_get_config64_", "openblas_get_config")
_BLAS_SETTERS = ("openblas_set_num_threads_local", "scipy_openblas_set_num_threads64_", "openblas_set_num_threads")


def cores_here() -> int:
    return len(os.sched_getaffinity(0))


def requested_threads() -> int:
    """NEUROSURGEON_THREADS where set (a positive integer), else every core this process may use."""
    value = os.environ.get(THREADS_ENV)
    if value is None:
        return cores_here()
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{THREADS_ENV}={value!r}: expected a positive integer")
    return int(value)


@dataclass(frozen=True)
class ThreadShare:
    tvm: int  # TVM's pool (its generated kernels)
    blas: int  # the BLAS's (the GEMMs)

    def __str__(self) -> str:
        return f"TVM {self.tvm}, BLAS {self.blas}"


def thread_share(threads: int, calls_blas: bool) -> ThreadShare:
    """`threads` to the pool that does the heavy lifting, one to the other (see the module docstring)."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    return ThreadShare(tvm=1, blas=threads) if calls_blas else ThreadShare(tvm=threads, blas=1)


def _openblas_libraries() -> list:
    """The OpenBLAS libraries loaded in this process (numpy's), as ctypes handles."""
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1].lower()})
    return [ctypes.CDLL(path) for path in paths]


def set_blas_threads_here(n: int) -> bool:
    """Limit the BLAS numpy ships (OpenBLAS) to `n` threads for calls from this thread (for every
    thread where OpenBLAS is too old for a per-thread setting). False where there is no OpenBLAS."""
    for library in _openblas_libraries():
        for name in _BLAS_SETTERS:
            setter = getattr(library, name, None)
            if setter is not None:
                setter(ctypes.c_int(n))
                return True
    return False


def blas_config() -> str | None:
    """OpenBLAS's build and the kernels it runs (e.g. "OpenBLAS 0.3.31 ... SkylakeX"), and the
    environment variable that chose them where one did, or None where numpy has none loaded.
    OPENBLAS_CORETYPE=Haswell, set in some machines' environments, halves the convolutions' GEMM
    speed on an AVX-512 CPU against the SkylakeX kernels OpenBLAS picks there itself (README)."""
    forced = os.environ.get("OPENBLAS_CORETYPE")
    for library in _openblas_libraries():
        for name in _BLAS_CONFIG:
            getter = getattr(library, name, None)
            if getter is not None:
                getter.restype = ctypes.c_char_p
                config = " ".join(getter().decode(errors="replace").split())
                return config + (f" (OPENBLAS_CORETYPE={forced} chose it)" if forced else "")
    return None


def set_tvm_threads_here(n: int) -> None:
    """This thread's TVM thread pool gets `n` workers (TVM keeps one pool per calling thread)."""
    from . import tvm_lib

    tvm_lib.set_threads(n)


def apply_share_here(share: ThreadShare) -> ThreadShare:
    """Give this thread's TVM pool and its BLAS calls the threads `share` says; returns it."""
    set_tvm_threads_here(share.tvm)
    set_blas_threads_here(share.blas)
    return share


def use_threads_here(threads: int, calls_blas: bool) -> ThreadShare:
    """Share `threads` between this thread's TVM pool and its BLAS calls (`thread_share`); returns the share."""
    return apply_share_here(thread_share(threads, calls_blas))
