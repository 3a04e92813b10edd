"""External kernels that CPU artifacts call at run time: single-precision GEMM from the BLAS that
numpy ships with (OpenBLAS in numpy's x86_64 and aarch64 wheels), so every machine that can run the
runtime already has it.

A CPU build (compiler/kernels.py) lowers convolutions to im2col + GEMM and fully connected layers to
GEMM, and emits the GEMM as `R.call_dps_packed("neurosurgeon.sgemm", ...)`: the artifact names the
function, the process that runs it provides it. `register()` does, before an artifact is loaded;
the runtime's loaders call it. numpy + the standard library only.
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["EXTERNS", "MIN_ROWS", "SGEMM", "missing", "pad_rows_here", "register"]

SGEMM = "neurosurgeon.sgemm"
EXTERNS = (SGEMM,)
MIN_ROWS = 8  # products with fewer rows are computed as this many (see _sgemm); the largest exact batch

_registered = False
_here = threading.local()


def _sgemm(a, b, out) -> None:
    """out = a @ b in float32, in place (destination-passing style), with a seen as [M, K] (K its last
    axis), b as [K, N] and out as [M, N] (row-major views of whatever shapes they have: a convolution
    hands over its [1, C, H, W] input or its im2col columns and gets [1, O, H, W] back). The tensors
    are viewed through DLPack, not copied; numpy hands 2-D float32 products to its BLAS (sgemm)."""
    a = np.from_dlpack(a)
    a = a.reshape(-1, a.shape[-1])
    b = np.from_dlpack(b).reshape(a.shape[1], -1)
    out = np.from_dlpack(out).reshape(a.shape[0], -1)
    rows = a.shape[0]
    if rows < getattr(_here, "min_rows", 1):
        # On a thread that batches (pad_rows_here), few rows (a fully connected layer at a batch below
        # MIN_ROWS) go through BLAS as MIN_ROWS, the rest zero: BLAS sums a row in an order that depends
        # on how many rows the product has (GEMV for one, other kernels for 2-7), and a request must
        # get the same answer, bit for bit, alone and in any batch up to MIN_ROWS. It costs time
        # (8 rows take 2-3x one row's GEMV), hence only where batching is on.
        padded = np.zeros((MIN_ROWS, a.shape[1]), dtype=a.dtype)
        padded[:rows] = a
        out[:] = np.matmul(padded, b)[:rows]
        return
    np.matmul(a, b, out=out)


def pad_rows_here(on: bool = True) -> None:
    """GEMMs called from this thread compute at least MIN_ROWS rows (see _sgemm): the server's
    batching workers turn it on."""
    _here.min_rows = MIN_ROWS if on else 1


def register() -> None:
    """Register the external kernels as TVM global functions (idempotent)."""
    global _registered
    if _registered:
        return
    import tvm_ffi

    tvm_ffi.register_global_func(SGEMM, _sgemm, override=True)
    _registered = True


def missing(names) -> list[str]:
    """Which of `names` (a manifest's externs) this runtime cannot provide."""
    return [name for name in names if name not in EXTERNS]
