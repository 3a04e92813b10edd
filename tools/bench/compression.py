"""`neurosurgeon bench compression`: what coding the uploads buys, per zoo model.

1. Per cut, from the bundle's manifest (measured at compile time on calibration inputs): the raw
   bytes a cut uploads, the bytes coded losslessly (shuffle-zlib), the ratio and the coding time.
2. Per lossy codec (float16, int8), the largest difference from onnxruntime's outputs over every cut,
   each cut's crossing tensors coded and decoded between the device's segments and the server's.
3. End to end: the device (a process slowed like `evaluate`'s, dilate:16) and `serve` over shaped 3G
   and LTE links; the planner's choice with compression off and on (auto), median of N requests each,
   interleaved, with the cut each chose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...runtime.bundle import Bundle, SegmentExecutor, fetch
from ...runtime.codec import CODECS, DEFAULT_CODEC
from ...runtime.progress import Progress
from ...runtime.tensors import random_inputs
from ..verify import reference_outputs

__all__ = ["CompressionOptions", "bench_compression", "compression_tables"]


@dataclass
class CompressionOptions:
    models: list[str] = field(default_factory=lambda: ["alexnet", "vgg16", "resnet18", "mobilenetv2", "asr", "deepface"])
    input_size: int | None = 112
    networks: tuple[str, ...] = ("3g", "lte")
    device: str = "dilate:16"
    requests: int = 10
    workdir: Path = Path(".cache/bench-compression")
    progress: bool = True


def cut_rows(bundle: Bundle) -> list[dict]:
    """Per cut with an upload: raw and coded bytes (the default codec) and the coding time, from the manifest."""
    stats = bundle.manifest.codecs.get(DEFAULT_CODEC, {})
    rows = []
    for cut in bundle.manifest.cuts:
        if not cut.crossing or not all(t.name in stats for t in cut.crossing):
            continue
        st = [stats[t.name] for t in cut.crossing]
        raw, coded = sum(s.raw_bytes for s in st), sum(s.bytes for s in st)
        rows.append({"cut": cut.index, "after": cut.after_layer or "(input)", "raw_bytes": raw, "coded_bytes": coded,
                     "ratio": raw / max(coded, 1), "code_ms": sum(s.encode_s + s.decode_s for s in st) * 1e3})
    return rows


def lossy_errors(bundle: Bundle, model_path: Path, seed: int = 1) -> dict[str, dict]:
    """Per lossy codec: the largest absolute difference from onnxruntime over every cut's outputs, and
    the share of cuts whose top-1 class (argmax of the first output) stays onnxruntime's."""
    feeds = random_inputs(bundle.inputs, seed)
    reference = reference_outputs(model_path, feeds)
    first = bundle.outputs[0].name
    mobile, server = SegmentExecutor(bundle, "mobile"), SegmentExecutor(bundle, "server")
    n = len(bundle.segments)
    found = {}
    for name, codec in CODECS.items():
        if codec.lossless:
            continue
        worst, same = 0.0, 0
        for cut in bundle.manifest.cuts[:-1]:
            env: dict = dict(feeds)
            mobile.run(env, range(cut.index))
            for t in cut.crossing:
                x = fetch(env[t.name])
                if x.dtype.kind == "f":
                    env[t.name] = codec.decode(codec.encode(x), x.dtype, x.shape)
            server.run(env, range(cut.index, n))
            outputs = {k: fetch(env[k]) for k in reference}
            worst = max(worst, max(float(np.max(np.abs(outputs[k] - reference[k]))) for k in reference))
            same += int(np.argmax(outputs[first]) == np.argmax(reference[first]))
        found[name] = {"max_abs_error": worst, "top1_kept": same / n,
                       "output_scale": float(np.max(np.abs(reference[first])))}
    return found


def end_to_end(bundle_path: Path, model_path: Path, options: CompressionOptions) -> list[dict]:
    """Per network: the planner's choice (latency) with compression off and auto, interleaved rounds."""
    from ...serving import start_server
    from ..evaluate import SERVER_ENV
    from ..evaluate.device import DeviceProcess, parse_speed
    from ..evaluate.measure import Stats

    bundle = Bundle(bundle_path)
    feeds = random_inputs(bundle.inputs, seed=1)
    reference = reference_outputs(model_path, feeds)
    rows = []
    with start_server(bundle_path, extra_env=SERVER_ENV) as server, \
            DeviceProcess(bundle_path, server.url, parse_speed(options.device), reference, feeds) as device:
        device.calibrate(5, str(options.workdir))
        for network in options.networks:
            kept: dict[str, list[dict]] = {"off": [], "auto": []}
            for mode in kept:  # the estimators learn from a few requests first
                device.run(network, "latency", "auto", 0, warmup=3, compression=mode)
            for _ in range(options.requests):
                for mode in kept:
                    kept[mode] += device.run(network, "latency", "auto", 1, compression=mode)
            row = {"network": network}
            for mode, requests in kept.items():
                cuts = [r["cut"] for r in requests]
                row[mode] = {"latency": Stats.of(r["latency_s"] for r in requests).__dict__,
                             "cut": max(set(cuts), key=cuts.count), "upload_bytes": int(np.median([r["upload_bytes"] for r in requests])),
                             "max_error": max(r["error"] for r in requests)}
            rows.append(row)
    return rows


def bench_compression(options: CompressionOptions) -> dict:
    from ..evaluate import prepare_bundle

    result = {"models": {}, "device": options.device, "requests": options.requests}
    with Progress(len(options.models), "bench compression", unit="model", enabled=options.progress) as progress:
        for model in options.models:
            model_path, bundle_path = prepare_bundle(options.workdir, model, options.input_size, progress.message)
            bundle = Bundle(bundle_path)
            progress.update(0, note=f"{model}: lossy codecs at every cut")
            entry = {"cuts": cut_rows(bundle), "lossy": lossy_errors(bundle, model_path)}
            if options.networks:
                progress.update(0, note=f"{model}: end to end over {', '.join(options.networks)}")
                entry["end_to_end"] = end_to_end(bundle_path, model_path, options)
            result["models"][model] = entry
            progress.update(note=model)
    return result


def compression_tables(result: dict) -> str:
    lines = [f"lossless uploads ({DEFAULT_CODEC}): per model, its cuts' raw and coded bytes (calibration inputs: "
             "seeded random; measured at compile time)",
             f"{'model':12s} {'cuts':>4s} {'ratio median':>12s} {'ratio max':>9s} {'best cut':>24s} "
             f"{'raw KiB':>8s} {'coded KiB':>9s} {'code ms':>7s}"]
    for model, entry in result["models"].items():
        rows = entry["cuts"]
        if not rows:
            continue
        ratios = [r["ratio"] for r in rows]
        best = max(rows, key=lambda r: r["ratio"])
        lines.append(f"{model:12s} {len(rows):4d} {np.median(ratios):11.2f}x {max(ratios):8.2f}x "
                     f"{best['cut']:>5d} after {best['after'][:12]:12s} {best['raw_bytes'] / 1024:8.1f} "
                     f"{best['coded_bytes'] / 1024:9.1f} {best['code_ms']:7.2f}")
    lines += ["", "per cut (every model): cut, after layer, raw KiB, coded KiB, ratio, encode+decode ms"]
    for model, entry in result["models"].items():
        lines.append(f"  {model}: " + "; ".join(f"{r['cut']} {r['after']} {r['raw_bytes'] / 1024:.1f}/"
                                                f"{r['coded_bytes'] / 1024:.1f} {r['ratio']:.2f}x {r['code_ms']:.2f}"
                                                for r in entry["cuts"]))
    lines += ["", "lossy codecs (asked for by name only): largest |difference| from onnxruntime over every cut, "
                  "share of cuts whose top-1 stays onnxruntime's",
              f"{'model':12s} {'output scale':>12s} " + " ".join(f"{c + ' err':>12s} {c + ' top1':>11s}"
                                                           for c in CODECS if not CODECS[c].lossless)]
    for model, entry in result["models"].items():
        lossy = entry["lossy"]
        scale = next(iter(lossy.values()))["output_scale"] if lossy else 0.0
        lines.append(f"{model:12s} {scale:12.3g} " + " ".join(f"{v['max_abs_error']:12.2e} {v['top1_kept']:10.0%}"
                                                              for v in lossy.values()))
    if any("end_to_end" in e for e in result["models"].values()):
        lines += ["", f"end to end: the planner's choice (latency), device {result['device']}, shaped links, median "
                      f"[p10-p90] of {result['requests']} requests, compression off vs auto in the same rounds",
                  f"{'model':12s} {'network':7s} {'off: cut':>8s} {'latency ms':>16s} {'up KiB':>7s} "
                  f"{'auto: cut':>9s} {'latency ms':>16s} {'up KiB':>7s} {'gain':>6s}"]
        for model, entry in result["models"].items():
            for row in entry.get("end_to_end", []):
                off, auto = row["off"], row["auto"]

                def text(s):
                    return f"{s['median'] * 1e3:.0f} [{s['p10'] * 1e3:.0f}-{s['p90'] * 1e3:.0f}]"

                lines.append(f"{model:12s} {row['network']:7s} {off['cut']:8d} {text(off['latency']):>16s} "
                             f"{off['upload_bytes'] / 1024:7.1f} {auto['cut']:9d} {text(auto['latency']):>16s} "
                             f"{auto['upload_bytes'] / 1024:7.1f} "
                             f"{off['latency']['median'] / auto['latency']['median']:5.2f}x")
    return "\n".join(lines)
