"""The generated device runtime: run.py rendered from templates/, plus a copy of runtime/ so the
bundle runs on a machine that has numpy and TVM's runtime library but not this project."""

from __future__ import annotations

import shutil
from pathlib import Path

import jinja2

from .. import __version__
from .bundle import file_entry

RUNTIME_PACKAGE = "neurosurgeon_runtime"  # the name runtime/ takes inside a bundle
_RUNTIME_SOURCE = Path(__file__).resolve().parent.parent / "runtime"
_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def generate_runtime(staged: Path, manifest: dict) -> list[dict]:
    """Write run.py and the runtime package into the bundle; return their manifest entries."""
    package_files = copy_runtime(staged)
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), undefined=jinja2.StrictUndefined,
                                     keep_trailing_newline=True)
    run_py = staged / "run.py"
    run_py.write_text(environment.get_template("run.py.j2").render(
        model=manifest["model"]["name"], mobile=manifest["sides"]["mobile"]["name"],
        server=manifest["sides"]["server"]["name"], version=__version__,
        bundle_id=manifest["identity"]["bundle_id"], n_cuts=len(manifest["cuts"])))
    run_py.chmod(0o755)
    return [file_entry(staged, path) for path in [run_py, *package_files]]


def copy_runtime(root: Path) -> list[Path]:
    """Copy runtime/*.py into `root` as the package `neurosurgeon_runtime`; return the files, sorted."""
    package = root / RUNTIME_PACKAGE
    package.mkdir()
    for source in sorted(_RUNTIME_SOURCE.glob("*.py")):
        shutil.copyfile(source, package / source.name)
    return sorted(package.glob("*.py"))
