"""The device's request path: pick a cut, run the device's segments, send the crossing tensors to the
server, and, if the server fails in any way, finish the inference here. Nothing is lost: the device
has every segment.

This module is also the body of a bundle's generated run.py (`main`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .bundle import Bundle, SegmentExecutor, fetch
from .client import InferenceClient, ServerUnavailable, ShapedLink
from .errors import BundleError, NeurosurgeonError
from .measured import load_measured, measure_bundle
from .estimators import (
    DeviceTimeEstimator,
    NetworkEstimator,
    ServerLoadEstimator,
    conditions,
    ewma,
)
from .planner import OBJECTIVES, Decision, Planner, SegmentCosts, network_profile
from .protocol import cut_model_name


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
    device_s: float
    network_s: float
    server_s: float  # time inside the server (queueing and compute), as it reported it
    total_s: float
    fell_back: bool
    fallback_reason: str | None
    fallback_s: float
    up_mbps: float  # the estimates the decision was made with
    rtt_s: float
    server_wait_s: float


COST_CHOICES = ("default", "measured", "predicted")


def load_costs(bundle: Bundle, costs: str | Path | None = None) -> SegmentCosts:
    """The planner's inputs. `costs` picks per-segment times: "default" (measurements made on this
    machine with `--measure` / `profile --bundle` where present, else the manifest's choice),
    "measured", "predicted", or a costs file with the manifest's layout."""
    choice = str(costs) if costs else "default"
    if choice in COST_CHOICES:
        sides = bundle.manifest.get("costs")
        if not sides:
            raise BundleError(f"{bundle.path}: the manifest has no costs; the planner has nothing to decide with")
        sides = {side: dict(entry) for side, entry in sides.items()}
        for side, entry in sides.items():
            record = load_measured(bundle, side)
            if record:
                entry["measured_seconds"], entry["measured_source"] = record["segment_seconds"], record["source"]
                if choice == "default":
                    entry["segment_seconds"], entry["source"] = record["segment_seconds"], record["source"]
            if choice != "default":
                if f"{choice}_seconds" not in entry:
                    raise BundleError(f"{bundle.path}: no {choice} costs for the {side} side "
                                      f"(have: {', '.join(k[:-8] for k in entry if k.endswith('_seconds') and k != 'segment_seconds') or 'none'})")
                entry["segment_seconds"], entry["source"] = entry[f"{choice}_seconds"], entry[f"{choice}_source"]
        where = bundle.path
    else:
        where = Path(choice)
        try:
            sides = json.loads(where.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise BundleError(f"{where}: cannot read costs ({err})") from None
    n = len(bundle.segments)
    try:
        mobile, server = sides["mobile"], sides["server"]
        device_s = np.asarray(mobile["segment_seconds"], dtype=np.float64)
        server_s = np.asarray(server["segment_seconds"], dtype=np.float64)
        power = np.broadcast_to(np.asarray(mobile.get("power_w", 0.0), dtype=np.float64), (n,)).copy()
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"{where}: malformed costs ({err})") from None
    if len(device_s) != n or len(server_s) != n:
        raise BundleError(f"{where}: costs for {len(device_s)}/{len(server_s)} segments, bundle has {n}")
    return SegmentCosts(
        device_s=device_s, server_s=server_s, device_power_w=power,
        upload_bytes=np.array([c.upload_bytes for c in bundle.cuts], dtype=np.float64),
        download_bytes=np.array([c.download_bytes for c in bundle.cuts], dtype=np.float64),
        source=f"mobile: {mobile.get('source', '?')}; server: {server.get('source', '?')}",
    )


class DeviceRuntime:
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
        profile = network_profile(network)
        self.network = NetworkEstimator(profile)
        self.load = ServerLoadEstimator()
        self.device_times = DeviceTimeEstimator(self.costs.device_s)
        self.learn = learn
        self.server_slowdown = 1.0  # observed / predicted server compute, learned from answers
        self.objective, self.max_latency_s, self.max_energy_j = objective, max_latency_s, max_energy_j
        self.deadline_s = deadline_s
        self.retry_after_s = retry_after_s
        self.client = (InferenceClient(server_url, token, ShapedLink.from_profile(profile) if shape_link else None)
                       if server_url else None)
        self._server_down_until = 0.0
        self.n_segments = len(self.bundle.segments)

    def warm_up(self) -> None:
        """Verify and load every device segment now, so the first request is not the slow one."""
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
        device_s = self._run_here(env, range(k))
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
            self.planner.update_device_times(self.device_times.times)
        record = RequestRecord(
            cut=k, chosen=chosen, objective=decision.objective, predicted_latency_s=decision.latency_s,
            predicted_energy_j=decision.energy_j, crossing_bytes=spec.upload_bytes, upload_bytes=upload,
            download_bytes=download, device_s=device_s, network_s=network_s, server_s=server_s, total_s=total,
            fell_back=reason is not None, fallback_reason=reason, fallback_s=fallback_s,
            up_mbps=self.network.up_mbps, rtt_s=self.network.rtt_s, server_wait_s=self.load.wait_s())
        return outputs, record

    def _run_here(self, env: dict, segments: range) -> float:
        started = time.perf_counter()
        for index in segments:
            t0 = time.perf_counter()
            self.executor.run(env, (index,))
            self.device_times.observe(index, time.perf_counter() - t0)
        return time.perf_counter() - started

    def _deadline(self, decision: Decision, k: int) -> float:
        if self.deadline_s is not None:
            return self.deadline_s
        remote = decision.latency_s - self.planner.device_time(k)
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
        rng = np.random.default_rng(seed)
        return {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in bundle.inputs}
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
    where = "cloud-only" if record.cut == 0 else "device-only" if record.cut == n else f"segments 0..{record.cut - 1} here"
    text = (f"cut {record.cut}/{n} ({where}, {record.chosen}, {record.objective}): predicted {record.predicted_latency_s * 1e3:.1f} ms, "
            f"took {record.total_s * 1e3:.1f} ms = device {record.device_s * 1e3:.1f} + network {record.network_s * 1e3:.1f} "
            f"+ server {record.server_s * 1e3:.1f}; uploaded {record.upload_bytes} B "
            f"(estimates: up {record.up_mbps:.2f} Mbps, rtt {record.rtt_s * 1e3:.0f} ms)")
    if record.fell_back:
        text += f"; server failed ({record.fallback_reason}), finished here in {record.fallback_s * 1e3:.1f} ms"
    return text


def main(bundle_dir: str | Path, expected_bundle_id: str | None = None, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run this bundle's model, split between this device and a server.")
    parser.add_argument("--server", help="server URL, e.g. http://host:8000 (none: run everything here)")
    parser.add_argument("--input", help=".npy (or .npz by input name); random input if omitted")
    parser.add_argument("-o", "--output", help="write the outputs here (.npy, or .npz for several)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="latency")
    parser.add_argument("--network", default="wifi", help="network profile seeding the estimates: wifi, lte, 3g")
    parser.add_argument("--cut", default="auto",
                        help="auto, a cut index to force, or all: one request at each cut 0..S in order")
    parser.add_argument("--token-file", help="file whose first line is the server's bearer token")
    parser.add_argument("--shape", action="store_true", help="shape this client's transfers to the network profile")
    parser.add_argument("--deadline", type=float, help="seconds to wait for the server before finishing here")
    parser.add_argument("--max-latency", type=float, help="latency budget in seconds (with --objective energy)")
    parser.add_argument("--max-energy", type=float, help="mobile energy budget in joules (with --objective latency)")
    parser.add_argument("--costs", default="default",
                        help="per-segment times: default, measured, predicted, or a costs JSON file")
    parser.add_argument("--measure", action="store_true",
                        help="first time this device's segments and keep them in the bundle (measured/mobile.json)")
    parser.add_argument("--requests", type=int, default=1, help="repeat the request (with --cut all: the sweep) N times")
    parser.add_argument("--json", action="store_true", help="print one JSON record per request")
    args = parser.parse_args(argv)
    sweep = args.cut == "all"
    if sweep and args.output and not args.output.endswith(".npz"):
        parser.error("--cut all saves every cut's outputs: give -o FILE.npz")
    try:
        bundle = Bundle(bundle_dir)
        if expected_bundle_id and bundle.manifest["identity"]["bundle_id"] != expected_bundle_id:
            raise BundleError(f"{bundle_dir}: manifest is for bundle {bundle.manifest['identity']['bundle_id']}, "
                              f"this run.py was generated for {expected_bundle_id}")
        token = Path(args.token_file).read_text().strip().splitlines()[0] if args.token_file else None
        if args.measure:
            path = measure_bundle(bundle, "mobile")
            print(f"measured this device's {len(bundle.segments)} segments: {path}", file=sys.stderr)
        runtime = DeviceRuntime(bundle, args.server, token, args.network, args.objective, args.shape, args.deadline,
                                max_latency_s=args.max_latency, max_energy_j=args.max_energy, costs=args.costs)
        runtime.warm_up()
        inputs = read_inputs(bundle, args.input)
        cuts = range(runtime.n_segments + 1) if sweep else [args.cut]
        saved = {}
        for _ in range(args.requests):
            for cut in cuts:
                outputs, record = runtime.infer(inputs, cut)
                print(json.dumps(asdict(record)) if args.json else describe(record, bundle), flush=True)
                # A sweep keeps every cut's outputs apart; otherwise the last request's are saved.
                saved.update({f"cut{record.cut:03d}/{name}": value for name, value in outputs.items()}
                             if sweep else outputs)
        if args.output:
            write_outputs(saved, args.output)
    except (NeurosurgeonError, ValueError) as err:
        print(f"run.py: error: {err}", file=sys.stderr)
        return 2
    return 0
