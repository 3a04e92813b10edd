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
from pathlib import Path

from ...runtime.errors import NeurosurgeonError
from ...runtime.planner import NETWORKS, OBJECTIVES
from ...runtime.progress import Progress
from .device import HEDGED, DeviceProcess, measure_spread, parse_speed
from .measure import Case, falling_trace, measure_case, measure_trace
from .options import DEFAULT_MODELS, RAW, CaseKey, EvaluateOptions

__all__ = ["DEFAULT_MODELS", "SERVER_ENV", "CaseKey", "EvaluateOptions", "plan_cases", "prepare_bundle", "run_evaluate"]
# The emulated device and the server share this machine's cores. After a job, OpenBLAS's threads spin for
# about 2^28 cycles and TVM's pool spins too, taking cores the device (and the server's own next GEMM)
# would use: measured on AlexNet at 112 (AMD EPYC, 2 cores), a server idle 50 ms between requests took
# 24 ms per request spinning, 16 ms not (8 ms back to back either way). The server's threads sleep at once.
SERVER_ENV = {"OPENBLAS_THREAD_TIMEOUT": "4", "TVM_THREAD_POOL_SPIN_COUNT": "0"}


def prepare_bundle(workdir: Path, model: str, input_size: int | None, log=print,
                   kernels: str | None = None) -> tuple[Path, Path]:
    """The zoo model as ONNX and its x86-host bundle (compiled unless the cached one is this compiler's
    build of this very model; `kernels`: the CPU kernel choice, None the default): (model path, bundle
    path)."""
    from ...api import CompileOptions
    from ...api import compile as compile_bundle
    from ...compiler.kernels import DEFAULT_KERNELS
    from ...compiler.partition import FusedLayersPartitioner
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
    bundle_path = workdir / f"{model}{suffix}{f'-{kernels}' if kernels else ''}.bundle"
    # Every cut a compiler does not fuse (fused-layers), not only the default's upload envelope: the
    # evaluation compares the planner's choice with every cut, as the paper's figures do.
    options = CompileOptions(mobile="x86-host", server="x86-host", force=True, partitioner=FusedLayersPartitioner.name,
                             kernels=kernels or DEFAULT_KERNELS)
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


def plan_cases(options: EvaluateOptions) -> list[CaseKey]:
    """The main cases (every model, load and network, the stated device), then the focus model's sweeps
    (the latency objective): the device's speed and the server's load."""
    keys = [CaseKey(m, options.device, c, n, options.objectives)
            for m in options.models for c in options.loads for n in options.networks
            if c == 0 or n in options.load_networks]
    if options.focus_model:
        keys += [CaseKey(options.focus_model, f"dilate:{f:g}", 0, n, ("latency",)) for f in options.sweep
                 for n in options.sweep_networks]
        keys += [CaseKey(options.focus_model, options.device, c, "wifi", ("latency",)) for c in options.load_sweep]
        if options.hedge:
            keys += [CaseKey(options.focus_model, options.device, c, "wifi", ("latency", HEDGED), HEDGED)
                     for c in options.load_sweep]
    unique = {}
    for key in keys:  # a sweep point the main cases measure already is not measured twice
        same = (key.model, key.device, key.clients, key.network, key.variant)
        if same not in unique or len(key.objectives) > len(unique[same].objectives):
            unique[same] = key
    return list(unique.values())


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
            trace_path = out / RAW / model / options.device.replace(":", "-") / f"trace-{options.trace_network}.json"
            trace_config = {**options.config(CaseKey(model, options.device, 0, options.trace_network, ("latency",)), sha),
                            "trace": falling_trace()}
            wants_trace = model == options.focus_model and _read_json(trace_path).get("config") != trace_config
            if not pending and not wants_trace:
                continue
            feeds = random_inputs(bundle.inputs, seed=1)
            reference = reference_outputs(model_path, feeds)
            spread_path = out / RAW / "device-spread.json"
            if options.spread and _read_json(spread_path).get("bundle") != sha:
                progress.update(0, note=f"{model}: request-to-request spread of each way to slow the device")
                _write_json(spread_path, {"model": model, "bundle": sha,
                                          "rows": measure_spread(bundle_path, reference, feeds)})
            outputs = [t.name for t in bundle.outputs]
            with start_server(bundle_path, extra_env=SERVER_ENV) as server:
                for spec in dict.fromkeys([k.device for k in pending] + ([options.device] if wants_trace else [])):
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
                                                        options.screen, key.objectives, device_s=device_s,
                                                        power_w=options.device_power_w)
                                    case.device, case.device_total_s, case.variant = spec, sum(device_s), key.variant
                                    _write_json(key.path(out), {"config": options.config(key, sha), **case.to_json()})
                                    progress.update(1, note=f"{what}: {case.seconds:.0f} s")
                        if wants_trace and spec == options.device:
                            progress.update(0, note=f"{model}: replaying a falling {options.trace_network} uplink trace")
                            steps = measure_trace(device, options.trace_network, trace_config["trace"])
                            _write_json(trace_path, {"config": trace_config, "model": model,
                                                     "network": options.trace_network, "steps": steps})
        datacenter_path = out / RAW / "datacenter.json"
        wants = {"mix": list(options.datacenter_mix), "input_size": options.input_size,
                 "devices": options.datacenter_devices, "seconds": options.datacenter_seconds,
                 "networks": list(options.networks)}
        if options.datacenter and _read_json(datacenter_path).get("config") != wants:
            progress.update(0, note="datacenter throughput: simulated devices against one server, per network")
            _write_json(datacenter_path, {"config": wants, **_datacenter(options)})
    log("writing the report")
    return write_report(out, options, command)


def _datacenter(options: EvaluateOptions) -> dict:
    """bench load's datacenter cells (tools/bench/load.py): only those."""
    from dataclasses import asdict

    from ..bench.load import LoadOptions, bench_load

    build = {"input_size": options.input_size} if options.input_size else {}
    result = bench_load(LoadOptions(mix={m: dict(build) for m in options.datacenter_mix}, devices=(), configs=(),
                                    focus={}, networks=options.networks, datacenter_devices=options.datacenter_devices,
                                    seconds=options.datacenter_seconds, progress=False))
    return {"cpu": result.cpu, "device_model": result.device_model, "rows": [
        {"network": row["network"], "devices": row["devices"], "gain": row["gain"],
         **{label: {k: row[label][k] for k in ("requests_s", "sustained_s", "server_share", "errors", "p50_ms")}
            for label in ("cloud", "neurosurgeon")}} for row in asdict(result)["datacenter"]]}


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
