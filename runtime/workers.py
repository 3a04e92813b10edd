"""The server's workers: threads that run a bundle's server segments, each with its own loaded
artifacts (a TVM VM is not shared across threads), taking jobs from one queue.

The cores are shared out: with W workers on C cores each worker's TVM thread pool and its BLAS calls
get max(1, C // W) threads, so that workers x threads fits the cores. The event loop hands a job over
and awaits its future; it never blocks on a computation.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from . import kernels
from .bundle import Bundle, SegmentExecutor, SharedModules, fetch
from .estimators import MedianWindow
from .threads import requested_threads

__all__ = ["Batching", "Done", "Job", "LoadMeter", "SegmentTimes", "WorkerPool", "peak_resident_mib"]


def peak_resident_mib(pid: int | str = "self") -> float | None:
    """A process's peak resident memory in MiB (the kernel's high-water mark, VmHWM), None where the
    system does not say."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) / 1024
    except (OSError, StopIteration, ValueError):
        return None


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
    (its share of a batch) and how many jobs ran together."""

    segments: tuple[int, ...]
    inputs: dict[str, np.ndarray]
    wanted: tuple[str, ...]
    future: Future = field(default_factory=Future)
    worker: int | None = None  # which worker ran it
    queued: float = 0.0  # monotonic time it was submitted

    @property
    def key(self) -> tuple:
        """Jobs with equal keys can run as one batch: the same segments from the same tensors to the same."""
        return self.segments, tuple(sorted(self.inputs)), self.wanted


@dataclass(frozen=True)
class Batching:
    """Dynamic batching: jobs waiting for the same segments run together, at one of `sizes` (batch
    sizes the bundle's server side is built for, 1 first; a group is zero-padded up to the next size).
    A free worker waits up to `max_queue_delay_s` after the oldest such job arrived for more to come
    (Triton's max_queue_delay); with 0 it takes what is queued (batches form only under load)."""

    sizes: tuple[int, ...]
    max_queue_delay_s: float = 0.0

    def size_for(self, n: int) -> int:
        return next(b for b in self.sizes if b >= n)


class Done(NamedTuple):
    """A job's answer: its outputs, its compute seconds per sample (its inputs made tensors, its segments
    run, its outputs fetched) and the size of the batch it ran in."""
    outputs: dict[str, np.ndarray]
    compute_s: float
    batch: int


class SegmentTimes:
    """The server's own time per segment (one sample, batch 1), the median of the last WINDOW jobs that
    ran it: what a device needs to plan with, from the one who knows (compile-time figures were measured
    elsewhere, alone, and not under this server's load). None until a segment first runs.

    A median, not a mean: under load a segment's times are skewed (DeepFace's whole model on the
    evaluation's server with 2 other clients: 34-344 ms, median 73, mean 113), and a device that plans
    with the mean sees the server slower than it is in most requests; it then chose device-only in half
    of them and lost 1.26x at the median to always offloading (issue 12)."""

    WINDOW = 9

    def __init__(self, segments: int):
        self._runs = [MedianWindow(self.WINDOW) for _ in range(segments)]
        self._lock = threading.Lock()

    def observe(self, segment: int, seconds: float) -> None:
        with self._lock:
            self._runs[segment].push(seconds)

    def snapshot(self) -> list[float | None]:
        with self._lock:
            return [round(r.value, 7) if r.values else None for r in self._runs]


class WorkerPool:
    """`workers` threads serving one bundle's server side. Construction loads every segment on every
    worker (and verifies the artifacts first) at every batch size, so that the first request is not
    the slow one."""

    def __init__(self, bundle: Bundle, workers: int = 1, threads_per_worker: int | None = None,
                 batching: Batching | None = None):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.bundle = bundle
        self.workers = workers
        self.threads_per_worker = threads_per_worker or max(1, requested_threads() // workers)
        self.batching = batching if batching is not None and len(batching.sizes) > 1 else None
        self.meter = LoadMeter(workers)
        self.segment_times = SegmentTimes(len(bundle.segments))
        self._jobs: deque[Job] = deque()  # waiting, oldest first
        self._claimed: set[tuple] = set()  # keys a worker is gathering a batch of
        self._closing = False
        self._pending = 0  # submitted and not finished
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self.modules = SharedModules()  # the workers' VMs share each artifact's weights
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
        with self._cond:
            job.queued = time.monotonic()
            self._pending += 1
            self._jobs.append(job)
            self._cond.notify_all()
        return job.future

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

    # --- the workers -------------------------------------------------------------------------------

    def _run(self, index: int, started: Future) -> None:
        try:
            kernels.pad_rows_here(self.batching is not None)  # a request's answer, alone or batched, the same
            executors = {b: SegmentExecutor(self.bundle, "server", b, threads=self.threads_per_worker,
                                            modules=self.modules)
                         for b in (self.batching.sizes if self.batching else (1,))}
            for executor in executors.values():
                executor.load_all()
        except BaseException as err:  # noqa: BLE001 (whatever failed, the constructor raises it)
            started.set_exception(err)
            return
        started.set_result(None)
        while True:
            group = self._next()
            if group is None:
                return
            running = []
            for job in group:
                if job.future.set_running_or_notify_cancel():
                    running.append(job)
                else:  # cancelled while it waited
                    self._done()
            if running:
                self._compute(index, running, executors)

    def _next(self) -> list[Job] | None:
        """The next jobs to run together (None: the pool closes): the oldest job no other worker is
        gathering, with the jobs of its key, waiting for more up to the batching delay."""
        with self._cond:
            while True:
                if self._closing:
                    return None
                first = next((job for job in self._jobs if job.key not in self._claimed), None)
                if first is not None:
                    break
                self._cond.wait()
            if self.batching is None:
                self._jobs.remove(first)
                return [first]
            key, most = first.key, self.batching.sizes[-1]
            self._claimed.add(key)
            try:
                deadline = first.queued + self.batching.max_queue_delay_s
                while True:
                    group = [job for job in self._jobs if job.key == key][:most]
                    left = deadline - time.monotonic()
                    if len(group) == most or left <= 0 or self._closing:
                        break
                    self._cond.wait(left)
                for job in group:
                    self._jobs.remove(job)
                return group
            finally:
                self._claimed.discard(key)
                self._cond.notify_all()  # another worker may take the key's next jobs

    def _compute(self, index: int, group: list[Job], executors: dict[int, SegmentExecutor]) -> None:
        first, n = group[0], len(group)
        size = self.batching.size_for(n) if self.batching else 1
        for job in group:
            job.worker = index
        t0 = self.meter.start(index)
        try:
            if size == 1:
                inputs = dict(first.inputs)
            else:  # the samples one after the other along the first axis, zeros up to the batch size
                inputs = {name: np.concatenate([job.inputs[name] for job in group]
                                               + [np.zeros_like(value)] * (size - n))
                          for name, value in first.inputs.items()}
            executor, env = executors[size], inputs
            for segment in first.segments:  # one by one, each timed (per sample in a batch)
                started = time.perf_counter()
                env = executor.run(env, (segment,))
                executor.sync()
                self.segment_times.observe(segment, (time.perf_counter() - started) / n)
            made = {name: fetch(env[name]) for name in first.wanted}
        except BaseException as err:  # noqa: BLE001 (the requests' answer: a 500 naming it)
            self.meter.stop(index, t0, n)
            for job in group:
                self._done()
                job.future.set_exception(err)
            return
        seconds = self.meter.stop(index, t0, n)
        for i, job in enumerate(group):
            outputs = made if size == 1 else {name: value[i:i + 1].copy() for name, value in made.items()}
            self._done()  # before the answer: the load it reports no longer counts this job
            job.future.set_result(Done(outputs, seconds / n, n))

    def _done(self) -> None:
        with self._cond:
            self._pending -= 1
