"""The mobile side's request path: pick a cut, run the mobile side's segments, send the crossing
tensors to the server, and, if the server fails in any way, finish the inference here. Nothing is
lost: the mobile side has every segment. A bundle's generated run.py drives it (runtime/commands.py).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .bundle import Bundle, SegmentExecutor, fetch
from .client import InferenceClient, ServerUnavailable, ShapedLink
from .codec import CODECS, DEFAULT_CODEC, Codec, CodecError, get_codec, probe_seconds
from .errors import BundleError, NeurosurgeonError
from .estimators import (
    MobileTimeEstimator,
    NetworkEstimator,
    RequestTimeEstimator,
    ServerLoadEstimator,
    conditions,
    ewma,
)
from .jsonfile import JsonFormat
from .manifest import COST_CHOICES, SideCosts, parse_costs
from .measured import load_measured
from .planner import (
    OBJECTIVES,
    Budgets,
    Conditions,
    Decision,
    Planner,
    SegmentCosts,
    get_network,
    make_planner,
)
from .protocol import SEGMENT_TIMES, stage_model_name
from .schedule import MOBILE, SERVER, Schedule, TensorGraph
from .tensors import random_inputs

__all__ = ["COSTS_FORMAT", "COST_SOURCES", "MobileRuntime", "RequestRecord", "StageRecord", "describe", "load_costs",
           "read_inputs", "write_outputs"]


@dataclass
class StageRecord:
    side: str  # where the schedule put it
    segments: list[int]
    ran_on: str  # where it ran: a server stage runs here when the server fails
    predicted_s: float
    measured_s: float
    upload_bytes: int = 0  # bytes actually sent and received (tensors plus protocol header)
    download_bytes: int = 0
    hedged_s: float = 0.0  # hedging: seconds this side computed the server stage while it waited
    encode_s: float = 0.0  # a server stage: seconds this side spent building its request (coding uploads)


@dataclass
class RequestRecord:
    schedule: str  # its stages, e.g. "m0-4 s5-9 m10-11"
    cut: int | None  # k when the schedule is Neurosurgeon's cut k
    planner: str  # the planner that chose it, or "fixed"
    chosen: str  # "auto" or "fixed"
    objective: str
    predicted_latency_s: float
    predicted_energy_j: float
    predicted_server_s: float
    infeasible: list[str]  # budgets no schedule met (the planner then chose without them)
    crossing_bytes: int  # tensor bytes the schedule uploads
    upload_bytes: int  # bytes actually sent (tensors plus protocol headers)
    download_bytes: int
    mobile_s: float  # computing here, server stages that fell back included
    network_s: float
    server_s: float  # time inside the server (queueing and compute), as it reported it
    total_s: float
    fell_back: bool
    fallback_reason: str | None
    fallback_s: float
    up_mbps: float  # the estimates the decision was made with
    rtt_s: float
    server_wait_s: float
    stages: list[StageRecord] = field(default_factory=list)
    hedged_s: float = 0.0  # hedging: seconds computed here for server stages (wasted where the server won)
    hedge_won: int = 0  # server stages this side finished first


COST_SOURCES = ("default", *COST_CHOICES)
SERVER_TIMES_EVERY_S = 2.0  # how often a request asks the server for its own segment times
# A device whose requests do not reach the server learns nothing of its load from answers: it asks the
# server's ready endpoint (in the background, on a connection of its own) when its estimate is this old.
LOAD_PROBE_EVERY_S = 1.0
COSTS_FORMAT = JsonFormat("neurosurgeon-costs", 1, "costs file", BundleError)  # run.py --costs FILE


def load_costs(bundle: Bundle, costs: str | Path | SegmentCosts | None = None) -> SegmentCosts:
    """The planner's inputs. `costs` picks per-segment times: "default" (measurements made on this
    machine with `--measure` / `profile --bundle` where present, else the manifest's choice),
    "measured", "predicted", a costs file (the manifest's costs section, with its own format stamp),
    or the SegmentCosts themselves."""
    if isinstance(costs, SegmentCosts):
        return costs
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


def _codec_for(compression: str) -> tuple[Codec | None, bool]:
    """(codec, whether every upload is coded) of a `compression` setting: auto, off or a codec's name."""
    if compression == "off":
        return None, False
    if compression == "auto":
        return get_codec(DEFAULT_CODEC), False
    try:
        return get_codec(compression, allow_lossy=True), True
    except CodecError:
        raise NeurosurgeonError(f"compression must be auto, off or a codec ({', '.join(CODECS)}), "
                                f"not {compression!r}") from None


class MobileRuntime:
    """The mobile side of a bundle: per request, a schedule (chosen by a planner from the estimates, or
    fixed), run stage by stage; a server stage that fails in any way runs here, and so does every
    stage after it (the server is marked down and probed before it is used again)."""

    def __init__(self, bundle: Bundle | str | Path, server_url: str | None = None, token: str | None = None,
                 network: str = "wifi", objective: str = "latency", shape_link: bool = False,
                 deadline_s: float | None = None, learn: bool = True, retry_after_s: float = 5.0,
                 budgets: Budgets | None = None, costs: str | Path | SegmentCosts | None = None,
                 planner: str | None = None, ca_file: str | None = None, allow_plain_token: bool = False,
                 executor=None, hedge: bool = False, compression: str = "auto"):
        """`executor` runs the mobile side's segments (default: a SegmentExecutor of the bundle's
        artifacts; a load test gives a simulated device, see tools/bench/load.py). `hedge`: while a server
        stage is away, this side computes it too, and the first to finish wins (never much slower than
        running it here, whatever the server and the link do; it costs the energy of computing it).
        `compression`: "auto" sends a tensor coded losslessly (runtime/codec.py) where the bundle's
        measurements say that coding it and sending fewer bytes beats sending it raw at the bandwidth
        this side sees; "off" sends every tensor raw; a codec's name (float16, int8: lossy) codes every
        floating-point upload with it."""
        if objective not in OBJECTIVES:
            raise NeurosurgeonError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
        self.codec, self.code_everything = _codec_for(compression)
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
        self.executor = executor or SegmentExecutor(self.bundle, "mobile")
        self.costs = load_costs(self.bundle, costs)
        self.server_times = self.costs.server_s.copy()  # per segment: what the planners use
        self.graph = TensorGraph.of_bundle(self.bundle)
        stats = self.bundle.manifest.codecs.get(self.codec.name) if self.codec else None
        if stats:
            self.graph = self.graph.with_codec(stats, self._encode_scale())
        self.planner_name = planner or self.bundle.manifest.planner
        self._planners: dict[str, Planner] = {}
        self.planner = self.planner_for(self.planner_name)
        link = get_network(network)
        self.network = NetworkEstimator(link)
        self.load = ServerLoadEstimator()
        self.mobile_times = MobileTimeEstimator(self.costs.mobile_s)
        self.request_times = RequestTimeEstimator()
        self.learn = learn
        self.server_slowdown = 1.0  # observed / predicted server compute, learned from answers
        self.objective, self.budgets = objective, budgets or Budgets()
        self.deadline_s = deadline_s
        self.retry_after_s = retry_after_s
        def connect():
            return InferenceClient(server_url, token, ShapedLink.from_network(link) if shape_link else None,
                                   ca_file=ca_file, allow_plain_token=allow_plain_token)

        self.client = connect() if server_url else None
        self._connect = connect
        self._probe_client: InferenceClient | None = None
        self._probe: threading.Thread | None = None
        self.hedge = hedge
        self._hedge_call: threading.Thread | None = None  # a losing server call still holding the client
        self._server_down_until = 0.0
        self._server_times_at = -float("inf")  # when the server last told its own segment times
        self.n_segments = len(self.bundle.segments)
        self._stage_model = stage_model_name(self.bundle.name)

    def _device_work(self, seconds: float) -> float:
        """Seconds this side spent on work outside its segments (coding uploads), as its executor
        accounts for them: a slowed device (tools/evaluate) is charged its slowdown for them too."""
        charge = getattr(self.executor, "charge", None)
        return seconds + (charge(seconds) if charge else 0.0)

    def _encode_scale(self) -> float:
        """This device's encoding time over the calibrating machine's, on the same probe tensor."""
        calibrated = self.bundle.manifest.build.get("codec_calibration", {}).get("probe_s", {}).get(self.codec.name)
        if not isinstance(calibrated, (int, float)) or calibrated <= 0:
            return 1.0
        return self._device_work(probe_seconds(self.codec)) / calibrated

    def _codecs(self, tensors, values: dict[str, np.ndarray]) -> dict[str, str]:
        """The uploads to send coded, with their codec: every floating-point one under a codec asked
        for by name; under "auto", those that arrive sooner coded at the bandwidth this side sees."""
        if self.codec is None:
            return {}
        names = self.graph.names
        if self.code_everything:
            return {names[t]: self.codec.name for t in tensors if values[names[t]].dtype.kind == "f"}
        sent = self.graph.upload_nbytes(self.network.up_mbps)  # where smaller than raw, coding pays
        return {names[t]: self.codec.name for t in tensors if sent[t] < self.graph.nbytes[t]}

    def planner_for(self, name: str) -> Planner:
        if name not in self._planners:
            self._planners[name] = make_planner(name, self.graph, self.costs)
            self._planners[name].update_server_times(self.server_times)
        return self._planners[name]

    def close(self) -> None:
        """Close the connection to the server (the next request opens a new one)."""
        self._settle_hedge()
        if self._probe is not None:
            self._probe.join()
        if self._probe_client is not None:
            self._probe_client.close()
        if self.client is not None:
            self.client.close()

    def warm_up(self, schedule: int | str | Schedule = "auto") -> None:
        """Load now every segment `schedule` runs here, so the first request is not the slow one: all of
        them for "auto" (the planner may run everything here); for a fixed schedule only its mobile
        stages' (a server stage that falls back loads its segments then)."""
        if schedule == "auto":
            segments = range(self.n_segments)
        else:
            segments = [i for stage in self.fixed_schedule(schedule).stages if stage.side == MOBILE for i in stage.segments]
        self.executor.load_all(segments)

    def server_available(self) -> bool:
        if self.client is None:
            return False
        if time.monotonic() < self._server_down_until:
            return False
        if self._server_down_until:  # it failed before: a cheap probe before offloading again
            try:
                load, _ = self.client.ready(deadline_s=max(0.5, 4 * self.network.rtt_s), model=self._stage_model)
            except ServerUnavailable:
                self._mark_down()
                return False
            self.load.update(load)
            self._server_down_until = 0.0
        return True

    def _mark_down(self) -> None:
        self._server_down_until = time.monotonic() + self.retry_after_s

    def decide(self, schedule: int | str | Schedule = "auto", planner: str | None = None
               ) -> tuple[Decision, Conditions, bool]:
        """The schedule for the next request: "auto" (the planner's choice), a cut k, a schedule
        (or its text: "m0-4 s5-9 m10-11"); with the conditions it was made for and whether the
        server is thought up."""
        available = self.server_available()
        c = conditions(self.network, self.load, available, self.server_slowdown, self.request_times.seconds)
        chooser = self.planner_for(planner or self.planner_name)
        if schedule == "auto":
            return chooser.choose(c, self.objective, self.budgets), c, available
        schedule = self.fixed_schedule(schedule)
        return Decision(schedule, *chooser.evaluate(c, schedule), self.objective, "fixed"), c, available

    def fixed_schedule(self, schedule: int | str | Schedule) -> Schedule:
        """A cut k, a schedule or its text ("m0-4 s5-9 m10-11") as a Schedule of this bundle."""
        if isinstance(schedule, Schedule):
            return schedule
        if isinstance(schedule, str) and not schedule.isdigit():
            return Schedule.parse(self.graph, schedule)
        k = int(schedule)
        if not 0 <= k <= self.n_segments:
            raise NeurosurgeonError(f"cut {k} does not exist; this bundle has cuts 0..{self.n_segments}")
        return Schedule.cut(self.graph, k)

    def infer(self, inputs: dict[str, np.ndarray], schedule: int | str | Schedule = "auto",
              planner: str | None = None) -> tuple[dict[str, np.ndarray], RequestRecord]:
        env = self.check_inputs(inputs)
        decision, c, available = self.decide(schedule, planner)
        chooser = self.planner_for(planner or self.planner_name)
        predicted = chooser.stage_times(c, decision.schedule)
        names = self.graph.names
        started = time.perf_counter()
        stages: list[StageRecord] = []
        network_s = server_s = fallback_s = mobile_s = 0.0
        reason = None
        for stage, predicted_s in zip(decision.schedule.stages, predicted):
            t0 = time.perf_counter()
            record = StageRecord(stage.side, list(stage.segments), stage.side, predicted_s, 0.0)
            if stage.side == SERVER and reason is None:
                try:
                    if self.client is None:
                        raise ServerUnavailable("no server configured")
                    if not available:
                        raise ServerUnavailable("server marked down after a recent failure")
                    ask = time.monotonic() - self._server_times_at > SERVER_TIMES_EVERY_S and self.learn
                    uploads = {names[t]: fetch(env[names[t]]) for t in stage.uploads}
                    coded = self._codecs(stage.uploads, uploads)
                    args = (self._stage_model, uploads, [names[t] for t in stage.downloads],
                            self._deadline(predicted_s), {SEGMENT_TIMES: True} if ask else None, coded)
                    self._settle_hedge()
                    if self.hedge:
                        answer, record.hedged_s = self._hedged(args, env, stage.segments)
                        if answer is None:  # this side finished first: the server's answer is not awaited
                            record.ran_on = MOBILE
                            mobile_s += record.hedged_s
                            record.measured_s = time.perf_counter() - t0
                            stages.append(record)
                            continue
                    else:
                        answer = self.client.infer(*args)
                    env.update(answer.outputs)
                    record.encode_s = self._device_work(answer.encode_s)
                    mobile_s += record.encode_s
                    if not coded and self.learn:  # sent raw: what building a request costs this side
                        self.request_times.observe(record.encode_s)
                    record.upload_bytes, record.download_bytes = answer.upload_bytes, answer.download_bytes
                    compute_s = float(answer.parameters.get("compute_s", 0.0))
                    # Time inside the server (queueing included) is not network time.
                    inside = float(answer.parameters.get("server_s", compute_s))
                    server_s += inside
                    network_s += max(answer.seconds - inside, 0.0)
                    self._learn_from_answer(answer, chooser, stage.segments, compute_s, max(answer.seconds - inside, 0.0))
                except ServerUnavailable as err:
                    reason = err.reason
                    if available:
                        self._mark_down()
            if stage.side == MOBILE or reason is not None:
                ran = self._run_here(env, stage.segments)
                mobile_s += ran
                record.ran_on = MOBILE
                if stage.side == SERVER:
                    fallback_s += ran
            record.measured_s = time.perf_counter() - t0
            stages.append(record)
        outputs = {t.name: fetch(env[t.name]) for t in self.bundle.outputs}
        total = time.perf_counter() - started
        hedged = [s for s in stages if s.hedged_s > 0]
        if self.learn:
            for p in self._planners.values():
                p.update_mobile_times(self.mobile_times.times)
        uploads = [t for stage in decision.schedule.stages for t in stage.uploads]
        record = RequestRecord(
            schedule=decision.schedule.describe(), cut=decision.cut, planner=decision.planner,
            chosen="fixed" if decision.planner == "fixed" else "auto", objective=decision.objective,
            predicted_latency_s=decision.latency_s, predicted_energy_j=decision.energy_j,
            predicted_server_s=decision.server_s, infeasible=list(decision.infeasible),
            crossing_bytes=int(self.graph.nbytes[uploads].sum()) if uploads else 0,
            upload_bytes=sum(s.upload_bytes for s in stages), download_bytes=sum(s.download_bytes for s in stages),
            mobile_s=mobile_s, network_s=network_s, server_s=server_s, total_s=total, fell_back=reason is not None,
            fallback_reason=reason, fallback_s=fallback_s, up_mbps=self.network.up_mbps, rtt_s=self.network.rtt_s,
            server_wait_s=self.load.wait_s(), stages=stages, hedged_s=sum(s.hedged_s for s in hedged),
            hedge_won=sum(s.ran_on == MOBILE for s in hedged))
        self._probe_load_if_stale()
        return outputs, record

    def _probe_load_if_stale(self) -> None:
        """Ask for the server's load in the background when the last report is LOAD_PROBE_EVERY_S old (a
        device running everything itself would otherwise decide on a stale queue forever)."""
        if (self.client is None or not self.learn or time.monotonic() - self.load.updated < LOAD_PROBE_EVERY_S
                or time.monotonic() < self._server_down_until or (self._probe is not None and self._probe.is_alive())):
            return
        if self._probe_client is None:
            self._probe_client = self._connect()

        def probe():
            try:
                load, _ = self._probe_client.ready(deadline_s=max(0.5, 4 * self.network.rtt_s), model=self._stage_model)
            except ServerUnavailable:
                return
            self.load.update(load)

        self._probe = threading.Thread(target=probe, daemon=True, name="neurosurgeon-load-probe")
        self._probe.start()

    def _hedged(self, args, env: dict, segments) -> tuple[object | None, float]:
        """Send a server stage and compute it here meanwhile, segment by segment: (the server's answer,
        or None where this side finished first and `env` holds its results; seconds computed here). A
        server that fails while this side computes costs nothing more: it finishes here. The losing
        call keeps the client until it ends (`_settle_hedge`, before the next call)."""
        outcome: dict = {}
        answered = threading.Event()

        def call():
            try:
                outcome["answer"] = self.client.infer(*args)
            except ServerUnavailable as err:
                outcome["error"] = err
            finally:
                answered.set()

        thread = threading.Thread(target=call, daemon=True, name="neurosurgeon-hedged-call")
        thread.start()
        here, computed = dict(env), 0.0
        for index in segments:
            if "answer" in outcome:
                thread.join()
                return outcome["answer"], computed
            t0 = time.perf_counter()
            self.executor.run(here, (index,))
            computed += time.perf_counter() - t0
            self.mobile_times.observe(index, time.perf_counter() - t0)
        if "answer" in outcome:  # both done: the server's answer counts (it also teaches the estimators)
            thread.join()
            return outcome["answer"], computed
        env.update(here)
        if "error" in outcome:  # the server failed meanwhile: probe it before offloading again
            self._mark_down()
        self._hedge_call = thread
        return None, computed

    def _settle_hedge(self) -> None:
        """Wait for a losing hedged call to let go of the client (its answer is dropped)."""
        if self._hedge_call is not None:
            self._hedge_call.join()
            self._hedge_call = None

    def _run_here(self, env: dict, segments) -> float:
        started = time.perf_counter()
        for index in segments:
            t0 = time.perf_counter()
            self.executor.run(env, (index,))
            self.mobile_times.observe(index, time.perf_counter() - t0)
        took = time.perf_counter() - started
        self.mobile_times.observe_stage(segments, took)
        return took

    def _deadline(self, predicted_s: float) -> float:
        return self.deadline_s if self.deadline_s is not None else max(2.0, 4.0 * predicted_s)

    def _learn_from_answer(self, answer, planner: Planner, segments, compute_s: float, network_s: float) -> None:
        self.load.update(answer.parameters)
        self.network.observe_transfer(answer.upload_bytes, answer.download_bytes, network_s)
        if not self.learn:
            return
        reported = answer.parameters.get("segment_s")
        if isinstance(reported, list) and len(reported) == self.n_segments:
            # The server's own times replace the compile-time ones (where it has run the segment): they were
            # measured where the segments run, under the load they run under.
            self._server_times_at = time.monotonic()
            for i, seconds in enumerate(reported):
                if isinstance(seconds, (int, float)) and seconds > 0:
                    self.server_times[i] = seconds
            for p in self._planners.values():
                p.update_server_times(self.server_times)
            self.server_slowdown = 1.0
            return
        if self._server_times_at > -float("inf"):
            # A server that tells its own segment times (every SERVER_TIMES_EVERY_S, measured under its
            # load) is not second-guessed from single answers: a short stage's compute is mostly a job's
            # fixed cost (its tensors in and out), and learned as a slowdown of every segment it made the
            # whole model look 4-40x slower on the evaluation's loaded server (issue 12).
            return
        predicted = float(planner.server_s[list(segments)].sum())
        if predicted > 0 and compute_s > 0:
            self.server_slowdown = ewma(self.server_slowdown, compute_s / predicted, 0.3)

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> dict:
        """The request's inputs, checked against the model's (NeurosurgeonError naming the first mismatch)."""
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
    where = ("cloud-only" if record.cut == 0 else "mobile-only" if record.cut == n
             else f"cut {record.cut}/{n}" if record.cut is not None
             else f"{sum(s.side == SERVER for s in record.stages)} server stages")
    text = (f"{record.schedule} ({where}; {record.chosen} {record.planner}, {record.objective}): predicted "
            f"{record.predicted_latency_s * 1e3:.1f} ms, took {record.total_s * 1e3:.1f} ms = mobile "
            f"{record.mobile_s * 1e3:.1f} + network {record.network_s * 1e3:.1f} + server {record.server_s * 1e3:.1f}; "
            f"uploaded {record.upload_bytes} B (estimates: up {record.up_mbps:.2f} Mbps, rtt {record.rtt_s * 1e3:.0f} ms)")
    if record.infeasible:
        text += f"; no schedule meets the {' and '.join(record.infeasible)} budget: best without it"
    if record.fell_back:
        text += f"; server failed ({record.fallback_reason}), finished here in {record.fallback_s * 1e3:.1f} ms"
    return text
