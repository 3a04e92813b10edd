"""The emulated aarch64 board: a machine like the mobile side's, made reproducibly from Debian's and
PyPI's packages only, run under qemu-user.

The board is a directory: a Debian bookworm arm64 sysroot holding Python 3.11 and the few C
libraries it and TVM's runtime link, plus a site-packages folder with the aarch64 wheels of TVM
(runtime library only), tvm-ffi, numpy, ml_dtypes and typing_extensions. qemu-aarch64 runs its
Python (this host has no binfmt_misc, so qemu is called explicitly with `-L <sysroot>`).

    board = ensure_board()                      # built once per recipe, then reused
    board.run(["-c", "import tvm; print(tvm.__version__)"])

What goes in is the data in BOARD_RECIPE; its hash names the cache folder, so a changed recipe
builds a new board. Wheels are pinned by version and sha256. Debian packages are pinned by name
only: the archive serves just the current point release of bookworm (security updates replace
old versions), so the versions a board got are recorded in its board.json instead.

It imports the runtime package (for sha256_file); everything else it needs is the standard
library plus apt-get, dpkg-deb and pip, run as programs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..runtime.bundle import Bundle, sha256_file
from ..runtime.errors import BundleError, NeurosurgeonError

__all__ = ["BOARD_RECIPE", "EmulatedBoard", "EmulationError", "NotEmulatable", "RPCServerProcess", "download_wheels",
           "emulation_cpu", "ensure_board", "prune", "recipe_hash", "run_bundle", "start_rpc_server", "unpack_wheel"]

# Bump when the build steps change what lands on the board for the same recipe.
BUILDER_VERSION = 1

BOARD_RECIPE: dict = {
    "name": "debian12-arm64-python3.11-tvm-runtime",
    "machine": "aarch64",
    "debian": {
        "suites": ["bookworm", "bookworm-updates", "bookworm-security"],
        "component": "main",
        "arch": "arm64",
        # The smallest set with which `import numpy, ctypes, json, hashlib, http.client, socket,
        # ssl, tvm` works. Left out on purpose (their modules fail soft or are never imported):
        # libmpdec3 (decimal falls back to _pydecimal), libsqlite3-0, libuuid1, libreadline8,
        # libncursesw6, libdb5.3, libnsl2, libtirpc3, libcrypt1, media-types, tzdata.
        "packages": {
            "python3.11-minimal": "the interpreter",
            "libpython3.11-minimal": "core modules (os, re, encodings, _hashlib, _ssl)",
            "libpython3.11-stdlib": "json, ctypes, http, multiprocessing, ...",
            "libc6": "C library and the dynamic loader",
            "libgcc-s1": "C++ runtime support for TVM, tvm-ffi and numpy",
            "libstdc++6": "C++ standard library for TVM, tvm-ffi and numpy",
            "libexpat1": "linked by python3.11",
            "zlib1g": "linked by python3.11",
            "libssl3": "libcrypto/libssl for hashlib and ssl",
            "libffi8": "ctypes, which tvm-ffi loads its libraries with",
            "libbz2-1.0": "bz2, imported by shutil/tarfile when TVM loads",
            "liblzma5": "lzma, imported by shutil/tarfile when TVM loads",
        },
        # Paths under the sysroot that a headless Python never reads.
        "prune": [
            "usr/share/doc", "usr/share/man", "usr/share/lintian", "usr/share/gdb", "usr/share/gcc",
            "usr/share/binfmts", "usr/lib/binfmt.d",
            "usr/lib/aarch64-linux-gnu/gconv",  # 20 MB of iconv charsets; Python has its own codecs
            "usr/lib/python3.11/test", "usr/lib/python3.11/pydoc_data",
        ],
    },
    "python": "usr/bin/python3.11",
    "wheels": {
        "python_version": "3.11",
        "implementation": "cp",
        "abi": "cp311",
        # bookworm's glibc is 2.36: every manylinux_2_x_aarch64 wheel with x <= 36 runs on it.
        "glibc": [2, 36],
        "pins": {
            "apache-tvm": ["0.27.0.post1", "4acfdb7653e4e1ba7a707bdf2833db72eb8fda7d04d99141f2a4e1da43171fb7"],
            "apache-tvm-ffi": ["0.1.14.post1", "c7a759781d4fbf2b99fa12f2741f250b882b06acc2747bb02831d491d1ac7d3c"],
            "numpy": ["2.4.6", "0ab0a9c4ffb1a6d95ef519fe4247dba8eb6b18ad93999f76b7f657039acabd47"],
            "ml_dtypes": ["0.5.4", "bc11d7e8c44a65115d05e2ab9989d1e045125d7be8e05a071a48bc76eb6d6040"],
            "typing_extensions": ["4.16.0", "481caa481374e813c1b176ada14e97f1f67a4539ce9cfeb3f350d78d6370c2e8"],
        },
        # Build-only parts of the wheels. TVM's compiler library alone is 240 MB; a board runs
        # prebuilt artifacts with TVM_USE_RUNTIME_LIB=1, which loads libtvm_runtime + libtvm_ffi only.
        "prune": [
            "tvm/lib/libtvm_compiler.so", "tvm/lib/libtvm.so",
            "tvm/lib/libtvm_runtime_cuda.so",  # a CPU-only board: it links libcuda, which is not here
            "tvm/lib/libtvm_runtime_extra.so",  # disco/sort/random: never loaded in runtime-only mode
            "tvm/3rdparty", "tvm/include", "tvm/src", "tvm/cmake", "tvm/lib64", "tvm/web",
            "tvm_ffi/3rdparty", "tvm_ffi/include", "tvm_ffi/src", "tvm_ffi/cython", "tvm_ffi/share",
            "numpy/_core/include", "numpy/_core/lib",
            "**/tests", "**/__pycache__", "**/*.a", "**/*.pyi", "**/*.pxd",
        ],
    },
}

RUNTIME_LIBS = ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so")
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MANIFEST = "board.json"

# Checked on every new board before it is published, so a broken build is never cached.
SMOKE_TEST = """
import ctypes, dataclasses, hashlib, http.client, json, math, platform, re, socket, ssl, struct, sys
import threading, urllib.request
import numpy, tvm, tvm.runtime.vm
maps = open("/proc/self/maps").read()
assert platform.machine() == "aarch64", platform.machine()
assert tvm.base._RUNTIME_ONLY, "tvm did not start in runtime-only mode"
assert "libtvm_runtime" in maps and "libtvm_compiler" not in maps
x = tvm.runtime.tensor(numpy.arange(6, dtype="float32"), tvm.cpu(0))
assert x.numpy().sum() == 15.0
print(json.dumps({"python": platform.python_version(), "numpy": numpy.__version__, "tvm": tvm.__version__}))
"""


class EmulationError(NeurosurgeonError):
    """The emulated board cannot be built or run here; the message says what to install or fix."""


@dataclass(frozen=True)
class EmulatedBoard:
    """A built board: run its aarch64 Python with `command` or `run`."""

    root: Path
    sysroot: Path
    site_packages: Path
    python: Path

    @classmethod
    def at(cls, root: Path, recipe: dict = BOARD_RECIPE) -> EmulatedBoard:
        root = Path(root)
        return cls(root, root / "sysroot", root / "site-packages", root / "sysroot" / recipe["python"])

    def command(self, argv: list[str], cpu: str = "cortex-a72", env: dict | None = None) -> tuple[list[str], dict]:
        """The qemu command line and environment that run the board's Python with `argv`.

        `env` overrides the defaults, except PYTHONPATH, which is put before site-packages.
        """
        qemu = require_tool("qemu-aarch64", "apt-get install qemu-user")
        base = {k: v for k, v in os.environ.items()
                # Host settings that would point the guest at x86 files or another Python.
                if not k.startswith(("PYTHON", "LD_", "QEMU_", "TVM_")) and k != "VIRTUAL_ENV"}
        extra = dict(env or {})
        paths = [p for p in extra.pop("PYTHONPATH", "").split(os.pathsep) if p] + [str(self.site_packages)]
        base.update({
            "PYTHONHOME": str(self.sysroot / "usr"),  # the stdlib always comes from the sysroot
            "PYTHONPATH": os.pathsep.join(paths),
            "PYTHONNOUSERSITE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",  # .pyc files are made at build time; the cache stays as built
            "PYTHONUTF8": "1",  # the sysroot has no locales
            "TVM_USE_RUNTIME_LIB": "1",
        })
        base.update(extra)
        return [qemu, "-L", str(self.sysroot), "-cpu", cpu, str(self.python), *argv], base

    def run(self, argv: list[str], cpu: str = "cortex-a72", env: dict | None = None,
            **kwargs) -> subprocess.CompletedProcess:
        """Run the board's Python; output is captured as text unless kwargs say otherwise."""
        cmd, full_env = self.command(argv, cpu, env)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(cmd, env=full_env, **kwargs)

    def manifest(self) -> dict:
        return json.loads((self.root / MANIFEST).read_text())

    def sizes(self) -> dict[str, int]:
        """Bytes on disk: the whole board, its sysroot, its site-packages, and TVM's runtime libraries."""
        sysroot, site = tree_size(self.sysroot), tree_size(self.site_packages)
        libs = sum((self.site_packages / lib).stat().st_size for lib in RUNTIME_LIBS)
        return {"total": sysroot + site, "sysroot": sysroot, "site_packages": site, "runtime_libs": libs}


def recipe_hash(recipe: dict = BOARD_RECIPE) -> str:
    text = json.dumps({"builder": BUILDER_VERSION, "recipe": recipe}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "neurosurgeon" / "aarch64-board"


def ensure_board(cache_dir: Path | None = None, progress: bool = True) -> EmulatedBoard:
    """The board for BOARD_RECIPE under `cache_dir`/<recipe-hash>, built first if it is not there.

    The build happens in a temporary folder next to the final one and is renamed into place only
    after a smoke test passed under qemu; a lock makes concurrent callers wait for one build.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    recipe = BOARD_RECIPE
    key = recipe_hash(recipe)
    board = EmulatedBoard.at(cache_dir / key, recipe)
    if (board.root / MANIFEST).is_file():
        return board
    log = _Log(progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same board
        if (board.root / MANIFEST).is_file():
            return board
        if board.root.exists():  # a half-made board from before atomic builds: never trust it
            shutil.rmtree(board.root)
        for stale in cache_dir.glob(f".{key}.*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the board from other users of a shared cache
        try:
            _build(EmulatedBoard.at(staging, recipe), recipe, key, log)
            os.rename(staging, board.root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    sizes = board.sizes()
    log(f"board ready at {board.root}: {_mb(sizes['total'])} (sysroot {_mb(sizes['sysroot'])}, "
        f"site-packages {_mb(sizes['site_packages'])}, TVM runtime libraries {_mb(sizes['runtime_libs'])})")
    return board


def _build(board: EmulatedBoard, recipe: dict, key: str, log: _Log) -> None:
    start = time.monotonic()
    require_tool("qemu-aarch64", "apt-get install qemu-user")
    work = board.root / "build"
    debs = download_debs(recipe["debian"], work / "apt", log)
    log(f"unpacking {len(debs)} Debian packages into the sysroot")
    board.sysroot.mkdir(parents=True)
    versions = {}
    for deb in debs:
        _check_run(["dpkg-deb", "-x", str(deb), str(board.sysroot)], f"dpkg-deb -x {deb.name}")
        name, version = _check_run(["dpkg-deb", "-f", str(deb), "Package", "Version"],
                                   "dpkg-deb -f").stdout.split("\n")[:2]
        versions[name.split(":", 1)[1].strip()] = version.split(":", 1)[1].strip()
    relativize_symlinks(board.sysroot)
    prune(board.sysroot, recipe["debian"]["prune"])
    if not board.python.is_file():
        raise EmulationError(f"the Debian packages gave no {recipe['python']} in the sysroot")

    wheels = download_wheels(recipe["wheels"], work / "wheels", log)
    log(f"unpacking {len(wheels)} wheels into site-packages")
    board.site_packages.mkdir()
    for wheel in wheels:
        unpack_wheel(wheel, board.site_packages, recipe["wheels"]["prune"])
    prune(board.site_packages, recipe["wheels"]["prune"])
    wheel_files = {w.name: sha256_file(w) for w in wheels}
    shutil.rmtree(work)

    # The smoke test runs with bytecode writing on: it leaves .pyc files for exactly the modules a
    # runtime start imports (about 340, 7 MB), so later starts (which write nothing) skip compiling
    # them under qemu: 8-15 s -> 3-5 s. Compiling every module instead would add 28 MB for no gain.
    log("smoke test under qemu-aarch64: numpy and TVM (runtime only); writes .pyc for what they import")
    result = board.run(["-c", SMOKE_TEST], env={"PYTHONDONTWRITEBYTECODE": ""}, timeout=600)
    if result.returncode != 0:
        raise EmulationError(f"the new board failed its smoke test under qemu:\n{result.stderr[-3000:]}")
    versions_seen = json.loads(result.stdout.strip().splitlines()[-1])
    manifest = {"recipe_hash": key, "builder_version": BUILDER_VERSION, "recipe": recipe,
                "debian_versions": versions, "wheels": wheel_files, "reports": versions_seen,
                "sizes": board.sizes(), "build_seconds": round(time.monotonic() - start, 1)}
    (board.root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


# ---------------------------------------------------------------- bundles


class NotEmulatable(EmulationError):
    """The bundle's mobile side is not code this emulated aarch64 CPU can run."""


def emulation_cpu(bundle_dir: str | Path) -> str:
    """The qemu CPU model for a bundle's mobile side, or NotEmulatable saying why there is none."""
    bundle_dir = Path(bundle_dir)
    try:
        mobile = Bundle(bundle_dir).side("mobile")
    except BundleError as err:
        raise NotEmulatable(str(err)) from None
    if mobile.machine != "aarch64":
        raise NotEmulatable(f"{bundle_dir}: its mobile side is {mobile.preset}, code for {mobile.machine}, not aarch64; "
                            "run its run.py with this machine's Python instead")
    if mobile.device != "cpu":
        raise NotEmulatable(f"{bundle_dir}: its mobile side is {mobile.preset}, whose segments run on a {mobile.device} "
                            "GPU; qemu emulates the ARM CPU only")
    if not (mobile.emulation or {}).get("cpu"):
        raise NotEmulatable(f"{bundle_dir}: the mobile preset {mobile.preset} names no CPU model to emulate")
    if not (bundle_dir / "run.py").is_file():
        raise NotEmulatable(f"{bundle_dir}: no run.py (made by an older compiler); recompile the bundle")
    return mobile.emulation["cpu"]


def run_bundle(bundle_dir: str | Path, runtime_args: list[str], cpu: str | None = None,
               board: EmulatedBoard | None = None, timeout: float | None = None,
               **kwargs) -> subprocess.CompletedProcess:
    """Run the bundle's own run.py with `runtime_args` under qemu-aarch64 on the emulated board.

    The CPU model is the bundle's (its mobile preset's `emulation.cpu`) unless `cpu` is given. The
    board is built first if needed. Output is captured as text unless kwargs say otherwise.
    qemu-user shares this host's network stack, so run.py reaches a server on loopback directly.
    """
    default_cpu = emulation_cpu(bundle_dir)  # refuse before spending a board build on it
    board = board or ensure_board()
    run_py = Path(bundle_dir).resolve() / "run.py"
    return board.run([str(run_py), *runtime_args], cpu=cpu or default_cpu, timeout=timeout, **kwargs)


class RPCServerProcess:
    """The runtime's RPC server (runtime/rpc_server.py) running on the emulated board."""

    def __init__(self, process: subprocess.Popen, port: int, runtime_dir: tempfile.TemporaryDirectory):
        self.process, self.port, self._runtime_dir = process, port, runtime_dir
        self.address = f"127.0.0.1:{port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._runtime_dir.cleanup()

    def __enter__(self) -> RPCServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_rpc_server(port: int, cpu: str = "cortex-a72", board: EmulatedBoard | None = None,
                     timeout: float = 180.0) -> RPCServerProcess:
    """Start the runtime's RPC server under qemu on the emulated board, listening on 127.0.0.1:`port`
    (qemu-user shares this host's network), with a copy of runtime/ as the board has it in a
    bundle; return once it listens. `neurosurgeon tune --target aarch64-neon --rpc 127.0.0.1:PORT`
    then times candidate kernels as aarch64 code on it (emulated: the times mean nothing for speed,
    the path is the one a real board takes)."""
    from ..compiler.codegen import copy_runtime

    board = board or ensure_board()
    runtime_dir = tempfile.TemporaryDirectory(prefix="neurosurgeon-rpc-runtime-")
    copy_runtime(Path(runtime_dir.name))
    cmd, env = board.command(["-m", "neurosurgeon_runtime", "rpc-server", "--host", "127.0.0.1", "--port", str(port)],
                              cpu, env={"PYTHONPATH": runtime_dir.name})
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    server = RPCServerProcess(process, port, runtime_dir)
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if "listening on" in line:
            threading.Thread(target=process.stdout.read, daemon=True).start()  # drain the log so it never blocks
            return server
    server.stop()
    raise EmulationError(f"the emulated RPC server did not start within {timeout:.0f} s: " + " | ".join(lines[-5:]))


# ---------------------------------------------------------------- Debian packages


def download_debs(spec: dict, apt_dir: Path, log: _Log) -> list[Path]:
    """Download the recipe's arm64 .debs with an apt of its own: own sources, lists, cache and an
    empty dpkg status, so the host's apt state and architectures are never touched."""
    require_tool("apt-get", "a Debian-based host (apt-get, dpkg-deb) is needed to build the board")
    require_tool("dpkg-deb", "apt-get install dpkg")
    for sub in ("lists/partial", "archives/partial", "sources.list.d", "preferences.d", "debs"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    (apt_dir / "status").touch()
    sources = debian_sources(spec)
    (apt_dir / "sources.list").write_text("".join(sources))
    options = {
        "APT::Architecture": spec["arch"],
        "APT::Architectures": spec["arch"],
        "Dir::State": str(apt_dir),
        "Dir::State::Lists": str(apt_dir / "lists"),
        "Dir::State::status": str(apt_dir / "status"),
        "Dir::Cache": str(apt_dir),
        "Dir::Cache::archives": str(apt_dir / "archives"),
        "Dir::Etc::SourceList": str(apt_dir / "sources.list"),
        "Dir::Etc::SourceParts": str(apt_dir / "sources.list.d"),
        "Dir::Etc::Preferences": str(apt_dir / "preferences"),
        "Dir::Etc::PreferencesParts": str(apt_dir / "preferences.d"),
        "Acquire::Languages": "none",
    }
    if os.geteuid() == 0:
        # apt drops root to _apt for downloads, and _apt may not write into our private folders.
        options["APT::Sandbox::User"] = "root"
    apt = ["apt-get", "-q"] + [f"-o{k}={v}" for k, v in options.items()]
    mirrors = sorted({line.split("] ", 1)[1].split()[0] for line in sources})
    log(f"apt-get update (arm64 package lists from {', '.join(mirrors)})")
    _check_run(apt + ["update"], "apt-get update for arm64")
    names = list(spec["packages"])
    log(f"apt-get download {len(names)} arm64 packages")
    _check_run(apt + ["download"] + names, "apt-get download", cwd=apt_dir / "debs")
    debs = sorted((apt_dir / "debs").glob("*.deb"))
    if len(debs) != len(names):
        raise EmulationError(f"apt-get download gave {len(debs)} .deb files for {len(names)} packages")
    return debs


def debian_sources(spec: dict, etc: Path = Path("/etc/apt")) -> list[str]:
    """One-line apt sources for the recipe's suites, on the Debian mirrors this host already uses
    (deb822 .sources and one-line .list files alike); deb.debian.org when the host names none."""
    wanted = set(spec["suites"])
    found: dict[tuple[str, str], str] = {}  # (uri, suite) -> keyring
    for uri, suites, components, keyring in _host_sources(etc):
        for suite in suites:
            if suite in wanted and spec["component"] in components:
                found.setdefault((uri.rstrip("/"), suite), keyring or DEBIAN_KEYRING)
    for suite in wanted - {suite for _, suite in found}:
        uri = "http://deb.debian.org/debian-security" if suite.endswith("-security") else "http://deb.debian.org/debian"
        found[(uri, suite)] = DEBIAN_KEYRING
    for keyring in set(found.values()):
        if not Path(keyring).is_file():
            raise EmulationError(f"apt keyring {keyring} is missing (apt-get install debian-archive-keyring)")
    return [f"deb [arch={spec['arch']} signed-by={keyring}] {uri} {suite} {spec['component']}\n"
            for (uri, suite), keyring in sorted(found.items(), key=lambda item: spec["suites"].index(item[0][1]))]


def _host_sources(etc: Path):
    """Yield (uri, suites, components, signed-by) for each binary source the host's apt has."""
    files = [etc / "sources.list"] + sorted((etc / "sources.list.d").glob("*"))
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = _deb822(stanza)
                if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                    continue
                keyring = fields.get("signed-by", "")
                keyring = keyring if keyring.startswith("/") else ""  # inline keys: use Debian's keyring
                for uri in fields.get("uris", "").split():
                    yield uri, fields.get("suites", "").split(), fields.get("components", "").split(), keyring
        elif path.name == "sources.list" or path.suffix == ".list":
            for line in text.splitlines():
                m = re.match(r"\s*deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)", line.split("#", 1)[0])
                if m:
                    opts = dict(o.split("=", 1) for o in (m.group(1) or "").split() if "=" in o)
                    yield m.group(2), [m.group(3)], m.group(4).split(), opts.get("signed-by", "")


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = None
    for line in stanza.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()
    return fields


def relativize_symlinks(root: Path) -> None:
    """Point absolute symlinks inside the sysroot at the sysroot: the kernel resolves them on the
    host, where e.g. /etc/python3.11/sitecustomize.py may be the host Python's file."""
    for link in [p for p in root.rglob("*") if p.is_symlink()]:
        target = os.readlink(link)
        if target.startswith("/"):
            link.unlink()
            link.symlink_to(os.path.relpath(root / target.lstrip("/"), link.parent))


# ---------------------------------------------------------------- wheels


def download_wheels(spec: dict, dest: Path, log: _Log) -> list[Path]:
    """pip download the pinned wheels (binary only, no dependency resolution; hashes required where the
    pins give them) for the spec's Python and machine (`machine`, default aarch64)."""
    dest.mkdir(parents=True, exist_ok=True)
    machine = spec.get("machine", "aarch64")
    requirements = dest / "requirements.txt"
    requirements.write_text("".join(f"{name}=={version}" + (f" --hash=sha256:{digest}" if digest else "") + "\n"
                                    for name, (version, digest) in spec["pins"].items()))
    major, minor = spec["glibc"]
    # pip does not widen a --platform to older glibc tags, so list each one the machine can run.
    platforms = [f"manylinux_{major}_{m}_{machine}" for m in range(minor, 16, -1)] + [f"manylinux2014_{machine}"]
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input", "-q",
           "--only-binary=:all:", "--no-deps", "--python-version", spec["python_version"],
           "--implementation", spec["implementation"], "--abi", spec["abi"], "-d", str(dest), "-r", str(requirements)]
    if all(digest for _, digest in spec["pins"].values()):
        cmd.append("--require-hashes")
    for platform in platforms:
        cmd += ["--platform", platform]
    log(f"pip download {len(spec['pins'])} {machine} wheels ({', '.join(f'{n}=={v}' for n, (v, _) in spec['pins'].items())})")
    _check_run(cmd, f"pip download of the {machine} wheels")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != len(spec["pins"]):
        raise EmulationError(f"pip download gave {len(wheels)} wheels for {len(spec['pins'])} pins")
    return wheels


def unpack_wheel(wheel: Path, site_packages: Path, skip: list[str] = ()) -> None:
    """Install a wheel the way pip would for a plain import path: extract it (but not the members
    under the literal paths in `skip`), and move its <name>.data/purelib|platlib into place
    (scripts and headers are not wanted on a board)."""
    literal = tuple(p for p in skip if not any(c in p for c in "*?["))
    with zipfile.ZipFile(wheel) as archive:
        # Not writing TVM's 240 MB compiler library only to delete it saves seconds and disk.
        members = [m for m in archive.namelist() if not any(m == p or m.startswith(p + "/") for p in literal)]
        archive.extractall(site_packages, members)
    for data in site_packages.glob("*.data"):
        for lib in ("purelib", "platlib"):
            if (data / lib).is_dir():
                shutil.copytree(data / lib, site_packages, dirs_exist_ok=True)
        shutil.rmtree(data)


def prune(root: Path, patterns: list[str]) -> None:
    for pattern in patterns:
        for path in sorted(root.glob(pattern), reverse=True):  # children before parents
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()


# ---------------------------------------------------------------- helpers


class _Log:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[emulate {time.monotonic() - self.start:5.1f}s] {message}", file=sys.stderr, flush=True)


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise EmulationError(f"{name} is not on PATH: {hint}")
    return path


def _check_run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise EmulationError(f"{what} failed (exit {result.returncode}):\n{output[-3000:]}")
    return result


def tree_size(root: Path) -> int:
    """Bytes of the regular files under root (symlinks not followed, hard links counted once)."""
    seen, total = set(), 0
    for folder, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            if not os.path.islink(os.path.join(folder, name)) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
