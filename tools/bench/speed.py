"""`neurosurgeon bench speed`: our generated code against onnxruntime on the same CPU, in one run.

For one model and a preset that runs on this machine it builds the whole model (monolithic) and
times, side by side and as medians of interleaved rounds (the machine is shared and noisy, so every
candidate sees the same noise):

  - onnxruntime (CPU execution provider, all graph optimisations), N intra-op threads;
  - our build without tuning (the default: convolutions and fully connected layers as tiled
    kernels, our schedules for the rest);
  - with --steps, the other kernel choices: TVM's default pipeline ("naive"), im2col + the BLAS
    ("blas"), the tiled kernels with direct 3x3 convolutions instead of Winograd's ("tvm-direct");
  - with --tuning DIR, our build with that tuning database, and the tuning time it holds for the model;
  - with --cuts, the bundle (every segment built, same database) run end to end at every cut,
    against the monolithic build.

Each engine runs in a process of its own, the engines taking turns in blocks of back-to-back runs (a
few untimed first), the others stopped meanwhile: interleaved run by run in one process, onnxruntime's
spinning threads took the cores from ours and ours from it (MobileNetV2, 2 threads, AMD EPYC: ours
24.3 ms, onnxruntime 8.3 ms interleaved; 11.9 and 4.6 ms each alone).

N (--threads) goes to onnxruntime's intra-op threads, and to our builds as the runtime shares them
(runtime/threads.py: a build whose GEMMs go to the BLAS gives it the N threads and TVM's pool one,
the default build TVM's pool all N); with --steps, also the BLAS build with both pools at N threads,
the way the runtime shared them before.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...compiler.kernels import DEFAULT_KERNELS
from ...runtime.bundle import aligned_copy, fetch, load_artifact, results, to_device
from ...runtime.errors import NeurosurgeonError
from ...runtime.profile import hardware_info
from ...runtime.tensors import random_inputs
from ...runtime.threads import ThreadShare, apply_share_here, cores_here, thread_share, use_threads_here
from ...targets import get_preset
from .. import zoo

__all__ = ["SpeedError", "SpeedOptions", "bench_speed", "ms_text", "speed_table"]

STEP_LABELS = {"naive": "TVM default pipeline", "blas": "ours, im2col + BLAS",
               "tvm-direct": "ours, tiled, direct 3x3", "tvm": "ours, tiled products"}


class SpeedError(NeurosurgeonError):
    pass


@dataclass
class SpeedOptions:
    target: str = "x86-host"
    tuning: str | Path | None = None
    threads: int | None = None  # None: every core this process may use
    steps: bool = False  # also time the other kernel choices (STEP_LABELS)
    cuts: bool = False  # also build the bundle and time every cut end to end
    repeats: int = 15  # timed rounds (medians kept)
    max_seconds: float = 30.0  # per candidate: slow builds (naive) stop sampling after this, keeping >= 3 samples
    input_shapes: dict = field(default_factory=dict)
    input_size: int | None = None  # zoo models: input height = width
    kernels: str = DEFAULT_KERNELS
    partitioner: str | None = None  # --cuts: the bundle's candidate cuts (None: the default, upload-envelope)
    progress: bool = True


def _thread_count(threads: int | None) -> int:
    """The thread count to time with (every usable core where None)."""
    n = threads or cores_here()
    if n < 1:
        raise SpeedError(f"--threads must be at least 1, got {n}")
    return n


@dataclass(frozen=True)
class _Engine:
    """What a timing process runs: onnxruntime on an ONNX file, or one of our builds (a VM artifact)
    with its threads shared as `share` says."""
    kind: str  # "onnxruntime" or "tvm"
    path: str
    threads: int
    share: ThreadShare | None = None  # tvm: TVM's pool and the BLAS


def _engine_main(conn, engine: _Engine, feeds: dict, input_names: list[str]) -> None:
    """A timing process: load the engine, answer ("outputs",) with one run's outputs and ("time", k, s)
    with k back-to-back runs' seconds after s untimed ones; ("stop",) ends it."""
    try:
        # Both engines get 64-byte aligned inputs: a process's arrays land 16- or 64-byte aligned as its
        # allocator has it, and an unaligned one costs ours one copy (3.4 us, to_device): identical
        # builds of SENNA's chunker timed 9.3 and 14.7 us in one run, as their processes' inputs fell.
        feeds = {name: aligned_copy(value) for name, value in feeds.items()}
        if engine.kind == "onnxruntime":
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = engine.threads, 1
            session = ort.InferenceSession(engine.path, so, providers=["CPUExecutionProvider"])
            def run():
                return session.run(None, feeds)
        else:
            import tvm

            apply_share_here(engine.share)
            device = tvm.cpu(0)
            main = load_artifact(Path(engine.path), device)
            def run():  # as onnxruntime's run and a request: numpy inputs in, numpy outputs out
                return [fetch(o) for o in results(main(*(to_device(feeds[name], device) for name in input_names)))]
        conn.send(("ok", None))
    except BaseException as err:  # noqa: BLE001 (the parent raises it, naming the engine)
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    while True:
        message = conn.recv()
        if message[0] == "stop":
            return
        if message[0] == "outputs":
            conn.send(("ok", run()))
            continue
        runs, settle = message[1:]
        for _ in range(settle):
            run()
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        conn.send(("ok", times))


class _Candidate:
    """An engine in its own process (see the module docstring)."""

    def __init__(self, label: str, engine: _Engine, feeds: dict, input_names: list[str], note: str = ""):
        self.label, self.engine, self.note = label, engine, note
        self.times: list[float] = []
        self.spent = 0.0
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_engine_main, args=(child, engine, feeds, input_names), daemon=True)
        self._process.start()
        self._ask()

    def _ask(self, *message):
        """Send `message` to the process and wait for its answer; between answers the process is stopped
        (SIGSTOP): onnxruntime's threads spin waiting for work long after a run, and a stopped process
        cannot take the cores from the engine being timed."""
        if message:
            os.kill(self._process.pid, signal.SIGCONT)
            self._conn.send(message)
        status, value = self._conn.recv()
        os.kill(self._process.pid, signal.SIGSTOP)
        if status == "error":
            raise SpeedError(f"{self.label}: {value}")
        return value

    def outputs(self) -> list[np.ndarray]:
        return self._ask("outputs")

    def time(self, runs: int, settle: int) -> None:
        times = self._ask("time", runs, settle)
        self.times += times
        self.spent += sum(times)

    def close(self) -> None:
        if self._process.is_alive():
            os.kill(self._process.pid, signal.SIGCONT)
            try:
                self._conn.send(("stop",))
            except OSError:  # it has ended already (it failed to load)
                pass
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()


class _Timed:
    """A callable timed in this process (`_interleaved_medians`)."""

    def __init__(self, label: str, run):
        self.label, self.run = label, run
        self.times: list[float] = []


def _block_runs(block_s: float, seconds: float, least: int, most: int) -> int:
    """How many runs of `seconds` fill a block of `block_s` seconds, kept within [least, most]."""
    return max(least, min(most, int(block_s / max(seconds, 1e-9))))


def _interleaved_medians(candidates: list[_Timed], repeats: int, block_s: float = 0.05) -> None:
    """Run each twice untimed (a fresh module's first runs fault its weights in), then, round after
    round, each for a block of about `block_s` seconds (1 to 50 runs), a quarter as many untimed
    first. One untimed and one timed run a round for three rounds timed MobileNetV2's monolithic build
    at 5.25 ms on two threads among cuts of 3.3 (its engine's 3.24), and AlexNet's worst cut at 1.37x:
    three samples fell in one level or the other of the VM's two-thread time (docs/bench-speed.txt)."""
    per_run = {}
    for c in candidates:
        c.run()
        started = time.perf_counter()
        c.run()
        per_run[c.label] = time.perf_counter() - started
    for _ in range(repeats):
        for c in candidates:
            runs = _block_runs(block_s, per_run[c.label], 1, 50)
            for _ in range(max(1, runs // 4)):
                c.run()
            for _ in range(runs):
                started = time.perf_counter()
                c.run()
                c.times.append(time.perf_counter() - started)


def _alternating_blocks(candidates: list[_Candidate], repeats: int, max_seconds: float, block: int = 5,
                        settle: int = 3, block_s: float = 0.005) -> None:
    """Warm every candidate, then round after round let each run `settle` untimed runs and a block of
    `block` timed ones while the others are stopped, until each has `repeats` blocks. The untimed runs
    absorb the switch (caches the other engine filled; MobileNetV2's first three runs after
    onnxruntime's turn took 12.7-13.6 ms against 11.6 back to back). A model of less than a millisecond
    runs blocks of `block_s` seconds (at most 1000 runs), a quarter as many untimed: five runs of SENNA
    (15 us) after a switch measured the switch (10th-90th percentiles 12-22 us, medians 0.74-1.16x
    onnxruntime's from run to run), and so did blocks capped at 200 runs (1.4 ms of a 7 us model:
    identical builds 0.69x and 0.91x onnxruntime in one suite run; capped at 1000, within 4% in two).
    A slow candidate (0.25 s a run) settles and times one run per round; one that has used
    `max_seconds` with 3 samples stops (the naive builds)."""
    per_run = {}
    for c in candidates:
        c.time(2, settle=1)
        per_run[c.label] = statistics.median(c.times)
        c.times, c.spent = [], 0.0
    for _ in range(repeats):
        for c in candidates:
            if len(c.times) >= 3 and c.spent > max_seconds:
                continue
            seconds = statistics.median(c.times) if c.times else per_run[c.label]
            runs = _block_runs(block_s, seconds, block, 1000)
            if seconds < 0.25:
                c.time(runs, settle=max(settle, runs // 4))
            else:
                c.time(1, settle=1)


def bench_speed(model, options: SpeedOptions, name: str | None = None) -> dict:
    """Build and time `model` (an ONNX file or model, or a zoo model's name; see the module docstring);
    returns a JSON-able dict (`speed_table` prints it)."""
    import onnxruntime as ort

    from ...compiler.analysis import analyse
    from ...compiler.build import build_graph
    from ...compiler.tuning.folder import read_tuning_info

    threads = _thread_count(options.threads)
    preset = get_preset(options.target)
    if not preset.runs_here():
        raise SpeedError(f"{preset.name} does not run on this machine ({preset.machine} {preset.device}); "
                         "time it on a board (neurosurgeon profile) or under emulation (neurosurgeon emulate), "
                         "where timings mean nothing for speed")
    if isinstance(model, (str, Path)):
        model, resolved = zoo.resolve(model, options.input_size)
        name = name or resolved
    tuning_info = read_tuning_info(options.tuning) if options.tuning else None
    if tuning_info and tuning_info["preset"] != preset.name:
        raise SpeedError(f"{options.tuning}: tuned for {tuning_info['preset']}, not {preset.name}")
    frozen, _graph, plan = analyse(model, options.input_shapes, name=name)
    feeds = random_inputs(frozen.inputs)
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if options.progress else (lambda msg: None)

    workdir = Path(tempfile.mkdtemp(prefix="ns-speed-"))
    candidates: list[_Candidate] = []
    try:
        onnx_path = workdir / "model.onnx"
        onnx_path.write_bytes(frozen.model.SerializeToString())
        names = [t.name for t in frozen.inputs]

        def start(label: str, engine: _Engine, note: str) -> _Candidate:
            candidates.append(_Candidate(label, engine, feeds, names, note))
            return candidates[-1]

        reference = start("onnxruntime", _Engine("onnxruntime", str(onnx_path), threads),
                          f"onnxruntime {ort.__version__}, CPU EP, {threads} threads").outputs()
        builds = []
        if options.steps:  # the other kernel choices, each step's gain
            builds += [(STEP_LABELS[k], k, None) for k in STEP_LABELS if k != options.kernels]
        builds.append(("ours, untuned", options.kernels, None))
        if options.tuning:
            builds.append(("ours, tuned", tuning_info.get("kernels") or options.kernels, Path(options.tuning)))
        compile_s: dict[str, float] = {}
        monolithic: tuple[Path, int, bool] | None = None
        for label, kernels, tuning in builds:
            say(f"building {frozen.name} for {preset.name}: {label}")
            path = workdir / f"{kernels}-{'tuned' if tuning else 'untuned'}.so"
            started = time.perf_counter()
            build_graph(frozen.model, frozen.inputs, preset, path, f"{frozen.name} ({label})", tuning=tuning,
                        kernels=kernels)
            compile_s[label] = time.perf_counter() - started
            shares = [(label, thread_share(threads, kernels == "blas"))]
            if options.steps and kernels == "blas" and tuning is None and threads > 1:
                shares.append((f"{label}, pools {threads}+{threads}", ThreadShare(threads, threads)))
            for row, share in shares:
                candidate = start(row, _Engine("tvm", str(path), threads, share), "")
                error = max(float(np.max(np.abs(o - r))) for o, r in zip(candidate.outputs(), reference))
                candidate.note = f"kernels={kernels}, threads {share}, max |error| vs onnxruntime {error:.1e}"
            compile_s.setdefault(shares[-1][0], compile_s[label])
            monolithic = (path, threads, kernels == "blas")
        say(f"timing {len(candidates)} candidates, {options.repeats} rounds, each in its own process")
        _alternating_blocks(candidates, options.repeats, options.max_seconds)
        ort_s = statistics.median(candidates[0].times)
        rows = [{"label": c.label, "median_ms": statistics.median(c.times) * 1e3, "samples": len(c.times),
                 "p10_ms": float(np.percentile(c.times, 10)) * 1e3, "p90_ms": float(np.percentile(c.times, 90)) * 1e3,
                 "ratio_to_onnxruntime": statistics.median(c.times) / ort_s, "note": c.note,
                 "compile_s": round(compile_s[c.label], 1) if c.label in compile_s else None} for c in candidates]
        for c in candidates:
            c.close()
        hardware = hardware_info()
        result = {"model": frozen.name, "target": preset.name, "threads": threads, "rows": rows,
                  "cpu": hardware["cpu"], "blas": hardware["blas"], "input_shapes": {t.name: list(t.shape) for t in frozen.inputs}}
        if tuning_info:
            mine = [t for t in tuning_info["tasks"].values() if frozen.name in t.get("models", [])]
            result["tuning"] = {"dir": str(options.tuning), "measured": tuning_info["measured"],
                                "workloads": len(mine), "tuned_workloads": sum(1 for t in mine if t["trials"] > 0),
                                "seconds": round(sum(t["seconds"] for t in mine), 1),
                                "budgets_s": [r["budget_s"] for r in tuning_info["runs"] if r["model"] == frozen.name]}
        if options.cuts:
            say(f"building the bundle ({len(plan.segments)} segments) to time every cut")
            result["cuts"] = _time_cuts(model, feeds, options, workdir, name, *monolithic)
        return result
    finally:
        for c in candidates:
            c.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _time_cuts(model, feeds, options: SpeedOptions, workdir: Path, name, mono_path: Path, threads: int,
               calls_blas: bool) -> dict:
    """Every cut of the bundle, its segments chained in this process, against the monolithic build in the
    same rounds (our code only: no other engine's threads to keep apart). Both are timed as a request
    runs them: from the numpy inputs to the numpy outputs (copying the input in and the outputs out
    took 0.37 ms of MobileNetV2's 8.5 at two threads on the Intel VM, 4%: timing the cuts with it and
    the monolithic build without had charged it to cutting)."""
    import tvm

    from ...compiler.pipeline import CompileOptions, compile_model
    from ...runtime.bundle import Bundle, SegmentExecutor, SharedModules
    from ..verify import run_cut

    compile_model(model, workdir / "bundle", CompileOptions(options.target, options.target, options.input_shapes,
                                                            tuning=options.tuning, kernels=options.kernels,
                                                            progress=options.progress,
                                                            partitioner=options.partitioner),
                  name=name)
    bundle = Bundle(workdir / "bundle")
    # Both sides are this machine's target here: one loaded module per artifact, as a device and a
    # server each hold their own; two copies of every weight alternating in one process's caches
    # were charged to cutting (MobileNetV2, two threads: cuts in the middle 1.16-1.23x, 1.00-1.03x
    # for all on one side).
    modules = SharedModules()
    mobile, server = (SegmentExecutor(bundle, side, threads=threads, modules=modules) for side in ("mobile", "server"))
    use_threads_here(threads, calls_blas)
    main = load_artifact(mono_path, tvm.cpu(0))

    def monolithic():  # as a request runs it, like a cut: numpy inputs in, numpy outputs out
        device = tvm.cpu(0)
        return [fetch(v) for v in results(main(*(to_device(feeds[t.name], device) for t in bundle.inputs)))]

    mono = _Timed("monolithic", monolithic)
    candidates = [_Timed(f"cut {k}", lambda k=k: run_cut(bundle, mobile, server, k, feeds)) for k in range(len(bundle.cuts))]
    _interleaved_medians([mono, *candidates], options.repeats)
    mono_s = statistics.median(mono.times)
    per_cut = [statistics.median(c.times) / mono_s for c in candidates]
    return {"partitioner": bundle.manifest.identity.options.get("partitioner"), "segments": len(bundle.segments),
            "monolithic_ms": mono_s * 1e3, "cut_ms": [round(statistics.median(c.times) * 1e3, 3) for c in candidates],
            "ratio_min": min(per_cut), "ratio_median": statistics.median(per_cut), "ratio_max": max(per_cut)}


def ms_text(milliseconds: float) -> str:
    """Three significant figures: SENNA's 0.0123 ms as well as VGG-16's 305 ms."""
    return f"{milliseconds:.0f}" if milliseconds >= 99.95 else f"{milliseconds:#.3g}"


def speed_table(result: dict) -> str:
    lines = [f"{result['model']} on {result['target']} ({result.get('cpu', 'CPU not recorded')}), "
             f"{result['threads']} threads, input " + ", ".join(f"{k} {v}" for k, v in result["input_shapes"].items()),
             f"GEMMs: {result.get('blas') or 'BLAS not recorded'}", ""]
    header = f"{'build':30} {'median':>10} {'p10-p90':>16} {'vs onnxruntime':>15} {'samples':>8} {'compile':>8}  note"
    lines += [header, "-" * len(header)]
    for r in result["rows"]:
        compile_s = f"{r['compile_s']:.1f}s" if r["compile_s"] is not None else ""
        spread = f"{ms_text(r['p10_ms'])}-{ms_text(r['p90_ms'])}ms" if "p10_ms" in r else ""
        lines.append(f"{r['label']:30} {ms_text(r['median_ms']):>8}ms {spread:>16} {r['ratio_to_onnxruntime']:14.2f}x "
                     f"{r['samples']:>8} {compile_s:>8}  {r['note']}")
    if "tuning" in result:
        t = result["tuning"]
        lines.append(f"\ntuning: {t['dir']}, {t['tuned_workloads']} of {t['workloads']} workloads tuned, "
                     f"{t['seconds']:.0f} s of tuning (budgets {t['budgets_s']}), "
                     f"{'measured here' if t['measured'] else 'NOT measured'}")
    if "cuts" in result:
        c = result["cuts"]
        lines.append(f"\nevery cut end to end (segments chained in one process) vs the monolithic build "
                     f"({c['monolithic_ms']:.2f} ms): min {c['ratio_min']:.2f}x, median {c['ratio_median']:.2f}x, "
                     f"max {c['ratio_max']:.2f}x over {len(c['cut_ms'])} cuts ({c['segments']} segments, "
                     f"partitioner {c['partitioner']})")
    lines.append("\nMedians [10th-90th percentile]; each engine in a process of its own, the engines taking turns in "
                 "blocks of back-to-back runs, batch 1; ratio = median / onnxruntime's median.")
    return "\n".join(lines)
