"""The server's workers: threads that run a bundle's server segments, each with its own loaded
artifacts (a TVM VM is not shared across threads), taking jobs from one queue.

The cores are shared out: with W workers on C cores each worker's TVM thread pool and its BLAS calls
get max(1, C // W) threads, so that workers x threads fits the cores. The event loop hands a job over
and awaits its future; it never blocks on a computation.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from .bundle import Bundle, SegmentExecutor, fetch

__all__ = ["Job", "LoadMeter", "WorkerPool", "cores_here", "set_blas_threads_here"]


def cores_here() -> int:
    return len(os.sched_getaffinity(0))


_BLAS_SETTERS = ("openblas_set_num_threads_local", "scipy_openblas_set_num_threads64_", "openblas_set_num_threads")


def set_blas_threads_here(n: int) -> bool:
    """Limit the BLAS numpy ships (OpenBLAS) to `n` threads for calls from this thread (for every
    thread where OpenBLAS is too old for a per-thread setting). False where there is no OpenBLAS."""
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1].lower()})
    for path in paths:
        library = ctypes.CDLL(path)
        for name in _BLAS_SETTERS:
            setter = getattr(library, name, None)
            if setter is not None:
                setter(ctypes.c_int(n))
                return True
    return False


def _set_tvm_threads_here(n: int) -> None:
    """This thread's TVM thread pool gets `n` workers (TVM keeps one pool per calling thread)."""
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(1, n)  # 1: no core pinning


class LoadMeter:
    """How busy the workers are: their mean busy share over a sliding window and an exponentially
    weighted mean of compute time per job. Workers write, the event loop reads: hence the lock."""

    def __init__(self, workers: int = 1, window_s: float = 10.0, weight: float = 0.2):
        self.workers = workers
        self.window_s = window_s
        self.weight = weight
        self._mean_s: float | None = None
        self._intervals: deque[tuple[float, float]] = deque()
        self._running: dict[int, float] = {}  # worker -> start of what it runs now
        self._lock = threading.Lock()

    def start(self, worker: int) -> float:
        with self._lock:
            self._running[worker] = time.monotonic()
            return self._running[worker]

    def stop(self, worker: int, started: float, jobs: int = 1) -> float:
        """Ends `worker`'s run of `jobs` jobs together; returns its seconds."""
        with self._lock:
            ended = time.monotonic()
            self._running.pop(worker, None)
            self._intervals.append((started, ended))
            seconds = ended - started
            per_job = seconds / jobs
            self._mean_s = per_job if self._mean_s is None else self.weight * per_job + (1 - self.weight) * self._mean_s
            return seconds

    @property
    def mean_service_s(self) -> float:
        """0 until the first job: an idle server adds no queueing delay."""
        return self._mean_s or 0.0

    def busy_fraction(self) -> float:
        """Mean share of the window the workers spent computing (1.0: all of them all the time)."""
        with self._lock:
            now = time.monotonic()
            since = now - self.window_s
            while self._intervals and self._intervals[0][1] <= since:
                self._intervals.popleft()
            spans = list(self._intervals) + [(start, now) for start in self._running.values()]
            return sum(end - max(start, since) for start, end in spans) / (self.window_s * self.workers)


@dataclass
class Job:
    """Run `segments` on `inputs`; the future gives the `wanted` tensors (numpy), the compute seconds
    and how many jobs ran together."""

    segments: tuple[int, ...]
    inputs: dict[str, np.ndarray]
    wanted: tuple[str, ...]
    future: Future = field(default_factory=Future)
    worker: int | None = None  # which worker ran it


class WorkerPool:
    """`workers` threads serving one bundle's server side. Construction loads every segment on every
    worker (and verifies the artifacts first), so that the first request is not the slow one."""

    def __init__(self, bundle: Bundle, workers: int = 1, threads_per_worker: int | None = None):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.bundle = bundle
        self.workers = workers
        self.threads_per_worker = threads_per_worker or max(1, cores_here() // workers)
        self.meter = LoadMeter(workers)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._pending = 0  # submitted and not finished
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        ready: list[Future] = []
        for index in range(workers):
            started = Future()
            thread = threading.Thread(target=self._run, args=(index, started), daemon=True,
                                      name=f"neurosurgeon-{bundle.name}-worker{index}")
            thread.start()
            self._threads.append(thread)
            ready.append(started)
        try:
            for started in ready:
                started.result()
        except BaseException:
            self.close()
            raise

    @property
    def pending(self) -> int:
        """Jobs submitted and not finished (queued or running)."""
        return self._pending

    def submit(self, job: Job) -> Future:
        with self._lock:
            self._pending += 1
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, index: int, started: Future) -> None:
        try:
            _set_tvm_threads_here(self.threads_per_worker)
            set_blas_threads_here(self.threads_per_worker)
            executor = SegmentExecutor(self.bundle, "server")
            for segment in range(len(self.bundle.segments)):
                executor.load(segment)
        except BaseException as err:  # noqa: BLE001 (whatever failed, the constructor raises it)
            started.set_exception(err)
            return
        started.set_result(None)
        while True:
            job = self._queue.get()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():
                self._done()
                continue
            job.worker = index
            t0 = self.meter.start(index)
            try:
                env = executor.run(dict(job.inputs), job.segments)
                outputs = {name: fetch(env[name]) for name in job.wanted}
            except BaseException as err:  # noqa: BLE001 (the request's answer: a 500 naming it)
                self.meter.stop(index, t0)
                self._done()
                job.future.set_exception(err)
            else:
                seconds = self.meter.stop(index, t0)
                self._done()  # before the answer: the load it reports no longer counts this job
                job.future.set_result((outputs, seconds, 1))

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1
