"""The emulated mobile device of an evaluation: a process of its own, slowed to a stated speed relative to
the machine it runs on, that runs a bundle's mobile side against a real server over a shaped link.

How it is slowed is a `DeviceSpeed` (one class per method, listed in SPEEDS, picked by a spec string):

- `dilate:F` (the default, `dilate:16`): every segment runs at full speed on one thread, then the device
  sleeps F-1 times as long as it ran, so each segment takes F times its native time. The spread of a
  request is the native spread; the device's CPU is idle while it "runs slow", as a phone's would not be
  busy on the server's cores; it needs nothing from the machine.
- `quota:S[:P]`: a cgroup CPU quota of S of one CPU over a period of P ms (default 4): the device
  really computes slower. A quota only limits what runs per period, so a long period lets a short burst
  run at full speed and then stalls the process for the rest of it: the same work then takes 1x or
  1/S x, depending on where in the period it starts. A short period keeps that small (cgroup v2's
  smallest quota is 1 ms, so S x P >= 1 ms). Needs a writable cgroup (root on most machines).

`neurosurgeon evaluate --device-spread` measures the request-to-request spread of each.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...runtime.errors import NeurosurgeonError

__all__ = ["HEDGED", "SPEEDS", "CgroupQuota", "DeviceProcess", "DeviceSpeed", "Dilation", "measure_spread", "parse_speed", "throttle_self"]


class DeviceSpeed(ABC):
    """How the device process is made slower than the machine it runs on."""

    kind = ""

    @property
    @abstractmethod
    def spec(self) -> str:
        """The spec string that makes this speed again."""

    @property
    @abstractmethod
    def describe(self) -> str:
        """One line for a report."""

    def apply(self) -> str | None:
        """Called in the device process before anything runs; returns why it could not be applied."""
        return None

    def executor(self, inner):
        return inner


class Dilation(DeviceSpeed):
    kind = "dilate"

    def __init__(self, factor: float):
        if not factor >= 1:
            raise NeurosurgeonError(f"device speed dilate:{factor}: the factor must be 1 or more (1 = this machine)")
        self.factor = float(factor)

    @property
    def spec(self) -> str:
        return f"dilate:{self.factor:g}"

    @property
    def describe(self) -> str:
        return (f"one thread of this machine, {self.factor:g}x slower by time dilation (each segment runs at full "
                f"speed, then the device sleeps {self.factor - 1:g}x as long)")

    def executor(self, inner):
        return DilatedExecutor(inner, self.factor) if self.factor > 1 else inner


class DilatedExecutor:
    """A segment executor whose every call takes `factor` times as long as the one it wraps.

    The time to stretch is the fastest this call has run here (its warm time), not the time it just took:
    on this VM a CPU that slept runs the next call colder and slower (a 0.05 ms segment took 0.4-0.65 ms
    after a few ms asleep), and multiplying that by the factor fed on itself (SENNA's first segment
    calibrated at 8 ms instead of 0.4 ms). A call slower than its target is not slowed further.
    A sleep overshoots, by a scheduler tick or, on a virtual machine whose idle vCPU was descheduled, by
    a millisecond and more: what a sleep overshoots is owed back by the next ones (up to MAX_CREDIT_S),
    so a request's time is `factor` times its warm compute, give or take one overshoot."""

    MAX_CREDIT_S = 0.005
    WARM_RUNS = 3

    def __init__(self, inner, factor: float):
        self.inner, self.factor = inner, factor
        self.device, self.sync = inner.device, inner.sync
        self.bundle = inner.bundle
        self._credit = 0.0  # seconds slept beyond what was owed, taken off the next sleeps
        self._fastest: dict[tuple, float] = {}  # segments -> the fastest run seen (warm)

    def load(self, segment: int):
        return self.inner.load(segment)

    def load_all(self, segments=None) -> None:
        self.inner.load_all(segments)

    def charge(self, seconds: float) -> float:
        """Work the device did outside its segments (coding an upload) took `seconds` at full speed:
        sleep the rest of its dilated time; returns the seconds slept."""
        owed = seconds * (self.factor - 1)
        if owed > 0:
            slept_from = time.perf_counter()
            time.sleep(owed)
            return time.perf_counter() - slept_from
        return 0.0

    def run(self, env: dict, segments) -> dict:
        started = time.perf_counter()
        result = self.inner.run(env, segments)
        self.sync()
        took = time.perf_counter() - started
        key = tuple(segments)
        if key not in self._fastest:  # its warm time: WARM_RUNS more runs back to back (same inputs, same outputs)
            self._fastest[key] = took
            for _ in range(self.WARM_RUNS):
                t0 = time.perf_counter()
                self.inner.run(env, segments)
                self.sync()
                self._fastest[key] = min(self._fastest[key], time.perf_counter() - t0)
        fastest = self._fastest[key] = min(took, self._fastest[key])
        owed = fastest * self.factor - took - self._credit
        if owed <= 0:
            self._credit = -owed
            return result
        slept_from = time.perf_counter()
        time.sleep(owed)
        self._credit = min(self.MAX_CREDIT_S, max(0.0, time.perf_counter() - slept_from - owed))
        return result


class CgroupQuota(DeviceSpeed):
    kind = "quota"

    def __init__(self, share: float, period_ms: float = 4.0):
        if not 0 < share <= 1:
            raise NeurosurgeonError(f"device speed quota:{share}: the share must be in (0, 1]")
        if share * period_ms < 1.0:
            raise NeurosurgeonError(f"device speed quota:{share}:{period_ms:g}: the quota would be "
                                    f"{share * period_ms:g} ms per period, cgroups allow 1 ms at least; "
                                    f"use a period of {1 / share:g} ms or more")
        self.share, self.period_ms = float(share), float(period_ms)

    @property
    def spec(self) -> str:
        return f"quota:{self.share:g}:{self.period_ms:g}"

    @property
    def describe(self) -> str:
        return f"one thread limited to {self.share:.0%} of one CPU by a cgroup quota over a {self.period_ms:g} ms period"

    def apply(self) -> str | None:
        why_not, _ = throttle_self(self.share, self.period_ms)
        return why_not


SPEEDS = {cls.kind: cls for cls in (Dilation, CgroupQuota)}
HEDGED = "hedged"  # an evaluation's pseudo-objective: latency, with hedging (runtime/mobile.py)


def parse_speed(spec: str) -> DeviceSpeed:
    """`dilate:F` or `quota:S[:P]` (see the module's doc)."""
    kind, _, rest = spec.partition(":")
    if kind not in SPEEDS or not rest:
        raise NeurosurgeonError(f"device speed {spec!r}: expected dilate:FACTOR or quota:SHARE[:PERIOD_MS] "
                                "(e.g. dilate:4, quota:0.25:4)")
    try:
        numbers = [float(x) for x in rest.split(":")]
        return SPEEDS[kind](*numbers)
    except (TypeError, ValueError):
        raise NeurosurgeonError(f"device speed {spec!r}: expected numbers after {kind}:") from None


def throttle_self(share: float, period_ms: float = 100.0) -> tuple[str | None, callable]:
    """Limit this process to `share` of one CPU with a cgroup quota over `period_ms` (v1 cpu controller
    or v2). Returns (None, undo) on success, or (why not, no-op)."""
    period = int(period_ms * 1000)
    quota = max(1000, int(share * period))
    name = f"neurosurgeon-device-{os.getpid()}"
    reason = "no writable cgroup cpu controller"
    for root, v2 in (("/sys/fs/cgroup/cpu", False), ("/sys/fs/cgroup", True)):
        base = Path(root)
        if not (base / ("cgroup.controllers" if v2 else "cpu.cfs_quota_us")).exists():
            continue
        group = base / name
        try:
            group.mkdir(exist_ok=True)
            if v2:
                (group / "cpu.max").write_text(f"{quota} {period}")
            else:
                (group / "cpu.cfs_period_us").write_text(str(period))
                (group / "cpu.cfs_quota_us").write_text(str(quota))
            (group / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as err:
            try:
                group.rmdir()
            except OSError:
                pass
            reason = f"cannot use {root} ({err.strerror})"
            continue

        def undo(group=group, base=base):
            try:
                (base / "cgroup.procs").write_text(str(os.getpid()))
                group.rmdir()
            except OSError:
                pass
        return None, undo
    return reason, lambda: None


# -- the device process ---------------------------------------------------------------------------

@dataclass
class Request:
    """What an evaluation keeps of one request the device made."""

    schedule: str
    cut: int | None
    latency_s: float
    energy_j: float  # mobile energy from measured times: compute power x compute time + the radio's (see _request)
    mobile_s: float
    network_s: float
    server_s: float
    predicted_latency_s: float
    predicted_energy_j: float
    upload_bytes: int
    fell_back: bool
    error: float  # max abs difference from the reference outputs
    hedged_s: float = 0.0  # hedging: computed here for server stages
    hedge_won: int = 0


def _device_main(conn, bundle_path: str, url: str, spec: str, reference: dict, feeds: dict) -> None:
    os.environ["NEUROSURGEON_THREADS"] = "1"  # one core of the device
    from ...runtime.bundle import Bundle, SegmentExecutor

    try:
        speed = parse_speed(spec)
        why_not = speed.apply()
        bundle = Bundle(bundle_path)
        executor = speed.executor(SegmentExecutor(bundle, "mobile"))
        device = _Device(bundle, url, executor, reference, feeds)
        conn.send(("ready", (why_not, len(bundle.segments))))
    except Exception as err:  # noqa: BLE001 -- reported to the parent, which raises it
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    while True:
        command, args = conn.recv()
        if command == "close":
            return
        try:
            conn.send(("ok", getattr(device, command)(*args)))
        except Exception as err:  # noqa: BLE001
            conn.send(("error", f"{type(err).__name__}: {err}"))


class _Device:
    def __init__(self, bundle, url, executor, reference, feeds):
        self.bundle, self.url, self.executor = bundle, url, executor
        self.reference, self.feeds = reference, feeds
        self.costs_path: str | None = None
        self.runtimes: dict[tuple, object] = {}
        executor.load_all()

    def calibrate(self, repeats: int, workdir: str, power_w: float | None = None) -> list[float]:
        """The device's own segment times (medians of `repeats`), written as the costs it decides with, with
        its compute power (`power_w`, or the bundle's mobile power)."""
        import tempfile

        from ...runtime.mobile import COSTS_FORMAT
        from ...runtime.profile import time_segments

        seconds = time_segments(self.bundle, "mobile", repeats=repeats, executor=self.executor)
        mobile, server = self.bundle.manifest.costs["mobile"], self.bundle.manifest.costs["server"]
        power = power_w if power_w is not None else (list(mobile.power_w) if isinstance(mobile.power_w, tuple)
                                                     else mobile.power_w)
        costs = {**COSTS_FORMAT.stamp(),
                 "mobile": {"segment_seconds": seconds, "source": "measured by the device at start-up", "power_w": power},
                 "server": {"segment_seconds": list(server.segment_seconds), "source": server.source}}
        fd, path = tempfile.mkstemp(prefix="device-costs-", suffix=".json", dir=workdir)
        os.close(fd)
        COSTS_FORMAT.write(Path(path), costs)
        self.costs_path = path
        self.runtimes.clear()
        return seconds

    def runtime(self, network: str, objective: str, fresh: bool, compression: str = "auto"):
        from ...runtime.mobile import MobileRuntime

        key = (network, objective, compression)
        if fresh or key not in self.runtimes:
            old = self.runtimes.pop(key, None)
            if old is not None:
                old.close()
            # "hedged": the latency objective, the device computing each server stage too (first one wins)
            self.runtimes[key] = MobileRuntime(self.bundle, self.url, network=network,
                                               objective="latency" if objective == HEDGED else objective,
                                               shape_link=True, costs=self.costs_path, executor=self.executor,
                                               hedge=objective == HEDGED, compression=compression)
        return self.runtimes[key]

    def run(self, network: str, objective: str, schedule, requests: int, warmup: int = 0,
            fresh: bool = False, compression: str = "auto") -> list[dict]:
        """`warmup` requests (not kept: the estimators learn from them), then `requests` kept ones, each
        one's outputs checked against the reference."""
        runtime = self.runtime(network, objective, fresh, compression)
        kept = []
        for index in range(warmup + requests):
            outputs, record = runtime.infer(self.feeds, schedule)
            if index >= warmup:
                kept.append(asdict(self._request(runtime, record, outputs)))
        return kept

    def set_link(self, network: str, up_mbps: float) -> None:
        """The uplink of every runtime on `network` now runs at `up_mbps` (a bandwidth trace replayed)."""
        for (name, *_), runtime in self.runtimes.items():
            if name == network:
                runtime.client.link.up_mbps = up_mbps

    def estimates(self, network: str, objective: str) -> dict:
        runtime = self.runtime(network, objective, False)
        return {"up_mbps": runtime.network.up_mbps, "rtt_s": runtime.network.rtt_s}

    def _request(self, runtime, record, outputs) -> Request:
        power = runtime.costs.mobile_power_w
        compute_j = sum(float(np.mean(power[s.segments])) * ((s.measured_s if s.ran_on == "mobile" else s.hedged_s)
                                                             + s.encode_s) for s in record.stages)
        # The link is shaped to the network's nominal rates: transfers take bytes / rate; the rest of the
        # time spent on the network and in the server is waiting, with the radio active at beta.
        link = runtime.network.link
        shaped = runtime.client.link if runtime.client is not None and runtime.client.link else link
        up_s = record.upload_bytes * 8 / (shaped.up_mbps * 1e6)
        down_s = record.download_bytes * 8 / (shaped.down_mbps * 1e6)
        waiting_s = max(0.0, record.network_s + record.server_s - up_s - down_s)
        radio_j = (up_s * link.upload_power_w(shaped.up_mbps) + down_s * link.download_power_w(shaped.down_mbps)
                   + waiting_s * link.beta_mw / 1000)
        error = max(float(np.max(np.abs(outputs[k] - self.reference[k]))) for k in self.reference)
        return Request(record.schedule, record.cut, record.total_s, compute_j + radio_j,
                       record.mobile_s, record.network_s, record.server_s, record.predicted_latency_s,
                       record.predicted_energy_j, record.upload_bytes, record.fell_back, error, record.hedged_s,
                       record.hedge_won)

    def close(self) -> None:
        for runtime in self.runtimes.values():
            runtime.close()


class DeviceProcess:
    """`with DeviceProcess(bundle, url, speed, reference, feeds) as device:` a device process; its methods
    run there: `calibrate(repeats, workdir)`, `run(network, objective, schedule, requests, warmup, fresh)`
    (a list of Request dicts)."""

    def __init__(self, bundle_path: str | Path, url: str | None, speed: DeviceSpeed, reference: dict, feeds: dict):
        """`url` None: no server (every request runs on the device)."""
        self._args = (str(bundle_path), url, speed.spec, reference, feeds)
        self.speed = speed
        self.not_applied: str | None = None
        self.segments = 0
        self._process = None

    def __enter__(self) -> DeviceProcess:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_device_main, args=(child, *self._args), daemon=True)
        self._process.start()
        status, detail = self._receive()
        if status == "error":
            self.__exit__()
            raise NeurosurgeonError(f"the device process did not start: {detail}")
        self.not_applied, self.segments = detail
        return self

    def _receive(self):
        while not self._conn.poll(1.0):
            if not self._process.is_alive():
                raise NeurosurgeonError(f"the device process exited with code {self._process.exitcode}")
        return self._conn.recv()

    def _call(self, command: str, *args):
        self._conn.send((command, args))
        status, result = self._receive()
        if status == "error":
            raise NeurosurgeonError(f"device: {result}")
        return result

    def calibrate(self, repeats: int, workdir: str | Path, power_w: float | None = None) -> list[float]:
        return self._call("calibrate", repeats, str(workdir), power_w)

    def run(self, network: str, objective: str, schedule, requests: int, warmup: int = 0,
            fresh: bool = False, compression: str = "auto") -> list[dict]:
        return self._call("run", network, objective, schedule, requests, warmup, fresh, compression)

    def set_link(self, network: str, up_mbps: float) -> None:
        self._call("set_link", network, up_mbps)

    def estimates(self, network: str, objective: str) -> dict:
        return self._call("estimates", network, objective)

    def __exit__(self, *exc) -> None:
        if self._process is None:
            return
        try:
            if self._process.is_alive():
                self._conn.send(("close", ()))
            self._process.join(timeout=10)
        except (OSError, EOFError):
            pass
        if self._process.is_alive():
            self._process.kill()
        self._process = None


SPREAD_SPECS = ("dilate:1", "dilate:4", "quota:0.25:100", "quota:0.25:20", "quota:0.25:4")


def measure_spread(bundle_path, reference: dict, feeds: dict, specs=SPREAD_SPECS, requests: int = 30) -> list[dict]:
    """Device-only requests under each way of slowing the device: how much one request differs from the
    next (the reason the evaluation's default is what it is). Specs a machine cannot apply are noted."""
    from .measure import Stats

    rows = []
    for spec in specs:
        speed = parse_speed(spec)
        with DeviceProcess(bundle_path, None, speed, reference, feeds) as device:
            if device.not_applied:
                rows.append({"device": spec, "describe": speed.describe, "not_applied": device.not_applied})
                continue
            n = device.segments
            device.run("wifi", "latency", n, 0, 3)
            stats = Stats.of(r["latency_s"] for r in device.run("wifi", "latency", n, requests))
            rows.append({"device": spec, "describe": speed.describe, "median": stats.median, "p10": stats.p10,
                         "p90": stats.p90, "n": stats.n, "spread": stats.spread})
    return rows
