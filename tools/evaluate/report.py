"""The evaluation's report, made from the raw case files alone: report.md (tables, the paper's figures
side by side with ours), summary.json (every number the tables show) and PNG plots.

Per case and objective: the planner's choice (its most frequent schedule over the measured requests), the
median and spread of what those requests measured, cloud-only, device-only and the measured best cut
(the oracle); ratios are of medians.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...runtime.planner import NETWORKS
from .device import parse_speed
from .measure import Case, Stats

__all__ = ["PAPER", "load_cases", "summarise", "write_report"]

# Neurosurgeon (ASPLOS 2017), over 8 benchmarks x Wi-Fi/LTE/3G x mobile CPU/GPU, against cloud-only.
PAPER = {"latency_speedup_mean": 3.1, "latency_speedup_max": 40.7, "energy_saving_mean": 0.595,
         "energy_saving_max": 0.947, "of_optimal": 0.985}
WITHIN = 1.10  # the goals: within 1.10x of the oracle in 95% of cases, never worse than 1.25x
NEVER_WORSE = 1.25
NEARLY_NO_SERVER_WORK = 0.05  # datacenter gain: below this share of segments on the server, the rate says little


def load_cases(out: Path) -> tuple[list[Case], dict[str, dict]]:
    """Every case file under out/raw/MODEL/DEVICE/, and each model's out/raw/MODEL/model.json."""
    cases, models = [], {}
    for path in sorted((out / "raw").glob("*/**/*.json")):
        data = json.loads(path.read_text())
        if path.name == "model.json":
            models[data["model"]] = data
        elif not path.name.startswith("trace-"):
            cases.append(Case.from_json(data))
    return cases, models


def _stats_json(s: Stats) -> dict:
    return {"median": s.median, "p10": s.p10, "p90": s.p90, "n": s.n}


def summarise(cases: list[Case]) -> dict:
    """Per case and objective, the figures of the report (all from the raw requests)."""
    rows = []
    for case in cases:
        n = case.n_segments
        for objective in case.auto:
            metric = "latency_s" if objective == "latency" else "energy_j"
            auto = case.auto_stats(objective)
            cloud, device = case.stats(0, objective), case.stats(n, objective)
            oracle_cut, oracle = case.oracle(objective)
            chosen = case.chosen(objective)
            schedule, times, cut = case.choice(objective)
            measured = case.judged(objective)
            rows.append({
                "model": case.model, "network": case.network, "clients": case.clients, "objective": objective,
                "metric": metric, "chosen": schedule, "chosen_cut": cut, "chosen_share": times / auto.n,
                "choices": dict(chosen), "auto": _stats_json(auto), "cloud_only": _stats_json(cloud),
                "device_only": _stats_json(device), "oracle_cut": oracle_cut, "oracle": _stats_json(oracle),
                "chosen_measured": _stats_json(measured), "vs_oracle": measured.median / oracle.median, "vs_cloud": cloud.median / auto.median,
                "vs_device": device.median / auto.median, "is_oracle": cut == oracle_cut,
                "segments": n, "cuts_measured": len(case.full_cuts()), "cuts_skipped": len(case.skipped),
                "max_error": max(r["error"] for v in [*case.cuts.values(), *case.auto.values()] for r in v),
                "fell_back": sum(r["fell_back"] for v in [*case.cuts.values(), *case.auto.values()] for r in v),
            })
    return {"rows": rows, "totals": _totals(rows)}


def _totals(rows: list[dict]) -> dict:
    """The paper's averages and maxima (idle server), and the goals' shares (every load)."""
    totals = {}
    idle_latency = [r for r in rows if r["objective"] == "latency" and r["clients"] == 0]
    idle_energy = [r for r in rows if r["objective"] == "energy" and r["clients"] == 0]
    if idle_latency:
        speedups = [r["vs_cloud"] for r in idle_latency]
        totals["latency_speedup_mean"] = float(np.exp(np.mean(np.log(speedups))))
        totals["latency_speedup_max"] = max(speedups)
    if idle_energy:
        savings = [1 - r["auto"]["median"] / r["cloud_only"]["median"] for r in idle_energy]
        totals["energy_saving_mean"] = float(np.mean(savings))
        totals["energy_saving_max"] = max(savings)
    if rows:
        ratios = [r["vs_oracle"] for r in rows]
        totals["of_optimal"] = float(np.mean([1 / x for x in ratios]))
        totals["within_1_10"] = float(np.mean([x <= WITHIN for x in ratios]))
        totals["worst_vs_oracle"] = max(ratios)
        totals["choice_is_oracle"] = float(np.mean([r["is_oracle"] for r in rows]))
        totals["cases"] = len(rows)
        loaded = [r["vs_oracle"] for r in rows if r["clients"] > 0 and r["objective"] == "latency"]
        if loaded:
            totals["loaded_within_1_10"] = float(np.mean([x <= WITHIN for x in loaded]))
            totals["loaded_worst"] = max(loaded)
        totals["max_error"] = max(r["max_error"] for r in rows)
    return totals


def _fmt(stats: dict, metric: str) -> str:
    if metric == "latency_s":
        return f"{stats['median'] * 1e3:.0f} [{stats['p10'] * 1e3:.0f}-{stats['p90'] * 1e3:.0f}] ms"
    return f"{stats['median'] * 1e3:.0f} [{stats['p10'] * 1e3:.0f}-{stats['p90'] * 1e3:.0f}] mJ"


def _cut_name(cut, n) -> str:
    return "cloud-only" if cut == 0 else "device-only" if cut == n else f"cut {cut}" if cut is not None else "schedule"


def write_report(out: Path, options=None, command: str | None = None) -> Path:
    from .options import EvaluateOptions

    options = options or EvaluateOptions()
    everything, models = load_cases(out)
    cases = [c for c in everything if c.device == options.device and not c.variant]
    summary = summarise(cases)
    hedging = _hedging_rows([c for c in everything if c.device == options.device and c.variant == "hedged"])
    summary["hedging"] = hedging
    sweep = _sweep_rows(everything, models, options)
    summary["sweep"] = sweep
    loads = _load_rows(cases, options)
    summary["load_sweep"] = loads
    trace = _trace(out, options)
    summary["trace"] = trace["summary"] if trace else None
    plots = _plots(out, cases, models, summary)
    if sweep:
        plots.append(_sweep_plot(out, sweep))
    if loads:
        plots.append(_load_plot(out, loads))
    if trace:
        plots.append(_trace_plot(out, trace))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = ["# neurosurgeon evaluate", ""]
    made_by = out / "raw" / "command.json"  # the measuring run's command (a --report-only run keeps it)
    if command:
        made_by.parent.mkdir(parents=True, exist_ok=True)
        made_by.write_text(json.dumps({"command": command}))
    elif made_by.is_file():
        command = json.loads(made_by.read_text())["command"]
    if command:
        lines += ["Made by:", "", f"    {command}", ""]
    hardware = next(iter(models.values()), {}).get("hardware", {})
    lines += [f"Machine: {hardware.get('cpu', '?')}, {hardware.get('usable_cores', '?')} cores, {hardware.get('system', '')}.",
              f"Device: `{options.device}` ({parse_speed(options.device).describe}); every figure is the median of "
              f"{options.requests} requests "
              "[10th-90th percentile]; ratios are of medians.", ""]
    totals = summary["totals"]
    if totals:
        lines += ["## Against the papers", "",
                  "| figure | Neurosurgeon (paper) | here |", "|---|---|---|"]
        if "latency_speedup_mean" in totals:
            lines.append(f"| latency vs cloud-only, mean (geometric) / max | {PAPER['latency_speedup_mean']}x / "
                         f"{PAPER['latency_speedup_max']}x | {totals['latency_speedup_mean']:.2f}x / "
                         f"{totals['latency_speedup_max']:.2f}x |")
        if "energy_saving_mean" in totals:
            lines.append(f"| mobile energy saved vs cloud-only, mean / max | {PAPER['energy_saving_mean']:.1%} / "
                         f"{PAPER['energy_saving_max']:.1%} | {totals['energy_saving_mean']:.1%} / "
                         f"{totals['energy_saving_max']:.1%} |")
        lines.append(f"| chosen vs optimal (mean oracle/chosen) | {PAPER['of_optimal']:.1%} | {totals['of_optimal']:.1%} |")
        lines += ["", f"Goals over all {totals['cases']} (model, network, load, objective) cases: within {WITHIN}x of "
                  f"the measured oracle in {totals['within_1_10']:.1%} (goal 95%), worst {totals['worst_vs_oracle']:.2f}x "
                  f"(goal <= {NEVER_WORSE}x); the choice is the oracle's own cut in {totals['choice_is_oracle']:.0%}."]
        if "loaded_within_1_10" in totals:
            lines.append(f"Under load (2 and more other clients, latency): within {WITHIN}x of the best of cloud-only, "
                         f"device-only and every cut in {totals['loaded_within_1_10']:.1%}, worst "
                         f"{totals['loaded_worst']:.2f}x.")
        lines.append(f"Largest difference from onnxruntime in any output of any request: {totals['max_error']:.1e}.")
        lines.append("")
    for objective in ("latency", "energy"):
        rows = [r for r in summary["rows"] if r["objective"] == objective]
        if not rows:
            continue
        unit = "latency" if objective == "latency" else "mobile energy"
        lines += [f"## Objective: {objective}", "",
                  f"| model | network | other clients | chosen (share) | {unit}: chosen | cloud-only | device-only | "
                  "oracle | vs oracle | vs cloud |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            n = r["segments"]
            lines.append(
                f"| {r['model']} | {r['network']} | {r['clients']} | {_cut_name(r['chosen_cut'], n)} "
                f"({r['chosen_share']:.0%}) | {_fmt(r['auto'], r['metric'])} | {_fmt(r['cloud_only'], r['metric'])} | "
                f"{_fmt(r['device_only'], r['metric'])} | {_cut_name(r['oracle_cut'], n)}: {_fmt(r['oracle'], r['metric'])} "
                f"| {r['vs_oracle']:.2f}x | {r['vs_cloud']:.2f}x |")
        lines.append("")
    spread = out / "raw" / "device-spread.json"
    if spread.is_file():
        data = json.loads(spread.read_text())
        lines += ["## How the device is slowed", "",
                  f"{data['model']}, device-only, 30 requests each, same machine, same run:", "",
                  "| device | how | median | p10-p90 | spread (p90-p10)/median |", "|---|---|---|---|---|"]
        for row in data["rows"]:
            if "not_applied" in row:
                lines.append(f"| `{row['device']}` | {row['describe']} | not applied here: {row['not_applied']} | | |")
            else:
                lines.append(f"| `{row['device']}` | {row['describe']} | {row['median'] * 1e3:.1f} ms | "
                             f"{row['p10'] * 1e3:.1f}-{row['p90'] * 1e3:.1f} ms | {row['spread']:.0%} |")
        lines.append("")
    if sweep:
        lines += ["## Where partitioning pays: the device's speed", "",
                  f"{sweep[0]['model']}, idle server, latency; the device slowed by time dilation from this machine's "
                  "own speed (one thread) down; `device / server`: the whole model on the device (as it measured itself at "
                  "start) over the server's time for it (inside the server, idle, as its cloud-only answers said). `gain`: the better of cloud-only and device-only over the chosen cut (above 1.00x: "
                  "partitioning pays).", "",
                  "| device | device / server | network | chosen | latency | cloud-only | device-only | gain |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in sweep:
            lines.append(f"| `{r['device']}` | {r['ratio']:.1f}x | {r['network']} | {r['chosen']} | "
                         f"{r['latency_ms']:.0f} ms | {r['cloud_ms']:.0f} ms | {r['device_ms']:.0f} ms | {r['gain']:.2f}x |")
        lines.append("")
    if loads:
        lines += ["## Under rising server load (after Neurosurgeon Fig. 15)", "",
                  f"{loads[0]['model']} on Wi-Fi, device `{options.device}`, latency; other clients each send the whole "
                  "model again and again from a process of their own.", "",
                  "| other clients | chosen (share) | latency | cloud-only | device-only | best cut | vs best |",
                  "|---|---|---|---|---|---|---|"]
        for r in loads:
            lines.append(f"| {r['clients']} | {r['chosen']} ({r['share']:.0%}) | {r['latency_ms']:.0f} ms | "
                         f"{r['cloud_ms']:.0f} ms | {r['device_ms']:.0f} ms | {r['best']}: {r['best_ms']:.0f} ms | "
                         f"{r['vs_best']:.2f}x |")
        lines.append("")
    if hedging:
        lines += ["## Hedging: the device computes the server's part too, the first to finish wins", "",
                  f"{hedging[0]['model']} on Wi-Fi, device `{options.device}`: the planner's choice (latency) without and "
                  "with hedging, in the same rounds as every cut (medians; energy: the device's, hedged compute "
                  "included).", "",
                  "| other clients | best cut | plain: latency | hedged: latency | plain: energy | hedged: energy | "
                  "hedge won | energy cost |", "|---|---|---|---|---|---|---|---|"]
        for r in hedging:
            lines.append(f"| {r['clients']} | {r['best']}: {r['best_ms']:.0f} ms | {r['plain_ms']:.0f} ms | "
                         f"{r['hedged_ms']:.0f} ms | {r['plain_mj']:.0f} mJ | {r['hedged_mj']:.0f} mJ | "
                         f"{r['won']}/{r['requests']} | {r['hedged_mj'] / r['plain_mj'] - 1:+.0%} |")
        lines.append("")
    if trace:
        t = trace["summary"]
        lines += [f"## A falling {trace['network']} uplink (after Neurosurgeon Fig. 14)", "",
                  f"{trace['model']}, device `{options.device}`: the uplink follows a synthetic trace, a geometric fall "
                  f"from {t['first_mbps']:.1f} to {t['last_mbps']:.1f} Mbps over {t['steps']} requests with +-15% "
                  "seeded noise per step (the paper's measured LTE trace does not ship with it); per step one request "
                  "of the planner's choice and one cloud-only request over the same link.", "",
                  f"Median latency over the trace: chosen {t['auto_ms']:.0f} ms, cloud-only {t['cloud_ms']:.0f} ms "
                  f"({t['cloud_ms'] / t['auto_ms']:.2f}x); over the last quarter (slowest link): chosen "
                  f"{t['auto_last_ms']:.0f} ms, cloud-only {t['cloud_last_ms']:.0f} ms. Cuts chosen, in order: "
                  f"{t['cuts']}.", ""]
    datacenter = out / "raw" / "datacenter.json"
    if datacenter.is_file():
        data = json.loads(datacenter.read_text())
        summary["datacenter"] = data
        config = data["config"]
        lines += ["## Datacenter throughput (after Neurosurgeon Fig. 16)", "",
                  f"{config['devices']} simulated devices ({data['device_model']}; tools/bench/load.py: the real mobile "
                  f"runtime whose segments sleep the device model's time), a mix of {', '.join(config['mix'])}, against "
                  "one server (2 workers) on this machine, each device on a shaped link choosing its cut for latency "
                  "from the load the server reports, against the same devices all cloud-only. Sustained: requests x "
                  "cores / the server's CPU seconds over the same window (what its cores would serve saturated).", "",
                  "| network | cloud-only: sustained req/s | chosen cuts: sustained req/s | gain | paper | "
                  "server's share of the work |", "|---|---|---|---|---|---|"]
        paper = {"wifi": "1.04x", "lte": "1.43x", "3g": "2.36x"}
        for row in data["rows"]:
            ours = row["neurosurgeon"]["sustained_s"]
            sustained = "no server work" if ours is None else f"{ours:.1f}"
            share = row["neurosurgeon"]["server_share"]
            gain = "all on the devices" if row["gain"] is None else f"{row['gain']:.2f}x"
            if row["gain"] is not None and share < NEARLY_NO_SERVER_WORK:  # a rate over a sliver of CPU time
                gain += " (almost all on the devices)"
            lines.append(f"| {row['network']} | {row['cloud']['sustained_s']:.1f} | {sustained} | {gain} | "
                         f"{paper.get(row['network'], '')} | {share:.2f} |")
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    lines += ["## How it was measured", "",
              "The server is `neurosurgeon serve` in its own process on loopback, its threads told not to spin after "
              "a job (they would take the cores the device shares with it here: tools/evaluate SERVER_ENV); other "
              "clients (the load) run in a process of their own, each sending the whole model (cloud-only) again "
              "and again. The device is a process of its own, slowed as stated above, with its link shaped to the "
              "network's nominal up/down rates and round trip (runtime/planner.py NETWORKS), and the compute power "
              f"of a phone-class board ({options.device_power_w:g} W, the aarch64-neon preset's). Every request "
              "is the product's default but for its candidate cuts, which are every cut a compiler does not fuse "
              "(fused-layers; the default keeps only their upload envelope): uploads coded "
              "losslessly where that pays at the link's rate (building a request, coding included, is device "
              "work, slowed and charged like its segments). Per case, "
              f"cloud-only and device-only run to the full count; every other cut runs {options.screen} times, "
              "unless its bound (the shaped link's time plus 80% of the device's calibrated time for its segments) "
              f"already loses to the best medians in both latency and energy; the cuts whose fastest of "
              f"{options.screen} is within 1.25x of the best median go on to the full count (raw/ lists every cut "
              "skipped and why). The full count runs in rounds, each in a new seeded order, interleaved with the "
              "planner's own requests (after 3 it learns from). Mobile energy = device power x its measured "
              "compute time + the radio's: Huang et al.'s power at the link's rate x the transfer time, and its "
              "active power (beta) x the time it waits for the server.",
              "", f"Device-side compute power: {options.device_power_w:g} W; every request's outputs are compared "
              "with onnxruntime's on the whole model."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _plots(out: Path, cases: list[Case], models: dict, summary: dict) -> list[Path]:
    plt = _pyplot()

    paths = []
    for model, info in models.items():
        model_cases = [c for c in cases if c.model == model and c.clients == 0]
        if not model_cases:
            continue
        fig, axes = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
        segments = info["segments"]
        x = np.arange(len(segments))
        axes[0].bar(x - 0.2, [s["device_s"] * 1e3 for s in segments], 0.4, label="device")
        axes[0].bar(x + 0.2, [s["server_s"] * 1e3 for s in segments], 0.4, label="server")
        axes[0].set_ylabel("ms per segment")
        axes[0].set_title(f"{model}: per-segment time and what crosses each cut (after Neurosurgeon Fig. 5/6)")
        axes[0].legend()
        cuts = info["cuts"]
        axes[1].plot(np.arange(len(cuts)) - 0.5, [c["upload_bytes"] / 1024 for c in cuts], "k.-", label="upload at cut")
        axes[1].set_ylabel("KiB uploaded")
        axes[1].set_xlabel("segment (cut k sits before segment k)")
        for case in model_cases:
            row = next((r for r in summary["rows"] if r["model"] == model and r["network"] == case.network
                        and r["clients"] == 0 and r["objective"] == "latency"), None)
            if row and row["chosen_cut"] is not None:
                k = row["chosen_cut"]
                axes[1].plot(k - 0.5, cuts[k]["upload_bytes"] / 1024, "*", markersize=14, label=f"chosen, {case.network}")
        axes[1].legend()
        paths.append(_save(fig, out / f"{model}-layers.png"))

        fig, ax = plt.subplots(figsize=(10, 4.5))
        for case in sorted(model_cases, key=lambda c: list(NETWORKS).index(c.network)):
            ks = case.full_cuts()
            med = [case.stats(k).median * 1e3 for k in ks]
            low = [m - case.stats(k).p10 * 1e3 for k, m in zip(ks, med)]
            high = [case.stats(k).p90 * 1e3 - m for k, m in zip(ks, med)]
            line = ax.errorbar(ks, med, yerr=[low, high], fmt="o-", capsize=3, label=f"{case.network}: every cut")
            auto = case.auto_stats("latency")
            cut = case.choice("latency")[2]
            if cut is not None:
                ax.plot(cut, auto.median * 1e3, "*", markersize=16, color=line[0].get_color(),
                        markeredgecolor="k", label=f"{case.network}: chosen")
        ax.set_yscale("log")
        ax.set_xlabel("cut (0 = cloud-only, last = device-only)")
        ax.set_ylabel("latency, ms (median, p10-p90)")
        ax.set_title(f"{model}: measured latency of every cut that could win, idle server")
        ax.legend(fontsize=8)
        paths.append(_save(fig, out / f"{model}-cuts.png"))
    rows = [r for r in summary["rows"] if r["objective"] == "latency" and r["clients"] == 0]
    if rows:
        names = sorted({r["model"] for r in rows}, key=list(models).index)
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        width = 0.8 / len(NETWORKS)
        for i, network in enumerate(NETWORKS):
            values = {r["model"]: r for r in rows if r["network"] == network}
            x = np.arange(len(names)) + i * width
            axes[0].bar(x, [values[m]["vs_cloud"] if m in values else 0 for m in names], width, label=network)
            energy = {r["model"]: r for r in summary["rows"] if r["objective"] == "energy" and r["clients"] == 0
                      and r["network"] == network}
            axes[1].bar(x, [100 * (1 - energy[m]["auto"]["median"] / energy[m]["cloud_only"]["median"])
                            if m in energy else 0 for m in names], width, label=network)
        for ax, title in zip(axes, ("latency: cloud-only / chosen (x)", "mobile energy saved vs cloud-only (%)")):
            ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
            ax.set_xticklabels(names, rotation=45, ha="right")
            ax.set_title(title)
            ax.legend()
        axes[0].set_yscale("log")
        paths.append(_save(fig, out / "summary.png"))
    return paths


def _sweep_rows(cases: list[Case], models: dict, options) -> list[dict]:
    """The device-speed sweep: per speed and network, what the choice gains over the better extreme."""
    model = options.focus_model
    if not model or model not in models:
        return []
    rows = []
    for case in cases:
        if (case.model != model or case.clients != 0 or not case.device.startswith("dilate:") or case.variant
                or case.network not in options.sweep_networks or "latency" not in case.auto):
            continue
        n = case.n_segments
        auto, cloud, device = case.auto_stats("latency"), case.stats(0), case.stats(n)
        cut, judged = case.choice("latency")[2], case.judged("latency")
        rows.append({"model": model, "device": case.device, "factor": float(case.device.split(":")[1]),
                     # the whole model on the device (as it measured itself) over the server's time for it
                     # (inside the server, as its cloud-only answers reported it)
                     "ratio": case.device_total_s / float(np.median([r["server_s"] for r in case.cuts[0]])),
                     "network": case.network,
                     "chosen": _cut_name(cut, n), "latency_ms": auto.median * 1e3, "cloud_ms": cloud.median * 1e3,
                     "device_ms": device.median * 1e3, "gain": min(cloud.median, device.median) / judged.median,
                     "vs_cloud": cloud.median / judged.median})
    order = list(NETWORKS)
    return sorted(rows, key=lambda r: (order.index(r["network"]), r["factor"]))


def _sweep_plot(out: Path, rows: list[dict]) -> Path:
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for network in NETWORKS:
        mine = [r for r in rows if r["network"] == network]
        if mine:
            line = ax.plot([r["ratio"] for r in mine], [r["gain"] for r in mine], "o-", label=f"{network}: gain")[0]
            ax.plot([r["ratio"] for r in mine], [r["vs_cloud"] for r in mine], "x--", color=line.get_color(),
                    label=f"{network}: vs cloud-only")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("device time / server time for the whole model")
    ax.set_ylabel("chosen cut's speed-up (median latency)")
    ax.set_title(f"{rows[0]['model']}: where partitioning pays (gain over the better of cloud-only and device-only)")
    ax.legend(fontsize=8)
    return _save(fig, out / "device-sweep.png")


def _load_rows(cases: list[Case], options) -> list[dict]:
    """The server-load sweep: the focus model on Wi-Fi at each load, latency."""
    rows = []
    for case in sorted(cases, key=lambda c: c.clients):
        if case.model != options.focus_model or case.network != "wifi" or "latency" not in case.auto:
            continue
        n = case.n_segments
        _, times, cut = case.choice("latency")
        best, best_stats = case.oracle("latency")
        judged = case.judged("latency")
        rows.append({"model": case.model, "clients": case.clients, "chosen": _cut_name(cut, n), "cut": cut,
                     "share": times / len(case.auto["latency"]), "latency_ms": case.auto_stats("latency").median * 1e3,
                     "cloud_ms": case.stats(0).median * 1e3, "device_ms": case.stats(n).median * 1e3,
                     "best": _cut_name(best, n), "best_ms": best_stats.median * 1e3,
                     "vs_best": judged.median / best_stats.median})
    return rows


def _load_plot(out: Path, rows: list[dict]) -> Path:
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = [r["clients"] for r in rows]
    for key, label, style in (("latency_ms", "chosen", "o-"), ("cloud_ms", "cloud-only", "x--"),
                              ("device_ms", "device-only", "s:"), ("best_ms", "best cut", "+-")):
        ax.plot(x, [r[key] for r in rows], style, label=label)
    for r in rows:
        ax.annotate(f"cut {r['cut']}", (r["clients"], r["latency_ms"]), textcoords="offset points", xytext=(4, 6),
                    fontsize=8)
    ax.set_xlabel("other clients loading the server")
    ax.set_ylabel("latency, ms (median)")
    ax.set_title(f"{rows[0]['model']} on Wi-Fi under rising server load (after Neurosurgeon Fig. 15)")
    ax.legend(fontsize=8)
    return _save(fig, out / "load-sweep.png")


def _trace(out: Path, options) -> dict | None:
    if not options.focus_model:
        return None
    path = out / "raw" / options.focus_model / options.device.replace(":", "-") / f"trace-{options.trace_network}.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    steps = data["steps"]
    auto = [s["auto"]["latency_s"] * 1e3 for s in steps]
    cloud = [s["cloud_only"]["latency_s"] * 1e3 for s in steps]
    last = max(1, len(steps) // 4)
    cuts = []
    for s in steps:
        if not cuts or cuts[-1][0] != s["auto"]["cut"]:
            cuts.append([s["auto"]["cut"], 0])
        cuts[-1][1] += 1
    data["summary"] = {"steps": len(steps), "first_mbps": steps[0]["up_mbps"], "last_mbps": steps[-1]["up_mbps"],
                       "auto_ms": float(np.median(auto)), "cloud_ms": float(np.median(cloud)),
                       "auto_last_ms": float(np.median(auto[-last:])), "cloud_last_ms": float(np.median(cloud[-last:])),
                       "cuts": ", ".join(f"{k} x{n}" for k, n in cuts)}
    return data


def _trace_plot(out: Path, trace: dict) -> Path:
    plt = _pyplot()

    steps = trace["steps"]
    x = np.arange(len(steps))
    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    axes[0].plot(x, [s["up_mbps"] for s in steps], "k-", label="uplink (trace)")
    axes[0].plot(x, [s["estimated_up_mbps"] for s in steps], "c--", label="device's estimate")
    axes[0].set_ylabel("Mbps")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    axes[1].plot(x, [s["auto"]["cut"] for s in steps], "o-", markersize=3)
    axes[1].set_ylabel("chosen cut")
    axes[2].plot(x, [s["auto"]["latency_s"] * 1e3 for s in steps], "o-", markersize=3, label="chosen")
    axes[2].plot(x, [s["cloud_only"]["latency_s"] * 1e3 for s in steps], "x--", markersize=3, label="cloud-only")
    axes[2].set_ylabel("latency, ms")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("request")
    axes[2].legend(fontsize=8)
    axes[0].set_title(f"{trace['model']}: a falling {trace['network']} uplink replayed (after Neurosurgeon Fig. 14)")
    return _save(fig, out / "trace.png")


def _hedging_rows(cases: list[Case]) -> list[dict]:
    rows = []
    for case in sorted(cases, key=lambda c: c.clients):
        if "hedged" not in case.auto or "latency" not in case.auto:
            continue
        n = case.n_segments
        best, best_stats = case.oracle("latency")
        plain, hedged = case.auto["latency"], case.auto["hedged"]
        rows.append({"model": case.model, "clients": case.clients, "best": _cut_name(best, n),
                     "best_ms": best_stats.median * 1e3,
                     "plain_ms": float(np.median([r["latency_s"] for r in plain])) * 1e3,
                     "hedged_ms": float(np.median([r["latency_s"] for r in hedged])) * 1e3,
                     "plain_mj": float(np.median([r["energy_j"] for r in plain])) * 1e3,
                     "hedged_mj": float(np.median([r["energy_j"] for r in hedged])) * 1e3,
                     "won": sum(r.get("hedge_won", 0) > 0 for r in hedged), "requests": len(hedged)})
    return rows


def _pyplot():
    """matplotlib's pyplot on a backend that needs no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return path
