"""The slim half: reads bundles and runs prebuilt segments.

Imports only numpy, the standard library and TVM's runtime; never the compiler, onnx,
scikit-learn, networkx or jinja2 (a phone or board has none of them).
"""

import os as _os
import sys as _sys

if "numpy" not in _sys.modules:
    # CPU artifacts hand their GEMMs to numpy's OpenBLAS (runtime/kernels.py), and the other kernels
    # to TVM's thread pool. After each call OpenBLAS keeps its threads spinning for about 2^28
    # cycles; on a small machine they starve TVM's workers, and every small kernel that follows a
    # GEMM waits milliseconds for a core (ResNet-18 ran 2x slower). 2^4 cycles ends the spin at
    # once. OpenBLAS reads this when numpy is first imported, hence here, before any numpy import.
    _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# TVM pins a thread pool's threads to cores when it configures one, the calling thread included:
# runtime.config_threadpool(1, 1) (runtime/threads.py) left its caller on core 0 alone, where the
# BLAS threads it then starts inherit that one core (MobileNetV2 with the GEMMs on 2 threads: 18 ms
# instead of 9), and every server worker lands on the same core. The OS places threads better.
_os.environ.setdefault("TVM_BIND_THREADS", "0")
