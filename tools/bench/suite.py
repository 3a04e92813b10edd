"""Our generated code against onnxruntime on this CPU: the table issue 6 asks for.

For each model (AlexNet, ResNet-18, MobileNetV2, VGG-16 at 224x224 by default) it tunes with a stated
budget into one shared tuning folder (x86-host; a second run reuses it and tunes only what is
missing), then runs `neurosurgeon bench speed MODEL --tuning DIR --threads N --json` for each thread
count, one process each (thread counts are fixed when a process loads its BLAS), and prints:
onnxruntime, TVM's default pipeline (--steps), our build without BLAS, our untuned build, our tuned
build, their ratios to onnxruntime, and the tuning time. With --cuts it also times every cut of the
tuned bundle against the tuned monolithic build. A benchmark, not a test.

    neurosurgeon bench suite [--models alexnet resnet18 mobilenetv2 vgg16] [--threads 1 2]
                             [--budget 300] [--steps] [--cuts] [--plot speed.png] [--json]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from .. import zoo
from .speed import ms_text

__all__ = ["DEFAULT_MODELS", "plot", "speed_suite", "suite_table"]

DEFAULT_MODELS = list(zoo.MODELS)  # every zoo model, at its own input size


def neurosurgeon(*args: str, quiet: bool) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "neurosurgeon", *args]
    return subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if quiet else None)


def tune(model: str, folder: Path, budget: float, quiet: bool) -> float:
    onnx_path = folder.parent / f"{model}.onnx"
    if not onnx_path.exists():
        zoo.save(zoo.build(model), onnx_path)
    started = time.perf_counter()
    out = neurosurgeon("tune", str(onnx_path), "--target", "x86-host", "--budget", str(budget), "-o", str(folder),
                       "--whole-model", *(["--quiet"] if quiet else []), quiet=quiet)
    print(out.stdout.strip(), file=sys.stderr)
    return time.perf_counter() - started


def measure(model: str, folder: Path, threads: int, steps: bool, cuts: bool, repeats: int, quiet: bool) -> dict:
    onnx_path = folder.parent / f"{model}.onnx"
    out = neurosurgeon("bench", "speed", str(onnx_path), "--tuning", str(folder), "--threads", str(threads), "--json",
                       "--repeats", str(repeats), *(["--steps"] if steps else []), *(["--cuts"] if cuts else []),
                       *(["--quiet"] if quiet else []), quiet=quiet)
    return json.loads(out.stdout)


def suite_table(results: list[dict]) -> str:
    labels = ["onnxruntime", "TVM default pipeline", "ours, no BLAS", "ours, untuned", "ours, tuned"]
    present = [label for label in labels if any(label in {r["label"] for r in res["rows"]} for res in results)]
    short = {"onnxruntime": "ORT", "TVM default pipeline": "TVM default", "ours, no BLAS": "no BLAS",
             "ours, untuned": "untuned", "ours, tuned": "tuned"}
    header = f"{'model':12} {'thr':>3} " + " ".join(f"{short[label]:>20}" for label in present) + f" {'tuning':>14}"
    lines = [header, "-" * len(header)]
    for res in results:
        rows = {r["label"]: r for r in res["rows"]}
        cells = []
        for label in present:
            r = rows.get(label)
            if r is None:
                cells.append("")
            elif label == "onnxruntime":
                cells.append(f"{ms_text(r['median_ms'])}ms")
            else:
                cells.append(f"{ms_text(r['median_ms'])}ms ({r['ratio_to_onnxruntime']:.2f}x)")
        tuning = res.get("tuning", {})
        tuned = f"{tuning.get('seconds', 0):.0f}s {tuning.get('tuned_workloads', 0)}/{tuning.get('workloads', 0)}"
        lines.append(f"{res['model']:12} {res['threads']:>3} " + " ".join(c.rjust(20) for c in cells) + f" {tuned:>14}")
    if any("cuts" in res for res in results):
        lines.append("\nevery cut end to end vs the tuned monolithic build (min / median / max):")
        for res in results:
            if "cuts" in res:
                c = res["cuts"]
                lines.append(f"  {res['model']:12} {res['threads']} threads: {c['ratio_min']:.2f}x / "
                             f"{c['ratio_median']:.2f}x / {c['ratio_max']:.2f}x over {len(c['cut_ms'])} cuts")
    shapes = {res["model"]: "x".join(map(str, next(iter(res["input_shapes"].values()))[1:])) for res in results}
    sizes = ", ".join(f"{model} {shape}" for model, shape in shapes.items())
    lines.append(f"\nMedians of interleaved rounds, batch 1, inputs {sizes}; ratio = median / onnxruntime's median in the "
                 "same run. tuning = seconds of tuning recorded for the model's workloads, tuned/total workloads.")
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    """Each model's ratios to onnxruntime as a group of bars: a colour per build, light for the second
    thread count; a log axis only where a build is over 3x (`--steps`' TVM default pipeline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    labels = [label for label in ("TVM default pipeline", "ours, no BLAS", "ours, untuned", "ours, tuned")
              if any(label in {r["label"] for r in res["rows"]} for res in results)]
    models = list(dict.fromkeys(res["model"] for res in results))
    threads = sorted({res["threads"] for res in results})
    ratios = {(res["model"], res["threads"], r["label"]): r["ratio_to_onnxruntime"] for res in results for r in res["rows"]}
    series = [(n, label) for n in threads for label in labels]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(models) * len(series) + 2), 4))
    width = 0.8 / len(series)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (n, label) in enumerate(series):
        ys = [ratios.get((model, n, label), float("nan")) for model in models]
        ax.bar([x + i * width for x in range(len(models))], ys, width, color=colours[labels.index(label)],
               alpha=1.0 if n == threads[0] else 0.5, label=f"{label}, {n} thread{'s' if n > 1 else ''}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    if max(ratios.values(), default=1.0) > 3:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(models))])
    ax.set_xticklabels(models)
    ax.set_ylabel("time / onnxruntime's time")
    ax.set_title(f"Generated code vs onnxruntime, batch 1, on {results[0].get('cpu') or 'this CPU'} (below 1: faster)")
    ax.legend(fontsize=8, ncol=len(threads), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def speed_suite(models: list[str] = DEFAULT_MODELS, threads: list[int] = (1, 2), budget_s: float = 300,
                steps: bool = False, cuts: bool = False, repeats: int = 15, workdir: str | Path = ".cache/speed-bench",
                quiet: bool = False) -> list[dict]:
    """Tune each model into one shared tuning folder under `workdir`, then `bench speed` it per thread count."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    folder = workdir / "x86-host.tuning"
    results = []
    for model in models:
        tune(model, folder, budget_s, quiet)
        for n in threads:
            results.append(measure(model, folder, n, steps, cuts, repeats, quiet))
    return results
