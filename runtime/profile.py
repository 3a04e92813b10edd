"""Time prebuilt code on the machine this runs on (the device or the server). Runtime-only, like the
rest of runtime/: numpy, the standard library and TVM's runtime library.

- `time_segments`: a bundle's own segments, the "measured" costs the planner can use directly.
- `profile_kit`: a profile kit's layer microbenchmarks (Neurosurgeon's deployment phase), written
  incrementally to a profile that the per-layer-type cost models are fitted on.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from . import kernels
from .bundle import Bundle, SegmentExecutor, sha256_file
from .errors import NeurosurgeonError

KIT_FORMAT = "neurosurgeon-profile-kit"
KIT_VERSION = 1
KIT_FILE = "kit.json"
PROFILE_FORMAT = "neurosurgeon-profile"
PROFILE_VERSION = 1


class ProfileError(NeurosurgeonError):
    """A kit or profile that cannot be used: wrong format, tampered artifact, another machine's file."""


def time_segments(bundle: Bundle, side: str, repeats: int = 5, seed: int = 0) -> list[float]:
    """Median seconds of each segment over `repeats` runs, after one warm-up pass of the whole chain
    that also produces every segment's real inputs."""
    executor = SegmentExecutor(bundle, side)
    rng = np.random.default_rng(seed)
    env: dict = {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in bundle.inputs}
    executor.run(env, range(len(bundle.segments)))
    medians = []
    for index in range(len(bundle.segments)):
        samples = []
        for _ in range(repeats):
            scratch = dict(env)
            started = time.perf_counter()
            executor.run(scratch, (index,))
            samples.append(time.perf_counter() - started)
        medians.append(float(np.median(samples)))
    return medians


# -- profile kits --------------------------------------------------------------------------------

def read_kit(kit_dir: str | Path) -> dict:
    """A kit's kit.json, checked for format and version."""
    path = Path(kit_dir) / KIT_FILE
    if not path.is_file():
        raise ProfileError(f"{kit_dir}: not a profile kit ({KIT_FILE} is missing)")
    try:
        kit = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProfileError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(kit, dict) or kit.get("format") != KIT_FORMAT:
        raise ProfileError(f"{path}: not a neurosurgeon profile kit")
    if kit.get("version") != KIT_VERSION:
        raise ProfileError(f"{path}: kit version {kit.get('version')} is not readable by this runtime "
                           f"(reads {KIT_VERSION})")
    return kit


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
        "tvm_num_threads": os.environ.get("TVM_NUM_THREADS"),
        "device": device,
    }
    try:
        import tvm

        info["tvm_runtime_version"] = tvm.__version__
        if device == "cuda":
            info["gpu"] = tvm.cuda(0).device_name
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
    import tvm
    import tvm.runtime.vm  # not imported by `import tvm` in runtime-only mode (TVM_USE_RUNTIME_LIB=1)

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
        from .cuda import load_cuda_runtime

        load_cuda_runtime()
    device = tvm.cuda(0) if target["device"] == "cuda" else tvm.cpu(0)
    profile = _start_profile(kit, out_path, hardware_info(target["device"]))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    profile["settings"] = {"repeats": repeats, "warmup": warmup, "min_sample_s": min_sample_s,
                           "max_entry_s": max_entry_s, "statistic": "median seconds per call"}
    done = {s["key"] for s in profile["samples"]}
    todo = [e for e in kit["entries"] if e["key"] not in done]
    report = _Progress(len(kit["entries"]), len(done), progress)
    rng = np.random.default_rng(seed)
    stopped = False
    for entry in todo:
        if time.perf_counter() >= deadline:
            stopped = True
            break
        function = _load(tvm, kit_dir, entry, device)
        args = [tvm.runtime.tensor(_random(rng, t), device) for t in entry["inputs"]]
        timed = _time_calls(function, args, device.sync, repeats, warmup, min_sample_s, max_entry_s, deadline)
        del function, args  # unload before the next artifact: a kit's weights add up to hundreds of MB
        if timed is None:
            stopped = True
            break
        samples, inner = timed
        profile["samples"].append({
            **{k: entry[k] for k in ("key", "type", "config", "flops", "in_bytes", "out_bytes", "features")},
            "seconds": float(np.median(samples)), "samples": samples, "calls_per_sample": inner,
        })
        profile["complete"] = len(profile["samples"]) == len(kit["entries"])
        profile["updated_unix"] = int(time.time())
        _write_json(out_path, profile)
        report.step(entry["key"], profile["samples"][-1]["seconds"], time.perf_counter() - started, budget_s)
    profile["complete"] = len(profile["samples"]) == len(kit["entries"])
    _write_json(out_path, profile)
    report.close(len(profile["samples"]) - len(done), stopped, time.perf_counter() - started, budget_s, out_path)
    return profile


def _start_profile(kit: dict, out_path: Path, hardware: dict) -> dict:
    """A fresh profile, or the one at `out_path` if it comes from the same kit on the same machine."""
    fresh = {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "target": kit["target"], "hardware": hardware,
             "tvm_version": kit["tvm_version"], "kit_id": kit["kit_id"], "complete": False,
             "created_unix": int(time.time()), "samples": []}
    if not out_path.exists():
        return fresh
    try:
        old = json.loads(out_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise ProfileError(f"{out_path}: exists and is not a readable profile ({err}); "
                           "move it away or choose another output") from None
    if not isinstance(old, dict) or old.get("format") != PROFILE_FORMAT or old.get("version") != PROFILE_VERSION:
        raise ProfileError(f"{out_path}: exists and is not a version {PROFILE_VERSION} {PROFILE_FORMAT}; "
                           "refusing to overwrite it")
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


def _load(tvm, kit_dir: Path, entry: dict, device):
    """The entry's `main`, after checking the artifact's sha256 (loading a shared object runs its code)."""
    path = kit_dir / entry["file"]
    if not path.is_file():
        raise ProfileError(f"{path}: artifact of microbenchmark {entry['key']} is missing from the kit")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ProfileError(f"{path}: sha256 {actual[:16]}... does not match kit.json's {entry['sha256'][:16]}...; "
                           "refusing to load a modified artifact")
    kernels.register()  # CPU microbenchmarks call the runtime's GEMM, as bundles do
    module = tvm.runtime.load_module(str(path))
    return tvm.runtime.vm.VirtualMachine(module, device)["main"]


def _random(rng: np.random.Generator, spec: dict) -> np.ndarray:
    dtype = np.dtype(spec["dtype"])
    if dtype.kind == "f":
        return rng.standard_normal(spec["shape"]).astype(dtype)
    return np.zeros(spec["shape"], dtype=dtype)  # indices and the like: zeros are valid everywhere


def _time_calls(function, args: list, sync, repeats: int, warmup: int, min_sample_s: float, max_entry_s: float,
                deadline: float) -> tuple[list[float], int] | None:
    """Per-call seconds of `repeats` samples, and the calls per sample; None if the deadline passed."""
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


def _write_json(path: Path, data: dict) -> None:
    """Write-then-rename, so an interrupted profile always leaves a valid file behind."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


class _Progress:
    """A one-line progress report on stderr (rewritten in place on a terminal)."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.total, self.done, self.enabled = total, done, enabled
        self.tty = enabled and sys.stderr.isatty()
        if enabled and done:
            print(f"resuming: {done} of {total} microbenchmarks already measured", file=sys.stderr)

    def step(self, key: str, seconds: float, elapsed: float, budget_s: float | None) -> None:
        self.done += 1
        if not self.enabled:
            return
        limit = f" of {budget_s:.0f} s" if budget_s is not None else ""
        line = f"[{self.done:>4}/{self.total}] {_human_time(seconds):>9}  {key}  ({elapsed:.0f} s{limit})"
        if self.tty:
            print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self, measured: int, stopped: bool, elapsed: float, budget_s: float | None, out_path: Path) -> None:
        if not self.enabled:
            return
        if self.tty:
            print(file=sys.stderr)
        if stopped:
            print(f"budget of {budget_s:g} s used up: measured {measured} this run, {self.done} of {self.total} "
                  f"in all; run again with the same output to measure the other {self.total - self.done}",
                  file=sys.stderr)
        else:
            print(f"measured {measured} this run, {self.done} of {self.total} in all, in {elapsed:.1f} s -> {out_path}",
                  file=sys.stderr)


def _human_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def main(kit_dir: str | Path, argv: list[str] | None = None) -> int:
    """The kit's profile.py: `python KIT/profile.py -o device.profile.json [--budget SECONDS]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="profile.py", description="Time this profile kit's layer microbenchmarks "
                                     "on this machine (resumes an interrupted profile with the same output).")
    parser.add_argument("-o", "--output", required=True, metavar="PROFILE.json", help="the profile to write")
    parser.add_argument("--budget", type=float, metavar="SECONDS", help="stop cleanly after this long (resume later)")
    parser.add_argument("--repeats", type=int, default=7, help="timed samples per layer (default 7; median kept)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    if args.budget is not None and args.budget <= 0:
        parser.error("--budget must be positive")
    try:
        profile = profile_kit(kit_dir, args.output, budget_s=args.budget, repeats=args.repeats, warmup=args.warmup,
                              progress=not args.quiet)
    except NeurosurgeonError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: what was measured is in {args.output}; run again to resume", file=sys.stderr)
        return 130
    print(json.dumps({"output": str(args.output), "measured": len(profile["samples"]),
                      "total": len(read_kit(kit_dir)["entries"]), "complete": profile["complete"]}))
    return 0
