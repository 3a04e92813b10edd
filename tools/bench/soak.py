"""bench soak: many devices and abusive clients against one real server on loopback for a bounded
time, with a server restart in the middle. Counts every request's fate (answered by the server,
answered by the device's own fallback, wrong, lost) and watches the server's memory, descriptors and
threads from warm-up to the end of each server's life.

Devices are `MobileRuntime`s (threads of this process, each with its own connection), sending the
model's inputs under random schedules and checking every answer against onnxruntime. Abusers are
raw sockets that
- cut the upload: send the headers and half the body, then go away;
- cut the answer: send a whole request, read a few bytes of the answer, reset the connection;
- read slowly: a 1 KiB receive buffer and a few hundred bytes every 10 ms of a large JSON answer
  (which must still arrive whole and right);
- send garbage.
Descriptors and threads are compared at quiet moments: every client paused and disconnected, the
server given time to close what they left.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import struct
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ...api import CompileOptions
from ...api import compile as compile_model
from ...runtime.bundle import Bundle
from ...runtime.mobile import MobileRuntime
from ...runtime.profile import hardware_info
from ...runtime.protocol import encode_infer_request, stage_model_name
from ...runtime.tensors import random_inputs
from ...serving import start_server
from .. import zoo
from ..verify import reference_outputs

__all__ = ["SoakOptions", "SoakResult", "bench_soak", "plot_soak", "soak_table"]

ABUSES = ("cut-upload", "cut-answer", "slow-reader", "garbage")
TOKEN = "soak-token"


@dataclass
class SoakOptions:
    seconds: float = 120.0
    devices: int = 6
    abusers: int = 4  # each cycles through ABUSES
    restart: bool = True  # stop the server at mid-run, under traffic, and start a new one on the same port
    model: str = "lenet"
    width: float = 0.25
    deadline_s: float = 2.0  # a device waits this long for the server before finishing itself
    workdir: str = ".cache/bench-soak"
    seed: int = 0


@dataclass
class ProcessSample:
    at_s: float
    rss_mib: float
    fds: int
    threads: int


@dataclass
class ServerLife:
    """One server process: a quiet sample after warm-up, one at the end, RSS every half second."""

    pid: int
    warm: ProcessSample | None = None
    end: ProcessSample | None = None
    rss: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class SoakResult:
    cpu: str
    options: dict
    elapsed_s: float
    requests: int = 0
    by_server: int = 0  # every stage the schedule put on the server was answered by it
    by_fallback: int = 0  # the device finished (part of) it itself
    wrong: int = 0
    lost: int = 0  # raised instead of answering
    problems: list[str] = field(default_factory=list)  # the first few wrong or lost, described
    abuse: dict = field(default_factory=dict)  # kind -> attempts
    slow_answers_ok: int = 0
    slow_answers_bad: int = 0
    servers: list[ServerLife] = field(default_factory=list)
    client_start: ProcessSample | None = None
    client_end: ProcessSample | None = None


def sample(pid: int, t0: float) -> ProcessSample:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return ProcessSample(round(time.monotonic() - t0, 2), int(status["VmRSS"].split()[0]) / 1024,
                         len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"]))


class Soak:
    def __init__(self, bundle: Bundle, url: str, cases: list[tuple[dict, dict]], options: SoakOptions):
        self.bundle, self.url, self.cases, self.options = bundle, url, cases, options
        self.result = SoakResult(hardware_info()["cpu"], asdict(options), 0.0, abuse=dict.fromkeys(ABUSES, 0))
        self.lock = threading.Lock()
        self.gate = threading.Event()  # set: traffic flows
        self.stop = threading.Event()
        self.restarting = threading.Event()  # set while the server is being restarted on purpose
        self.in_flight = 0
        self.runtimes = [MobileRuntime(bundle, url, TOKEN, deadline_s=options.deadline_s, retry_after_s=0.5)
                         for _ in range(options.devices)]
        for runtime in self.runtimes:
            runtime.warm_up()
        self.threads = ([threading.Thread(target=self._device, args=(r, i), daemon=True)
                         for i, r in enumerate(self.runtimes)]
                        + [threading.Thread(target=self._abuser, args=(i,), daemon=True)
                           for i in range(options.abusers)])
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.address = (host, int(port))

    # --- traffic ---------------------------------------------------------------------------------

    def _enter(self) -> bool:
        """Wait for the gate; False once the soak stops. The gate is checked again under the lock, so
        that nothing starts after `quiet_sample` closed it."""
        while True:
            self.gate.wait()
            with self.lock:
                if self.stop.is_set():
                    return False
                if self.gate.is_set():
                    self.in_flight += 1
                    return True

    def _leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def _device(self, runtime: MobileRuntime, index: int) -> None:
        rng = random.Random(self.options.seed * 1000 + index)
        schedules = ["auto", *range(len(self.bundle.segments) + 1)]
        while self._enter():
            try:
                feeds, expected = self.cases[rng.randrange(len(self.cases))]
                schedule = rng.choice(schedules)
                try:
                    outputs, record = runtime.infer(feeds, schedule)
                except Exception as err:  # noqa: BLE001 (a lost request, whatever it raised: what the soak counts)
                    self._count(lost=1, problem=f"schedule {schedule}: {type(err).__name__}: {err}")
                    continue
                bad = [name for name, value in expected.items()
                       if not np.allclose(outputs.get(name, np.nan), value, rtol=1e-4, atol=1e-5)]
                self._count(wrong=int(bool(bad)), by_fallback=int(record.fell_back),
                            by_server=int(not record.fell_back),
                            problem=f"schedule {record.schedule}: wrong {bad}" if bad else None)
            finally:
                self._leave()

    def _count(self, problem: str | None = None, **counts) -> None:
        with self.lock:
            self.result.requests += 1
            for name, n in counts.items():
                setattr(self.result, name, getattr(self.result, name) + n)
            if problem and len(self.result.problems) < 10:
                self.result.problems.append(problem)

    def _abuser(self, index: int) -> None:
        rng = random.Random(self.options.seed * 1000 + 500 + index)
        turn = index
        while self._enter():
            kind = ABUSES[turn % len(ABUSES)]
            turn += 1
            try:
                getattr(self, "_" + kind.replace("-", "_"))(rng)
            except OSError as err:  # the server went away under it: its right during the restart only
                if not self.restarting.is_set() and kind == "slow-reader":
                    self._slow(False, f"slow reader: {type(err).__name__}: {err}")
            except Exception as err:  # noqa: BLE001 (a wrong answer to an abuser, whatever it raised)
                self._slow(False, f"{kind}: {type(err).__name__}: {err}")
            finally:
                with self.lock:
                    self.result.abuse[kind] += 1
                self._leave()
            time.sleep(rng.uniform(0.0, 0.05))

    def _request(self, feeds: dict, outputs: list[str] | None = None, binary: bool = True,
                 model: str | None = None) -> bytes:
        body, headers = encode_infer_request(feeds, outputs, binary=binary)
        lines = [f"POST /v2/models/{model or self.bundle.name}/infer HTTP/1.1", f"Host: {self.address[0]}",
                 f"Content-Length: {len(body)}", f"Authorization: Bearer {TOKEN}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def _cut_upload(self, rng: random.Random) -> None:
        request = self._request(self.cases[0][0])
        with socket.create_connection(self.address, timeout=5) as sock:
            sock.sendall(request[:rng.randrange(1, len(request))])

    def _cut_answer(self, rng: random.Random) -> None:
        with socket.create_connection(self.address, timeout=5) as sock:
            sock.sendall(self._request(self.cases[0][0]))
            sock.recv(rng.randrange(1, 64))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset

    def _slow_reader(self, rng: random.Random) -> None:
        """The largest tensor the model makes, as JSON, read a few hundred bytes at a time."""
        largest = max((t for s in self.bundle.segments for t in s.outputs), key=lambda t: t.nbytes)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.settimeout(30)
        with sock:
            sock.connect(self.address)
            sock.sendall(self._request(self.cases[0][0], [largest.name], binary=False,
                                       model=stage_model_name(self.bundle.name)))
            answer = b""
            while True:
                chunk = sock.recv(rng.randrange(100, 400))
                if not chunk:
                    break
                answer += chunk
                head, _, body = answer.partition(b"\r\n\r\n")
                if _ and len(body) >= _content_length(head):
                    break
                time.sleep(0.01)
        head, _, body = answer.partition(b"\r\n\r\n")
        if len(body) < _content_length(head):
            raise ConnectionError(f"the answer stopped after {len(body)} bytes")
        ok = head.startswith(b"HTTP/1.1 200") and len(json.loads(body)["outputs"][0]["data"]) == largest.size
        self._slow(ok, None if ok else f"slow reader: {head[:80]!r}")

    def _slow(self, ok: bool, problem: str | None) -> None:
        with self.lock:
            self.result.slow_answers_ok += ok
            self.result.slow_answers_bad += not ok
            if problem and len(self.result.problems) < 10:
                self.result.problems.append(problem)

    def _garbage(self, rng: random.Random) -> None:
        with socket.create_connection(self.address, timeout=5) as sock:
            sock.sendall(rng.randbytes(rng.randrange(1, 2048)))
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass

    # --- control ---------------------------------------------------------------------------------

    def quiet_sample(self, pid: int, t0: float) -> tuple[ProcessSample, ProcessSample]:
        """Pause every client, disconnect the devices, let the server close what they left; then sample
        the server and this process (the devices' side), and resume."""
        with self.lock:
            self.gate.clear()
        while True:
            with self.lock:
                if self.in_flight == 0:
                    break
            time.sleep(0.02)
        for runtime in self.runtimes:
            runtime.close()
        last, steady_since, give_up = None, time.monotonic(), time.monotonic() + 15.0
        while time.monotonic() - steady_since < 0.5 and time.monotonic() < give_up:
            now = sample(pid, t0)
            if last is None or (now.fds, now.threads) != (last.fds, last.threads):
                steady_since = time.monotonic()
            last = now
            time.sleep(0.05)
        here = sample(os.getpid(), t0)
        self.gate.set()
        return last, here


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 62


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_soak(options: SoakOptions, log=print) -> SoakResult:
    workdir = Path(options.workdir)
    model = zoo.build(options.model, width=options.width)
    path = workdir / f"{options.model}.bundle"
    if not (path / "manifest.json").is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        compile_model(model, path, CompileOptions("x86-host", "x86-host", progress=False, force=True))
    bundle = Bundle(path)
    cases = []
    for seed in range(4):
        feeds = random_inputs(bundle.inputs, seed)
        cases.append((feeds, reference_outputs(model, feeds)))
    port = _free_port()
    t0 = time.monotonic()
    lives = 2 if options.restart else 1
    life_s = options.seconds / lives
    with contextlib.ExitStack() as servers:
        server = servers.enter_context(start_server(path, token=TOKEN, port=port))
        soak = Soak(bundle, server.url, cases, options)
        result = soak.result
        for thread in soak.threads:
            thread.start()
        monitor_stop = threading.Event()
        for life in range(lives):
            if life:
                log(f"soak: restarting the server under traffic at {time.monotonic() - t0:.0f} s")
                soak.restarting.set()
                server.stop()
                time.sleep(1.0)  # devices finish on their own meanwhile
                server = servers.enter_context(start_server(path, token=TOKEN, port=port))
                soak.restarting.clear()
            current = ServerLife(server.process.pid)
            result.servers.append(current)
            monitor = threading.Thread(target=_monitor, args=(current, t0, monitor_stop), daemon=True)
            monitor.start()
            soak.gate.set()
            time.sleep(min(5.0, life_s * 0.2))
            current.warm, here = soak.quiet_sample(current.pid, t0)
            result.client_start = result.client_start or here  # at the same quiet point: threads paused
            log(f"soak: server {life + 1} warm: {_describe(current.warm)}")
            end = t0 + life_s * (life + 1)
            while time.monotonic() < end:
                time.sleep(min(10.0, max(end - time.monotonic(), 0.0)))
                with soak.lock:
                    log(f"soak: {time.monotonic() - t0:.0f} s, {result.requests} requests, {result.wrong} wrong, "
                        f"{result.lost} lost")
            current.end, result.client_end = soak.quiet_sample(current.pid, t0)
            log(f"soak: server {life + 1} end:  {_describe(current.end)}")
            monitor_stop.set()
            monitor.join()
            monitor_stop.clear()
        soak.gate.clear()
        soak.stop.set()
        soak.gate.set()
        for thread in soak.threads:
            thread.join(timeout=60)
        for runtime in soak.runtimes:
            runtime.close()
    result.elapsed_s = round(time.monotonic() - t0, 1)
    return result


def _monitor(life: ServerLife, t0: float, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        try:
            s = sample(life.pid, t0)
        except (OSError, KeyError):
            return
        life.rss.append((s.at_s, round(s.rss_mib, 1)))


def _describe(s: ProcessSample) -> str:
    return f"RSS {s.rss_mib:.1f} MiB, {s.fds} descriptors, {s.threads} threads"


def soak_table(result: SoakResult) -> str:
    o = result.options
    lines = [(f"soak: {o['model']} x{o['width']}, {o['devices']} devices and {o['abusers']} abusers for "
              f"{result.elapsed_s:.0f} s on loopback, server restarted mid-run: {'yes' if o['restart'] else 'no'}; "
              f"CPU: {result.cpu}"),
             (f"requests {result.requests}: by the server {result.by_server}, by the device's fallback "
              f"{result.by_fallback}, wrong {result.wrong}, lost {result.lost}"),
             ("abuse: " + ", ".join(f"{k} {v}" for k, v in result.abuse.items())
              + f"; slow readers answered whole and right: {result.slow_answers_ok} of "
                f"{result.slow_answers_ok + result.slow_answers_bad}"),
             f"{'':14}{'RSS MiB':>18}{'descriptors':>16}{'threads':>12}",
             f"{'':14}{'warm -> end':>18}{'warm -> end':>16}{'warm -> end':>12}"]
    for i, life in enumerate(result.servers, 1):
        w, e = life.warm, life.end
        lines.append(f"{f'server {i}':14}{f'{w.rss_mib:.1f} -> {e.rss_mib:.1f}':>18}{f'{w.fds} -> {e.fds}':>16}"
                     f"{f'{w.threads} -> {e.threads}':>12}")
    s, e = result.client_start, result.client_end
    lines.append(f"{'devices':14}{f'{s.rss_mib:.1f} -> {e.rss_mib:.1f}':>18}{f'{s.fds} -> {e.fds}':>16}"
                 f"{f'{s.threads} -> {e.threads}':>12}")
    lines += [f"  {p}" for p in result.problems]
    return "\n".join(lines)


def plot_soak(result: SoakResult, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for i, life in enumerate(result.servers, 1):
        if life.rss:
            t, rss = zip(*life.rss)
            ax.plot(t, rss, label=f"server {i} (pid {life.pid})")
            ax.axvline(life.warm.at_s, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("seconds")
    ax.set_ylabel("server RSS (MiB)")
    top = max((r for life in result.servers for _, r in life.rss), default=1.0)
    ax.set_ylim(0, top * 1.2)
    ax.text(0.01, 0.03, "dotted: end of warm-up (quiet sample)", transform=ax.transAxes, fontsize=7, color="grey")
    ax.set_title(f"soak: {result.requests} requests, {result.wrong} wrong, {result.lost} lost ({result.cpu})",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
