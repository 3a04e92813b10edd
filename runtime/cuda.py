"""CUDA on the device side: load TVM's CUDA runtime plugin, and read which compiled device code an
exported artifact carries without loading it (a check the runtime can make before trusting a file).

Where the device code is: export_library packs the imported modules into one blob, the read-only
symbol `__tvm_ffi__library_bin` (older TVM: `__tvm_dev_mblob`):
  <nbytes: u64> <import tree: indptr vec<u64>, child_indices vec<u64>>
  then per module <kind: str> [<payload: str>]  ("_lib", the host code itself, has no payload)
where str/vec are a u64 little-endian length followed by the items. A "cuda" payload is
  <fmt: str> <function table: u64 count, per entry key, name, arg dtypes (vec of 4-byte
  DLDataType), launch tags (vec<str>), arg extra tags (vec of 4-byte ints)> <code: str>.
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
from pathlib import Path

from . import tvm_lib
from .errors import NeurosurgeonError


__all__ = ["CUDART_FOLDERS", "SM_ARCH", "CudaRuntimeUnavailable", "cuda_device", "cuda_device_modules", "device_code_archs", "has_cuda_source",
           "load_cuda_plugin", "load_cuda_runtime"]


class CudaRuntimeUnavailable(NeurosurgeonError, RuntimeError):
    """TVM's CUDA runtime cannot be loaded here (no driver, or no CUDA runtime library)."""


SM_ARCH = re.compile(r"sm_(\d+)([af]?)")  # a CUDA arch name: sm_80, sm_90a
_FATBIN_MAGIC = 0xBA55ED50
_EM_CUDA = 190
_SOURCE_MARKER = b'extern "C" __global__'
CUDA_PLUGIN = "libtvm_runtime_cuda.so"


# Where CUDA's runtime library (which TVM's CUDA plugin links) lives when it is not on the loader's
# path: the toolkit's folders and the nvidia-cuda-runtime wheel's.
CUDART_FOLDERS = ("/usr/local/cuda/lib64", "/usr/local/cuda/lib", "/usr/local/cuda-13.0/lib64", "/usr/local/cuda-13.0/lib")


def load_cuda_plugin() -> None:
    """dlopen libtvm_runtime_cuda.so, which registers the CUDA device API, module factory and loader
    (after CUDA's runtime library, looked for beside the toolkit or the nvidia wheels if the loader
    does not find it)."""
    tvm_lib.load_library()  # the plugin links TVM's runtime library
    try:
        tvm_lib.load_library(CUDA_PLUGIN)
    except ImportError as err:
        if "libcudart" not in str(err) or not _preload_cudart():
            raise CudaRuntimeUnavailable(str(err)) from None
        try:
            tvm_lib.load_library(CUDA_PLUGIN)
        except ImportError as again:
            raise CudaRuntimeUnavailable(str(again)) from None


def _preload_cudart() -> bool:
    """Load libcudart.so.* from a known folder with RTLD_GLOBAL; whether one was found."""
    import importlib.util

    folders = [Path(f) for f in CUDART_FOLDERS]
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        folders += [Path(root) / "cuda_runtime" / "lib", Path(root) / "cu13" / "lib"]
    for folder in folders:
        for library in sorted(folder.glob("libcudart.so.*")) if folder.is_dir() else []:
            try:
                ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
                return True
            except OSError:
                continue
    return False


def load_cuda_runtime() -> None:
    """Register TVM's CUDA runtime (device API and the "cuda" module loader) in this process.

    Needed before loading a CUDA artifact: TVM's runtime library does not load the plugin itself.
    Raises CudaRuntimeUnavailable where there is no driver."""
    import tvm_ffi

    if tvm_ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is None:
        load_cuda_plugin()


def cuda_device():
    """The first GPU, with TVM's CUDA runtime loaded. A CUDA side imports tvm (runtime-only) for its
    tensors' copies between host and GPU, which tvm-ffi alone does not make."""
    load_cuda_runtime()
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")  # where tvm is not imported yet: its runtime only
    import tvm

    return tvm.cuda(0)


# ---------------------------------------------------------------------------------------------
# Inspecting an exported artifact without loading it


class _Reader:
    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def u64(self) -> int:
        (value,) = struct.unpack_from("<Q", self.data, self.pos)
        self.pos += 8
        return value

    def bytes(self) -> bytes:
        n = self.u64()
        if self.pos + n > len(self.data):
            raise ValueError("length runs past the end")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def u64s(self) -> list[int]:
        return [self.u64() for _ in range(self.u64())]

    def skip_items(self, size: int) -> None:
        count = self.u64()  # read first: `self.pos += size * self.u64()` would drop the u64's own 8 bytes
        self.pos += size * count


def _library_blob(data: bytes) -> bytes | None:
    """The bytes of `__tvm_ffi__library_bin` in an ELF64 little-endian file (x86_64 or aarch64)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type not in (2, 11):  # SHT_SYMTAB, SHT_DYNSYM
            continue
        strtab = sections[link][4]
        for at in range(offset, offset + size, entsize or 24):
            name, _, _, shndx, value, _ = struct.unpack_from("<IBBHQQ", data, at)
            end = data.index(b"\0", strtab + name)
            if data[strtab + name:end] != b"__tvm_ffi__library_bin" or shndx >= len(sections):
                continue
            _, _, _, addr, sec_offset, _, _, _, _, _ = sections[shndx]
            start = sec_offset + value - addr
            nbytes, = struct.unpack_from("<Q", data, start)
            return data[start + 8:start + 8 + nbytes]
    return None


def _blob_modules(blob: bytes) -> list[tuple[str, bytes | None]]:
    reader = _Reader(blob)
    indptr = reader.u64s()
    reader.u64s()  # child indices
    modules = []
    for _ in range(len(indptr) - 1):
        kind = reader.bytes().decode()
        modules.append((kind, None if kind == "_lib" else reader.bytes()))
    return modules


def _cuda_payload(payload: bytes) -> tuple[str, bytes]:
    """(fmt, code) of a serialized CUDA module."""
    reader = _Reader(payload)
    fmt = reader.bytes().decode()
    for _ in range(reader.u64()):  # function table
        reader.bytes()  # key
        reader.bytes()  # name
        reader.skip_items(4)  # arg dtypes
        for _ in range(reader.u64()):  # launch param tags
            reader.bytes()
        reader.skip_items(4)  # arg extra tags
    code = reader.bytes()
    if reader.pos != len(payload):
        raise ValueError("unrecognised CUDA module layout")
    return fmt, code


def cuda_device_modules(path: str | Path) -> list[tuple[str, bytes]]:
    """(fmt, code) of every CUDA device module packed in an exported library, without loading it.

    fmt is "cuda" for source TVM left to be compiled at load time, else "cubin"/"fatbin"/"ptx"."""
    blob = _library_blob(Path(path).read_bytes())
    if blob is None:
        return []
    return [_cuda_payload(payload) for kind, payload in _blob_modules(blob) if kind == "cuda"]


def _elf_sm(data: bytes, at: int) -> int | None:
    """SM number of a CUDA ELF (cubin) starting at `at`, or None if it is not one."""
    if data[at:at + 4] != b"\x7fELF" or struct.unpack_from("<H", data, at + 18)[0] != _EM_CUDA:
        return None
    flags, = struct.unpack_from("<I", data, at + 48)
    # ELF ABI version 8 (CUDA 12.8+ and 13) moved the SM number from bits 0-7 to bits 8-15.
    return (flags >> 8) & 0xFF if data[at + 8] >= 8 else flags & 0xFF


def _code_archs(data: bytes) -> set[str]:
    """SM archs of the SASS in fatbin containers and bare cubins found anywhere in `data`."""
    archs = set()
    for match in re.finditer(re.escape(struct.pack("<I", _FATBIN_MAGIC)), data):
        at = match.start()
        header_size, fat_size = struct.unpack_from("<HQ", data, at + 6)
        entry, end = at + header_size, min(at + header_size + fat_size, len(data))
        while entry + 0x20 <= end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
            sm, = struct.unpack_from("<I", data, entry + 0x1C)
            if kind == 2:  # 1 = PTX (not compiled device code), 2 = ELF (SASS; may be compressed)
                archs.add(f"sm_{sm}")
            if entry_header == 0:
                break
            entry += entry_header + payload
    for match in re.finditer(b"\x7fELF", data):
        sm = _elf_sm(data, match.start())
        if sm:
            archs.add(f"sm_{sm}")
    return archs


def device_code_archs(path: str | Path) -> set[str]:
    """SM archs (e.g. {"sm_87"}) of the compiled device code an artifact carries, read from the
    file's bytes: never loaded, so it works for aarch64 files too. Empty if it carries only
    source or PTX. An arch-specific build such as sm_90a reads as sm_90."""
    data = Path(path).read_bytes()
    blob = _library_blob(data)
    if blob is None:  # a bare .fatbin/.cubin, or a library TVM did not pack
        return _code_archs(data)
    return set().union(*(_code_archs(code) for fmt, code in cuda_device_modules(path) if fmt != "cuda"))


def has_cuda_source(path: str | Path) -> bool:
    """Whether an artifact carries CUDA C++ source (which would be compiled at load time)."""
    if any(fmt == "cuda" for fmt, _ in cuda_device_modules(path)):
        return True
    return _SOURCE_MARKER in Path(path).read_bytes()
