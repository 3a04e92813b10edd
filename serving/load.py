"""The load generator: `clients` threads, each a real OIP client over its own connection, sending the
same request to a server again and again, as other users of the server would. The demo runs it in the
background, the runtime benchmark counts its answers, and the server-load fit reads the load each
answer reports."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from ..runtime.client import InferenceClient, ServerUnavailable

__all__ = ["LoadGenerator", "LoadProcess", "LoadSample"]


@dataclass(frozen=True)
class LoadSample:
    """One answered request: the time the client saw, and the answer's parameters (the server's load,
    compute_s, server_s)."""

    seconds: float
    parameters: dict


class LoadGenerator:
    """`with LoadGenerator(url, model, feeds, outputs, clients):` keeps `clients` requests in flight
    until the block ends (`run_for(seconds)` does it for a set time). Answers land in `samples`;
    failures are counted in `errors` (the client waits 0.1 s and sends again)."""

    def __init__(self, url: str, model: str, feeds: dict[str, np.ndarray], outputs: list[str], clients: int,
                 token: str | None = None, deadline_s: float = 120.0, settle_s: float = 0.5):
        self.url, self.model, self.feeds, self.outputs = url, model, feeds, outputs
        self.clients, self.token, self.deadline_s, self.settle_s = clients, token, deadline_s, settle_s
        self.samples: list[LoadSample] = []
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _loop(self) -> None:
        client = InferenceClient(self.url, self.token)
        try:
            while not self._stop.is_set():
                try:
                    answer = client.infer(self.model, self.feeds, self.outputs, deadline_s=self.deadline_s)
                except ServerUnavailable:
                    with self._lock:
                        self.errors += 1
                    time.sleep(0.1)
                    continue
                with self._lock:
                    self.samples.append(LoadSample(answer.seconds, answer.parameters))
        finally:
            client.close()

    def __enter__(self) -> LoadGenerator:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()
        if self._threads:
            time.sleep(self.settle_s)  # let a queue form before the caller measures anything
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.deadline_s)

    def run_for(self, seconds: float) -> float:
        """Keep the load up for `seconds` (after no settling); return the elapsed wall time."""
        settle, self.settle_s = self.settle_s, 0.0
        started = time.perf_counter()
        with self:
            time.sleep(seconds)
        self.settle_s = settle
        return time.perf_counter() - started


def _load_process_main(url, model, feeds, outputs, clients, token, stop, answered) -> None:
    generator = LoadGenerator(url, model, feeds, outputs, clients, token, settle_s=0.0)
    with generator:
        stop.wait()
    answered.value = len(generator.samples)


class LoadProcess:
    """A LoadGenerator in a process of its own: its clients' encoding and decoding take neither the
    GIL nor the CPU quota of the process that measures (the mobile side). `with LoadProcess(...) as
    load:` keeps the load up until the block ends; `load.answered` then counts the answers."""

    def __init__(self, url: str, model: str, feeds: dict[str, np.ndarray], outputs: list[str], clients: int,
                 token: str | None = None, settle_s: float = 0.5):
        import multiprocessing

        self.clients, self.settle_s = clients, settle_s
        self._context = multiprocessing.get_context("spawn")
        self._stop = self._context.Event()
        self._answered = self._context.Value("q", 0)
        self._args = (url, model, feeds, outputs, clients, token, self._stop, self._answered)
        self._process = None
        self.answered = 0

    def __enter__(self) -> LoadProcess:
        if self.clients > 0:
            self._stop.clear()
            self._process = self._context.Process(target=_load_process_main, args=self._args, daemon=True)
            self._process.start()
            time.sleep(self.settle_s)  # let a queue form before the caller measures anything
        return self

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._stop.set()
            self._process.join(timeout=60)
            if self._process.is_alive():
                self._process.kill()
            self.answered = int(self._answered.value)
            self._process = None
