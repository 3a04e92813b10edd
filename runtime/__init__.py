"""The slim half: reads bundles and runs prebuilt segments.

Imports only numpy, the standard library and TVM's runtime; never the compiler, onnx,
scikit-learn, networkx or jinja2 (a phone or board has none of them).
"""

import os as _os

# OpenBLAS's threads spin for about 2^28 cycles after a GEMM before they sleep. That once starved TVM's
# workers (ResNet-18 ran 2x slower), and the runtime told OpenBLAS to sleep at once; since one pool at a
# time has the threads (runtime/threads.py) nothing here competes with the spin, and sleeping cost more:
# on this VM a sleeping thread wakes slowly, and MobileNetV2's 2-thread run, 35 GEMMs that each woke
# OpenBLAS's worker, took 36 ms [18-130] against 12.9 [10.4-15.7] spinning (AMD EPYC, 2 cores).
# A process that shares its cores with others can still set OPENBLAS_THREAD_TIMEOUT=4 (tools/evaluate).

# TVM pins a thread pool's threads to cores when it configures one, the calling thread included:
# runtime.config_threadpool(1, 1) (runtime/threads.py) left its caller on core 0 alone, where the
# BLAS threads it then starts inherit that one core (MobileNetV2 with the GEMMs on 2 threads: 18 ms
# instead of 9), and every server worker lands on the same core. The OS places threads better.
_os.environ.setdefault("TVM_BIND_THREADS", "0")

# TVM sizes every thread pool once, to TVM_NUM_THREADS, else on x86 to half the cores ("ignore
# hyper-threading"): on a 2-vCPU VM one worker, so config_threadpool(mode, 2) got 1 and TVM's
# kernels ran on one thread whatever the runtime asked. The pools may use every core this process
# may run on; runtime/threads.py gives each its share.
from .threads import cores_here as _cores_here  # noqa: E402 (after the environment above, before TVM)

_os.environ.setdefault("TVM_NUM_THREADS", str(_cores_here()))
