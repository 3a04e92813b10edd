"""bench load: simulated devices against real servers on loopback, side by side in one run.

A simulated device is the real mobile runtime (`MobileRuntime`: its planner, estimators, client,
fallback, over a real socket, with its link shaped to Wi-Fi, LTE or 3G where asked) whose mobile
segments are not computed here but stood in for by `SimulatedMobile`: it sleeps the time a device
model gives each segment and hands over the tensors the real segments make (computed once, up
front). The server, the only thing computing, is what is measured; the devices cost this machine
little, so a 2-core machine can drive dozens of them.

Two tables:
- capacity: N devices (1, 2, 4, 8) sending whole-model requests (cut 0, unshaped loopback) for a mix
  of zoo models, against each server configuration (workers, batching, engine): requests/s (all, and
  per model), p50 and p99 latency, errors;
- datacenter throughput (Neurosurgeon's Figure 13): devices on a shaped link, each choosing its cut
  for latency against the server's reported load, versus the same devices all uploading at cut 0
  (cloud-only): the requests/s the server sustains when saturated, which is requests x workers /
  server compute seconds (read from the server's /metrics over the same window): a device that
  runs more of its model itself leaves less work per request on the server. A handful of devices
  cannot saturate a server over 3G; the busy time says what it would sustain.
The mobile device model is Neurosurgeon's Jetson TK1 CPU as a roofline (tools/bench/schedules.py);
the server is this machine.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ...api import CompileOptions
from ...api import compile as compile_model
from ...runtime.bundle import Bundle, SegmentExecutor, fetch
from ...runtime.mobile import MobileRuntime, load_costs
from ...runtime.planner import SegmentCosts
from ...runtime.profile import hardware_info
from ...runtime.progress import Progress
from ...runtime.tensors import random_inputs
from ...runtime.threads import cores_here
from ...serving import start_server
from .. import zoo
from ..verify import reference_outputs
from .schedules import DEVICES, Roofline

__all__ = ["CONFIGS", "MIX", "LoadOptions", "SimulatedMobile", "bench_load", "load_table"]

# The mix, at the papers' sizes: ResNet-18, compute-bound, and AlexNet, whose fully connected layers
# read 234 MB of weights per request at batch 1 (bound by memory: the case batching pays for).
MIX = {"alexnet": {}, "resnet18": {}}
# The server side is also built for these batch sizes (compile --server-batch), for the batching configurations.
BATCH_SIZES = (2, 4, 8)
# Server configurations compared (name -> extra `neurosurgeon serve` arguments).
CONFIGS = {
    "1 worker": ["--workers", "1", "--no-batching"],
    "1 worker, 1 thread": ["--workers", "1", "--threads", "1", "--no-batching"],  # the server before it used a 2nd core
    "2 workers": ["--workers", "2", "--no-batching"],
    "2 workers, batching": ["--workers", "2", "--max-queue-delay-ms", "5"],
    "Ray Serve, 2 replicas": ["--engine", "ray", "--replicas", "2", "--no-batching"],
}


@dataclass
class LoadOptions:
    mix: dict = field(default_factory=lambda: dict(MIX))  # zoo model -> build options
    devices: tuple[int, ...] = (1, 2, 4, 8)
    seconds: float = 10.0  # per cell
    configs: tuple[str, ...] = tuple(CONFIGS)
    networks: tuple[str, ...] = ("wifi", "lte", "3g")
    # single-model servers: a compute-bound model (what workers should scale) and an fc-heavy one (what
    # batching should speed up), each at `focus_devices` devices
    focus: dict = field(default_factory=lambda: {"resnet18": {}, "asr": {}})
    focus_devices: int = 8
    datacenter_devices: int = 24
    datacenter_workers: int = 2
    device_model: str = "cpu-like"
    workdir: str = ".cache/bench-load"
    progress: bool = True


@dataclass
class Cell:
    config: str
    devices: int
    requests: int
    errors: int  # fell back, lost or wrong
    seconds: float
    requests_s: float
    p50_ms: float
    p99_ms: float
    server_share: float = 1.0  # of the requests' segments, the share run on the server
    per_model: dict = field(default_factory=dict)  # model -> requests/s
    server_cpu_s: float = 0.0  # CPU seconds the server process used over the window
    sustained_s: float | None = None  # requests/s the server's cores would sustain saturated; None: no work
    problems: list = field(default_factory=list)  # the first errors, described


@dataclass
class LoadResult:
    cpu: str
    mix: dict
    device_model: str
    capacity: list[Cell] = field(default_factory=list)
    focus: list[Cell] = field(default_factory=list)  # config "<model>: <server configuration>"
    datacenter: list[dict] = field(default_factory=list)


class SimulatedMobile:
    """Stands in for a mobile device's segment executor: each segment takes the device model's time
    (slept, not computed) and yields the tensors the real segment makes (`tensors`, computed once)."""

    def __init__(self, bundle: Bundle, tensors: dict[str, np.ndarray], seconds: np.ndarray):
        self.bundle, self.tensors, self.seconds = bundle, tensors, seconds

    def load(self, segment: int) -> None:
        pass

    def run(self, env: dict, segments) -> dict:
        segments = list(segments)
        time.sleep(float(sum(self.seconds[i] for i in segments)))
        for i in segments:
            env.update({t.name: self.tensors[t.name] for t in self.bundle.segments[i].outputs})
        return env


def roofline_seconds(bundle: Bundle, device: Roofline) -> np.ndarray:
    """Per segment: the device model's time for its layers (FLOPs and bytes moved from the manifest)."""
    layers = bundle.manifest.layers
    return np.array([sum(device.seconds(layers[i].flops,
                                        layers[i].input_bytes + layers[i].output_bytes + layers[i].weight_bytes)
                         for i in range(*s.layers)) for s in bundle.segments])


@dataclass
class Case:
    """One model of the mix, ready for simulated devices: its bundle, input, every tensor the model
    makes for it, onnxruntime's outputs, and the planner's costs with the device model's mobile side."""

    bundle: Bundle
    feeds: dict[str, np.ndarray]
    tensors: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    costs: SegmentCosts


def prepare(mix: dict, repository: Path, device: Roofline, progress: Progress | None) -> dict[str, Case]:
    repository.mkdir(parents=True, exist_ok=True)
    cases = {}
    for name, options in mix.items():
        model = zoo.build(name, **options)
        path = repository / name
        if not (path / "manifest.json").is_file():
            if progress:
                progress.message(f"compiling {name} {options}")
            compile_model(model, path, CompileOptions("x86-host", "x86-host", progress=False,
                                                      server_batch=BATCH_SIZES), name=name)
        bundle = Bundle(path)
        feeds = random_inputs(bundle.inputs, seed=7)
        env = SegmentExecutor(bundle, "mobile").run(dict(feeds), range(len(bundle.segments)))
        tensors = {k: fetch(v) for k, v in env.items()}
        costs = load_costs(bundle)
        mobile_s = roofline_seconds(bundle, device)
        cases[name] = Case(bundle, feeds, tensors, reference_outputs(model, feeds),
                           SegmentCosts(mobile_s, costs.server_s, np.full(len(mobile_s), device.power_w),
                                        f"mobile: {device.name} roofline; server: {costs.source}"))
    return cases


class Devices:
    """`n` simulated devices, round robin over the mix, each sending requests back to back."""

    def __init__(self, cases: dict[str, Case], server, n: int, schedule: int | str, network: str = "wifi",
                 shaped: bool = False):
        names = list(cases)
        self.server, self.schedule = server, schedule
        self.runtimes = []
        for i in range(n):
            case = cases[names[i % len(names)]]
            # Unshaped, the link is loopback, where coding never pays: the devices send raw from the first
            # request (not only once they have learnt the link), and the machine's cores go to the server, as
            # the device's work (SimulatedMobile) does not take them.
            runtime = MobileRuntime(case.bundle, server.url, network=network, shape_link=shaped, deadline_s=60.0,
                                    costs=case.costs, compression="auto" if shaped else "off",
                                    executor=SimulatedMobile(case.bundle, case.tensors, case.costs.mobile_s))
            self.runtimes.append((runtime, case))
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._reset()

    def _reset(self) -> None:
        self.problems: list[str] = []
        self.latencies: list[float] = []
        self.by_model: dict[str, int] = {}
        self.errors = self.server_segments = self.segments = 0

    def _loop(self, runtime: MobileRuntime, case: Case) -> None:
        while not self.stop.is_set():
            problem = None
            try:
                outputs, record = runtime.infer(case.feeds, self.schedule)
                wrong = [k for k, v in case.reference.items() if not np.allclose(outputs[k], v, rtol=1e-4, atol=1e-5)]
                if wrong or record.fell_back:
                    problem = f"{case.bundle.name} {record.schedule}: " + (f"wrong {wrong}" if wrong else
                                                                          f"fell back: {record.fallback_reason}")
            except Exception as err:  # noqa: BLE001 (a lost request is an error of the run, whatever it raised)
                problem, record = f"{case.bundle.name}: lost: {type(err).__name__}: {err}", None
            with self.lock:
                if problem:
                    self.errors += 1
                    if len(self.problems) < 5:
                        self.problems.append(problem[:200])
                if record is not None:
                    self.latencies.append(record.total_s)
                    self.by_model[case.bundle.name] = self.by_model.get(case.bundle.name, 0) + 1
                    self.server_segments += sum(len(s.segments) for s in record.stages if s.ran_on == "server")
                    self.segments += len(case.bundle.segments)

    def run_for(self, seconds: float, config: str, warm_s: float = 3.0) -> Cell:
        """Run every device for `warm_s` (connecting, learning the link and the load: not counted),
        then `seconds` counted."""
        threads = [threading.Thread(target=self._loop, args=pair, daemon=True) for pair in self.runtimes]
        for thread in threads:
            thread.start()
        time.sleep(warm_s)
        with self.lock:
            self._reset()
            cpu_before = process_cpu_s(self.server.process.pid)
        started = time.perf_counter()
        time.sleep(seconds)
        with self.lock:
            elapsed = time.perf_counter() - started
            cpu = process_cpu_s(self.server.process.pid) - cpu_before
            latencies, errors, by_model = sorted(self.latencies), self.errors, dict(self.by_model)
            share, problems = self.server_segments / max(self.segments, 1), list(self.problems)
        self.stop.set()
        for thread in threads:
            thread.join(timeout=120)
        for runtime, _ in self.runtimes:
            runtime.close()
        # Saturated, the server's cores would serve requests at the rate its CPU seconds per request allow.
        # Server work that is not computing (HTTP, decoding) counts too: it is work a request costs.
        sustained = round(len(latencies) * cores_here() / cpu, 2) if share > 0 and cpu > 0 else None
        return Cell(config, len(self.runtimes), len(latencies), errors, round(elapsed, 2),
                    round(len(latencies) / elapsed, 2), round(1e3 * statistics.median(latencies), 2) if latencies else 0,
                    round(1e3 * latencies[int(0.99 * (len(latencies) - 1))], 2) if latencies else 0, round(share, 3),
                    {m: round(k / elapsed, 2) for m, k in sorted(by_model.items())}, round(cpu, 3), sustained,
                    problems)


def process_cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process, all its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_load(options: LoadOptions) -> LoadResult:
    device = DEVICES[options.device_model]
    focus_configs = [c for c in options.configs if not c.startswith("Ray")]
    progress = Progress(len(options.configs) * len(options.devices) + len(options.focus) * len(focus_configs)
                        + 2 * len(options.networks), "bench load", unit="cell", enabled=options.progress)
    repository = _folder(options.workdir, options.mix)  # a server then serves exactly the mix
    cases = prepare(options.mix, repository, device, progress)
    result = LoadResult(hardware_info()["cpu"], options.mix, device.source)
    for model, build in options.focus.items():
        folder = _folder(options.workdir, {model: build})
        single = prepare({model: build}, folder, device, progress)
        for config in focus_configs:
            with start_server(folder / model, extra_args=CONFIGS[config]) as server:
                cell = Devices(single, server, options.focus_devices, 0).run_for(options.seconds, f"{model}: {config}")
            result.focus.append(cell)
            progress.message(f"{cell.config}, {cell.devices} devices: {cell.requests_s} requests/s, p99 "
                             f"{cell.p99_ms} ms, {cell.errors} errors")
            progress.update()
    for config in options.configs:
        with start_server(repository, extra_args=CONFIGS[config]) as server:
            for n in options.devices:
                cell = Devices(cases, server, n, 0).run_for(options.seconds, config)
                result.capacity.append(cell)
                progress.message(f"{config}, {n} devices: {cell.requests_s} requests/s, p99 {cell.p99_ms} ms, "
                                 f"{cell.errors} errors")
                progress.update()
    workers = ["--workers", str(options.datacenter_workers)]
    with start_server(repository, extra_args=workers) as server:
        for network in options.networks:
            row = {"network": network, "devices": options.datacenter_devices}
            for label, schedule in (("cloud", 0), ("neurosurgeon", "auto")):
                cell = Devices(cases, server, options.datacenter_devices, schedule, network,
                               shaped=True).run_for(options.seconds, label)
                row[label] = asdict(cell)
                progress.message(f"{network}, {label}: {cell.requests_s} requests/s, server share "
                                 f"{cell.server_share}, sustained {cell.sustained_s} requests/s, {cell.errors} errors")
                progress.update()
            ours, cloud = row["neurosurgeon"]["sustained_s"], row["cloud"]["sustained_s"]
            row["gain"] = None if ours is None or not cloud else round(ours / cloud, 2)
            result.datacenter.append(row)
    progress.close()
    return result


def _folder(workdir: str, mix: dict) -> Path:
    return Path(workdir) / "-".join(f"{k}{''.join(f'_{v}' for v in o.values())}" for k, o in sorted(mix.items()))


def load_table(result: LoadResult | dict) -> str:
    r = result if isinstance(result, dict) else asdict(result)
    models = list(r["mix"])
    mix = ", ".join(f"{k} {v or '(full size)'}" for k, v in r["mix"].items())
    lines = [f"bench load on {r['cpu']}: models {mix}; simulated devices: {r['device_model']}",
             "", ("capacity: whole-model requests (cut 0) over loopback, devices back to back (device i runs model "
                  "i mod the mix)"),
             f"{'server':22}{'devices':>8}{'requests/s':>11}" + "".join(f"{m:>10}" for m in models)
             + f"{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}{'vs 1 worker':>12}"]
    base = {c["devices"]: c["requests_s"] for c in r["capacity"] if c["config"] == "1 worker"}
    for c in r["capacity"]:
        ratio = f"{c['requests_s'] / base[c['devices']]:.2f}x" if base.get(c["devices"]) else "-"
        lines.append(f"{c['config']:22}{c['devices']:>8}{c['requests_s']:>11.1f}"
                     + "".join(f"{c['per_model'].get(m, 0):>10.1f}" for m in models)
                     + f"{c['p50_ms']:>9.1f}{c['p99_ms']:>9.1f}{c['errors']:>7}{ratio:>12}")
    if r["focus"]:
        lines += ["", ("one model per server, whole-model requests, devices back to back: what workers and batching buy "
                       "(server cores: its CPU seconds per second; the devices' clients share the machine)"),
                  (f"{'model: server':36}{'devices':>8}{'requests/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}"
                   f"{'vs 1 worker':>12}{'server cores':>13}{'req/s per core':>15}")]
        base = {c["config"].split(":")[0]: c["requests_s"] for c in r["focus"] if c["config"].endswith(": 1 worker")}
        for c in r["focus"]:
            model = c["config"].split(":")[0]
            ratio = f"{c['requests_s'] / base[model]:.2f}x" if base.get(model) else "-"
            cores = c["server_cpu_s"] / c["seconds"] if c["seconds"] else 0.0
            per_core = f"{c['requests'] / c['server_cpu_s']:.1f}" if c["server_cpu_s"] else "-"
            lines.append(f"{c['config']:36}{c['devices']:>8}{c['requests_s']:>11.1f}{c['p50_ms']:>9.1f}"
                         f"{c['p99_ms']:>9.1f}{c['errors']:>7}{ratio:>12}{cores:>13.2f}{per_core:>15}")
    if r["datacenter"]:
        lines += ["", ("datacenter throughput: devices on shaped links choosing their cuts (Neurosurgeon) vs all "
                       "uploading at cut 0 (cloud-only); sustained = requests x cores / server CPU seconds"),
                  (f"{'network':8}{'devices':>8}{'cloud req/s':>12}{'sustained':>10}{'ours req/s':>11}"
                   f"{'sustained':>10}{'gain':>8}{'server share':>13}{'errors':>7}")]
        for row in r["datacenter"]:
            ours, cloud = row["neurosurgeon"], row["cloud"]
            sustained = "no work" if ours["sustained_s"] is None else f"{ours['sustained_s']:.1f}"
            gain = "-" if row["gain"] is None else f"{row['gain']:.2f}x"
            lines.append(f"{row['network']:8}{row['devices']:>8}{cloud['requests_s']:>12.1f}"
                         f"{cloud['sustained_s'] or 0:>10.1f}{ours['requests_s']:>11.1f}{sustained:>10}{gain:>8}"
                         f"{ours['server_share']:>13.2f}{ours['errors'] + cloud['errors']:>7}")
        lines.append("(server share: of the requests' segments, the share the server ran. The paper, GPU server "
                     "and Jetson TK1: 1.04x Wi-Fi, 1.43x LTE, 2.36x 3G)")
    problems = [(c["config"], p) for c in [*r["capacity"], *r["focus"]] for p in c.get("problems", [])]
    problems += [(f"{row['network']} {label}", p) for row in r["datacenter"] for label in ("cloud", "neurosurgeon")
                 for p in row[label].get("problems", [])]
    if problems:
        lines += ["", "errors:"] + [f"  {where}: {p}" for where, p in problems]
    return "\n".join(lines)
