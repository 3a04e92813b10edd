"""Build many graphs at once: a bundle's segments (for each target, and each batch size) are
independent builds, each one thread of TVM's Relax passes, LLVM and a linker, so a machine with N
cores builds N at a time.

Each build runs in a worker process (TVM's compiler is not thread-safe, and a process per build keeps
one build's memory from piling onto the next). The workers come from a forkserver that has imported
the compiler once, and stay for the next compile in the same process (tests, `bench compile`), so a
build pays neither TVM's import nor a fork of a process that holds threads. One worker, or one job,
builds in this process.

Measured (`neurosurgeon bench compile`, docs/bench-compile.txt): see the README's Benchmarks.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import multiprocessing
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx

from ..runtime.tensors import TensorInfo
from ..runtime.threads import cores_here
from ..targets import Preset
from .build import BuiltArtifact, build_graph
from .kernels import DEFAULT_KERNELS

__all__ = ["BuildJob", "build_all", "start_workers", "workers_for"]


@dataclass(frozen=True)
class BuildJob:
    """The arguments of one build_graph call."""
    model: onnx.ModelProto
    inputs: list[TensorInfo]
    preset: Preset
    out_path: Path
    what: str
    tuning: Path | None = None
    kernels: str = DEFAULT_KERNELS


def _build(job: BuildJob) -> BuiltArtifact:
    return build_graph(job.model, job.inputs, job.preset, job.out_path, job.what, job.tuning, job.kernels)


def workers_for(jobs: int, workers: int | None = None) -> int:
    """How many of `jobs` builds run at a time: `workers` (None: every core this process may run
    on), never more than there are builds."""
    return min(workers or cores_here(), jobs)


_pool: tuple[int, concurrent.futures.ProcessPoolExecutor] | None = None


def _executor(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    global _pool
    if _pool is not None and _pool[0] != workers:
        _drop_pool()
    if _pool is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        _pool = (workers, concurrent.futures.ProcessPoolExecutor(workers, mp_context=context))
    return _pool[1]


@contextlib.contextmanager
def _main_module_hidden():
    """multiprocessing's forkserver and spawn children run the parent's __main__ again (as
    __mp_main__): a user's script that calls compile without an `if __name__ == "__main__"` guard
    would compile again in every worker. The workers need nothing from it, so the processes started
    inside this block are told of no main module."""
    main = sys.modules["__main__"]
    saved = {name: getattr(main, name) for name in ("__file__", "__spec__") if hasattr(main, name)}
    main.__spec__ = None
    if "__file__" in saved:
        del main.__file__
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


def start_workers(workers: int) -> None:
    """Start the worker processes now (a compile's first builds wait for them otherwise: the
    forkserver imports TVM's compiler once, about 2 s)."""
    if workers > 1:
        executor = _executor(workers)
        with _main_module_hidden():  # submit starts the processes
            futures = [executor.submit(int) for _ in range(workers)]
        concurrent.futures.wait(futures)


@atexit.register
def _drop_pool() -> None:
    global _pool
    if _pool is not None:
        _pool[1].shutdown(wait=True, cancel_futures=True)
        _pool = None


def build_all(jobs: list[BuildJob], workers: int | None = None,
              done: Callable[[BuildJob, BuiltArtifact], None] | None = None) -> list[BuiltArtifact]:
    """Build every job, up to `workers` at a time (None: every core); returns the artifacts in the
    jobs' order and calls `done` as each finishes (in this process). The first build that fails is
    raised once the builds already running have ended, and nothing more is started: no worker is
    left writing into a folder the caller is about to remove."""
    workers = workers_for(len(jobs), workers)
    if workers <= 1:
        results = []
        for job in jobs:
            results.append(_build(job))
            if done is not None:
                done(job, results[-1])
        return results
    executor = _executor(workers)
    with _main_module_hidden():  # submit starts the processes
        futures = {executor.submit(_build, job): i for i, job in enumerate(jobs)}
    results: list[BuiltArtifact | None] = [None] * len(jobs)
    try:
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if done is not None:
                done(jobs[i], results[i])
    except BaseException as err:
        for future in futures:
            future.cancel()
        concurrent.futures.wait(futures)
        if isinstance(err, concurrent.futures.process.BrokenProcessPool):  # a worker died (out of memory?)
            _drop_pool()
        raise
    return results
