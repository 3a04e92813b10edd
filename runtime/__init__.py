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
