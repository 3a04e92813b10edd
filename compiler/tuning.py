"""Tuning as a build step: MetaSchedule over the distinct workloads (fused TIR functions) of a model's
segments, kept in a database folder per target preset that `compile --tuning DIR` applies.

TVM 0.27's untuned CPU code is naive loops; MetaSchedule is what makes it fast, and a fused
function with no record in the database stays naive. So tuning works on exactly the functions the
segment builds produce (a cut between a conv and its relu makes a different fused function than the
whole model has), with the same passes, and each distinct workload is tuned once: the same conv
shape in two segments, or in two models tuned into the same folder, is one task.

    report = tune("alexnet.onnx", "x86-host", "x86-host.tuning", budget_s=600)
    compile_model("alexnet.onnx", "b/", CompileOptions("x86-host", "x86-host", tuning="x86-host.tuning"))

The folder holds MetaSchedule's JSON database (database_workload.json, database_tuning_record.json)
and tuning.json (target, TVM version, whether times were measured, trials and seconds per task).
Tuning is resumable: records are appended as they are measured and tuning.json is rewritten after
every task, so running the same command again continues where a budget or ^C stopped it.

Targets that run here (x86-host) are tuned with real measurements, built and timed in this process.
Other targets (aarch64-neon, CUDA) have no device to time on: candidates are only built (to keep
the valid ones) and a runner reports a constant time, which yields a random valid schedule; the
folder says `measured: false` and so does the manifest of a bundle compiled with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import itertools
import json
import logging
import os
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..runtime.errors import NeurosurgeonError
from ..targets import Preset, get_preset

__all__ = ["TuneReport", "TuningError", "Workload", "compile_tuned", "database_sha256", "extract_workloads",
           "read_tuning_info", "segment_workloads", "tune", "tuned_pipeline", "tuning_identity"]

FORMAT = "neurosurgeon-tuning"
VERSION = 2  # 2: CPU workloads come from compiler/kernels.py's pipeline (GEMMs offloaded, batch norms folded)
INFO = "tuning.json"
WORKLOAD_FILE = "database_workload.json"  # MetaSchedule's own names, so its tools read the folder too
RECORD_FILE = "database_tuning_record.json"
DEFAULT_TRIALS = {True: 32, False: 4}  # per task, measured / not measured
SMALL_POPULATION = 64  # see _search_strategy
REFINE_SHARE = 0.01  # tasks below this share of the model's measured time keep their first-round schedule
# Guesses for the budget check until this run has timed its own (seconds): an evolutionary search
# step, and building plus timing one candidate.
_PRIOR_SEARCH_S, _PRIOR_TRIAL_S = 4.0, 0.4


class TuningError(NeurosurgeonError):
    pass


@dataclass
class Workload:
    """One distinct tuning task: a fused TIR function and where it occurs."""

    key: str  # structural hash of the function: equal functions share it, whatever their weights
    name: str  # MetaSchedule's task name, e.g. fused_conv2d_add (not unique)
    mod: object  # tvm.IRModule holding the PrimFunc as "main"
    flops: float
    weight: int = 0  # how many times the segments call it
    graphs: list[str] = field(default_factory=list)  # which graphs (segments) call it


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

    def summary(self) -> str:
        if self.measured:
            how = "measured here" if self.measured_on in (None, "here") else f"measured on the device at {self.measured_on}"
        else:
            how = f"NOT measured ({self.unmeasured_reason or 'no device here'}: random valid schedules)"
        state = "complete" if self.complete else f"{self.remaining} tasks left (run again to resume)"
        return (f"{self.out_dir}: {self.preset}, {self.tasks} workloads: {self.tuned} tuned ({self.trials} trials), "
                f"{self.skipped} already in the database; {state}; {self.seconds:.0f} s; {how}")


# ---------------------------------------------------------------------------------------------
# Passes shared by task extraction and the tuned build: the keys must match exactly.


def _default_passes(target, kernels: str = "blas") -> tuple[list, list, list]:
    """The backend pipeline for `target`, split where MetaSchedule's database applies: (up to fused
    TIR functions, the default schedules that follow on GPUs, lowering). CPUs get our pipeline
    (compiler/kernels.py: GEMM offload per `kernels`, fusion); GPUs TVM's own pass lists, so that
    extraction and the tuned build agree."""
    if target.kind.name != "cuda":
        from .kernels import cpu_phases

        return cpu_phases(target, kernels)
    backend = importlib.import_module("tvm.relax.backend.cuda.pipeline")  # dataflow_lower_passes is not exported
    legalize = backend.legalize_passes(target)
    fused = 1 + [p.info.name for p in legalize].index("FuseTIR")
    return (backend.library_dispatch_passes(target) + legalize[:fused], legalize[fused:],
            backend.dataflow_lower_passes(target) + backend.finalize_passes(target))


def _fusion_passes(target, kernels: str = "blas") -> list:
    """The passes up to fused TIR, before any schedule: what tasks are extracted from."""
    return _default_passes(target, kernels)[0]


def tuned_pipeline(target, kernels: str = "blas", stats: dict | None = None):
    """The default pipeline for `target` with the current MetaSchedule database applied right after
    fusion. Functions without a record keep the default: dlight rules on GPUs, our ParallelLoops
    rule on CPUs (compiler/kernels.py)."""
    import tvm
    from tvm import relax

    if target.kind.name != "cuda":
        from .kernels import cpu_pipeline

        return cpu_pipeline(target, kernels, apply_database=True, stats=stats)
    fusion, default_schedules, lower = _default_passes(target, kernels)

    @tvm.transform.module_pass(opt_level=0, name="NeurosurgeonTunedPipeline")
    def pipeline(mod, _ctx):
        with target:
            mod = tvm.transform.Sequential(fusion)(mod)
            mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
            if stats is not None:
                from .kernels import count_scheduled

                stats["tuned"], stats["kernels"] = count_scheduled(mod)
                stats["externs"] = 0
            return tvm.transform.Sequential(default_schedules + lower)(mod)

    return pipeline


def compile_tuned(mod, preset: Preset, tuning_dir: str | Path, kernels: str = "blas", stats: dict | None = None):
    """tvm.compile a Relax module for `preset` with the tuning folder's schedules applied. `kernels`
    must be what the folder was tuned with: the fused functions (and so the records' keys) differ."""
    import tvm

    info = read_tuning_info(tuning_dir)
    if info["preset"] != preset.name:
        raise TuningError(f"{tuning_dir}: tuned for {info['preset']}, cannot apply it to a {preset.name} build")
    if preset.device != "cuda" and info.get("kernels", "blas") != kernels:
        raise TuningError(f"{tuning_dir}: tuned with --kernels {info['kernels']}, this build uses --kernels {kernels}")
    target = preset.tvm_target()
    with _database(Path(tuning_dir)):
        if preset.device == "cuda":
            from .cuda import compile_cuda

            return compile_cuda(mod, target, pipeline=tuned_pipeline(target, stats=stats))
        with target:
            return tvm.compile(mod, target=target, relax_pipeline=tuned_pipeline(target, kernels, stats))


# ---------------------------------------------------------------------------------------------
# Workloads


def extract_workloads(graphs: list[tuple[str, onnx.ModelProto, list]], preset: Preset,
                      kernels: str = "blas") -> list[Workload]:
    """The distinct fused TIR functions that building `graphs` ((label, model, inputs) each) for
    `preset` produces, deduplicated by structural hash, with their call counts summed."""
    import tvm
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from .build import import_graph

    target = preset.tvm_target()
    found: dict[str, Workload] = {}
    for label, model, inputs in graphs:
        mod = import_graph(model, inputs, label)
        with target:
            mod = tvm.transform.Sequential(_fusion_passes(target, kernels))(mod)
        for task in ms.relax_integration.extract_tasks(mod, target):
            func_mod = task.dispatched[0]
            key = f"{tvm_ffi.structural_hash(func_mod) & (2**64 - 1):016x}"
            workload = found.get(key)
            if workload is None:
                workload = found[key] = Workload(key, task.task_name, func_mod, _flops(func_mod))
            workload.weight += int(task.weight)
            if label not in workload.graphs:
                workload.graphs.append(label)
    return list(found.values())


def segment_workloads(plan_or_segments, preset: Preset | str, kernels: str = "blas") -> list[Workload]:
    """The distinct workloads of a partition plan's segments (or of a list of segments) for a preset."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    segments = getattr(plan_or_segments, "segments", plan_or_segments)
    return extract_workloads([(f"segment {s.index}", s.model, s.inputs) for s in segments], preset, kernels)


def _flops(mod) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(mod))
    except Exception:  # some functions (e.g. data movement with dynamic loops) have no estimate
        return 0.0


# ---------------------------------------------------------------------------------------------
# The tuning folder


def _paths(out_dir: Path) -> tuple[Path, Path]:
    return out_dir / WORKLOAD_FILE, out_dir / RECORD_FILE


_databases: dict[tuple, object] = {}  # parsed databases, by folder and file versions


@contextlib.contextmanager
def _database(out_dir: Path):
    """The folder's JSON database as MetaSchedule's current database. Parsed once per version of its
    files: a bundle's segments are compiled one after the other against the same database."""
    from tvm.s_tir import meta_schedule as ms

    workloads, records = _paths(out_dir)
    if not (workloads.is_file() and records.is_file()):
        raise TuningError(f"{out_dir}: not a tuning folder ({WORKLOAD_FILE} or {RECORD_FILE} is missing)")
    key = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in (workloads, records))
    if key not in _databases:
        _databases.clear()  # one folder at a time is what builds use; do not hold on to old versions
        _databases[key] = ms.database.JSONDatabase(str(workloads), str(records), allow_missing=False)
    with _databases[key] as database:
        yield database


def read_tuning_info(tuning_dir: str | Path) -> dict:
    path = Path(tuning_dir) / INFO
    if not path.is_file():
        raise TuningError(f"{tuning_dir}: not a tuning folder ({INFO} is missing; make one with `neurosurgeon tune`)")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TuningError(f"{path}: not valid JSON ({err})") from None
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        if info.get("format") == FORMAT and isinstance(info.get("version"), int) and info["version"] < VERSION:
            raise TuningError(f"{path}: made by an older neurosurgeon (tuning format v{info['version']}, this one "
                              f"reads v{VERSION}: CPU builds now offload GEMMs and fold batch norms, so the "
                              "workloads differ); tune again into a new folder")
        raise TuningError(f"{path}: not a {FORMAT} v{VERSION} file")
    return info


def database_sha256(tuning_dir: str | Path) -> str:
    """One digest of the database: the workload file's bytes followed by the record file's."""
    digest = hashlib.sha256()
    for path in _paths(Path(tuning_dir)):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def tuning_identity(tuning_dir: str | Path) -> dict:
    """What a bundle's manifest records about the tuning it was compiled with."""
    info = read_tuning_info(tuning_dir)
    return {"dir": Path(tuning_dir).resolve().name, "preset": info["preset"],
            "database_sha256": database_sha256(tuning_dir), "measured": info["measured"],
            "measured_on": info.get("measured_on"), "unmeasured_reason": info.get("unmeasured_reason")}


def _write_info(out_dir: Path, info: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{INFO}.{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, out_dir / INFO)  # atomic: an interrupted run never leaves a torn file


def _open_info(out_dir: Path, preset: Preset, measured: bool, kernels: str = "blas", measured_on: str | None = None,
               unmeasured_reason: str | None = None) -> dict:
    """The folder's tuning.json, or a new one (written on first use); refuses another preset's folder."""
    import tvm

    target, host = preset.resolved_target()
    if (out_dir / INFO).is_file():
        info = read_tuning_info(out_dir)
        if info["preset"] != preset.name or info["target"] != target or info["host"] != host:
            raise TuningError(f"{out_dir}: holds tuning for {info['preset']} ({info['target']}), not for "
                              f"{preset.name} ({target}); use another folder")
        if info["tvm_version"] != tvm.__version__:
            raise TuningError(f"{out_dir}: tuned with TVM {info['tvm_version']}, this is TVM {tvm.__version__}; "
                              "schedules may not apply: use another folder")
        if preset.device != "cuda" and info.get("kernels") != kernels:
            raise TuningError(f"{out_dir}: tuned with --kernels {info.get('kernels')}, not {kernels}; use another folder")
        if info["measured"] != measured:
            had = f"measured ({info.get('measured_on') or 'here'})" if info["measured"] else "without measurement"
            now = f"measured ({measured_on})" if measured else f"without measurement ({unmeasured_reason})"
            raise TuningError(f"{out_dir}: was tuned {had}, this run would tune {now}; one folder holds one kind "
                              "of schedules: use another folder")
        return info
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise TuningError(f"{out_dir}: exists and is not a tuning folder; refusing to write into it")
    if not out_dir.parent.is_dir():
        raise TuningError(f"{out_dir.parent}: no such folder")
    return {"format": FORMAT, "version": VERSION, "preset": preset.name, "target": target, "host": host,
            "tvm_version": tvm.__version__, "measured": measured, "measured_on": measured_on,
            "unmeasured_reason": None if measured else unmeasured_reason,
            "kernels": kernels if preset.device != "cuda" else None,
            "method": ("MetaSchedule: random candidates for every task, then evolutionary search on the tasks "
                       "that take the time; " + ("timed in-process on this machine" if measured_on == "here" else
                                                 f"timed on the device through TVM RPC ({measured_on})")
                       if measured else
                       "MetaSchedule, random valid schedules (candidates built, not timed: no device here)"),
            "tasks": {}, "runs": []}


# ---------------------------------------------------------------------------------------------
# MetaSchedule plumbing: in-process builder and runners


def _load_tensor_intrinsics(preset: Preset) -> None:
    """Register the tensor intrinsics MetaSchedule's rules may name for this target.

    TuneContext imports tvm.s_tir.tensor_intrin, whose __init__ parses every intrinsic TVM has,
    the CUDA ones taking most of its 25-40 s. A CPU target only needs the CPU ones, so the package
    is registered without running its __init__ and only those submodules are imported."""
    name = "tvm.s_tir.tensor_intrin"
    if preset.device == "cuda" or name in sys.modules:
        importlib.import_module(name)
        importlib.import_module(f"{name}.cuda")  # in case this process registered the CPU ones only
        return
    spec = importlib.util.find_spec(name)
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__file__ = spec.origin
    sys.modules[name] = package
    import tvm.s_tir

    tvm.s_tir.tensor_intrin = package
    for sub in ("x86", "arm_cpu", "riscv_cpu"):
        importlib.import_module(f"{name}.{sub}")


def _tuning_target(preset: Preset, measured: bool, cores: int | None = None):
    """The preset's target plus the limits MetaSchedule's rules size schedules by and refuse to guess.
    CPUs: the core count, this machine's where it is timed here, else the preset's `num-cores` or 4,
    the big-core count of typical phone and single-board SoCs (a Raspberry Pi 4 has 4 Cortex-A72).
    CUDA: the per-block limits every arch from sm_70 on shares (TVM's own A100 and Orin tags say the same)."""
    import tvm

    target, host = preset.resolved_target()
    if preset.device == "cuda":
        target = {"max_threads_per_block": 1024, "max_shared_memory_per_block": 49152, "registers_per_block": 65536,
                  **target}
    else:
        target = {**target, "num-cores": cores or int(target.get("num-cores", 4))}
    return tvm.target.Target(target, host=tvm.target.Target(host) if host else None)


def _cores_here() -> int:
    return len(os.sched_getaffinity(0))


def _count_cpus_without_psutil() -> None:
    """MetaSchedule asks psutil how many CPUs there are (search threads, parallel extents) and fails
    without it; where psutil is missing, answer from the CPUs this process may run on."""
    try:
        import psutil  # noqa: F401

        return
    except ImportError:
        import tvm_ffi

        tvm_ffi.register_global_func("s_tir.meta_schedule.cpu_count",
                                     lambda logical=True: _cores_here(), override=True)


def _parse_rpc_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TuningError(f"--rpc {address!r}: expected HOST:PORT")
    return host, int(port)


class _RemoteDevice:
    """A TVM RPC session to a device (runtime/rpc_server.py running there), reconnected on failure."""

    def __init__(self, address: str, preset: Preset):
        self.address, self.preset = address, preset
        self.host, self.port = _parse_rpc_address(address)
        self.session = None
        self.connect()

    def alive(self) -> bool:
        try:
            self.device().exist  # a round trip
            return True
        except Exception:  # noqa: BLE001
            return False

    def connect(self):
        import gc

        import tvm.rpc

        # The device's server takes one session at a time: drop the old one before asking for a new one.
        self.session = None
        gc.collect()
        try:
            self.session = tvm.rpc.connect(self.host, self.port, session_timeout=0)
            device = self.device()
            if not device.exist:
                raise TuningError(f"the device at {self.address} has no {self.preset.device} device")
        except TuningError:
            raise
        except Exception as err:  # refused, unreachable, not an RPC server
            text = str(err).strip().splitlines()[-1] if str(err).strip() else "no answer"
            why = "connection refused or host unreachable" if "Connect to" in text else f"{type(err).__name__}: {text}"
            raise TuningError(f"no device reachable at {self.address} ({why})") from None
        return self.session

    def device(self):
        return self.session.cuda(0) if self.preset.device == "cuda" else self.session.cpu(0)


def _make_builder_and_runner(measured: bool, device: str, remote: _RemoteDevice | None = None):
    """A builder that compiles candidates in this process (MetaSchedule's own builder starts fresh
    workers that spend 40 s importing TVM's intrinsics and time out), and a runner that times them
    here, on a `remote` device through RPC (each candidate exported with the preset's cross compiler,
    uploaded, loaded and timed there), or that reports a constant where nothing can time them."""
    import numpy as np
    import tvm
    import tvm_ffi
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.runner.config import EvaluatorConfig
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common, run_evaluator_common
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    built: dict[str, object] = {}  # artifact key -> runtime module, for the in-process runner
    counter = itertools.count()
    spent = {"seconds": 0.0}  # time in building and timing candidates, to tell it from search time

    @derived_object
    class InProcessBuilder(ms.builder.PyBuilder):
        def build(self, build_inputs):
            started = time.perf_counter()
            results = []
            for item in build_inputs:
                try:
                    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(item.mod)
                    with _candidate_codegen(device, measured, remote, item.target):
                        module = tvm.tirx.build(mod, target=item.target)
                except Exception as err:  # an invalid candidate: MetaSchedule drops it
                    results.append(ms.builder.BuilderResult(None, f"{type(err).__name__}: {err}"))
                    continue
                key = f"in-process-{next(counter)}"
                if measured:
                    built[key] = module
                results.append(ms.builder.BuilderResult(key, None))
            spent["seconds"] += time.perf_counter() - started
            return results

    config = EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)
    fill = tvm_ffi.get_global_func("tvm.contrib.random.random_fill_for_measure", allow_missing=True)
    if fill is None:
        def fill(tensor):
            tensor.copyfrom(np.random.default_rng(0).uniform(-1, 1, tensor.shape).astype(tensor.dtype))

    @derived_object
    class InProcessRunner(ms.runner.PyRunner):
        def run(self, runner_inputs):
            started = time.perf_counter()
            futures = []
            device = tvm.cpu(0)
            for item in runner_inputs:
                module = built.pop(str(item.artifact_path), None)
                try:
                    args = alloc_argument_common(fill, device, [a.as_json() for a in item.args_info], 1)
                    futures.append(LocalRunnerFuture(res=run_evaluator_common(module, device, config, args)))
                except Exception as err:
                    futures.append(LocalRunnerFuture(error_message=f"{type(err).__name__}: {err}"))
            spent["seconds"] += time.perf_counter() - started
            return futures

    @derived_object
    class RPCRunner(ms.runner.PyRunner):
        def _time(self, path: Path, name: str, item) -> list[float]:
            rng = np.random.default_rng(0)

            def fill_remote(tensor):  # random inputs made here, copied to the device
                tensor.copyfrom(rng.uniform(-1, 1, tuple(tensor.shape)).astype(str(tensor.dtype)))

            session = remote.session
            session.upload(str(path), name)
            try:
                module = session.load_module(name)
                dev = remote.device()
                args = alloc_argument_common(fill_remote, dev, [a.as_json() for a in item.args_info], 1)
                return run_evaluator_common(module, dev, config, args)
            finally:
                session.remove(name)

        def run(self, runner_inputs):
            started = time.perf_counter()
            futures = []
            fcompile = tvm.support.cc.cross_compiler(remote.preset.cxx)

            with tempfile.TemporaryDirectory(prefix="neurosurgeon-rpc-") as tmp:
                for item in runner_inputs:
                    module = built.pop(str(item.artifact_path), None)
                    name = f"candidate{next(counter)}.so"  # a fresh name: the device caches loaded libraries by path
                    try:
                        module.export_library(str(Path(tmp) / name), fcompile=fcompile)
                        for attempt in (0, 1):  # one reconnection if the session dropped
                            try:
                                futures.append(LocalRunnerFuture(res=self._time(Path(tmp) / name, name, item)))
                                break
                            except Exception:
                                if attempt or remote.alive():
                                    raise  # the candidate failed, not the link
                                remote.connect()
                    except Exception as err:
                        if os.environ.get("NEUROSURGEON_DEBUG_RPC"):
                            print(f"rpc candidate failed: {type(err).__name__}: {err}", file=sys.stderr)
                        futures.append(LocalRunnerFuture(error_message=f"{type(err).__name__}: {err}"))
            spent["seconds"] += time.perf_counter() - started
            return futures

    @derived_object
    class ConstantRunner(ms.runner.PyRunner):
        def run(self, runner_inputs):
            return [LocalRunnerFuture(res=[1.0]) for _ in runner_inputs]

    if not measured:
        runner = ConstantRunner()
    else:
        runner = RPCRunner() if remote is not None else InProcessRunner()
    return InProcessBuilder(), runner, spent


def _candidate_codegen(device: str, measured: bool, remote, target):
    """How candidates are compiled: CPU code as is; CUDA kernels that nothing will run only as far as
    their source (they only need to lower); CUDA kernels for a device reached through RPC with nvcc for
    its arch, since the device's runtime cannot compile source (and this machine may have no driver);
    CUDA kernels timed here as TVM compiles them for the GPU it finds."""
    if device == "cuda" and not measured:
        return _cuda_source_only(device)
    if device == "cuda" and remote is not None:
        from .cuda import nvcc_device_compile

        return nvcc_device_compile(target)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _cuda_source_only(device: str):
    """Candidate CUDA kernels are built only to check they lower: keep the source, skip nvcc/NVRTC."""
    if device != "cuda":
        yield
        return
    previous = os.environ.get("TVM_COMPILE_FORCE_FALLBACK")
    os.environ["TVM_COMPILE_FORCE_FALLBACK"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TVM_COMPILE_FORCE_FALLBACK", None)
        else:
            os.environ["TVM_COMPILE_FORCE_FALLBACK"] = previous


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


# ---------------------------------------------------------------------------------------------
# Tuning


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


def tune(model: str | Path | onnx.ModelProto, preset_name: str, out_dir: str | Path, budget_s: float,
         input_shapes: dict | None = None, trials_per_task: int | None = None, progress: bool = True,
         whole_model: bool = False, name: str | None = None, kernels: str = "blas",
         rpc: str | None = None) -> TuneReport:
    """Tune the distinct workloads of `model`'s segments for a preset into `out_dir`, within `budget_s`.

    Rounds: every task first gets a few random candidates (a task with no record would stay naive),
    then the tasks that take most of the time are refined by evolutionary search up to
    `trials_per_task`, heaviest first. Workloads already tuned in the folder (by an earlier run, or
    for another model) are skipped. The budget is checked between tasks: a task starts only if the
    time spent plus its expected time fits, so a budget-bound or interrupted run keeps every task it
    finished and the next run resumes. `whole_model` also tunes the unsplit model's workloads (for a
    monolithic build to compare against)."""
    from .pipeline import analyse

    started = time.perf_counter()
    if not budget_s > 0:
        raise TuningError(f"the budget must be a positive number of seconds, got {budget_s:g}")
    preset = get_preset(preset_name)
    remote, unmeasured_reason = None, None
    if rpc:
        _parse_rpc_address(rpc)  # a malformed address is a usage error, not an unreachable device
        try:
            remote = _RemoteDevice(rpc, preset)
        except TuningError as err:  # no device: tune without measuring, and say so (folder, manifest)
            unmeasured_reason = f"{err}; fell back to tuning without measurement"
            print(f"warning: {unmeasured_reason}", file=sys.stderr)
    elif not preset.runs_here():
        unmeasured_reason = f"{preset.name} cannot run here and no device was given (--rpc HOST:PORT)"
    measured = remote is not None or (preset.runs_here() and not rpc)
    measured_on = f"rpc://{rpc}" if remote is not None else ("here" if measured else None)
    trials = trials_per_task or DEFAULT_TRIALS[measured]
    if trials < 1:
        raise TuningError(f"trials per task must be at least 1, got {trials}")
    out_dir = Path(out_dir)
    info = _open_info(out_dir, preset, measured, kernels, measured_on, unmeasured_reason)  # refuse a wrong folder early

    frozen, _graph, plan = analyse(model, input_shapes, name=name)
    graphs = [(f"segment {s.index}", s.model, s.inputs) for s in plan.segments]
    if whole_model:
        graphs.append(("whole model", frozen.model, frozen.inputs))
    workloads = extract_workloads(graphs, preset, kernels)

    _load_tensor_intrinsics(preset)
    _count_cpus_without_psutil()
    from tvm.s_tir import meta_schedule as ms

    run = {"model": frozen.name, "model_sha256": frozen.sha256, "started_unix": int(time.time()),
           "trials_per_task": trials, "budget_s": budget_s, "tasks": len(workloads), "measured_on": measured_on}
    if unmeasured_reason:
        run["unmeasured_reason"] = unmeasured_reason
    info["runs"].append(run)
    for w in workloads:  # where each workload comes from, also for those tuned before
        entry = info["tasks"].setdefault(w.key, {"name": w.name, "flops": w.flops, "trials": 0, "seconds": 0.0,
                                                 "models": []})
        if frozen.name not in entry["models"]:
            entry["models"].append(frozen.name)
    _write_info(out_dir, info)

    workload_file, record_file = _paths(out_dir)
    database = ms.database.JSONDatabase(str(workload_file), str(record_file), allow_missing=True)
    target = _tuning_target(preset, measured, _cores_here() if measured_on == "here" else None)
    for w in workloads:  # trials only count if the database still holds a valid record for them
        if _best_seconds(database, w, target) is None:
            info["tasks"][w.key]["trials"] = 0
            info["tasks"][w.key].pop("best_us", None)
    rounds = _round_targets(trials, measured)
    skipped = {w.key for w in workloads
               if info["tasks"][w.key]["trials"] >= _goals(workloads, info, rounds, measured)[w.key]}
    run["skipped"] = len(skipped)

    if measured_on == "here":
        # TVM's thread pool assumes x86 cores are hyper-threads and uses half of them unless told:
        # time candidates on all the cores their parallel loops were sized for (the runtime should
        # set the same).
        os.environ.setdefault("TVM_NUM_THREADS", str(_cores_here()))
    builder, runner, measuring = _make_builder_and_runner(measured, preset.device, remote)
    if measured and preset.device != "cuda" and kernels != "naive":
        _commit_default_schedules(workloads, info, database, builder, runner, target)
        _write_info(out_dir, info)
    search_seconds: list[float] = []  # per task run: its time outside building and timing candidates
    trials_run = 0
    tuned: set[str] = set()
    out_of_budget = False
    bar = _progress_bar(progress, f"tuning {preset.name}")
    try:
        with _quiet_meta_schedule(), tempfile.TemporaryDirectory(prefix="neurosurgeon-tune-") as logs:
            # One more pass at the last goal: as refined tasks get faster, a task left at its first
            # round's trials can grow past REFINE_SHARE of the total and become worth refining.
            for number, goal in enumerate(rounds + rounds[-1:]):
                goals = _goals(workloads, info, rounds, measured)
                jobs = [w for w in workloads if info["tasks"][w.key]["trials"] < min(goal, goals[w.key])]
                # Heaviest first (measured time, else FLOPs): what the budget leaves out costs least.
                jobs.sort(key=lambda w: (info["tasks"][w.key].get("best_us", 0.0) * w.weight, w.flops * w.weight),
                          reverse=True)
                bar.total = (bar.total or 0) + len(jobs)
                bar.refresh()
                for w in jobs:
                    entry = info["tasks"][w.key]
                    todo = goal - entry["trials"]
                    # Random candidates first (no search step); evolutionary search, seeded with the
                    # best measured ones, once there is something to breed from.
                    strategy = "evolutionary" if measured and number > 0 else "replay-trace"
                    if strategy == "evolutionary" and search_seconds:
                        expected = (sum(search_seconds) / len(search_seconds)
                                    + todo * measuring["seconds"] / max(1, trials_run))
                    else:
                        expected = (_PRIOR_SEARCH_S if strategy == "evolutionary" else 0.0) + todo * _PRIOR_TRIAL_S
                    if time.perf_counter() - started + expected > budget_s:
                        out_of_budget = True
                        break
                    bar.set_postfix_str(f"{w.name} +{todo} trials", refresh=True)
                    task_started, measuring_before = time.perf_counter(), measuring["seconds"]
                    context = ms.TuneContext(mod=w.mod, target=target, space_generator="post-order-apply",
                                             search_strategy=_search_strategy(strategy, measured),
                                             task_name=w.name,
                                             num_threads=_cores_here(),
                                             logger=logging.getLogger("tvm.s_tir.meta_schedule.neurosurgeon"))
                    ms.tune_tasks(tasks=[context], task_weights=[1.0], work_dir=logs, max_trials_global=todo,
                                  max_trials_per_task=todo, num_trials_per_iter=min(todo, 32), builder=builder,
                                  runner=runner, database=database, cost_model=_cost_model(measured),
                                  measure_callbacks=[ms.measure_callback.AddToDatabase(),
                                                     ms.measure_callback.UpdateCostModel()],
                                  task_scheduler="round-robin")
                    seconds = time.perf_counter() - task_started
                    if strategy == "evolutionary":
                        search_seconds.append(seconds - (measuring["seconds"] - measuring_before))
                    trials_run += todo
                    tuned.add(w.key)
                    best = _best_seconds(database, w, target)
                    if best is not None:  # else every candidate failed: the task stays to do
                        entry["trials"] = goal
                        if measured:
                            entry["best_us"] = round(best * 1e6, 2)
                    entry["seconds"] = round(entry["seconds"] + seconds, 2)
                    run["seconds"] = round(time.perf_counter() - started, 1)
                    _write_info(out_dir, info)
                    bar.update(1)
                if out_of_budget:
                    break
    finally:
        bar.close()

    goals = _goals(workloads, info, rounds, measured)
    remaining = sum(1 for w in workloads if info["tasks"][w.key]["trials"] < goals[w.key])
    seconds = time.perf_counter() - started
    run.update(seconds=round(seconds, 1), tuned=len(tuned), trials=trials_run, remaining=remaining)
    _write_info(out_dir, info)
    return TuneReport(out_dir, preset.name, measured, len(workloads), len(tuned), len(skipped), remaining, trials_run,
                      seconds, remaining == 0, measured_on, unmeasured_reason)


def _commit_default_schedules(workloads: list[Workload], info: dict, database, builder, runner, target) -> int:
    """Candidate zero of every CPU task: neurosurgeon's own schedule (the rule untuned builds use),
    timed like any candidate and committed to the database. A tuned build then takes, per kernel,
    whichever is faster, and is never slower than the untuned build because a search with few
    trials found nothing better. Records `default_us` per task; returns how many were committed."""
    from tvm.s_tir import meta_schedule as ms

    from .kernels import parallel_loops_rule

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
        info["tasks"][w.key]["default_us"] = round(min(seconds) * 1e6, 2)
        committed += 1
    return committed


def _best_seconds(database, workload: Workload, target) -> float | None:
    """The best valid time the database holds for a workload (MetaSchedule records failed candidates
    as 1e10 s), or None."""
    record = database.query_tuning_record(workload.mod, target, workload.name)
    if record is None or not record.run_secs:
        return None
    best = min(float(s) for s in record.run_secs)
    return best if best < 1e9 else None


def _progress_bar(enabled: bool, label: str):
    from tqdm import tqdm

    # The total grows round by round: which tasks are refined depends on the first round's times.
    return tqdm(total=0, desc=label, unit="task", file=sys.stderr, dynamic_ncols=True, disable=not enabled)
