"""A bundle on disk and the executor that runs its prebuilt segments. Never compiles anything.

The manifest is read through runtime/manifest.py (format and compatibility rule there).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import threading
from pathlib import Path

import numpy as np

from . import kernels, tvm_lib
from .errors import BundleError, first_line
from .jsonfile import JsonFormat
from .manifest import MANIFEST, MANIFEST_FORMAT, Manifest, Side
from .signing import verify_manifest
from .tensors import TensorInfo
from .threads import requested_threads, use_threads_here

LOAD_MODEL_FILE = "server-load.json"  # the server's fitted load model, beside the manifest
LOAD_MODEL_FORMAT = JsonFormat("neurosurgeon-server-load", 1, "neurosurgeon server load model", BundleError,
                               hint="fit it again with `neurosurgeon profile --bundle DIR --server-load`")

__all__ = ["LOAD_MODEL_FILE", "LOAD_MODEL_FORMAT", "Bundle", "SegmentExecutor", "SharedModules", "aligned_copy",
           "elf_machine", "fetch", "load_artifact", "release_file_pages", "results", "sha256_file", "to_device"]


class Bundle:
    """A compiled bundle on disk: its manifest (read and checked once, or given: the compiler's cost
    stage measures a bundle whose manifest is not written yet) and where each side's artifacts are."""

    def __init__(self, path: str | Path, manifest: Manifest | None = None, trust_key: bytes | None = None):
        """With `trust_key` (an Ed25519 public key), the manifest is read only if manifest.sig is its
        signature by that key (runtime/signing.py), and the runtime files it lists are checked."""
        self.path = Path(path)
        if manifest is None and trust_key is not None:
            if not (self.path / MANIFEST).is_file():
                Manifest.read(self.path)  # the "not a bundle" error
            where = str(self.path / MANIFEST)
            manifest = Manifest.from_json(MANIFEST_FORMAT.parse(verify_manifest(self.path, trust_key), where), where)
        self.manifest = manifest = manifest or Manifest.read(self.path)
        if trust_key is not None:
            self.check_files(manifest.runtime_files, "runtime file")
        self.name: str = manifest.name
        self.inputs = list(manifest.inputs)
        self.outputs = list(manifest.outputs)
        self.segments = list(manifest.segments)
        self.cuts = list(manifest.cuts)

    @property
    def bundle_id(self) -> str:
        return self.manifest.identity.bundle_id

    def side(self, side: str) -> Side:
        try:
            return self.manifest.sides[side]
        except KeyError:
            raise BundleError(f"{self.path}: the manifest has no {side!r} side") from None

    def check_files(self, entries, what: str) -> None:
        """Every listed file is there with the sha256 the manifest gives (BundleError otherwise)."""
        for entry in entries:
            path = self.path / entry.file
            actual = sha256_file(path) if path.is_file() else "missing"
            if actual != entry.sha256:
                raise BundleError(f"{path}: {what} {'is missing' if actual == 'missing' else 'does not match the manifest'}"
                                  "; refusing to use a changed bundle")

    def artifact(self, side: str, segment: int, batch: int = 1) -> tuple[Path, str]:
        try:
            entry = self.manifest.artifact(side, segment, batch)
        except BundleError as err:
            raise BundleError(f"{self.path}: {err}") from None
        return self.path / entry.file, entry.sha256


class SharedModules:
    """Loaded artifacts that several VMs share: each thread that runs segments needs a VM of its own (a
    VM keeps its call's state), but VMs made from one loaded module share its constants, the weights
    (a second load of ResNet-18's third segment held 36 MiB more; a second VM of the same module
    nothing). A server's workers share one (runtime/workers.py). Thread-safe."""

    def __init__(self):
        self._modules: dict[str, object] = {}
        self._lock = threading.Lock()

    def load(self, path: Path):
        key = os.path.realpath(path)
        with self._lock:
            if key not in self._modules:
                self._modules[key] = tvm_lib.load_module(key)
                release_file_pages(Path(key))
            return self._modules[key]

    def __len__(self) -> int:
        """How many artifacts are loaded."""
        return len(self._modules)


def load_artifact(path: Path, device, sha256: str | None = None, what: str = "artifact",
                  listed_in: str = "the manifest", arity: int | None = None, modules: SharedModules | None = None):
    """The `main` function of an exported artifact in a TVM VM on `device`, made from the module that
    `modules` holds for it where given (loaded there on first use), else from a load of its own. With
    `sha256`, the file is checked first (loading a shared object runs its code); the runtime's
    external kernels are registered, since CPU artifacts call them."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: {what} is missing")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise BundleError(f"{path}: sha256 {actual[:16]}... does not match {listed_in}'s {sha256[:16]}...; "
                              "refusing to load a modified artifact")
    kernels.register()
    try:
        module = modules.load(path) if modules is not None else tvm_lib.load_module(path)
        vm = tvm_lib.virtual_machine(module, device)
    except tvm_lib.ERRORS as err:
        raise BundleError(f"{path}: {what} does not load: {first_line(err)}") from None
    if modules is None:
        release_file_pages(path)
    if arity is not None and tvm_lib.function_arity(vm) != arity:
        raise BundleError(f"{path}: {what} takes {tvm_lib.function_arity(vm)} tensors, {listed_in} says {arity}")
    return vm["main"]


MADV_PAGEOUT = 21  # Linux 5.4+: reclaim these pages now; clean file pages are dropped, content is kept


def release_file_pages(path: Path) -> int:
    """Give back the resident pages of `path`'s mappings in this process; returns the mappings advised.

    An artifact's weights are constants inside its shared object: loading it maps the file and copies
    them out into tensors, and the mapped copy stays resident (AlexNet at 112: 110 MiB of 458 MiB on
    the device). MADV_PAGEOUT drops clean file pages (they come back from the file if ever touched: the
    code does, a page at a time) and leaves any other page's content as it is, so it is safe on every
    mapping of the file. Elsewhere than Linux 5.4+ it does nothing."""
    try:
        real = os.path.realpath(path)
        with open("/proc/self/maps") as maps:
            ranges = [[int(x, 16) for x in parts[0].split("-")] for parts in map(str.split, maps)
                      if len(parts) >= 6 and parts[5] == real]
        madvise = ctypes.CDLL(None).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return sum(madvise(lo, hi - lo, MADV_PAGEOUT) == 0 for lo, hi in ranges)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SegmentExecutor:
    """Runs one side's segments in-process. Artifacts are checked against the manifest's sha256
    before they are loaded (loading a shared object runs its code) and loaded once, on first use."""

    def __init__(self, bundle: Bundle, side: str, batch: int = 1, threads: int | None = None,
                 modules: SharedModules | None = None):
        """`batch` above 1: the server side's artifacts built for that batch size (compile --server-batch),
        whose tensors have that first dimension. `threads` (default NEUROSURGEON_THREADS, else every core
        this process may use) are shared between TVM's pool and the BLAS (runtime/threads.py) for the
        segments this thread runs: the thread that constructs the executor is the one that runs them.
        `modules`: loaded artifacts shared with other executors of the bundle (each keeps its own VMs)."""
        self.bundle = bundle
        self.side = side
        preset = bundle.side(side)
        if preset.machine != platform.machine():
            raise BundleError(f"{bundle.path}: the {side} side was built for {preset.preset} ({preset.machine}), "
                              f"this machine is {platform.machine()}")
        if preset.device == "cuda":
            from .cuda import cuda_device

            self.device = cuda_device()  # raises CudaRuntimeUnavailable, naming the missing library, where there is no driver
        else:
            self.device = tvm_lib.cpu()
        lacking = kernels.missing(bundle.manifest.externs)
        if lacking:
            raise BundleError(f"{bundle.path}: the artifacts call {', '.join(lacking)}, which this runtime does not "
                              "provide; run the bundle with the runtime it ships (run.py) or update neurosurgeon")
        self.batch = batch
        if preset.device != "cuda":
            self.threads = use_threads_here(threads or requested_threads(), kernels.SGEMM in bundle.manifest.externs)
        # Every artifact of this side is checked now, before any is loaded (loading runs its code).
        entries = [self._entry(i) for i in range(len(bundle.segments))]
        bundle.check_files(entries, f"{side} artifact")
        self._functions: dict[int, object] = {}
        self._modules = modules

    def _entry(self, segment: int):
        try:
            return self.bundle.manifest.artifact(self.side, segment, self.batch)
        except BundleError as err:
            raise BundleError(f"{self.bundle.path}: {err}") from None

    def held(self) -> tuple[int, int]:
        """(segments whose artifacts are loaded, the bytes of those artifacts)."""
        return len(self._functions), sum(self._entry(i).bytes for i in self._functions)

    def load(self, segment: int):
        if segment not in self._functions:
            what = f"artifact for segment {segment}" + (f" at batch {self.batch}" if self.batch > 1 else "")
            self._functions[segment] = load_artifact(self.bundle.path / self._entry(segment).file, self.device, None,
                                                     what, "the manifest",
                                                     arity=len(self.bundle.segments[segment].inputs),
                                                     modules=self._modules)
        return self._functions[segment]

    def load_all(self, segments=None) -> None:
        """Load `segments` (default: all), the largest artifact first: loading one holds its weights two or
        three times over for a moment (the mapped file, the copies), so the peak is what is already held
        plus one load; largest first, little is held then."""
        segments = range(len(self.bundle.segments)) if segments is None else segments
        for segment in sorted(segments, key=lambda i: -self._entry(i).bytes):
            self.load(segment)

    def run(self, env: dict, segments) -> dict:
        """Run `segments` in order, reading inputs from and writing outputs to `env` (name -> tensor).
        Values stay on the device between segments; `fetch` turns them into numpy arrays."""
        for index in segments:
            function = self.load(index)
            spec = self.bundle.segments[index]
            args = [self._on_device(env[t.name], t) for t in spec.inputs]
            try:
                result = function(*args)
            except tvm_lib.ERRORS as err:
                raise BundleError(f"{self.bundle.path}: {self.side} segment {index} failed: {first_line(err)}") from None
            for t, value in zip(spec.outputs, results(result)):
                env[t.name] = value
        return env

    def sync(self) -> None:
        """Wait until the device has finished the segments run (a GPU runs kernels asynchronously)."""
        tvm_lib.sync(self.device)

    def _on_device(self, value, info: TensorInfo):
        if isinstance(value, tvm_lib.Tensor) and value.device == self.device:
            return value
        array = np.ascontiguousarray(fetch(value), dtype=info.dtype)
        expected = info.shape if self.batch == 1 else (self.batch, *info.shape[1:])
        if array.shape != expected:
            raise BundleError(f"tensor {info.name!r}: expected shape {expected}, got {array.shape}")
        return to_device(array, self.device)


ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm", 243: "riscv64"}


def elf_machine(path: Path) -> str:
    """The machine an ELF shared object was built for, read from its header without loading it."""
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise BundleError(f"{path}: not an ELF shared object")
    code = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    return ELF_MACHINES.get(code, f"elf-machine-{code}")


# DLPack's device type of the CPU, and the alignment of TVM's own allocations, which the code it generates
# may assume of every tensor it is given (aligned vector loads).
DLPACK_CPU = tvm_lib.DLPACK_CPU
ALIGNMENT = 64


def to_device(array: np.ndarray, device):
    """A C-contiguous `array` as a tensor on `device`. On the CPU, no copy where the array is writable and
    64-byte aligned (the tensor is a view of it), else one aligned copy: tvm.runtime.tensor's copy costs
    ~18 us even for 250 floats (its Python-side checks), a view 1.5 us and an aligned copy 5 us, which a
    model of 10-20 us (SENNA) pays on every request. (numpy's ctypes.data took 2 us of those: the
    addresses are read from DLPack views instead.) On a GPU, a copy there (with tvm, which a CUDA side
    imports: runtime/cuda.py `cuda_device`)."""
    import tvm_ffi

    if device.dlpack_device_type() != DLPACK_CPU:
        import tvm

        return tvm.runtime.tensor(array, device)
    if array.flags.writeable:
        view = tvm_ffi.from_dlpack(array)
        if view.data_ptr() % ALIGNMENT == 0:
            return view
    return tvm_ffi.from_dlpack(aligned_copy(array))


def aligned_copy(array: np.ndarray) -> np.ndarray:
    """A copy of `array` at a 64-byte aligned address (numpy's own are 16-byte aligned)."""
    import tvm_ffi

    raw = np.empty(array.nbytes + ALIGNMENT, np.uint8)
    start = -tvm_ffi.from_dlpack(raw).data_ptr() % ALIGNMENT
    aligned = np.ndarray(array.shape, array.dtype, raw, start)
    aligned[...] = array
    return aligned


def fetch(value) -> np.ndarray:
    """A tensor as a numpy array: on the CPU a view of the tensor's memory (the array keeps it alive; a
    compiled function's results are fresh tensors that nothing else writes), from another device a copy."""
    if isinstance(value, np.ndarray):
        return value
    return np.from_dlpack(value) if value.device.dlpack_device_type() == DLPACK_CPU else value.numpy()


def results(result) -> list:
    """A compiled function's result as a list: one tensor, or a tuple of them."""
    return [result] if isinstance(result, tvm_lib.Tensor) else list(result)
