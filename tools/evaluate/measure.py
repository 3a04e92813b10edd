"""One evaluation case, measured: a model on a network under a server load, every way of running it timed
the same way in interleaved rounds (cloud-only, device-only, every cut that could be the best, and the
planner's own choice per objective), each a median of the same number of requests.

The measured best (the oracle) is the cut with the lowest median. Cuts are raced, not all run to the
end: every cut gets `screen` requests, unless its bound already loses to the best median measured so far
in both latency and energy (the bound: the shaped link's time for its transfers, exact since the link is
shaped to the network's nominal rates, plus BOUND_SHARE of its device segments' time as the device
measured itself at start); the cuts whose fastest screening request is within RACE_MARGIN of the best
median go on to the full count; cloud-only and device-only always do.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ...runtime.planner import OBJECTIVES, get_network

__all__ = ["RACE_MARGIN", "Case", "Stats", "falling_trace", "measure_case", "measure_trace"]

RACE_MARGIN = 1.25
BOUND_SHARE = 0.8  # of the device's calibrated time: its request-to-request spread is well inside that
METRIC = {"latency": "latency_s", "energy": "energy_j", "hedged": "latency_s"}


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
    variant: str = ""  # "hedged": a case measured to compare the choice with and without hedging

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

    def choice(self, objective: str) -> tuple[str, int, int | None]:
        """The planner's most frequent schedule: (schedule, how many requests chose it, its cut)."""
        schedule, times = self.chosen(objective).most_common(1)[0]
        return schedule, times, next(r["cut"] for r in self.auto[objective] if r["schedule"] == schedule)

    def judged(self, objective: str) -> Stats:
        """The choice judged by its cut's own measurements (the same rounds as the oracle's; another sample
        of the same cut would differ by noise alone), or by the auto requests where its cut was raced out."""
        cut = self.choice(objective)[2]
        return self.stats(cut, objective) if cut in self.full_cuts() else self.auto_stats(objective)

    def to_json(self) -> dict:
        return {"model": self.model, "network": self.network, "clients": self.clients, "seconds": self.seconds,
                "device": self.device, "device_total_s": self.device_total_s, "variant": self.variant,
                "cuts": {str(k): v for k, v in sorted(self.cuts.items())}, "auto": self.auto,
                "skipped": {str(k): v for k, v in sorted(self.skipped.items())}}

    @classmethod
    def from_json(cls, data: dict) -> Case:
        return cls(data["model"], data["network"], int(data["clients"]),
                   {int(k): v for k, v in data["cuts"].items()}, dict(data["auto"]),
                   {int(k): v for k, v in data.get("skipped", {}).items()}, float(data.get("seconds", 0.0)),
                   data.get("device", ""), float(data.get("device_total_s", 0.0)), data.get("variant", ""))


def _bounds(bundle, network: str, cut: int, device_s, power_w: float) -> tuple[float, float]:
    """(seconds, joules) cut k takes at least: its transfers over the shaped link, and BOUND_SHARE of
    its device segments' calibrated time."""
    link = get_network(network)
    spec = bundle.cuts[cut]
    up = spec.upload_bytes * 8 / (link.up_mbps * 1e6)
    down = spec.download_bytes * 8 / (link.down_mbps * 1e6)
    compute = BOUND_SHARE * float(sum(device_s[:cut])) if device_s is not None else 0.0
    return (link.rtt_s + up + down + compute,
            up * link.upload_power_w(link.up_mbps) + down * link.download_power_w(link.down_mbps)
            + link.rtt_s * link.beta_mw / 1000 + compute * power_w)


def measure_case(device, bundle, model: str, network: str, clients: int, requests: int = 10, screen: int = 3,
                 objectives=OBJECTIVES, warmup: int = 3, device_s=None, power_w: float = 0.0) -> Case:
    """Measure one case with `device` (a DeviceProcess) while the server carries `clients` other clients
    (the caller keeps that load up). `device_s`: the device's calibrated seconds per segment, `power_w`
    its compute power (for the bounds)."""
    started = time.perf_counter()
    case = Case(model, network, clients)
    n = len(bundle.segments)

    def run(cut, count):
        case.cuts.setdefault(cut, []).extend(device.run(network, "latency", cut, count))

    def best(objective):
        return min(float(np.median([r[METRIC[objective]] for r in v])) for v in case.cuts.values())

    for objective in objectives:  # a fresh runtime per objective, whose estimators learn from `warmup` requests
        case.auto[objective] = []
        device.run(network, objective, "auto", 0, warmup, True)
    # Screening, in rounds: cloud-only and device-only first (the bests to beat), then every other cut
    # whose link alone does not already lose.
    for round_ in range(screen):
        for cut in ((0, n) if round_ % 2 == 0 else (n, 0)):
            run(cut, 1)
    for cut in range(1, n):
        seconds, joules = _bounds(bundle, network, cut, device_s, power_w)
        if seconds > best("latency") and joules > best("energy"):
            case.skipped[cut] = f"bound {seconds * 1e3:.0f} ms, {joules * 1e3:.0f} mJ: more than the best medians"
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
    # The full count, in rounds with the auto requests, each round in a new (seeded) order: what runs just
    # before a request (a server call, or device segments that leave the caches warm) changes its time.
    rng = np.random.default_rng(0)
    for round_ in range(requests):
        turns = [("cut", cut) for cut in racing if len(case.cuts[cut]) <= round_]
        turns += [("auto", objective) for objective in objectives]
        for index in rng.permutation(len(turns)):
            kind, what = turns[index]
            if kind == "cut":
                run(what, 1)
            else:
                case.auto[what].extend(device.run(network, what, "auto", 1))
    case.seconds = time.perf_counter() - started
    return case



def falling_trace(start_mbps: float = 8.0, end_mbps: float = 0.4, steps: int = 40, noise: float = 0.15,
                  seed: int = 0) -> list[float]:
    """A synthetic uplink trace: a geometric fall from `start_mbps` to `end_mbps` over `steps` requests,
    each step times a seeded uniform factor in [1 - noise, 1 + noise] (the shape of Neurosurgeon's
    Fig. 14, whose measured LTE trace does not ship with the paper)."""
    rng = np.random.default_rng(seed)
    base = np.geomspace(start_mbps, end_mbps, steps)
    return [float(b * rng.uniform(1 - noise, 1 + noise)) for b in base]


def measure_trace(device, network: str, trace: list[float], warmup: int = 3) -> list[dict]:
    """Replay an uplink trace: per step, the link's uplink is set to the trace's rate, then one request
    of the planner's choice (latency) and one cloud-only request run over it (the same runtime: its
    estimator learns from both). Per step: the rate, the planner's estimate before the request, and both
    requests."""
    device.run(network, "latency", "auto", 0, 0, True)  # a fresh runtime (its estimates at the network's own)
    device.set_link(network, trace[0])
    device.run(network, "latency", "auto", 0, warmup)
    steps = []
    for up_mbps in trace:
        device.set_link(network, up_mbps)
        estimate = device.estimates(network, "latency")["up_mbps"]
        auto = device.run(network, "latency", "auto", 1)[0]
        cloud = device.run(network, "latency", 0, 1)[0]
        steps.append({"up_mbps": up_mbps, "estimated_up_mbps": estimate, "auto": auto, "cloud_only": cloud})
    return steps
