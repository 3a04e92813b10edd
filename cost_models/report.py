"""What a fit shows a person: a table of each layer type's candidate forms and their held-out error,
and a predicted-vs-measured plot; `write_fit` writes the cost model and the plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .fit import FALLBACK, Fit
from .model import COSTMODEL_FORMAT, FORMS

__all__ = ["draw_report", "format_table", "write_fit"]


def write_fit(result: Fit, out: str | Path, report: str | Path | None = None) -> list[Path]:
    """Write the cost model JSON of a fit to `out` and, with `report`, its predicted-vs-measured plot."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    COSTMODEL_FORMAT.write(out, result.model)
    written = [out]
    if report:
        target = result.model.get("target", {}).get("name", "?")
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        draw_report(result, report, f"{target}: predicted vs measured layer times (held out)")
        written.append(Path(report))
    return written


def _percent(mape: float | None) -> str:
    return "-" if mape is None else f"{100 * mape:.1f}%"


def format_table(result: Fit) -> str:
    """One row per layer type: samples, chosen form and features, CV MAPE of each candidate form."""
    fits = sorted(result.types.items(), key=lambda item: (item[0] == FALLBACK, item[0]))
    width = max(len("features"), *(len(",".join(f.features)) for _, f in fits))
    header = f"{'type':<14} {'n':>5}  {'form':<6}" + "".join(f" {f + ' MAPE':>12}" for f in FORMS) + "  features"
    rows = [header, "-" * (len(header) + width - len("features"))]
    for name, type_fit in fits:
        # the chosen form's score is starred; a form not tried (too few samples) is blank
        cells = "".join(f" {_percent(type_fit.candidates[f]) + ('*' if f == type_fit.form.name else ' '):>12}"
                        if f in type_fit.candidates else " " * 13 for f in FORMS)
        rows.append(f"{name:<14} {type_fit.n:>5}  {type_fit.form.name:<6}{cells}  {','.join(type_fit.features)}")
    return "\n".join(rows)


def draw_report(result: Fit, path: str | Path, title: str) -> None:
    """Log-log scatter of each type's cross-validated predictions against its measurements."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    low, high = np.inf, 0.0
    for name, type_fit in sorted(result.types.items()):
        if name == FALLBACK or type_fit.heldout is None:
            continue
        measured, predicted = type_fit.measured, type_fit.heldout
        ax.scatter(measured, predicted, s=18, alpha=0.8,
                   label=f"{name} (n={type_fit.n}, {type_fit.form.name}, MAPE {_percent(type_fit.cv_mape)})")
        low = min(low, measured.min(), predicted.min())
        high = max(high, measured.max(), predicted.max())
    if high > 0:
        ax.plot([low, high], [low, high], color="black", linewidth=0.8, label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured seconds (median)")
    ax.set_ylabel("predicted seconds (cross-validated)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
