"""The search: `tune(model, TuneOptions(...))` tunes the distinct workloads of a model's segments for a
preset into a tuning folder, within a time budget.

Rounds: every task first gets a few random candidates (a task with no record keeps our default
schedule, and on CPUs that default is itself timed and committed as candidate zero); then the
tasks that take most of the time are refined by evolutionary search up to `trials_per_task`,
heaviest first. Workloads already tuned in the folder (by an earlier run, or for another model) are
skipped. The budget is checked between tasks: a task starts only if the time spent plus its
expected time fits, so a budget-bound or interrupted run keeps every task it finished, and the
same command run again resumes. The tiled convolutions' tiles are timed first, each convolution
alone; the choices a run makes are then checked on the whole model and kept only if it is faster
with them (`_Search._check_tiles`).

Targets that run here (x86-host) are timed here; other targets on a board through RPC
(`rpc="HOST:PORT"`), or, with no board, not at all: candidates are only built (to keep the valid
ones) and the folder says `measured: false`, as does every manifest compiled with it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ...runtime.progress import Progress
from ...runtime.threads import cores_here, requested_threads, thread_share
from ...targets import Preset, get_preset
from ..analysis import analyse
from .folder import TuningError, open_info, paths, write_info
from .measure import (RemoteBoard, count_cpus_without_psutil, declare_pool_rules, environment_variable,
                      load_tensor_intrinsics, make_builder_and_runner, parse_rpc_address, tuning_target)
from .workloads import Workload, extract_workloads
from ..tiled_kernels import TileChoices
from ..kernels import DEFAULT_KERNELS, TILED_WINOGRAD

__all__ = ["DEFAULT_TRIALS", "TuneOptions", "TuneReport", "tune"]

DEFAULT_TRIALS = {True: 32, False: 4}  # per task, measured / not measured
SMALL_POPULATION = 64  # see _search_strategy
REFINE_SHARE = 0.01  # tasks below this share of the model's measured time keep their first-round schedule
# Guesses for the budget check until this run has timed its own (seconds): an evolutionary search
# step, and building plus timing one candidate.
_PRIOR_SEARCH_S, _PRIOR_TRIAL_S = 4.0, 0.4


@dataclass
class TuneOptions:
    target: str  # preset name
    out_dir: str | Path  # the tuning folder: created, or extended if it exists
    budget_s: float
    input_shapes: dict = field(default_factory=dict)
    trials_per_task: int | None = None  # default: DEFAULT_TRIALS[measured]
    whole_model: bool = False  # also the unsplit model's workloads (for a monolithic build to compare against)
    kernels: str = DEFAULT_KERNELS  # CPU targets: the kernel choice the bundles will be compiled with
    rpc: str | None = None  # HOST:PORT of a board running runtime/rpc_server.py: time candidates there
    partitioner: str | None = None  # the candidate cuts the bundles will be compiled with (None: the default)
    progress: bool = True


@dataclass
class TuneReport:
    out_dir: Path
    preset: str
    measured: bool
    tasks: int  # distinct workloads of the model
    tuned: int  # tasks given trials in this run
    skipped: int  # already tuned to the requested trials (by an earlier run or another model)
    remaining: int  # still short of the requested trials when the budget ran out
    trials: int  # trials run in this run
    seconds: float
    complete: bool
    measured_on: str | None = None  # "here", "rpc://HOST:PORT", or None
    unmeasured_reason: str | None = None
    convolutions: int = 0  # distinct tiled convolutions of the model (their tiles are chosen by timing)
    tiles_chosen: int = 0  # of them, how many have a timed choice in the folder
    tiles_check: dict | None = None  # this run's choices on the whole model (`_Search._check_tiles`)

    def summary(self) -> str:
        if self.measured:
            how = "measured here" if self.measured_on in (None, "here") else f"measured on the board at {self.measured_on}"
        else:
            how = f"NOT measured ({self.unmeasured_reason or 'no board here'}: random valid schedules)"
        state = "complete" if self.complete else f"{self.remaining} tasks left (run again to resume)"
        tiles = f"tiles timed for {self.tiles_chosen} of {self.convolutions} convolutions; " if self.convolutions else ""
        if self.tiles_check:
            check = self.tiles_check
            verdict = "kept" if check["kept"] else "dropped"
            tiles += (f"{check['convolutions']} new tile choices {verdict} (the whole model {check['with_ms']:.2f} ms "
                      f"with them, {check['without_ms']:.2f} and {check['without_again_ms']:.2f} ms without); ")
        return (f"{self.out_dir}: {self.preset}, {self.tasks} workloads: {self.tuned} tuned ({self.trials} trials), "
                f"{self.skipped} already in the database; {tiles}{state}; {self.seconds:.0f} s; {how}")



@dataclass
class _Measurement:
    """Where candidates are timed: here, on a board through RPC, or nowhere (and why)."""

    measured: bool
    measured_on: str | None  # "here", "rpc://HOST:PORT", or None
    unmeasured_reason: str | None
    remote: RemoteBoard | None


def _where_to_measure(preset: Preset, rpc: str | None) -> _Measurement:
    if rpc:
        parse_rpc_address(rpc)  # a malformed address is a usage error, not an unreachable board
        try:
            return _Measurement(True, f"rpc://{rpc}", None, RemoteBoard(rpc, preset))
        except TuningError as err:  # no board: tune without measuring, and say so (folder, manifest)
            reason = f"{err}; fell back to tuning without measurement"
            print(f"warning: {reason}", file=sys.stderr)
            return _Measurement(False, None, reason, None)
    if preset.runs_here():
        return _Measurement(True, "here", None, None)
    return _Measurement(False, None, f"{preset.name} cannot run here and no board was given (--rpc HOST:PORT)", None)


def tune(model: str | Path | onnx.ModelProto, options: TuneOptions, name: str | None = None) -> TuneReport:
    """Tune the distinct workloads of `model`'s segments for `options.target` into `options.out_dir`."""
    started = time.perf_counter()
    if not options.budget_s > 0:
        raise TuningError(f"the budget must be a positive number of seconds, got {options.budget_s:g}")
    preset = get_preset(options.target)
    where = _where_to_measure(preset, options.rpc)
    trials = options.trials_per_task or DEFAULT_TRIALS[where.measured]
    if trials < 1:
        raise TuningError(f"trials per task must be at least 1, got {trials}")
    out_dir = Path(options.out_dir)
    # refuse a wrong folder before any work
    info = open_info(out_dir, preset, where.measured, options.kernels, where.measured_on, where.unmeasured_reason)

    frozen, _graph, plan = analyse(model, options.input_shapes, options.partitioner, name=name)
    graphs = [(f"segment {s.index}", s.model, s.inputs) for s in plan.segments]
    if options.whole_model:
        graphs.append(("whole model", frozen.model, frozen.inputs))
    tiles = TileChoices()
    workloads = extract_workloads(graphs, preset, options.kernels, tiles)
    run = {"model": frozen.name, "model_sha256": frozen.sha256, "started_unix": int(time.time()),
           "trials_per_task": trials, "budget_s": options.budget_s, "tasks": len(workloads),
           "measured_on": where.measured_on}
    if where.unmeasured_reason:
        run["unmeasured_reason"] = where.unmeasured_reason
    info["runs"].append(run)
    for w in workloads:  # where each workload comes from, also for those tuned before
        entry = info["tasks"].setdefault(w.key, {"name": w.name, "flops": w.flops, "trials": 0, "seconds": 0.0,
                                                 "models": []})
        if frozen.name not in entry["models"]:
            entry["models"].append(frozen.name)
    write_info(out_dir, info)

    progress = Progress(0, f"tuning {preset.name}", unit="task", enabled=options.progress)
    search = _Search(preset, options, where, workloads, tiles.asked, info, run, trials, started, progress)
    try:
        search.run(frozen)
    finally:
        progress.close()
    remaining = search.remaining()
    seconds = time.perf_counter() - started
    chosen = sum(1 for key in tiles.asked if key in info.get("tiles", {}))
    remaining += len(tiles.asked) - chosen if search.times_tiles else 0
    run.update(seconds=round(seconds, 1), tuned=len(search.tuned), trials=search.trials_run, remaining=remaining)
    write_info(out_dir, info)
    return TuneReport(out_dir, preset.name, where.measured, len(workloads), len(search.tuned), search.skipped,
                      remaining, search.trials_run, seconds, remaining == 0, where.measured_on,
                      where.unmeasured_reason, len(tiles.asked), chosen, run.get("tiles_check"))


class _Search:
    """The rounds of one tuning run over `workloads`, recorded in `info` (tuning.json) as they go."""

    def __init__(self, preset: Preset, options: TuneOptions, where: _Measurement, workloads: list[Workload],
                 convolutions: dict, info: dict, run: dict, trials: int, started: float, progress: Progress):
        from tvm.s_tir import meta_schedule as ms

        load_tensor_intrinsics(preset)
        count_cpus_without_psutil()
        self.ms, self.preset, self.options, self.where = ms, preset, options, where
        self.workloads, self.info, self.run_record, self.started, self.progress = workloads, info, run, started, progress
        self.out_dir = Path(options.out_dir)
        self.measured = where.measured
        self.convolutions = convolutions  # the tiled ones: TileChoices.asked
        # Tiles are chosen by timing alone: where candidates are not timed, the defaults stay.
        self.times_tiles = self.measured and preset.device != "cuda" and options.kernels in TILED_WINOGRAD
        workload_file, record_file = paths(self.out_dir)
        self.database = ms.database.JSONDatabase(str(workload_file), str(record_file), allow_missing=True)
        self.target = tuning_target(preset, self.measured, cores_here() if where.measured_on == "here" else None)
        declare_pool_rules(self.target)
        for w in workloads:  # trials only count if the database still holds a valid record for them
            if _best_record(self.database, w, self.target) is None:
                info["tasks"][w.key]["trials"] = 0
                info["tasks"][w.key].pop("best_us", None)
                info["tasks"][w.key].pop("schedule", None)
        self.rounds = _round_targets(trials, self.measured)
        goals = self.goals()
        self.skipped = sum(1 for w in workloads if info["tasks"][w.key]["trials"] >= goals[w.key])
        run["skipped"] = self.skipped
        self.search_seconds: list[float] = []  # per task run: its time outside building and timing candidates
        self.trials_run = 0
        self.tuned: set[str] = set()
        self.new_tiles: list[str] = []  # convolutions given a choice other than the default in this run

    def goals(self) -> dict[str, int]:
        return _goals(self.workloads, self.info, self.rounds, self.measured)

    def remaining(self) -> int:
        goals = self.goals()
        return sum(1 for w in self.workloads if self.info["tasks"][w.key]["trials"] < goals[w.key])

    def run(self, frozen) -> None:
        """Tune; then check this run's tile choices on `frozen` (the whole model, analysis's FrozenModel)."""
        pool = None
        if self.where.measured_on == "here":
            # Time candidates on the threads TVM's pool gets at run time (runtime/threads.py: one where the
            # GEMMs go to the BLAS, which then has the cores; else every core). The runner's processes
            # size their pools from TVM_NUM_THREADS, which the runtime set to every core on import;
            # this process's own pools, made later, may use every core again.
            pool = thread_share(requested_threads(), self.options.kernels == "blas").tvm
        with environment_variable("TVM_NUM_THREADS", None if pool is None else str(pool)):
            self._run()
            if self.new_tiles and self.where.measured_on == "here":
                self._check_tiles(frozen)

    def _run(self) -> None:
        self.builder, self.runner, self.measuring = make_builder_and_runner(self.measured, self.preset.device,
                                                                            self.where.remote)
        if self.measured and self.preset.device != "cuda" and self.options.kernels != "naive":
            _commit_default_schedules(self.workloads, self.info, self.database, self.builder, self.runner, self.target)
            write_info(self.out_dir, self.info)
        if self.times_tiles and not self._choose_tiles():
            return
        with _quiet_meta_schedule(), tempfile.TemporaryDirectory(prefix="neurosurgeon-tune-") as logs:
            # One more pass at the last goal: as refined tasks get faster, a task left at its first
            # round's trials can grow past REFINE_SHARE of the total and become worth refining.
            for number, goal in enumerate(self.rounds + self.rounds[-1:]):
                if not self._round(number, goal, logs):
                    return

    def _choose_tiles(self) -> bool:
        """Time every tile choice of each tiled convolution not yet in the folder (compiler/tiled_kernels.py
        `conv_variants`: the products' tiles are made where the kernels are, out of MetaSchedule's reach)
        and record the fastest in tuning.json's "tiles", which a tuned build applies. The heaviest
        convolutions first; False once the budget is spent. They come before the MetaSchedule tasks:
        in the zoo's convolutional nets the products take most of the time."""
        import tvm

        from ..kernels import vector_lanes
        from ..tiled_kernels import conv_kernel, conv_variants

        ms, lanes, winograd = self.ms, vector_lanes(self.target), TILED_WINOGRAD[self.options.kernels]
        chosen = self.info.setdefault("tiles", {})
        todo = sorted(((key, spec) for key, spec in self.convolutions.items() if key not in chosen),
                      key=lambda item: -_conv_flops(*item[1][:2]))
        self.progress.grow(len(todo))
        for key, (data_shape, weight_shape, strides, padding, dilation, layouts) in todo:
            variants = conv_variants(data_shape, weight_shape, strides, padding, dilation, lanes, winograd, **layouts)
            if time.perf_counter() - self.started + len(variants) * _PRIOR_TRIAL_S > self.options.budget_s:
                return False
            weight = np.zeros(weight_shape, np.float32)  # the runner times on random arguments, the weights too
            mods = [tvm.IRModule({"main": conv_kernel(data_shape, weight, strides, padding, dilation, lanes, (),
                                                      choice, winograd, **layouts)[1][0].with_attr("global_symbol", "main")})
                    for choice in variants]  # in the layouts the build computes it in
            built = self.builder.build([ms.builder.BuilderInput(mod, self.target) for mod in mods])
            timed, inputs = [], []
            for choice, mod, result in zip(variants, mods, built):
                if not result.error_msg:
                    timed.append(choice)
                    inputs.append(ms.runner.RunnerInput(result.artifact_path, self.target.kind.name,
                                                        ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
            seconds = []
            for choice, future in zip(timed, self.runner.run(inputs)):
                result = future.result()
                if not result.error_msg and result.run_secs:
                    seconds.append((mean_seconds(result.run_secs), choice))
            if seconds:
                best_s, best = min(seconds, key=lambda pair: pair[0])  # the default, listed first, wins a tie
                default_s = next((s for s, choice in seconds if not choice), None)
                chosen[key] = {"choice": best, "us": round(best_s * 1e6, 2), "variants": len(seconds),
                               "default_us": None if default_s is None else round(default_s * 1e6, 2)}
                if best and default_s is not None:
                    self.new_tiles.append(key)
                write_info(self.out_dir, self.info)
            self.progress.update(note=f"tiles of {key}")
        return True

    def _check_tiles(self, frozen) -> None:
        """Keep this run's tile choices only if the whole model runs faster with them than with the
        defaults, by more than two loads of the same build differ. Each was the fastest of its
        convolution timed alone, again and again on warm caches; in the model it runs between other
        kernels, and on an Intel Xeon VM ResNet-18's and MobileNetV2's choices (5-40% faster alone)
        made the whole model 2-8% slower. Both builds apply the folder's MetaSchedule records; they
        are timed taking turns, in this process, on the threads the candidates were timed on, the
        build without the new choices twice (two copies, loaded apart: on a 2-core VM the same code
        loaded twice ran up to 3% apart), and the choices must beat both. Dropped choices stay in
        tuning.json as the default, with what was fastest alone ("alone"), so that no later run
        times them again."""
        import shutil

        from ..build import build_graph

        chosen = self.info["tiles"]
        self.progress.grow(3)
        with tempfile.TemporaryDirectory(prefix="neurosurgeon-tiles-") as tmp:
            without = Path(tmp) / "defaults.tuning"
            shutil.copytree(self.out_dir, without)
            write_info(without, {**self.info, "tiles": {key: {**entry, "choice": {}} if key in self.new_tiles else entry
                                                         for key, entry in chosen.items()}})
            builds = []
            for label, folder in (("with", self.out_dir), ("without", without)):
                path = Path(tmp) / f"{label}.so"
                build_graph(frozen.model, frozen.inputs, self.preset, path, f"{frozen.name} ({label} the new tiles)",
                            folder, self.options.kernels)
                builds.append(path)
                self.progress.update(note=f"whole model built {label} the new tiles")
            builds.append(shutil.copy(builds[-1], Path(tmp) / "without-again.so"))
            with_ms, without_ms, again_ms = _time_whole_models(builds, frozen.inputs)
        # Recorded to the nanosecond: at 3 decimals a 15 us model's times tied (0.015 with, 0.015 without)
        # and the record no longer showed why the tiles were kept.
        with_ms, without_ms, again_ms = (round(ms, 6) for ms in (with_ms, without_ms, again_ms))
        kept = with_ms < min(without_ms, again_ms)
        self.run_record["tiles_check"] = {"convolutions": len(self.new_tiles), "with_ms": with_ms,
                                          "without_ms": without_ms, "without_again_ms": again_ms, "kept": kept}
        if not kept:
            for key in self.new_tiles:
                entry = chosen[key]
                chosen[key] = {**entry, "choice": {}, "us": entry["default_us"],
                               "alone": {"choice": entry["choice"], "us": entry["us"]}}
        write_info(self.out_dir, self.info)
        check = self.run_record["tiles_check"]
        self.progress.update(note=f"new tiles {'kept' if kept else 'dropped'}: {check['with_ms']:.2f} ms with, "
                                  f"{check['without_ms']:.2f} and {check['without_again_ms']:.2f} ms without")

    def _round(self, number: int, goal: int, logs: str) -> bool:
        """Give every task that needs it `goal` trials; False once the budget is spent."""
        goals = self.goals()
        tasks = self.info["tasks"]
        jobs = [w for w in self.workloads if tasks[w.key]["trials"] < min(goal, goals[w.key])]
        # Heaviest first (measured time, else FLOPs): what the budget leaves out costs least.
        jobs.sort(key=lambda w: (tasks[w.key].get("best_us", 0.0) * w.weight, w.flops * w.weight), reverse=True)
        self.progress.grow(len(jobs))
        for w in jobs:
            todo = goal - tasks[w.key]["trials"]
            # Random candidates first (no search step); evolutionary search, seeded with the best
            # measured ones, once there is something to breed from.
            strategy = "evolutionary" if self.measured and number > 0 else "replay-trace"
            if time.perf_counter() - self.started + self._expected_s(strategy, todo) > self.options.budget_s:
                return False
            self._tune_task(w, strategy, goal, todo, logs)
            self.progress.update(note=f"{w.name} +{todo} trials")
        return True

    def _expected_s(self, strategy: str, todo: int) -> float:
        if strategy == "evolutionary" and self.search_seconds:
            return (sum(self.search_seconds) / len(self.search_seconds)
                    + todo * self.measuring["seconds"] / max(1, self.trials_run))
        return (_PRIOR_SEARCH_S if strategy == "evolutionary" else 0.0) + todo * _PRIOR_TRIAL_S

    def _tune_task(self, w: Workload, strategy: str, goal: int, todo: int, logs: str) -> None:
        ms = self.ms
        entry = self.info["tasks"][w.key]
        task_started, measuring_before = time.perf_counter(), self.measuring["seconds"]
        context = ms.TuneContext(mod=w.mod, target=self.target, space_generator="post-order-apply",
                                 search_strategy=_search_strategy(strategy, self.measured), task_name=w.name,
                                 num_threads=cores_here(),
                                 logger=logging.getLogger("tvm.s_tir.meta_schedule.neurosurgeon"))
        ms.tune_tasks(tasks=[context], task_weights=[1.0], work_dir=logs, max_trials_global=todo,
                      max_trials_per_task=todo, num_trials_per_iter=min(todo, 32), builder=self.builder,
                      runner=self.runner, database=self.database, cost_model=_cost_model(self.measured),
                      measure_callbacks=[ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel()],
                      task_scheduler="round-robin")
        seconds = time.perf_counter() - task_started
        if strategy == "evolutionary":
            self.search_seconds.append(seconds - (self.measuring["seconds"] - measuring_before))
        self.trials_run += todo
        self.tuned.add(w.key)
        record = _best_record(self.database, w, self.target)
        if record is not None:  # else every candidate failed: the task stays to do
            entry["trials"] = goal
            if self.measured:
                entry["best_us"] = round(mean_seconds(record.run_secs) * 1e6, 2)
                # which candidate a tuned build takes: decided by the record, not by rounded times
                entry["schedule"] = "default" if _is_default(record, w, self.target) else "searched"
        entry["seconds"] = round(entry["seconds"] + seconds, 2)
        self.run_record["seconds"] = round(time.perf_counter() - self.started, 1)
        write_info(self.out_dir, self.info)


def _time_whole_models(paths: list[Path], inputs: list, rounds: int = 7, runs: int = 3) -> list[float]:
    """Median milliseconds per call of each built model (an artifact at each of `paths`, on the same
    `random_inputs`), the models taking turns in rounds of one untimed and `runs` timed calls
    (`time_calls`), so that a noisy minute falls on all of them."""
    import tvm

    from ...runtime.bundle import load_artifact
    from ...runtime.profile import time_calls
    from ...runtime.tensors import random_inputs

    args = [tvm.runtime.tensor(value) for value in random_inputs(inputs).values()]
    functions = [load_artifact(path, tvm.cpu(0)) for path in paths]
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(rounds):
        for function, spent in zip(functions, times):
            spent += time_calls(function, args, repeats=runs)[0]
    return [float(np.median(spent)) * 1e3 for spent in times]


def _conv_flops(data_shape, weight_shape) -> float:
    """A convolution's multiply-adds, up to its output's size (strides make it smaller): for ordering."""
    return float(np.prod(data_shape[2:])) * float(np.prod(weight_shape))


def _commit_default_schedules(workloads: list[Workload], info: dict, database, builder, runner, target) -> int:
    """Candidate zero of every CPU task: neurosurgeon's own schedule (the rule untuned builds use),
    timed like any candidate and committed to the database. A tuned build then takes, per kernel,
    whichever is faster, and is never slower than the untuned build because a search with few
    trials found nothing better. Records `default_us` per task; returns how many were committed."""
    from tvm.s_tir import meta_schedule as ms

    from ..kernels import parallel_loops_rule

    rule = parallel_loops_rule()
    scheduled = []
    for w in workloads:
        if "default_us" in info["tasks"][w.key]:
            continue
        sch = rule.apply(w.mod["main"], target, False)
        if sch is not None:
            scheduled.append((w, sch))
    if not scheduled:
        return 0
    results = builder.build([ms.builder.BuilderInput(sch.mod, target) for _, sch in scheduled])
    pending, inputs = [], []
    for (w, sch), result in zip(scheduled, results):
        if result.error_msg:
            continue
        args_info = ms.arg_info.ArgInfo.from_prim_func(w.mod["main"])
        inputs.append(ms.runner.RunnerInput(result.artifact_path, target.kind.name, args_info))
        pending.append((w, sch, args_info))
    committed = 0
    for (w, sch, args_info), future in zip(pending, runner.run(inputs)):
        result = future.result()
        if result.error_msg or not result.run_secs:
            continue
        seconds = [float(s) for s in result.run_secs]
        database.commit_tuning_record(ms.database.TuningRecord(sch.trace, database.commit_workload(w.mod), seconds,
                                                               target, args_info))
        info["tasks"][w.key]["default_us"] = round(mean_seconds(seconds) * 1e6, 2)
        committed += 1
    return committed


def _best_record(database, workload: Workload, target):
    """The database's best valid record for a workload (MetaSchedule records failed candidates as
    1e10 s), or None."""
    record = database.query_tuning_record(workload.mod, target, workload.name)
    if record is None or not record.run_secs or mean_seconds(record.run_secs) >= 1e9:
        return None
    return record


def _is_default(record, workload: Workload, target) -> bool:
    """Whether `record` is neurosurgeon's own schedule (candidate zero), by its trace."""
    from ..kernels import parallel_loops_rule

    default = parallel_loops_rule().apply(workload.mod["main"], target, False)
    return default is not None and str(default.trace) == str(record.trace)


def mean_seconds(run_secs) -> float:
    """The statistic MetaSchedule's database ranks candidates by (the mean of their timed runs): the
    one `best_us` and `default_us` report, so that they say which candidate a tuned build takes."""
    return sum(float(s) for s in run_secs) / len(run_secs)


def _cost_model(measured: bool):
    """XGBoost's model where it is installed (and times are real); otherwise random, which with few
    trials per task costs little: the evolutionary search still breeds from the best measured ones."""
    if measured:
        try:
            import xgboost  # noqa: F401

            return "xgb"
        except ImportError:
            pass
    return "random"


def _search_strategy(kind: str, measured: bool):
    """MetaSchedule's evolutionary search breeds 512 candidates over 4 generations, ranked by the cost
    model, which takes 10-20 s per step here. With the random model (no XGBoost) the ranking is
    noise: a small population bred once from the best measured schedules does the same job in a
    fraction of the time."""
    from tvm.s_tir import meta_schedule as ms

    if kind != "evolutionary" or _cost_model(measured) == "xgb":
        return kind
    return ms.search_strategy.EvolutionarySearch(population_size=SMALL_POPULATION, init_min_unmeasured=8,
                                                 genetic_num_iters=1)


@contextlib.contextmanager
def _quiet_meta_schedule():
    """MetaSchedule logs every search round and task table at INFO; the progress bar says enough."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _round_targets(trials: int, measured: bool) -> list[int]:
    """Trials per task after each round. A workload with no record stays naive (10-100x slower), so
    the first round gives every task a few random candidates; later rounds refine the tasks that
    take the time. Without measurements more rounds would only draw more random schedules."""
    if not measured:
        return [trials]
    return [t for t in (4, 16, 64, 256) if t < trials] + [trials]


def _goals(workloads: list[Workload], info: dict, rounds: list[int], measured: bool) -> dict[str, int]:
    """Trials each task should get: the last round's for the tasks worth refining, the first's for
    the rest. Worth refining: at least REFINE_SHARE of the model's time as measured so far (call
    count x best time), or not measured yet."""
    goals = {w.key: rounds[-1] for w in workloads}
    if not measured:
        return goals
    times = {w.key: info["tasks"][w.key].get("best_us", 0.0) * w.weight for w in workloads}
    total = sum(times.values())
    for w in workloads:
        if "best_us" in info["tasks"][w.key] and times[w.key] < REFINE_SHARE * total:
            goals[w.key] = rounds[0]
    return goals
