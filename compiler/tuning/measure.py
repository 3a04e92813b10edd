"""Measuring candidates: MetaSchedule's builder and runners made for this project, and the board a
target that does not run here is timed on, through TVM RPC.

- The builder compiles candidates in this process (MetaSchedule's own starts fresh workers that
  spend 40 s importing TVM's tensor intrinsics and time out), each first in a forked child with a
  deadline (`within_deadline`): LLVM never finishes some candidates (one of AlexNet's LRN poolings
  held a whole tuning run for over 13 minutes), and those are dropped as invalid.
- The runner times them here (targets that run on this machine), on a board through RPC (each
  candidate exported with the preset's cross compiler, uploaded, loaded and timed there: the
  board runs runtime/rpc_server.py, runtime only), or reports a constant where nothing can time
  them (random valid schedules, recorded as unmeasured).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import itertools
import os
import select
import signal
import sys
import tempfile
import time
import types
from pathlib import Path

from ...runtime.threads import cores_here
from ...targets import Preset
from .folder import TuningError

__all__ = ["CANDIDATE_BUILD_S", "RemoteBoard", "count_cpus_without_psutil", "declare_pool_rules", "environment_variable",
           "load_tensor_intrinsics", "make_builder_and_runner", "parse_rpc_address", "tuning_target",
           "within_deadline"]

# A candidate's compile takes 0.1-3 s (nvcc included); one that takes longer does not end. At 60 s, DeepFace's
# softmax task spent 440 s on 32 trials (about seven such candidates), twice the run's budget of 240 s.
CANDIDATE_BUILD_S = 20.0


def load_tensor_intrinsics(preset: Preset) -> None:
    """Register the tensor intrinsics MetaSchedule's rules may name for this target.

    TuneContext imports tvm.s_tir.tensor_intrin, whose __init__ parses every intrinsic TVM has,
    the CUDA ones taking most of its 25-40 s. A CPU target only needs the CPU ones, so the package
    is registered without running its __init__ and only those submodules are imported."""
    name = "tvm.s_tir.tensor_intrin"
    if preset.device == "cuda":
        importlib.import_module(name)
        importlib.import_module(f"{name}.cuda")  # in case this process registered the CPU ones only
        return
    if name not in sys.modules:  # else registered already: in full, or the CPU ones by an earlier call
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


def tuning_target(preset: Preset, measured: bool, cores: int | None = None):
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


def count_cpus_without_psutil() -> None:
    """MetaSchedule asks psutil how many CPUs there are (search threads, parallel extents) and fails
    without it; where psutil is missing, answer from the CPUs this process may run on."""
    try:
        import psutil  # noqa: F401

        return
    except ImportError:
        import tvm_ffi

        tvm_ffi.register_global_func("s_tir.meta_schedule.cpu_count",
                                     lambda logical=True: cores_here(), override=True)


def declare_pool_rules(target) -> None:
    """Relax's legalized poolings carry a `schedule_rule` annotation (meta_schedule.pool_max,
    pool_avg) that TVM registers rules for on no target; MetaSchedule then leaves such a block as it
    is and logs a warning for every design space it builds (a dozen lines per tuned model). Declare
    those rules as the same no-op, so the search is unchanged and the log stays readable."""
    import tvm_ffi

    for key in target.keys:
        for rule in ("pool_max", "pool_avg"):
            name = f"s_tir.meta_schedule.{key}.meta_schedule.{rule}"
            if tvm_ffi.get_global_func(name, allow_missing=True) is None:
                tvm_ffi.register_global_func(name, lambda sch, block: [sch])


def parse_rpc_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TuningError(f"--rpc {address!r}: expected HOST:PORT")
    return host, int(port)


class RemoteBoard:
    """A TVM RPC session to a board (runtime/rpc_server.py running there), reconnected on failure."""

    def __init__(self, address: str, preset: Preset):
        self.address, self.preset = address, preset
        self.host, self.port = parse_rpc_address(address)
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

        # The board's server takes one session at a time: drop the old one before asking for a new one.
        self.session = None
        gc.collect()
        try:
            self.session = tvm.rpc.connect(self.host, self.port, session_timeout=0)
            device = self.device()
            if not device.exist:
                raise TuningError(f"the board at {self.address} has no {self.preset.device} device")
        except TuningError:
            raise
        except Exception as err:  # refused, unreachable, not an RPC server
            text = str(err).strip().splitlines()[-1] if str(err).strip() else "no answer"
            why = "connection refused or host unreachable" if "Connect to" in text else f"{type(err).__name__}: {text}"
            raise TuningError(f"no board reachable at {self.address} ({why})") from None
        return self.session

    def device(self):
        """The board's TVM device (its CPU, or its GPU for a CUDA preset)."""
        return self.session.cuda(0) if self.preset.device == "cuda" else self.session.cpu(0)


def within_deadline(items, build, seconds: float):
    """Yield (item, None) for each of `items` that `build(item)` finishes (or fails) within `seconds`
    in a forked child, (item, why not) for one that does not, in order. The caller builds each item
    that passed again in its own process while the child goes on to the next: compiled code cannot
    cross processes, and a build stuck in LLVM cannot be interrupted except by ending its process. A
    child that hangs is killed and the next one takes the rest."""
    items = list(items)
    start = 0
    while start < len(items):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: build, report each, never return into the caller's code
            os.close(read)
            try:
                for index in range(start, len(items)):
                    try:
                        build(items[index])
                    except BaseException:  # noqa: BLE001 - an invalid candidate: the caller's build says why
                        pass
                    os.write(write, f"{index}\n".encode())
            finally:
                os._exit(0)
        os.close(write)
        pending = b""
        try:
            while start < len(items):
                ready, _, _ = select.select([read], [], [], seconds)
                chunk = os.read(read, 4096) if ready else b""
                if not chunk:  # the deadline passed, or the child died on this item
                    why = (f"its compile took over {seconds:.0f} s" if not ready
                           else "its compile ended the process that ran it")
                    yield items[start], why
                    start += 1
                    break
                pending += chunk
                *done, pending = pending.split(b"\n")
                for _ in done:
                    yield items[start], None
                    start += 1
        finally:
            os.close(read)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def make_builder_and_runner(measured: bool, device: str, remote: RemoteBoard | None = None):
    """A builder that compiles candidates in this process (MetaSchedule's own builder starts fresh
    workers that spend 40 s importing TVM's intrinsics and time out), and a runner that times them
    here, on a `remote` board through RPC (each candidate exported with the preset's cross compiler,
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

    from ..kernels import cpu_tir_pipeline

    def pipeline(target):  # the candidates are lowered as the build will lower them
        return cpu_tir_pipeline() if target.kind.name == "llvm" else None

    built: dict[str, object] = {}  # artifact key -> runtime module, for the in-process runner
    counter = itertools.count()
    spent = {"seconds": 0.0}  # time in building and timing candidates, to tell it from search time

    @derived_object
    class InProcessBuilder(ms.builder.PyBuilder):
        def build(self, build_inputs):
            started = time.perf_counter()
            results = []

            def compile_candidate(item):
                mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(item.mod)
                with _candidate_codegen(device, measured, remote, item.target):
                    return tvm.tirx.build(mod, target=item.target, pipeline=pipeline(item.target))

            for item, stuck in within_deadline(build_inputs, compile_candidate, CANDIDATE_BUILD_S):
                try:
                    if stuck:
                        raise TimeoutError(stuck)
                    module = compile_candidate(item)
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

            def fill_remote(tensor):  # random inputs made here, copied to the board
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
                    name = f"candidate{next(counter)}.so"  # a fresh name: the board caches loaded libraries by path
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
    their source (they only need to lower); CUDA kernels for a board reached through RPC with nvcc for
    its arch, since the board's runtime cannot compile source (and this machine may have no driver);
    CUDA kernels timed here as TVM compiles them for the GPU it finds."""
    if device == "cuda" and not measured:
        return _cuda_source_only(device)
    if device == "cuda" and remote is not None:
        from ..cuda import nvcc_device_compile

        return nvcc_device_compile(target)
    return contextlib.nullcontext()


@contextlib.contextmanager
def environment_variable(name: str, value: str | None):
    """`name` set to `value` inside the block (None: left as it is), restored after."""
    previous = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _cuda_source_only(device: str):
    """Candidate CUDA kernels are built only to check they lower: keep the source, skip nvcc/NVRTC."""
    return environment_variable("TVM_COMPILE_FORCE_FALLBACK", "1" if device == "cuda" else None)
