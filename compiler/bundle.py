"""Write a bundle atomically: everything goes into a temporary folder beside the destination, which
is renamed into place only when complete, so a failed compile leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from ..runtime.bundle import sha256_file
from ..runtime.errors import NeurosurgeonError
from ..runtime.manifest import MANIFEST, MANIFEST_FORMAT

__all__ = ["OutputError", "check_destination", "file_entry", "publish", "staging_dir", "write_manifest"]


class OutputError(NeurosurgeonError):
    pass


def check_destination(out: Path, force: bool) -> None:
    """Refuse before any work is done, rather than after minutes of compiling."""
    if out.exists() and not force:
        raise OutputError(f"{out}: already exists; pass --force to replace it")
    if out.exists() and out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise OutputError(f"{out}: exists and is not a bundle; refusing to replace it")
    if not out.parent.exists():
        raise OutputError(f"{out.parent}: no such folder")


@contextlib.contextmanager
def staging_dir(out: Path):
    """A temporary folder on the same file system as `out`; removed if the body raises."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a bundle is meant to be copied and shared
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_entry(root: Path, path: Path) -> dict:
    return {"file": path.relative_to(root).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_manifest(root: Path, manifest: dict) -> None:
    MANIFEST_FORMAT.write(root / MANIFEST, manifest)


def publish(staged: Path, out: Path, as_tar: bool) -> Path:
    """Move the finished bundle into place (a folder, or a single .tar)."""
    if as_tar:
        tmp_tar = staged.with_suffix(".tar")
        with tarfile.open(tmp_tar, "w") as tar:
            for path in sorted(staged.rglob("*")):
                tar.add(path, arcname=path.relative_to(staged).as_posix(), recursive=False)
        shutil.rmtree(staged)
        staged = tmp_tar
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        staged.rename(out)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        staged.rename(out)
    return out
