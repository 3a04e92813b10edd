"""Time prebuilt code on the machine this runs on (the mobile side or the server). Runtime-only, like the
rest of runtime/: numpy, the standard library and TVM's runtime library.

- `time_segments`: a bundle's own segments, the "measured" costs the planner can use directly.
- `profile_kit`: a profile kit's layer microbenchmarks (Neurosurgeon's deployment phase), written
  incrementally to a profile that the per-layer-type cost models are fitted on.
"""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from . import tvm_lib
from .bundle import Bundle, SegmentExecutor, load_artifact, to_device
from .errors import BundleError, NeurosurgeonError
from .jsonfile import JsonFormat
from .progress import Progress, human_seconds
from .tensors import random_inputs
from .threads import blas_config, requested_threads

__all__ = ["KIT_FILE", "KIT_FORMAT", "PROFILE_FORMAT", "ProfileError", "hardware_info", "profile_kit", "read_kit",
           "segment_samples", "time_calls", "time_segments"]


class ProfileError(NeurosurgeonError):
    """A kit or profile that cannot be used: wrong format, tampered artifact, another machine's file."""


KIT_FILE = "kit.json"
KIT_FORMAT = JsonFormat("neurosurgeon-profile-kit", 1, "neurosurgeon profile kit", ProfileError,
                        hint="build the kit again with `neurosurgeon profile --kit-only`", file=KIT_FILE,
                        folder="profile kit", made_by="`neurosurgeon profile --kit-only`")
PROFILE_FORMAT = JsonFormat("neurosurgeon-profile", 1, "neurosurgeon profile", ProfileError,
                            hint="profile again with this neurosurgeon's kit")


WARMUP_PASSES, WARMUP_S = 3, 0.3


def time_segments(bundle: Bundle, side: str, repeats: int = 5, seed: int = 0,
                  executor: SegmentExecutor | None = None) -> list[float]:
    """Median seconds of each segment (`segment_samples`)."""
    return [float(np.median(samples)) for samples in segment_samples(bundle, side, repeats, seed, executor)]


def segment_samples(bundle: Bundle, side: str, repeats: int = 5, seed: int = 0,
                    executor: SegmentExecutor | None = None) -> list[list[float]]:
    """`repeats` timed runs of each segment, in seconds, after warm-up passes of the whole chain (that
    also produce every segment's real inputs). Each run ends when its device has finished (a GPU runs
    kernels asynchronously).

    One warm-up pass is not enough: in a fresh process the first calls pay for thread pools starting,
    buffers first touched and the CPU's clock rising (AlexNet's conv1 took 16-20 ms for its first five
    calls there, then 0.4 ms): the chain runs at least WARMUP_PASSES times and WARMUP_S seconds."""
    executor = executor or SegmentExecutor(bundle, side)
    feeds = random_inputs(bundle.inputs, seed)
    started, passes = time.perf_counter(), 0
    while passes < WARMUP_PASSES or (time.perf_counter() - started < WARMUP_S and passes < 100):
        env = executor.run(dict(feeds), range(len(bundle.segments)))
        executor.sync()
        passes += 1
    return [time_calls(lambda i=index: executor.run(dict(env), (i,)), sync=executor.sync, repeats=repeats,
                       warmup=0)[0] for index in range(len(bundle.segments))]


# -- profile kits --------------------------------------------------------------------------------

def read_kit(kit_dir: str | Path) -> dict:
    """A kit's kit.json, checked for format and version."""
    return KIT_FORMAT.read_folder(kit_dir)


def hardware_info(device: str = "cpu") -> dict:
    """What the timings depend on besides the code: CPU (and GPU), cores, the CPU quota, TVM."""
    info = {
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_quota": _cpu_quota(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "threads": requested_threads(),  # NEUROSURGEON_THREADS or every usable core (runtime/threads.py)
        "blas": blas_config(),
        "device": device,
    }
    try:
        info["tvm_runtime_version"] = tvm_lib.version()
        if device == "cuda":
            from .cuda import cuda_device

            info["gpu"] = tvm_lib.device_name(cuda_device())
    except Exception:  # the hardware record is informative; never fail a profile over it
        pass
    return info


def _cpu_model() -> str:
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            name, sep, value = line.partition(":")
            if sep and value.strip():
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    for name in ("model name", "Model", "Hardware", "cpu model"):  # x86; Raspberry Pi; older ARM; MIPS
        if name in fields:
            return fields[name]
    if "CPU part" in fields:  # ARM without a name: implementer and part number identify the core
        return f"ARM implementer {fields.get('CPU implementer', '?')} part {fields['CPU part']}"
    try:
        return Path("/proc/device-tree/model").read_text(errors="replace").strip("\0\n ")
    except OSError:
        return platform.processor() or "unknown"


def _cpu_quota() -> str | None:
    """cgroup v2 CPU limit of this process, e.g. "25000 100000" (a quarter of a core), or None."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                value = (Path("/sys/fs/cgroup") / line[3:].lstrip("/") / "cpu.max").read_text().strip()
                return None if value.startswith("max") else value
    except OSError:
        pass
    return None


def profile_kit(kit_dir: str | Path, out_path: str | Path, budget_s: float | None = None, repeats: int = 7,
                warmup: int = 2, progress: bool = True, *, min_sample_s: float = 5e-3, max_entry_s: float = 10.0,
                seed: int = 0) -> dict:
    """Time every microbenchmark of a kit here; return the profile, also written to `out_path`.

    Each layer runs `warmup` times, then `repeats` timed samples; a sample times enough back-to-back
    calls to last `min_sample_s` (tiny layers are otherwise below timer and call-overhead noise) and
    records seconds per call; `seconds` is the median. Layers so slow that the samples would take
    more than `max_entry_s` get fewer samples (at least 3) and one warm-up. The profile is
    rewritten atomically after every layer; an existing `out_path` from the same kit and machine
    is resumed (its layers are not measured again). With `budget_s`, stops cleanly before the
    layer that would start after the budget is spent (a layer cut off mid-way is dropped).
    """
    started = time.perf_counter()
    deadline = started + budget_s if budget_s is not None else math.inf
    if repeats < 1 or warmup < 0:
        raise ProfileError(f"repeats must be >= 1 and warmup >= 0 (got {repeats}, {warmup})")
    kit_dir, out_path = Path(kit_dir), Path(out_path)
    kit = read_kit(kit_dir)
    target = kit["target"]
    if target["machine"] != platform.machine():
        raise ProfileError(f"{kit_dir}: kit built for {target['name']} ({target['machine']}), "
                           f"this machine is {platform.machine()}")
    if target["device"] == "cuda":
        from .cuda import cuda_device

        device = cuda_device()
    else:
        device = tvm_lib.cpu()
    profile = _start_profile(kit, out_path, hardware_info(target["device"]))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    profile["settings"] = {"repeats": repeats, "warmup": warmup, "min_sample_s": min_sample_s,
                           "max_entry_s": max_entry_s, "statistic": "median seconds per call"}
    done = {s["key"] for s in profile["samples"]}
    todo = [e for e in kit["entries"] if e["key"] not in done]
    rng = np.random.default_rng(seed)
    stopped = False
    with Progress(len(kit["entries"]), f"profiling {target['name']}", unit="layer", enabled=progress,
                  done=len(done)) as report:
        if done:
            report.message(f"resuming: {len(done)} of {len(kit['entries'])} microbenchmarks already measured")
        for entry in todo:
            if time.perf_counter() >= deadline:
                stopped = True
                break
            function = _load(kit_dir, entry, device)
            args = [to_device(_random(rng, t), device) for t in entry["inputs"]]
            timed = time_calls(function, args, lambda: tvm_lib.sync(device), repeats, warmup, min_sample_s, max_entry_s, deadline)
            del function, args  # unload before the next artifact: a kit's weights add up to hundreds of MB
            if timed is None:
                stopped = True
                break
            samples, inner = timed
            seconds = float(np.median(samples))
            profile["samples"].append({
                **{k: entry[k] for k in ("key", "type", "config", "flops", "in_bytes", "out_bytes", "features")},
                "seconds": seconds, "samples": samples, "calls_per_sample": inner,
            })
            profile["complete"] = len(profile["samples"]) == len(kit["entries"])
            profile["updated_unix"] = int(time.time())
            PROFILE_FORMAT.write(out_path, profile)
            report.update(note=f"{human_seconds(seconds):>9}  {entry['key']}")
    profile["complete"] = len(profile["samples"]) == len(kit["entries"])
    PROFILE_FORMAT.write(out_path, profile)
    if progress:
        measured = len(profile["samples"]) - len(done)
        if stopped:
            report.message(f"budget of {budget_s:g} s used up: measured {measured} this run, {len(profile['samples'])} "
                           f"of {len(kit['entries'])} in all; run again with the same output to measure the rest")
        else:
            report.message(f"measured {measured} this run, {len(profile['samples'])} of {len(kit['entries'])} in all, "
                           f"in {time.perf_counter() - started:.1f} s -> {out_path}")
    return profile


def _start_profile(kit: dict, out_path: Path, hardware: dict) -> dict:
    """A fresh profile, or the one at `out_path` if it comes from the same kit on the same machine."""
    fresh = {**PROFILE_FORMAT.stamp(), "target": kit["target"], "hardware": hardware,
             "tvm_version": kit["tvm_version"], "kit_id": kit["kit_id"], "complete": False,
             "created_unix": int(time.time()), "samples": []}
    if not out_path.exists():
        return fresh
    try:
        old = PROFILE_FORMAT.read(out_path)
    except ProfileError as err:
        raise ProfileError(f"{err}; refusing to overwrite it (move it away or choose another output)") from None
    if old.get("kit_id") != kit["kit_id"]:
        raise ProfileError(f"{out_path}: measured with kit {old.get('kit_id')}, this kit is {kit['kit_id']}; "
                           "choose another output to profile this kit")
    theirs = {k: (old.get("hardware") or {}).get(k) for k in ("machine", "cpu", "cores", "device")}
    ours = {k: hardware.get(k) for k in theirs}
    if theirs != ours:
        raise ProfileError(f"{out_path}: measured on other hardware ({theirs}, this is {ours}); "
                           "choose another output to profile this machine")
    keys = {e["key"] for e in kit["entries"]}
    return {**fresh, "created_unix": old.get("created_unix", fresh["created_unix"]),
            "samples": [s for s in old.get("samples", []) if s.get("key") in keys]}


def _load(kit_dir: Path, entry: dict, device):
    """The entry's `main` (its artifact checked against kit.json's sha256 first)."""
    try:
        return load_artifact(kit_dir / entry["file"], device, entry["sha256"],
                             f"artifact of microbenchmark {entry['key']}", "kit.json")
    except BundleError as err:
        raise ProfileError(str(err)) from None


def _random(rng: np.random.Generator, spec: dict) -> np.ndarray:
    dtype = np.dtype(spec["dtype"])
    if dtype.kind == "f":
        return rng.standard_normal(spec["shape"]).astype(dtype)
    return np.zeros(spec["shape"], dtype=dtype)  # indices and the like: zeros are valid everywhere


def time_calls(function, args=(), sync=lambda: None, repeats: int = 5, warmup: int = 1, min_sample_s: float = 0.0,
               max_entry_s: float = math.inf, deadline: float = math.inf) -> tuple[list[float], int] | None:
    """Per-call seconds of `repeats` samples of `function(*args)` (then `sync()`, for devices that
    run asynchronously), and the calls per sample; None if `deadline` (perf_counter) passed.

    `warmup` untimed calls come first (at least one, which also calibrates; stopped early for slow
    functions, which are warm after one call). A sample repeats the call back to back until it
    lasts `min_sample_s` (tiny functions are otherwise below timer noise); functions so slow that
    the samples would take more than `max_entry_s` get fewer samples (at least 3)."""
    def once() -> float:
        start = time.perf_counter()
        function(*args)
        sync()
        return time.perf_counter() - start

    # Warm-up (at least one call, which also calibrates): stop early for slow layers, which are
    # warm after one call and would otherwise spend seconds here.
    spent, last = 0.0, 0.0
    for _ in range(max(1, warmup)):
        last = once()
        spent += last
        if spent > 1.0 or time.perf_counter() >= deadline:
            break
    inner = max(1, min(100_000, math.ceil(min_sample_s / max(last, 1e-9))))
    count = repeats
    if last * inner * repeats > max_entry_s:
        count = max(min(3, repeats), int(max_entry_s / (last * inner)))
    samples = []
    for _ in range(count):
        if time.perf_counter() >= deadline:
            return None
        start = time.perf_counter()
        for _ in range(inner):
            function(*args)
        sync()
        samples.append((time.perf_counter() - start) / inner)
    return samples, inner
