"""`neurosurgeon fit PROFILE.json -o COSTMODEL.json [--report fit.png]`: fit the per-layer-type
regressions to a profile, print how each form scored, write the cost model and optionally a
predicted-vs-measured plot."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING
import json
from pathlib import Path

import numpy as np

from ..runtime.costmodel import FORMS

if TYPE_CHECKING:
    from .fit import Fit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profile", help="profile JSON written by the profiler")
    parser.add_argument("-o", "--output", required=True, metavar="COSTMODEL.json", help="cost model to write")
    parser.add_argument("--report", metavar="PNG", help="draw predicted (cross-validated) vs measured times")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cross-validation folds and trees")


def run(args: argparse.Namespace) -> int:
    from .fit import fit, load_profile  # scikit-learn loads only when fitting

    profile = load_profile(args.profile)
    result = fit(profile, seed=args.seed)
    print(format_table(result))
    for note in result.notes:
        print(f"note: {note}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.model, indent=1, allow_nan=False) + "\n")
    print(f"wrote {out}")
    if args.report:
        target = profile.get("target", {}).get("name", "?")
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        draw_report(result, args.report, f"{target}: predicted vs measured layer times (held out)")
        print(f"wrote {args.report}")
    return 0


def _percent(mape: float | None) -> str:
    return "-" if mape is None else f"{100 * mape:.1f}%"


def format_table(result: Fit) -> str:
    """One row per layer type: samples, chosen form and features, CV MAPE of each candidate form."""
    from .fit import FALLBACK

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
    from .fit import FALLBACK

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
