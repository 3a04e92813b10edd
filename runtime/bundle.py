"""Read a bundle's manifest and run its prebuilt segments. Never compiles anything.

Compatibility rule: a runtime reads every bundle whose schema major version equals its own
SCHEMA_MAJOR; a higher minor version only adds fields, which are ignored. Anything else is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import kernels
from .errors import BundleError
from .tensors import TensorInfo

FORMAT = "neurosurgeon-bundle"
SCHEMA_MAJOR = 1
SCHEMA_MINOR = 1  # 1.1: "externs", functions the artifacts call that the runtime provides
MANIFEST = "manifest.json"
LOAD_MODEL_FILE = "server-load.json"  # the server's fitted load model, beside the manifest


@dataclass(frozen=True)
class SegmentSpec:
    index: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


@dataclass(frozen=True)
class CutSpec:
    index: int
    crossing: tuple[TensorInfo, ...]
    upload_bytes: int
    download_bytes: int


class Bundle:
    """A compiled bundle on disk: its manifest, and where each side's artifacts are."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{self.path}: not a bundle ({MANIFEST} is missing)")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BundleError(f"{manifest_path}: not valid JSON ({err})") from None
        check_compatible(self.manifest, str(manifest_path))
        m = self.manifest
        self.name: str = m["model"]["name"]
        self.inputs = [TensorInfo.from_json(t) for t in m["model"]["inputs"]]
        self.outputs = [TensorInfo.from_json(t) for t in m["model"]["outputs"]]
        self.segments = [SegmentSpec(s["index"], tuple(TensorInfo.from_json(t) for t in s["inputs"]),
                                     tuple(TensorInfo.from_json(t) for t in s["outputs"])) for s in m["segments"]]
        self.cuts = [CutSpec(c["index"], tuple(TensorInfo.from_json(t) for t in c["crossing"]),
                             c["upload_bytes"], c["download_bytes"]) for c in m["cuts"]]

    def side(self, side: str) -> dict:
        try:
            return self.manifest["sides"][side]
        except KeyError:
            raise BundleError(f"{self.path}: the manifest has no {side!r} side") from None

    def artifact(self, side: str, segment: int) -> tuple[Path, str]:
        preset = self.side(side)["name"]
        for entry in self.manifest["artifacts"].get(preset, []):
            if entry["segment"] == segment:
                return self.path / entry["file"], entry["sha256"]
        raise BundleError(f"{self.path}: no {preset} artifact for segment {segment} (the runtime never compiles: "
                          "rebuild the bundle with `neurosurgeon compile`)")


def check_compatible(manifest: dict, where: str) -> None:
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{where}: not a neurosurgeon bundle manifest (format {manifest.get('format')!r})")
    version = manifest.get("schema_version")
    if not (isinstance(version, list) and len(version) == 2 and version[0] == SCHEMA_MAJOR):
        raise BundleError(f"{where}: bundle schema version {version} is not readable by this runtime "
                          f"(reads {SCHEMA_MAJOR}.x); rebuild the bundle or update the runtime")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SegmentExecutor:
    """Runs one side's segments in-process. Artifacts are checked against the manifest's sha256
    before they are loaded (loading a shared object runs its code) and loaded once, on first use."""

    def __init__(self, bundle: Bundle, side: str):
        # TVM's x86 thread pool assumes half the cores are hyper-threads and would use one core of
        # two: give tuned (parallel) kernels every core this process may run on, unless told otherwise.
        os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
        import tvm
        import tvm.runtime.vm  # not imported by `import tvm` in runtime-only mode (TVM_USE_RUNTIME_LIB=1)

        self._tvm = tvm
        self.bundle = bundle
        self.side = side
        preset = bundle.side(side)
        if preset["machine"] != platform.machine():
            raise BundleError(f"{bundle.path}: the {side} side was built for {preset['name']} ({preset['machine']}), "
                              f"this machine is {platform.machine()}")
        if preset["device"] == "cuda":
            from .cuda import load_cuda_runtime

            load_cuda_runtime()  # raises CudaRuntimeUnavailable, naming the missing library, where there is no driver
        self.device = tvm.cuda(0) if preset["device"] == "cuda" else tvm.cpu(0)
        externs = bundle.manifest.get("externs", [])
        lacking = kernels.missing(externs)
        if lacking:
            raise BundleError(f"{bundle.path}: the artifacts call {', '.join(lacking)}, which this runtime does not "
                              "provide; run the bundle with the runtime it ships (run.py) or update neurosurgeon")
        if externs:
            kernels.register()
        self._functions: dict[int, object] = {}

    def load(self, segment: int):
        if segment not in self._functions:
            path, expected = self.bundle.artifact(self.side, segment)
            if not path.is_file():
                raise BundleError(f"{path}: artifact for segment {segment} is missing from the bundle")
            actual = sha256_file(path)
            if actual != expected:
                raise BundleError(f"{path}: sha256 {actual[:16]}... does not match the manifest's {expected[:16]}...; "
                                  "refusing to load a modified artifact")
            module = self._tvm.runtime.load_module(str(path))
            self._functions[segment] = self._tvm.runtime.vm.VirtualMachine(module, self.device)["main"]
        return self._functions[segment]

    def run(self, env: dict, segments) -> dict:
        """Run `segments` in order, reading inputs from and writing outputs to `env` (name -> tensor).
        Values stay on the device between segments; `fetch` turns them into numpy arrays."""
        tvm = self._tvm
        for index in segments:
            function = self.load(index)
            spec = self.bundle.segments[index]
            args = [self._on_device(env[t.name], t) for t in spec.inputs]
            result = function(*args)
            values = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
            for t, value in zip(spec.outputs, values):
                env[t.name] = value
        return env

    def _on_device(self, value, info: TensorInfo):
        if isinstance(value, self._tvm.runtime.Tensor) and value.device == self.device:
            return value
        array = np.ascontiguousarray(fetch(value), dtype=info.dtype)
        if array.shape != info.shape:
            raise BundleError(f"tensor {info.name!r}: expected shape {info.shape}, got {array.shape}")
        return self._tvm.runtime.tensor(array, self.device)


ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm", 243: "riscv64"}


def elf_machine(path: Path) -> str:
    """The machine an ELF shared object was built for, read from its header without loading it."""
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise BundleError(f"{path}: not an ELF shared object")
    code = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    return ELF_MACHINES.get(code, f"elf-machine-{code}")


def fetch(value) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.numpy()
