"""`neurosurgeon evaluate`: the papers' evaluation, run for real on this machine.

Per model: compile it (cached), serve it in its own process on loopback, start the device (a process
of its own, slowed to a stated speed: device.py), let it measure its own segments, then for every server
load (other clients in a process of their own) and network (the link shaped to its nominal rates),
measure the case (measure.py): cloud-only, device-only, every cut that could win, and the planner's
choice per objective, outputs checked against onnxruntime. Each finished case is written to
raw/MODEL/NETWORK-CLIENTSc.json at once, so an interrupted run resumes where it stopped; then the report
(report.py) is made from the raw files alone.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

from ...runtime.errors import NeurosurgeonError
from ...runtime.planner import NETWORKS, OBJECTIVES
from ...runtime.progress import Progress
from .device import DeviceProcess, measure_spread, parse_speed
from .measure import Case, measure_case

__all__ = ["DEFAULT_MODELS", "CaseKey", "EvaluateOptions", "plan_cases", "prepare_bundle", "run_evaluate"]

# The papers' eight benchmarks and the three DAGs of the zoo, at input sizes that keep a run here short.
DEFAULT_MODELS = ("alexnet", "vgg16", "deepface", "lenet", "asr", "pos", "ner", "chk", "resnet18", "mobilenetv2",
                  "inception")
RAW = "raw"


@dataclass
class EvaluateOptions:
    models: tuple[str, ...] = DEFAULT_MODELS
    networks: tuple[str, ...] = tuple(NETWORKS)
    objectives: tuple[str, ...] = OBJECTIVES
    device: str = "dilate:16"
    # The device's compute power: a phone-class board's, as the aarch64-neon preset assumes
    # (cost_models/power_defaults.json), not the x86 machine's that emulates it.
    device_power_w: float = 3.0
    loads: tuple[int, ...] = (0, 2, 4)  # other clients on the server
    requests: int = 10
    screen: int = 3
    input_size: int | None = 112  # image models; None: each model's own
    workdir: Path = Path(".cache/evaluate")
    progress: bool = True
    spread: bool = True  # measure how much each way to slow the device spreads (once, on the first model)
    extra: dict = field(default_factory=dict)

    sweep_model: str | None = "alexnet"  # the device-speed sweep's model (None: no sweep)
    sweep: tuple[float, ...] = (1, 2, 4, 8, 16, 32)  # its dilation factors

    def config(self, key: CaseKey, bundle_sha: str) -> dict:
        """What a raw case depends on: a case measured under another config is measured again."""
        return {"device": key.device, "device_power_w": self.device_power_w, "requests": self.requests, "screen": self.screen,
                "objectives": list(key.objectives), "input_size": self.input_size, "bundle": bundle_sha}


def prepare_bundle(workdir: Path, model: str, input_size: int | None, log=print) -> tuple[Path, Path]:
    """The zoo model as ONNX and its x86-host bundle (compiled unless the cached one is this compiler's
    build of this very model): (model path, bundle path)."""
    from ...api import CompileOptions
    from ...api import compile as compile_bundle
    from ...runtime.bundle import Bundle
    from ...runtime.manifest import MANIFEST, MANIFEST_FORMAT
    from .. import zoo

    workdir.mkdir(parents=True, exist_ok=True)
    own = zoo.own_input_size(model)
    suffix = f"-{input_size}" if input_size and own and input_size < own else ""
    model_path = workdir / f"{model}{suffix}.onnx"
    try:
        zoo.save(zoo.build(model, input_size=input_size if suffix else None), model_path)
    except ValueError as err:
        raise NeurosurgeonError(str(err)) from None
    bundle_path = workdir / f"{model}{suffix}.bundle"
    options = CompileOptions(mobile="x86-host", server="x86-host", force=True)
    if (bundle_path / MANIFEST).is_file():
        import tvm

        from ... import __version__
        from ...compiler.frontend import load_model

        manifest = Bundle(bundle_path).manifest
        identity = manifest.identity
        if (identity.model_sha256 == load_model(model_path).sha256 and identity.tool_version == __version__
                and identity.tvm_version == tvm.__version__ and manifest.version == MANIFEST_FORMAT.version
                and identity.options.get("kernels") == options.kernels):
            log(f"{model}: using the cached bundle {bundle_path}")
            return model_path, bundle_path
    log(f"{model}: compiling {bundle_path}")
    compile_bundle(model_path, bundle_path, options)
    return model_path, bundle_path


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read_case(path: Path, config: dict) -> Case | None:
    data = _read_json(path)
    return Case.from_json(data) if data.get("config") == config else None


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=1))
    partial.replace(path)  # a case file is whole or absent


@dataclass(frozen=True)
class CaseKey:
    """One case to measure: a model on a network, the device at a speed, the server with other clients."""

    model: str
    device: str
    clients: int
    network: str
    objectives: tuple[str, ...]

    def path(self, out: Path) -> Path:
        return out / RAW / self.model / self.device.replace(":", "-") / f"{self.network}-{self.clients}c.json"


def plan_cases(options: EvaluateOptions) -> list[CaseKey]:
    """The main cases (every model, load and network, the stated device), then the device-speed sweep
    (one model, idle server, every network, the latency objective)."""
    keys = [CaseKey(m, options.device, c, n, options.objectives)
            for m in options.models for c in options.loads for n in options.networks]
    if options.sweep_model:
        keys += [CaseKey(options.sweep_model, f"dilate:{f:g}", 0, n, ("latency",)) for f in options.sweep
                 for n in options.networks if f"dilate:{f:g}" != options.device or 0 not in options.loads]
    return keys


def run_evaluate(out: Path, options: EvaluateOptions, command: str | None = None) -> Path:
    """Measure every case not yet in `out`/raw, then write the report; returns the report's path."""
    from ...runtime.bundle import Bundle
    from ...runtime.profile import hardware_info
    from ...runtime.protocol import cut_model_name
    from ...runtime.tensors import random_inputs
    from ...serving import LoadProcess, start_server
    from ..verify import reference_outputs
    from .report import write_report

    for spec in (options.device, *(f"dilate:{f:g}" for f in options.sweep)):
        parse_speed(spec)
    for name in options.networks:
        if name not in NETWORKS:
            raise NeurosurgeonError(f"unknown network {name!r}; valid: {', '.join(NETWORKS)}")
    for objective in options.objectives:
        if objective not in OBJECTIVES:
            raise NeurosurgeonError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    out.mkdir(parents=True, exist_ok=True)
    log = print if options.progress else (lambda *a, **k: None)
    keys = plan_cases(options)
    models = list(dict.fromkeys(k.model for k in keys))
    with Progress(len(keys), "evaluate", unit="case", enabled=options.progress) as progress:
        for model in models:
            model_path, bundle_path = prepare_bundle(options.workdir, model, options.input_size, progress.message)
            bundle = Bundle(bundle_path)
            sha = bundle.manifest.identity.model_sha256
            mine = [k for k in keys if k.model == model]
            pending = [k for k in mine if _read_case(k.path(out), options.config(k, sha)) is None]
            if len(mine) > len(pending):
                progress.update(len(mine) - len(pending), note=f"{model}: {len(mine) - len(pending)} cases already measured")
            if not pending:
                continue
            feeds = random_inputs(bundle.inputs, seed=1)
            reference = reference_outputs(model_path, feeds)
            spread_path = out / RAW / "device-spread.json"
            if options.spread and _read_json(spread_path).get("bundle") != sha:
                progress.update(0, note=f"{model}: request-to-request spread of each way to slow the device")
                _write_json(spread_path, {"model": model, "bundle": sha,
                                          "rows": measure_spread(bundle_path, reference, feeds)})
            outputs = [t.name for t in bundle.outputs]
            with start_server(bundle_path) as server:
                for spec in dict.fromkeys(k.device for k in pending):
                    speed = parse_speed(spec)
                    with DeviceProcess(bundle_path, server.url, speed, reference, feeds) as device:
                        if device.not_applied:
                            raise NeurosurgeonError(f"device speed {spec}: {device.not_applied}; try --device dilate:4")
                        device_s = device.calibrate(5, str(options.workdir), options.device_power_w)
                        if spec == options.device:
                            _write_json(out / RAW / model / "model.json",
                                        _model_info(bundle, model, device_s, sha, hardware_info()))
                        for clients in dict.fromkeys(k.clients for k in pending if k.device == spec):
                            todo = [k for k in pending if k.device == spec and k.clients == clients]
                            with LoadProcess(server.url, cut_model_name(bundle.name, 0), feeds, outputs, clients):
                                for key in todo:
                                    what = f"{model} on {key.network}, device {spec}, {clients} other clients"
                                    progress.update(0, note=what)
                                    case = measure_case(device, bundle, model, key.network, clients, options.requests,
                                                        options.screen, key.objectives)
                                    case.device, case.device_total_s = spec, sum(device_s)
                                    _write_json(key.path(out), {"config": options.config(key, sha), **case.to_json()})
                                    progress.update(1, note=f"{what}: {case.seconds:.0f} s")
    log("writing the report")
    return write_report(out, options, command)


def _model_info(bundle, model: str, device_s: list[float], sha: str, hardware: dict) -> dict:
    """What the per-layer plots need: per segment its layers, device and server time; per cut its
    crossing bytes; and the machine."""
    server = bundle.manifest.costs["server"]
    return {
        "bundle_sha256": sha, "model": model, "bundle": bundle.name, "hardware": hardware,
        "python": platform.python_version(),
        "segments": [{"layers": list(s.layers), "flops": s.flops, "device_s": d, "server_s": float(t)}
                     for s, d, t in zip(bundle.segments, device_s, server.segment_seconds)],
        "cuts": [{"after_layer": c.after_layer, "upload_bytes": c.upload_bytes, "download_bytes": c.download_bytes}
                 for c in bundle.cuts],
    }
