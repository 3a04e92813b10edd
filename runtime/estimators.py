"""What the mobile side learns from its own requests: link bandwidth and RTT, the server's load, and its
own segment times. Only the planner reads them, through `conditions()` and the mobile times."""

from __future__ import annotations

import statistics
import time

import numpy as np

from .planner import Conditions, Network

__all__ = ["MIN_BANDWIDTH_SAMPLE_BYTES", "MedianWindow", "MobileTimeEstimator", "NetworkEstimator",
           "RequestTimeEstimator", "ServerLoadEstimator", "conditions", "ewma"]

# Transfers smaller than this say more about latency than about bandwidth.
MIN_BANDWIDTH_SAMPLE_BYTES = 16 * 1024


def ewma(old: float, new: float, alpha: float) -> float:
    return (1 - alpha) * old + alpha * new


class MedianWindow:
    """The median of the last `size` values, and of `prior` with them until there are `size` (where a prior
    is given); `empty` before any value. One outlier cannot move it; a lasting change does within the
    window."""

    def __init__(self, size: int, prior: float | None = None, empty: float = 0.0):
        self.size, self.prior, self.empty = size, prior, empty
        self.values: list[float] = []

    def push(self, value: float) -> float:
        self.values.append(float(value))
        del self.values[:-self.size]
        return self.value

    @property
    def value(self) -> float:
        window = self.values if self.prior is None or len(self.values) == self.size else [self.prior, *self.values]
        return float(statistics.median(window)) if window else self.empty  # np.median: 15 us, 70x slower

    def clear(self) -> None:
        self.values.clear()


class NetworkEstimator:
    """Moving estimates of uplink/downlink bandwidth and RTT, seeded from a named network."""

    def __init__(self, network: Network, alpha: float = 0.3):
        self.link = network  # the named network the estimates start from
        self.alpha = alpha
        self.up_mbps = network.up_mbps
        self.down_mbps = network.down_mbps
        self.rtt_s = network.rtt_s
        self.samples = 0

    def observe_rtt(self, seconds: float) -> None:
        """A round trip that moved (almost) no data, e.g. a health probe."""
        self.rtt_s = ewma(self.rtt_s, max(seconds, 1e-6), self.alpha)

    def observe_transfer(self, up_bytes: int, down_bytes: int, network_s: float) -> None:
        """A request whose time on the network (its total minus the server's compute) was `network_s`.

        The transfer time beyond one RTT is split between the two directions in proportion to what
        the current estimates predict for each, and each direction with enough bytes is updated.

        A transfer far faster than the estimates predict bounds both: the round trip is at most
        `network_s`, and a direction that carried enough bytes is at least as fast as sending them in
        all of it. Without that bound a link faster than the network the estimates started from was
        never learnt: each fast transfer only shortened the round trip (a Wi-Fi-seeded estimate stayed
        at 18.9 Mbps through 50 transfers of 602 KB in 4 ms each, and the device coded for that link)."""
        transfer_s = network_s - self.rtt_s
        predicted_up = up_bytes * 8 / (self.up_mbps * 1e6)
        predicted_down = down_bytes * 8 / (self.down_mbps * 1e6)
        predicted = predicted_up + predicted_down
        if predicted <= 0:
            return
        fast = transfer_s <= 0.05 * predicted  # faster than the estimates allow
        if fast:
            self.observe_rtt(network_s)
        else:
            self.samples += 1
        window_s = max(network_s, 1e-6)

        def estimate(mbps: float, nbytes: int) -> float:
            if nbytes < MIN_BANDWIDTH_SAMPLE_BYTES:
                return mbps
            measured = max(mbps, nbytes * 8 / window_s / 1e6) if fast else mbps * predicted / transfer_s
            return ewma(mbps, measured, self.alpha)

        self.up_mbps = estimate(self.up_mbps, up_bytes)
        self.down_mbps = estimate(self.down_mbps, down_bytes)


class ServerLoadEstimator:
    """The server's load as it last reported it (on answers and on its health endpoint); a report
    older than `stale_after_s` decays towards an idle server, since nobody is telling us otherwise.

    The wait is the median of the last WINDOW reports' (reports older than `stale_after_s` are dropped):
    a busy server's queue at the instant it answers swings with the other clients' arrivals, and with
    the last report alone one momentary burst could send the next request to the device (the demo's
    loaded Wi-Fi rows flipped between cut 3 and device-only from request to request; issue 12)."""

    WINDOW = 3

    def __init__(self, stale_after_s: float = 10.0):
        self.stale_after_s = stale_after_s
        self.queue_length = 0.0
        self.busy_fraction = 0.0
        self.mean_service_s = 0.0
        self.expected_wait_s: float | None = None  # the server's own prediction, where it makes one
        self.waits = MedianWindow(self.WINDOW)  # the last reports' waits
        self.updated = 0.0

    def update(self, load: dict, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.queue_length = float(load.get("queue_length", 0))
        self.busy_fraction = float(load.get("busy_fraction", 0.0))
        self.mean_service_s = float(load.get("mean_service_s", self.mean_service_s))
        wait = load.get("expected_wait_s")
        self.expected_wait_s = float(wait) if wait is not None else None
        if now - self.updated > self.stale_after_s:
            self.waits.clear()
        self.waits.push(self.expected_wait_s if self.expected_wait_s is not None
                        else self.queue_length * self.mean_service_s)
        self.updated = now

    def wait_s(self, now: float | None = None) -> float:
        """Expected queueing before a new request starts (the server's prediction where it makes one, else
        each request ahead takes a mean service), fading as the reports age."""
        age = (time.monotonic() if now is None else now) - self.updated
        freshness = max(0.0, 1.0 - age / self.stale_after_s)
        return freshness * self.waits.value


class MobileTimeEstimator:
    """The mobile side's own per-segment times, learned from the segments it runs (seeded by the bundle).

    Per segment, the median of its seed and its last WINDOW runs: one slow run (a page fault, a context
    switch, a timer that overshot) cannot make a segment look slow for good, which it could when one run
    replaced the seed, since a planner that stops choosing a segment never measures it again; a seed from
    another machine is outvoted after two runs, a device whose speed changed after a few.

    A stage takes more than the sum of its segments: the time between them (the loop, the timer's own
    calls, the estimators' updates) is in no segment. That gap, per segment, is learned from each stage
    run here (its time less its segments' own times in that run, the median of the last WINDOW stages)
    and added to every segment's time (`times`). It was a ratio of the stage's time to its segments'
    medians once, which also took up the segments' run-to-run noise and multiplied it: on the
    evaluation's dilated device SENNA's 1 ms device-only stage swung to a 2-3x ratio, and the energy
    planner chose cloud-only at 3x device-only's energy (issue 12)."""

    WINDOW = 5

    def __init__(self, seed_s: np.ndarray):
        self.seed = np.array(seed_s, dtype=np.float64)
        self.medians = self.seed.copy()
        self.runs = [MedianWindow(self.WINDOW, prior=float(seed)) for seed in self.seed]
        self.last = np.zeros_like(self.seed)  # each segment's latest run
        self.gaps = MedianWindow(self.WINDOW, prior=0.0)

    @property
    def gap_s(self) -> float:
        """Seconds a stage spends per segment outside its segments."""
        return self.gaps.value

    @property
    def times(self) -> np.ndarray:
        return self.medians + self.gap_s

    @property
    def observed(self) -> np.ndarray:
        return np.array([bool(r.values) for r in self.runs], dtype=bool)

    def observe(self, segment: int, seconds: float) -> None:
        self.last[segment] = seconds
        self.medians[segment] = self.runs[segment].push(seconds)

    def observe_stage(self, segments, seconds: float) -> None:
        """A stage of `segments` run back to back here took `seconds` in all (after each was `observe`d)."""
        segments = list(segments)
        if segments and seconds > 0:
            self.gaps.push(max(0.0, seconds - float(self.last[segments].sum())) / len(segments))


class RequestTimeEstimator:
    """This side's own seconds per server stage outside its segments (building the request: its header,
    the tensors' bytes), the median of the last WINDOW stages sent raw (a coded upload's coding is priced
    per tensor, from the manifest). Cloud-only SENNA on the evaluation's device spent 1-2 ms there,
    as much as running the model here, which the planner did not see (issue 12)."""

    WINDOW = 5

    def __init__(self):
        self.runs = MedianWindow(self.WINDOW)

    @property
    def seconds(self) -> float:
        return self.runs.value

    def observe(self, seconds: float) -> None:
        self.runs.push(seconds)


def conditions(network: NetworkEstimator, load: ServerLoadEstimator, server_available: bool,
               server_slowdown: float = 1.0, request_s: float = 0.0) -> Conditions:
    link = network.link
    return Conditions(
        up_mbps=network.up_mbps, down_mbps=network.down_mbps, rtt_s=network.rtt_s,
        server_wait_s=load.wait_s(), server_slowdown=server_slowdown, server_available=server_available,
        upload_power_w=link.upload_power_w(network.up_mbps),
        download_power_w=link.download_power_w(network.down_mbps), wait_power_w=link.beta_mw / 1000,
        request_s=request_s,
    )
