"""What a server serves: a model repository, a folder of bundles (or one bundle), each bundle's server
side with its workers, and the OIP models each bundle exposes.

Models of a bundle named B:
- `B-stage` runs any stage of any schedule: given tensors by name and asked for tensors by name, it
  runs exactly the segments between them (runtime/schedule.py's `TensorGraph.stage`);
- `B-cutKK`, for each cut k < S, takes the tensors the mobile side uploads at cut k and runs segments
  k..S-1;
- `B` is the whole model (cut 0), so a plain Triton client can send the raw input.
A bundle that fails its checks (manifest, signature, artifacts, machine) is reported with its reason
and not served; the others still are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .bundle import LOAD_MODEL_FILE, LOAD_MODEL_FORMAT, Bundle
from .errors import BundleError, NeurosurgeonError
from .manifest import MANIFEST
from .protocol import DATATYPES, ProtocolError, cut_model_name, stage_model_name
from .schedule import StageError, TensorGraph
from .tensors import TensorInfo
from .threads import requested_threads
from .workers import Batching, Job, WorkerPool

__all__ = ["MODEL_VERSION", "PLATFORM", "Repository", "ServeOptions", "ServedBundle", "ServedModel",
           "bundle_folders", "read_load_model", "served_models"]

log = logging.getLogger("neurosurgeon.server")

PLATFORM = "neurosurgeon_tvm"
MODEL_VERSION = "1"


@dataclass(frozen=True)
class ServedModel:
    """One OIP model: fixed `segments` from fixed inputs (a cut), or, with `segments` None, any stage:
    its inputs and outputs are every tensor that may cross, and a request sends some and asks for some."""

    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    segments: tuple[int, ...] | None

    @property
    def kind(self) -> str:
        return "stage" if self.segments is None else "cut"

    def metadata(self) -> dict:
        def describe(t: TensorInfo) -> dict:
            return {"name": t.name, "datatype": DATATYPES[t.dtype], "shape": list(t.shape)}

        meta = {"name": self.name, "versions": [MODEL_VERSION], "platform": PLATFORM,
                "inputs": [describe(t) for t in self.inputs], "outputs": [describe(t) for t in self.outputs]}
        if self.segments is None:
            meta["parameters"] = {"stage": "send any of the inputs and name the outputs wanted: the server runs the "
                                           "segments that make those from these"}
        return meta

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        expected = {t.name: t for t in self.inputs}
        missing = [n for n in expected if n not in inputs] if self.segments is not None else []
        unexpected = [n for n in inputs if n not in expected]
        if missing or unexpected:
            problems = [f"missing input {n!r}" for n in missing] + [f"unexpected input {n!r}" for n in unexpected]
            raise ProtocolError(f"model {self.name!r}: {', '.join(problems)} (it takes {', '.join(expected)})")
        for name, array in inputs.items():
            info = expected[name]
            if array.dtype != np.dtype(info.dtype):
                raise ProtocolError(f"input {name!r}: expected datatype {DATATYPES[info.dtype]}, "
                                    f"got {DATATYPES[array.dtype.name]}")
            if array.shape != info.shape:
                raise ProtocolError(f"input {name!r}: expected shape {list(info.shape)}, got {list(array.shape)}")

    def requested_outputs(self, requested: dict[str, bool], parameters: dict) -> dict[str, bool]:
        """Output name -> send as binary. Nothing requested means every output, binary only when the
        request says `binary_data_output` (the protocol's default is JSON); the stage model needs names."""
        if not requested and self.segments is None:
            raise ProtocolError(f"model {self.name!r} runs any stage: name the outputs wanted back")
        if not requested:
            binary = bool(parameters.get("binary_data_output", False))
            return {t.name: binary for t in self.outputs}
        names = [t.name for t in self.outputs]
        unknown = [n for n in requested if n not in names]
        if unknown:
            raise ProtocolError(f"model {self.name!r} has no output {', '.join(map(repr, unknown))} "
                                f"(its outputs: {', '.join(names)})")
        return requested


def served_models(bundle: Bundle) -> dict[str, ServedModel]:
    """The stage model, one model per cut that leaves work for the server, and the bundle's name for the
    whole model."""
    outputs = {t.name: t for t in bundle.outputs}
    n = len(bundle.segments)
    models = {}
    for cut in bundle.cuts[:n]:  # cut S runs nothing here
        name = cut_model_name(bundle.name, cut.index)
        models[name] = ServedModel(name, cut.crossing, tuple(outputs[o] for o in cut.server_outputs),
                                   tuple(range(cut.index, n)))
    models[bundle.name] = replace(models[cut_model_name(bundle.name, 0)], name=bundle.name)
    tensors = {t.name: t for t in [*bundle.inputs, *(t for s in bundle.segments for t in s.outputs)]}
    made = [t for name, t in tensors.items() if name not in {i.name for i in bundle.inputs}]
    stage = stage_model_name(bundle.name)
    models[stage] = ServedModel(stage, tuple(tensors.values()), tuple(made), None)
    return models


def read_load_model(bundle: Bundle) -> tuple[float, float]:
    """(alpha, beta) fitted by `neurosurgeon profile --server-load`, or a plain queue's (1, 0)."""
    path = bundle.path / LOAD_MODEL_FILE
    if not path.is_file():
        return 1.0, 0.0
    model = LOAD_MODEL_FORMAT.read(path)
    try:
        return float(model["alpha"]), float(model["beta"])
    except (ValueError, KeyError, TypeError) as err:
        raise BundleError(f"{path}: malformed server load model ({err})") from None


@dataclass(frozen=True)
class ServeOptions:
    """How a server runs every bundle it serves."""

    workers: int = 1  # worker threads per bundle
    threads_per_worker: int | None = None  # None: `threads` shared out among every bundle's workers
    threads: int | None = None  # in all (None: NEUROSURGEON_THREADS, else every core this process may use)
    batching: bool = True  # run waiting requests together where a bundle is built for batches
    batch_sizes: tuple[int, ...] | None = None  # of the sizes a bundle is built for, those to use (None: all)
    max_queue_delay_s: float = 0.0  # how long a free worker waits for a batch to fill


class ServedBundle:
    """One bundle's server side: its models, its tensor graph and its workers."""

    def __init__(self, path: str | Path, options: ServeOptions | None = None, trust_key: bytes | None = None):
        options = options or ServeOptions()
        self.bundle = Bundle(path, trust_key=trust_key)
        self.name = self.bundle.name
        self.graph = TensorGraph.of_bundle(self.bundle)
        self.models = served_models(self.bundle)
        self.load_model = read_load_model(self.bundle)
        built = self.bundle.manifest.batch_sizes
        sizes = tuple(b for b in built if options.batch_sizes is None or b == 1 or b in options.batch_sizes)
        batching = Batching(sizes, options.max_queue_delay_s) if options.batching else None
        self.pool = WorkerPool(self.bundle, options.workers, options.threads_per_worker, batching)

    def job(self, model: ServedModel, inputs: dict[str, np.ndarray], wanted: list[str]) -> Job:
        """The segments a request to `model` runs, checked, as a job for the workers."""
        segments = model.segments
        if segments is None:
            try:
                segments = tuple(self.graph.stage(inputs, wanted))
            except StageError as err:
                raise ProtocolError(f"model {model.name!r}: {err}") from None
        return Job(segments, inputs, tuple(wanted))

    def load(self) -> dict:
        """The load every answer reports, with the wait a new request should expect: it waits only when
        every worker is busy, for one of them to finish (cost_models/server_load.py fits alpha, beta)."""
        pool, meter = self.pool, self.pool.meter
        mean, (alpha, beta) = meter.mean_service_s, self.load_model
        ahead = max(0, pool.pending - pool.workers + 1)
        return {"queue_length": pool.pending, "workers": pool.workers,
                "busy_fraction": round(meter.busy_fraction(), 4), "mean_service_s": mean,
                "expected_wait_s": round(alpha * ahead * mean / pool.workers + beta, 6)}

    def close(self) -> None:
        self.pool.close()


def bundle_folders(path: Path) -> list[Path]:
    """The bundle `path` is, or the bundles in it (folders with a manifest)."""
    folders = [path] if (path / MANIFEST).is_file() else sorted(p for p in path.iterdir() if (p / MANIFEST).is_file())
    if not folders:
        raise NeurosurgeonError(f"{path}: neither a bundle nor a folder of bundles (no {MANIFEST} in it or in any "
                                "folder in it)")
    return folders


class Repository:
    """Every bundle in a folder (or the one bundle the folder is), each under its own name."""

    def __init__(self, path: str | Path, options: ServeOptions | None = None, trust_key: bytes | None = None):
        options = options or ServeOptions()
        self.path = Path(path)
        if not self.path.is_dir():
            raise NeurosurgeonError(f"{self.path}: no such folder (a bundle, or a folder of bundles)")
        folders = bundle_folders(self.path)
        if options.threads_per_worker is None:  # every bundle's workers share the threads
            threads = options.threads or requested_threads()
            options = replace(options, threads_per_worker=max(1, threads // (options.workers * len(folders))))
        self.bundles: dict[str, ServedBundle] = {}
        self.failed: dict[str, str] = {}  # folder name -> why it is not served
        self.models: dict[str, tuple[ServedBundle, ServedModel]] = {}
        for folder in folders:
            try:
                served = ServedBundle(folder, options, trust_key)
            except NeurosurgeonError as err:
                log.error("not serving %s: %s", folder, err)
                self.failed[folder.name] = str(err)
                continue
            clash = sorted(set(served.models) & set(self.models))
            if clash:
                served.close()
                self.failed[folder.name] = (f"{folder}: its model names {', '.join(clash[:3])} are served from "
                                            f"{self.models[clash[0]][0].bundle.path} already")
                log.error("not serving %s: %s", folder, self.failed[folder.name])
                continue
            self.bundles[served.name] = served
            self.models.update({name: (served, model) for name, model in served.models.items()})
        if not self.bundles:
            raise NeurosurgeonError("no bundle to serve: " + "; ".join(self.failed.values()))

    def model(self, name: str, version: str | None) -> tuple[ServedBundle, ServedModel]:
        found = self.models.get(name)
        if found is None:
            failed = self.failed.get(name)
            if failed is not None:
                raise ProtocolError(f"model {name!r} is not served: {failed}", 503)
            bundles = ", ".join(f"{b!r} (and {b}-stage, {b}-cut00..{b}-cut{len(s.bundle.segments) - 1:02d})"
                                for b, s in self.bundles.items())
            raise ProtocolError(f"unknown model {name!r}: this server serves {bundles}", 404)
        if version is not None and version != MODEL_VERSION:
            raise ProtocolError(f"model {name!r} has no version {version!r} (versions: {MODEL_VERSION})", 404)
        return found

    def index(self) -> list[dict]:
        """POST /v2/repository/index: every model, ready or with the reason it is not (Triton's format)."""
        entries = [{"name": name, "version": MODEL_VERSION, "state": "READY", "reason": ""}
                   for name in sorted(self.models)]
        entries += [{"name": name, "version": MODEL_VERSION, "state": "UNAVAILABLE", "reason": reason}
                    for name, reason in sorted(self.failed.items())]
        return entries

    def load(self) -> dict:
        """The whole server's load: the sum of the queues, the longest expected wait."""
        loads = [b.load() for b in self.bundles.values()]
        return {"queue_length": sum(x["queue_length"] for x in loads),
                "workers": sum(x["workers"] for x in loads),
                "busy_fraction": round(sum(x["busy_fraction"] * x["workers"] for x in loads)
                                       / sum(x["workers"] for x in loads), 4),
                "mean_service_s": max(x["mean_service_s"] for x in loads),
                "expected_wait_s": max(x["expected_wait_s"] for x in loads)}

    def close(self) -> None:
        for served in self.bundles.values():
            served.close()

