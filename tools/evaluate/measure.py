"""One evaluation case, measured: a model on a network under a server load, every way of running it timed
the same way in interleaved rounds (cloud-only, device-only, every cut that could be the best, and the
planner's own choice per objective), each a median of the same number of requests.

The measured best (the oracle) is the cut with the lowest median. Cuts are raced, not all run to the
end: every cut gets `screen` requests (unless the shaped link alone makes it slower, and costlier in
radio energy, than the best median measured so far: link time is a lower bound on a cut's latency,
since the link is shaped to the network's nominal rates); the cuts whose fastest screening request is
within RACE_MARGIN of the best median go on to the full count; cloud-only and device-only always do.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ...runtime.planner import OBJECTIVES, get_network

__all__ = ["RACE_MARGIN", "Case", "Stats", "measure_case"]

RACE_MARGIN = 1.25
METRIC = {"latency": "latency_s", "energy": "energy_j"}


@dataclass(frozen=True)
class Stats:
    """Median of `n` values with the 10th and 90th percentiles as their spread."""

    median: float
    p10: float
    p90: float
    n: int

    @classmethod
    def of(cls, values) -> Stats:
        v = np.asarray(list(values), dtype=np.float64)
        return cls(float(np.median(v)), float(np.percentile(v, 10)), float(np.percentile(v, 90)), len(v))

    @property
    def spread(self) -> float:
        """(p90 - p10) / median."""
        return (self.p90 - self.p10) / self.median if self.median > 0 else 0.0

    def text(self, scale: float = 1e3, digits: int = 0) -> str:
        return f"{self.median * scale:.{digits}f} [{self.p10 * scale:.{digits}f}-{self.p90 * scale:.{digits}f}]"


@dataclass
class Case:
    """The raw measurements of one (model, network, server load): per cut and per objective's auto
    choice, one dict per request (tools/evaluate/device.py Request)."""

    model: str
    network: str
    clients: int  # loading clients on the server while it was measured
    cuts: dict[int, list[dict]] = field(default_factory=dict)
    auto: dict[str, list[dict]] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)  # cut -> why it was not run to the full count
    seconds: float = 0.0
    device: str = ""  # the device's speed spec
    device_total_s: float = 0.0  # the whole model on the device, as it measured itself

    @property
    def n_segments(self) -> int:
        return max(self.cuts)

    def stats(self, cut: int, objective: str = "latency") -> Stats:
        return Stats.of(r[METRIC[objective]] for r in self.cuts[cut])

    def auto_stats(self, objective: str) -> Stats:
        return Stats.of(r[METRIC[objective]] for r in self.auto[objective])

    def full_cuts(self) -> list[int]:
        """Cuts measured with as many requests as the auto choice (the oracle's candidates)."""
        count = max(len(v) for v in self.cuts.values())
        return sorted(k for k, v in self.cuts.items() if len(v) == count)

    def oracle(self, objective: str) -> tuple[int, Stats]:
        best = min(self.full_cuts(), key=lambda k: self.stats(k, objective).median)
        return best, self.stats(best, objective)

    def chosen(self, objective: str) -> Counter:
        """How often each schedule was chosen."""
        return Counter(r["schedule"] for r in self.auto[objective])

    def to_json(self) -> dict:
        return {"model": self.model, "network": self.network, "clients": self.clients, "seconds": self.seconds,
                "device": self.device, "device_total_s": self.device_total_s,
                "cuts": {str(k): v for k, v in sorted(self.cuts.items())}, "auto": self.auto,
                "skipped": {str(k): v for k, v in sorted(self.skipped.items())}}

    @classmethod
    def from_json(cls, data: dict) -> Case:
        return cls(data["model"], data["network"], int(data["clients"]),
                   {int(k): v for k, v in data["cuts"].items()}, dict(data["auto"]),
                   {int(k): v for k, v in data.get("skipped", {}).items()}, float(data.get("seconds", 0.0)),
                   data.get("device", ""), float(data.get("device_total_s", 0.0)))


def _link_bounds(bundle, network: str, cut: int) -> tuple[float, float]:
    """(seconds, radio joules) the shaped link alone takes for cut k's transfers: lower bounds."""
    link = get_network(network)
    spec = bundle.cuts[cut]
    up = spec.upload_bytes * 8 / (link.up_mbps * 1e6)
    down = spec.download_bytes * 8 / (link.down_mbps * 1e6)
    return link.rtt_s + up + down, (up * link.upload_power_w(link.up_mbps) + down * link.download_power_w(link.down_mbps)
                                    + link.rtt_s * link.beta_mw / 1000)


def measure_case(device, bundle, model: str, network: str, clients: int, requests: int = 10, screen: int = 3,
                 objectives=OBJECTIVES, warmup: int = 3, progress=None) -> Case:
    """Measure one case with `device` (a DeviceProcess) while the server carries `clients` other clients
    (the caller keeps that load up). `progress.update(1)` per request."""
    started = time.perf_counter()
    case = Case(model, network, clients)
    n = len(bundle.segments)
    tick = (lambda k=1: progress.update(k)) if progress else (lambda k=1: None)

    def run(cut, count):
        case.cuts.setdefault(cut, []).extend(device.run(network, "latency", cut, count))
        tick(count)

    def best(objective):
        return min(float(np.median([r[METRIC[objective]] for r in v])) for v in case.cuts.values())

    for objective in objectives:  # a fresh runtime per objective, whose estimators learn from `warmup` requests
        case.auto[objective] = []
        device.run(network, objective, "auto", 0, warmup, True)
        tick(warmup)
    # Screening, in rounds: cloud-only and device-only first (the bests to beat), then every other cut
    # whose link alone does not already lose.
    for _ in range(screen):
        for cut in (0, n):
            run(cut, 1)
    for cut in range(1, n):
        seconds, joules = _link_bounds(bundle, network, cut)
        if seconds > best("latency") and joules > best("energy"):
            case.skipped[cut] = f"link alone {seconds * 1e3:.0f} ms, more than the best median"
            continue
        for _ in range(screen):
            run(cut, 1)
    racing = [0, n]
    for cut in range(1, n):
        if cut in case.skipped:
            continue
        fastest = {o: min(r[METRIC[o]] for r in case.cuts[cut]) for o in OBJECTIVES}
        if any(fastest[o] <= RACE_MARGIN * best(o) for o in OBJECTIVES):
            racing.append(cut)
        else:
            case.skipped[cut] = f"fastest of {screen} more than {RACE_MARGIN}x the best median"
    # The full count, in interleaved rounds with the auto requests.
    for round_ in range(requests):
        for cut in racing:
            if len(case.cuts[cut]) <= round_:
                run(cut, 1)
        for objective in objectives:
            case.auto[objective].extend(device.run(network, objective, "auto", 1))
            tick()
    case.seconds = time.perf_counter() - started
    return case


def case_requests(bundle, requests: int, screen: int, objectives, warmup: int) -> int:
    """Requests a case makes at most (for progress)."""
    n = len(bundle.segments)
    return (n + 1) * requests + len(objectives) * (requests + warmup) - 0 * screen
