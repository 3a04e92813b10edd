"""How the runtime shares a process's threads between TVM's pool and the BLAS (runtime/threads.py)."""

import os

import pytest

from neurosurgeon.runtime.threads import ThreadShare, blas_config, requested_threads, thread_share, use_threads_here


def test_one_pool_at_a_time_has_the_threads():
    assert thread_share(4, calls_blas=True) == ThreadShare(tvm=1, blas=4)  # the GEMMs get them
    assert thread_share(4, calls_blas=False) == ThreadShare(tvm=4, blas=1)  # no GEMMs on the BLAS: TVM does
    assert thread_share(1, calls_blas=True) == ThreadShare(1, 1)
    with pytest.raises(ValueError, match="at least 1"):
        thread_share(0, calls_blas=True)


def test_the_thread_count_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("NEUROSURGEON_THREADS", raising=False)
    assert requested_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("NEUROSURGEON_THREADS", "3")
    assert requested_threads() == 3
    monkeypatch.setenv("NEUROSURGEON_THREADS", "two")
    with pytest.raises(ValueError, match="NEUROSURGEON_THREADS='two'"):
        requested_threads()


def test_sharing_the_threads_leaves_the_caller_on_every_core():
    """TVM pins the threads of a pool it configures, its caller included, unless TVM_BIND_THREADS=0
    (which the runtime sets): pinned to core 0, the BLAS threads the caller starts would share it."""
    before = os.sched_getaffinity(0)
    assert os.environ.get("TVM_BIND_THREADS") == "0"
    use_threads_here(len(before), calls_blas=True)
    assert os.sched_getaffinity(0) == before
    use_threads_here(len(before), calls_blas=False)
    assert os.sched_getaffinity(0) == before


def test_the_blas_says_which_kernels_it_chose_for_this_cpu():
    """numpy's wheels ship OpenBLAS; its config names the kernels (the speed tables name them next to the CPU)."""
    from neurosurgeon.runtime.profile import hardware_info

    config = blas_config()
    assert config is not None and config.startswith("OpenBLAS") and "DYNAMIC_ARCH" in config
    assert ("OPENBLAS_CORETYPE=" in config) == bool(os.environ.get("OPENBLAS_CORETYPE"))
    assert hardware_info()["blas"] == config and hardware_info()["threads"] == requested_threads()


def test_tvm_pools_get_the_threads_the_share_gives_them():
    """TVM sizes its pools to half the cores on x86 unless told otherwise (one worker on a 2-core VM);
    the runtime tells it every core, so a share of N threads is N workers."""
    import tvm

    cores = len(os.sched_getaffinity(0))
    assert os.environ.get("TVM_NUM_THREADS") == str(cores)
    pool_threads = tvm.get_global_func("runtime.NumThreads")
    for n in sorted({1, cores}):
        use_threads_here(n, calls_blas=False)
        assert pool_threads() == n
    use_threads_here(cores, calls_blas=True)
    assert pool_threads() == 1
