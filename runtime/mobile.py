"""The mobile side's request path: pick a cut, run the mobile side's segments, send the crossing
tensors to the server, and, if the server fails in any way, finish the inference here. Nothing is
lost: the mobile side has every segment. A bundle's generated run.py drives it (runtime/commands.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .bundle import Bundle, SegmentExecutor, fetch
from .client import InferenceClient, ServerUnavailable, ShapedLink
from .errors import BundleError, NeurosurgeonError
from .estimators import MobileTimeEstimator, NetworkEstimator, ServerLoadEstimator, conditions, ewma
from .jsonfile import JsonFormat
from .manifest import COST_CHOICES, SideCosts, parse_costs
from .measured import load_measured
from .planner import OBJECTIVES, Decision, Planner, SegmentCosts, get_network
from .protocol import cut_model_name
from .tensors import random_inputs

__all__ = ["COSTS_FORMAT", "COST_SOURCES", "MobileRuntime", "RequestRecord", "describe", "load_costs", "read_inputs",
           "write_outputs"]


@dataclass
class RequestRecord:
    cut: int
    chosen: str  # "auto" or "fixed"
    objective: str
    predicted_latency_s: float
    predicted_energy_j: float
    crossing_bytes: int  # tensor bytes that had to cross at this cut
    upload_bytes: int  # bytes actually sent (tensors plus protocol header)
    download_bytes: int
    mobile_s: float
    network_s: float
    server_s: float  # time inside the server (queueing and compute), as it reported it
    total_s: float
    fell_back: bool
    fallback_reason: str | None
    fallback_s: float
    up_mbps: float  # the estimates the decision was made with
    rtt_s: float
    server_wait_s: float


COST_SOURCES = ("default", *COST_CHOICES)
COSTS_FORMAT = JsonFormat("neurosurgeon-costs", 1, "costs file", BundleError)  # run.py --costs FILE


def load_costs(bundle: Bundle, costs: str | Path | None = None) -> SegmentCosts:
    """The planner's inputs. `costs` picks per-segment times: "default" (measurements made on this
    machine with `--measure` / `profile --bundle` where present, else the manifest's choice),
    "measured", "predicted", or a costs file (the manifest's costs section, with its own format stamp)."""
    choice = str(costs) if costs else "default"
    if choice in COST_SOURCES:
        where, sides = bundle.path, _bundle_costs(bundle, choice)
    else:
        where = Path(choice)
        sides = parse_costs(COSTS_FORMAT.read(where), str(where))
    missing = [side for side in ("mobile", "server") if side not in sides]
    if missing:
        raise BundleError(f"{where}: no costs for the {' and '.join(missing)} side")
    mobile, server = sides["mobile"], sides["server"]
    n = len(bundle.segments)
    if len(mobile.segment_seconds) != n or len(server.segment_seconds) != n:
        raise BundleError(f"{where}: costs for {len(mobile.segment_seconds)}/{len(server.segment_seconds)} segments, "
                          f"bundle has {n}")
    return SegmentCosts(
        mobile_s=np.asarray(mobile.segment_seconds, dtype=np.float64),
        server_s=np.asarray(server.segment_seconds, dtype=np.float64),
        mobile_power_w=np.broadcast_to(np.asarray(mobile.power_w, dtype=np.float64), (n,)).copy(),
        upload_bytes=np.array([c.upload_bytes for c in bundle.cuts], dtype=np.float64),
        download_bytes=np.array([c.download_bytes for c in bundle.cuts], dtype=np.float64),
        source=f"mobile: {mobile.source}; server: {server.source}",
    )


def _bundle_costs(bundle: Bundle, choice: str) -> dict[str, SideCosts]:
    """The manifest's costs per side, with this machine's measurements (measured/<side>.json) in
    place, and `choice`'s times as the ones to decide with."""
    if not bundle.manifest.costs:
        raise BundleError(f"{bundle.path}: the manifest has no costs; the planner has nothing to decide with")
    sides = {}
    for side, entry in bundle.manifest.costs.items():
        record = load_measured(bundle, side)
        if record:
            entry = replace(entry, measured_seconds=tuple(record["segment_seconds"]), measured_source=record["source"])
            if choice == "default":
                entry = replace(entry, segment_seconds=entry.measured_seconds, source=entry.measured_source)
        if choice != "default":
            picked = entry.kind(choice)
            if picked is None:
                have = [kind for kind in COST_CHOICES if entry.kind(kind)]
                raise BundleError(f"{bundle.path}: no {choice} costs for the {side} side (have: {', '.join(have) or 'none'})")
            entry = replace(entry, segment_seconds=picked[0], source=picked[1])
        sides[side] = entry
    return sides


class MobileRuntime:
    def __init__(self, bundle: Bundle | str | Path, server_url: str | None = None, token: str | None = None,
                 network: str = "wifi", objective: str = "latency", shape_link: bool = False,
                 deadline_s: float | None = None, learn: bool = True, retry_after_s: float = 5.0,
                 max_latency_s: float | None = None, max_energy_j: float | None = None,
                 costs: str | Path | None = None):
        if objective not in OBJECTIVES:
            raise NeurosurgeonError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
        self.executor = SegmentExecutor(self.bundle, "mobile")
        self.costs = load_costs(self.bundle, costs)
        self.planner = Planner(self.costs)
        link = get_network(network)
        self.network = NetworkEstimator(link)
        self.load = ServerLoadEstimator()
        self.mobile_times = MobileTimeEstimator(self.costs.mobile_s)
        self.learn = learn
        self.server_slowdown = 1.0  # observed / predicted server compute, learned from answers
        self.objective, self.max_latency_s, self.max_energy_j = objective, max_latency_s, max_energy_j
        self.deadline_s = deadline_s
        self.retry_after_s = retry_after_s
        self.client = (InferenceClient(server_url, token, ShapedLink.from_network(link) if shape_link else None)
                       if server_url else None)
        self._server_down_until = 0.0
        self.n_segments = len(self.bundle.segments)

    def warm_up(self) -> None:
        """Verify and load every mobile segment now, so the first request is not the slow one."""
        for segment in range(self.n_segments):
            self.executor.load(segment)

    def server_available(self) -> bool:
        if self.client is None:
            return False
        if time.monotonic() < self._server_down_until:
            return False
        if self._server_down_until:  # it failed before: a cheap probe before offloading again
            try:
                load, seconds = self.client.ready(deadline_s=max(0.5, 4 * self.network.rtt_s))
            except ServerUnavailable:
                self._mark_down()
                return False
            self.load.update(load)
            self._server_down_until = 0.0
        return True

    def _mark_down(self) -> None:
        self._server_down_until = time.monotonic() + self.retry_after_s

    def decide(self, cut: int | str = "auto") -> tuple[Decision, str, bool]:
        """The cut for the next request, how it was chosen, and whether the server is thought up."""
        available = self.server_available()
        c = conditions(self.network, self.load, available, self.server_slowdown)
        if cut == "auto":
            return self.planner.choose(c, self.objective, self.max_latency_s, self.max_energy_j), "auto", available
        k = int(cut)
        if not 0 <= k <= self.n_segments:
            raise NeurosurgeonError(f"cut {k} does not exist; this bundle has cuts 0..{self.n_segments}")
        latency, energy = self.planner.predict(c)
        return Decision(k, float(latency[k]), float(energy[k]), self.objective), "fixed", available

    def infer(self, inputs: dict[str, np.ndarray], cut: int | str = "auto") -> tuple[dict[str, np.ndarray], RequestRecord]:
        env = self._check_inputs(inputs)
        decision, chosen, available = self.decide(cut)
        k = decision.cut
        started = time.perf_counter()
        mobile_s = self._run_here(env, range(k))
        network_s = server_s = fallback_s = 0.0
        upload = download = 0
        reason = None
        spec = self.bundle.cuts[k]
        if k < self.n_segments:
            try:
                if self.client is None:
                    raise ServerUnavailable("no server configured")
                if not available:
                    raise ServerUnavailable("server marked down after a recent failure")
                answer = self.client.infer(
                    cut_model_name(self.bundle.name, k), {t.name: fetch(env[t.name]) for t in spec.crossing},
                    [t.name for t in self.bundle.outputs if t.name not in env], self._deadline(decision, k))
                env.update(answer.outputs)
                upload, download = answer.upload_bytes, answer.download_bytes
                compute_s = float(answer.parameters.get("compute_s", 0.0))
                # Time inside the server (queueing included) is not network time.
                server_s = float(answer.parameters.get("server_s", compute_s))
                network_s = max(answer.seconds - server_s, 0.0)
                self._learn_from_answer(answer, k, compute_s, network_s)
            except ServerUnavailable as err:
                reason = err.reason
                if available:
                    self._mark_down()
                fallback_s = self._run_here(env, range(k, self.n_segments))
        outputs = {t.name: fetch(env[t.name]) for t in self.bundle.outputs}
        total = time.perf_counter() - started
        if self.learn:
            self.planner.update_mobile_times(self.mobile_times.times)
        record = RequestRecord(
            cut=k, chosen=chosen, objective=decision.objective, predicted_latency_s=decision.latency_s,
            predicted_energy_j=decision.energy_j, crossing_bytes=spec.upload_bytes, upload_bytes=upload,
            download_bytes=download, mobile_s=mobile_s, network_s=network_s, server_s=server_s, total_s=total,
            fell_back=reason is not None, fallback_reason=reason, fallback_s=fallback_s,
            up_mbps=self.network.up_mbps, rtt_s=self.network.rtt_s, server_wait_s=self.load.wait_s())
        return outputs, record

    def _run_here(self, env: dict, segments: range) -> float:
        started = time.perf_counter()
        for index in segments:
            t0 = time.perf_counter()
            self.executor.run(env, (index,))
            self.mobile_times.observe(index, time.perf_counter() - t0)
        return time.perf_counter() - started

    def _deadline(self, decision: Decision, k: int) -> float:
        if self.deadline_s is not None:
            return self.deadline_s
        remote = decision.latency_s - self.planner.mobile_time(k)
        return max(2.0, 4.0 * remote)

    def _learn_from_answer(self, answer, k: int, compute_s: float, network_s: float) -> None:
        self.load.update(answer.parameters)
        self.network.observe_transfer(answer.upload_bytes, answer.download_bytes, network_s)
        if not self.learn:
            return
        predicted = self.planner.server_time(k)
        if predicted > 0 and compute_s > 0:
            self.server_slowdown = ewma(self.server_slowdown, compute_s / predicted, 0.3)

    def _check_inputs(self, inputs: dict[str, np.ndarray]) -> dict:
        env = {}
        for t in self.bundle.inputs:
            if t.name not in inputs:
                raise NeurosurgeonError(f"missing input {t.name!r} (expected {t.dtype}{list(t.shape)})")
            value = np.asarray(inputs[t.name])
            if value.shape != t.shape:
                raise NeurosurgeonError(f"input {t.name!r}: expected shape {list(t.shape)}, got {list(value.shape)}")
            if value.dtype != np.dtype(t.dtype):
                raise NeurosurgeonError(f"input {t.name!r}: expected dtype {t.dtype}, got {value.dtype}")
            env[t.name] = value
        unknown = set(inputs) - {t.name for t in self.bundle.inputs}
        if unknown:
            raise NeurosurgeonError(f"unknown input(s) {sorted(unknown)}; the model's inputs are "
                                    f"{[t.name for t in self.bundle.inputs]}")
        return env


def read_inputs(bundle: Bundle, path: str | None, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs from a .npy (single-input models) or .npz (by input name); random ones without a path."""
    if path is None:
        return random_inputs(bundle.inputs, seed)
    if not os.path.isfile(path):
        raise NeurosurgeonError(f"{path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise NeurosurgeonError(f"{path}: not a .npy/.npz file ({err})") from None
    if isinstance(data, np.ndarray):
        if len(bundle.inputs) != 1:
            raise NeurosurgeonError(f"{path}: the model has {len(bundle.inputs)} inputs; give an .npz keyed by "
                                    f"{[t.name for t in bundle.inputs]}")
        return {bundle.inputs[0].name: data}
    return {name: data[name] for name in data.files}


def write_outputs(outputs: dict[str, np.ndarray], path: str) -> None:
    if len(outputs) == 1 and not path.endswith(".npz"):
        np.save(path, next(iter(outputs.values())))
    else:
        np.savez(path, **outputs)


def describe(record: RequestRecord, bundle: Bundle) -> str:
    n = len(bundle.segments)
    where = "cloud-only" if record.cut == 0 else "mobile-only" if record.cut == n else f"segments 0..{record.cut - 1} here"
    text = (f"cut {record.cut}/{n} ({where}, {record.chosen}, {record.objective}): predicted {record.predicted_latency_s * 1e3:.1f} ms, "
            f"took {record.total_s * 1e3:.1f} ms = mobile {record.mobile_s * 1e3:.1f} + network {record.network_s * 1e3:.1f} "
            f"+ server {record.server_s * 1e3:.1f}; uploaded {record.upload_bytes} B "
            f"(estimates: up {record.up_mbps:.2f} Mbps, rtt {record.rtt_s * 1e3:.0f} ms)")
    if record.fell_back:
        text += f"; server failed ({record.fallback_reason}), finished here in {record.fallback_s * 1e3:.1f} ms"
    return text
