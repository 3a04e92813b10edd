"""Human-readable views of the analysis: the layer table, the candidate cuts, and a Figure-5-style plot."""

from __future__ import annotations

from pathlib import Path

from ..runtime.tensors import TensorInfo
from .frontend import FrozenModel
from .layers import Layer, LayerGraph
from .partition import PartitionPlan

__all__ = ["cut_table", "describe_config", "format_rows", "human_bytes", "layer_table", "plot_layers"]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _dims(shape) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def _tensor(t: TensorInfo) -> str:
    return f"{t.name}[{_dims(t.shape)}]"


def describe_config(layer: Layer) -> str:
    c = layer.config
    if layer.type == "conv" and "kernel" in c:
        return (f"{c['in_channels']}x{_dims(c['in_spatial'])} -> {c['out_channels']}x{_dims(c['out_spatial'])}, "
                f"k{_dims(c['kernel'])}/s{_dims(c['stride'])}" + (f" g{c['groups']}" if c["groups"] > 1 else ""))
    if layer.type == "fc":
        return f"{c['in_neurons']} -> {c['out_neurons']}" + (f" x{c['rows']} rows" if c.get("rows", 1) > 1 else "")
    if layer.type == "pooling":
        extra = f", k{_dims(c['kernel'])}/s{_dims(c['stride'])}" if "kernel" in c else ""
        return f"{c['in_size']} -> {c['out_size']}{extra}"
    if "neurons" in c:
        return f"{c['neurons']} neurons" + (f", size {c['size']}" if "size" in c else "")
    return ", ".join(f"{k}={v}" for k, v in c.items())


def layer_table(frozen: FrozenModel, graph: LayerGraph) -> str:
    rows = [("#", "layer", "type", "ops", "configuration", "MFLOPs", "output", "bytes")]
    for layer in graph.layers:
        rows.append((str(layer.index), layer.name, layer.type, "+".join(layer.ops), describe_config(layer),
                     f"{layer.flops / 1e6:.3f}", ", ".join(_dims(t.shape) for t in layer.outputs),
                     human_bytes(layer.output_bytes)))
    total = sum(layer.flops for layer in graph.layers)
    head = (f"model {frozen.name}: {len(frozen.graph.node)} operators in {len(graph.layers)} layers, "
            f"{total / 1e9:.3f} GFLOPs, weights {human_bytes(sum(_init_bytes(frozen)))}\n"
            f"inputs: {', '.join(_tensor(t) + ' ' + t.dtype for t in frozen.inputs)}; "
            f"outputs: {', '.join(_tensor(t) + ' ' + t.dtype for t in frozen.outputs)}")
    return head + "\n" + format_rows(rows, right={0, 5, 7})


def cut_table(plan: PartitionPlan) -> str:
    rows = [("cut", "mobile runs", "after layer", "crossing tensors", "upload", "download")]
    n = len(plan.segments)
    for cut in plan.cuts:
        where = "nothing (cloud-only)" if cut.index == 0 else ("all (mobile-only)" if cut.index == n else
                                                              f"segments 0..{cut.index - 1}")
        crossing = ", ".join(_tensor(t) for t in cut.crossing) or "-"
        rows.append((str(cut.index), where, cut.after_layer or "(input)", crossing,
                     human_bytes(cut.upload_bytes), human_bytes(cut.download_bytes)))
    multi = sum(1 for cut in plan.cuts if len(cut.crossing) > 1)
    head = (f"{len(plan.cuts)} candidate cuts ({plan.partitioner}), {n} segments"
            + (f"; {multi} cuts cross several tensors" if multi else ""))
    return head + "\n" + format_rows(rows, right={0, 4, 5})


def _init_bytes(frozen: FrozenModel):
    for init in frozen.graph.initializer:
        yield frozen.tensors[init.name].nbytes


def format_rows(rows: list[tuple], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_layers(frozen: FrozenModel, graph: LayerGraph, path: str | Path) -> Path:
    """Per-layer output size and FLOPs as bars, after Neurosurgeon's Figure 5 (without latency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [layer.name for layer in graph.layers]
    x = range(len(names))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8.0, 0.32 * len(names) + 2), 6.5), sharex=True)
    input_kib = sum(t.nbytes for t in frozen.inputs) / 1024
    top.bar(x, [layer.output_bytes / 1024 for layer in graph.layers], color="#4c72b0")
    top.axhline(input_kib, color="#c44e52", linestyle="--", linewidth=1, label=f"model input ({input_kib:.0f} KiB)")
    top.set_ylabel("output size (KiB)")
    top.set_yscale("log")
    top.legend(loc="upper right", fontsize=8)
    top.set_title(f"{frozen.name}: per-layer output size and compute")
    bottom.bar(x, [layer.flops / 1e6 for layer in graph.layers], color="#55a868")
    bottom.set_ylabel("MFLOPs")
    bottom.set_xticks(list(x))
    bottom.set_xticklabels(names, rotation=90, fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
