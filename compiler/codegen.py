"""Generated scripts: a bundle's run.py and a profile kit's profile.py, rendered from templates/, each
beside a copy of runtime/ (as the package `neurosurgeon_runtime`), so they run on a machine that has
numpy and TVM's runtime library but not this project."""

from __future__ import annotations

import shutil
from pathlib import Path

import jinja2

from .. import __version__
from .bundle import file_entry

__all__ = ["RUNTIME_PACKAGE", "copy_runtime", "generate_profile_script", "generate_runtime"]

RUNTIME_PACKAGE = "neurosurgeon_runtime"  # the name runtime/ takes inside a bundle
_RUNTIME_SOURCE = Path(__file__).resolve().parent.parent / "runtime"
_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def _render(template: str, path: Path, **values) -> Path:
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), undefined=jinja2.StrictUndefined,
                                     keep_trailing_newline=True)
    path.write_text(environment.get_template(template).render(version=__version__, **values))
    path.chmod(0o755)
    return path


def generate_runtime(staged: Path, manifest: dict) -> list[dict]:
    """Write run.py and the runtime package into the bundle; return their manifest entries."""
    package_files = copy_runtime(staged)
    run_py = _render("run.py.j2", staged / "run.py", model=manifest["model"]["name"],
                     mobile=manifest["sides"]["mobile"]["name"], server=manifest["sides"]["server"]["name"],
                     bundle_id=manifest["identity"]["bundle_id"], n_cuts=len(manifest["cuts"]))
    return [file_entry(staged, path) for path in [run_py, *package_files]]


def generate_profile_script(root: Path, kit: dict) -> Path:
    """A profile kit's profile.py (the kit's runtime copy comes from `copy_runtime`)."""
    return _render("profile.py.j2", root / "profile.py", n=len(kit["entries"]), target=kit["target"]["name"],
                   kit_id=kit["kit_id"])


def copy_runtime(root: Path) -> list[Path]:
    """Copy runtime/*.py into `root` as the package `neurosurgeon_runtime`; return the files, sorted."""
    package = root / RUNTIME_PACKAGE
    package.mkdir(exist_ok=True)
    for source in sorted(_RUNTIME_SOURCE.glob("*.py")):
        shutil.copyfile(source, package / source.name)
    return sorted(package.glob("*.py"))
