"""Pick the cut for a request: Neurosurgeon's argmin over predicted end-to-end latency or mobile
energy, from per-segment cost estimates and the current network and server conditions.

The decision reads only numbers already in memory (numpy arrays prepared once per bundle), so it
costs microseconds. Where the per-segment costs come from (measured at compile time, fitted cost
models, the mobile side's own measurements) is the `SegmentCosts` provider's business, not the planner's.

    latency(k) = sum_{i<k} TM_i + [k<S] (RTT + U_k / B_up + wait + slowdown * sum_{i>=k} TC_i + D_k / B_down)
    energy(k)  = sum_{i<k} TM_i * PM_i + [k<S] (U_k / B_up * P_up + D_k / B_down * P_down)

with the radio power model P = alpha * throughput_Mbps + beta (Huang et al., MobiSys 2012).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import NeurosurgeonError

__all__ = ["NETWORKS", "OBJECTIVES", "Conditions", "Decision", "Network", "Planner", "SegmentCosts", "get_network"]


@dataclass(frozen=True)
class Network:
    """A network's nominal link and its radio power model (mW = alpha * Mbps + beta)."""

    name: str
    up_mbps: float
    down_mbps: float
    rtt_s: float
    alpha_up_mw: float
    alpha_down_mw: float
    beta_mw: float

    def upload_power_w(self, up_mbps: float) -> float:
        return (self.alpha_up_mw * up_mbps + self.beta_mw) / 1000

    def download_power_w(self, down_mbps: float) -> float:
        return (self.alpha_down_mw * down_mbps + self.beta_mw) / 1000


# Bandwidths: OpenSignal figures used by JointDNN and DADS; radio power: Huang et al. (MobiSys 2012),
# as digested in PAPER-NOTES.md. The papers give no RTT: these are typical round trips, an assumption.
NETWORKS = {
    "wifi": Network("wifi", 18.88, 54.97, 0.010, 283.17, 137.01, 132.86),
    "lte": Network("lte", 5.85, 13.76, 0.050, 438.39, 51.97, 1288.04),
    "3g": Network("3g", 1.1, 2.0275, 0.150, 868.98, 122.12, 817.88),
}

OBJECTIVES = ("latency", "energy")


def get_network(name: str) -> Network:
    try:
        return NETWORKS[name]
    except KeyError:
        raise NeurosurgeonError(f"unknown network {name!r}; valid: {', '.join(NETWORKS)}") from None


@dataclass(frozen=True)
class SegmentCosts:
    """What the planner needs to know about a bundle, filled by a cost provider."""

    mobile_s: np.ndarray  # per segment: predicted time on the mobile side
    server_s: np.ndarray  # per segment: predicted time on an idle server
    mobile_power_w: np.ndarray  # per segment: mobile power while computing it
    upload_bytes: np.ndarray  # per cut: bytes the mobile side uploads
    download_bytes: np.ndarray  # per cut: bytes the server sends back
    source: str = "unknown"


@dataclass(frozen=True)
class Conditions:
    """The world as the estimators see it when a request arrives."""

    up_mbps: float
    down_mbps: float
    rtt_s: float
    server_wait_s: float = 0.0  # queueing ahead of this request
    server_slowdown: float = 1.0  # server compute time multiplier under load
    server_available: bool = True
    upload_power_w: float = 0.0
    download_power_w: float = 0.0


@dataclass(frozen=True)
class Decision:
    cut: int
    latency_s: float  # predicted
    energy_j: float  # predicted mobile energy
    objective: str


class Planner:
    """Both predictions are linear in a few condition-dependent terms, so each is one small
    matrix-vector product over columns prepared once per bundle:

        latency = [mobile prefix | upload bits | download bits | server suffix | offloads] @
                  [1, 1/B_up, 1/B_down, slowdown, RTT + wait]
        energy  = [mobile energy prefix | upload bits | download bits] @ [1, P_up/B_up, P_down/B_down]
    """

    def __init__(self, costs: SegmentCosts):
        self.costs = costs
        self.n_segments = len(costs.mobile_s)
        n_cuts = self.n_segments + 1
        offloads = (np.arange(n_cuts) < self.n_segments).astype(np.float64)
        upload_bits = np.asarray(costs.upload_bytes, dtype=np.float64) * 8 * offloads
        download_bits = np.asarray(costs.download_bytes, dtype=np.float64) * 8 * offloads
        if not (len(upload_bits) == len(download_bits) == n_cuts):
            raise ValueError(f"costs describe {self.n_segments} segments but {len(costs.upload_bytes)} cuts")
        server = np.asarray(costs.server_s, dtype=np.float64)
        server_suffix = np.concatenate((np.cumsum(server[::-1])[::-1], [0.0]))
        self._power = np.asarray(costs.mobile_power_w, dtype=np.float64)
        self._latency_terms = np.column_stack([np.zeros(n_cuts), upload_bits, download_bits, server_suffix, offloads])
        self._energy_terms = np.column_stack([np.zeros(n_cuts), upload_bits, download_bits])
        self.update_mobile_times(costs.mobile_s)

    def update_mobile_times(self, mobile_s: np.ndarray) -> None:
        """New per-segment mobile times (e.g. as the mobile side measured them); O(segments)."""
        mobile = np.asarray(mobile_s, dtype=np.float64)
        self._latency_terms[1:, 0] = np.cumsum(mobile)
        self._energy_terms[1:, 0] = np.cumsum(mobile * self._power)

    def mobile_time(self, cut: int) -> float:
        """Predicted time of the mobile side's share of `cut`."""
        return float(self._latency_terms[cut, 0])

    def server_time(self, cut: int) -> float:
        """Predicted compute time of the server's share of `cut`, on an idle server."""
        return float(self._latency_terms[cut, 3])

    def predict(self, c: Conditions) -> tuple[np.ndarray, np.ndarray]:
        """Predicted latency (s) and mobile energy (J) of every cut."""
        up, down = 1.0 / (c.up_mbps * 1e6), 1.0 / (c.down_mbps * 1e6)
        latency = self._latency_terms @ np.array((1.0, up, down, c.server_slowdown, c.rtt_s + c.server_wait_s))
        energy = self._energy_terms @ np.array((1.0, c.upload_power_w * up, c.download_power_w * down))
        return latency, energy

    def choose(self, c: Conditions, objective: str = "latency", max_latency_s: float | None = None,
               max_energy_j: float | None = None) -> Decision:
        """The best cut for `objective`, optionally under a latency (QoS) or energy (battery) budget.
        With no feasible cut, the best unconstrained one is returned."""
        if not c.server_available:
            k = self.n_segments
            return Decision(k, self.mobile_time(k), float(self._energy_terms[k, 0]), objective)
        latency, energy = self.predict(c)
        score = latency if objective == "latency" else energy
        if max_latency_s is not None or max_energy_j is not None:
            feasible = np.ones(len(score), dtype=bool)
            if max_latency_s is not None:
                feasible &= latency <= max_latency_s
            if max_energy_j is not None:
                feasible &= energy <= max_energy_j
            if feasible.any():
                score = np.where(feasible, score, np.inf)
        k = int(np.argmin(score))
        return Decision(k, float(latency[k]), float(energy[k]), objective)
