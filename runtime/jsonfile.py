"""Versioned JSON files: one reader and one writer for every file neurosurgeon writes and reads back
(bundle manifests, tuning folders, profile kits, profiles, cost models, power tables, measured
costs, server load models).

Every such file carries `"format": NAME` and a version. The compatibility rule is the same for all:
a reader reads a file whose major version equals its own; a higher minor version only adds fields,
which the reader ignores. Anything else is refused with a one-line error naming the file, what it
is, the version found and the version read, and what to do about it.

    PROFILE = JsonFormat("neurosurgeon-profile", 1, "profile", ProfileError)
    doc = PROFILE.read(path)                    # checked; raises ProfileError in one line
    PROFILE.write(path, {**PROFILE.stamp(), "samples": [...]})   # atomic
    KIT.read_folder(kit_dir)                    # a folder marked by its kit.json

Standard library only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import NeurosurgeonError

__all__ = ["JsonFormat", "atomic_write_text"]


@dataclass(frozen=True)
class JsonFormat:
    """A file format: its `name` (the "format" field), the `version` this code writes and reads (an
    int, or (major, minor) where minor versions only add fields), a human name for messages, the
    error class to raise, and `hint`: what to do with a file of another major version."""

    name: str
    version: int | tuple[int, int]
    what: str
    error: type[NeurosurgeonError] = NeurosurgeonError
    version_key: str = "version"
    hint: str = ""
    older: tuple[int, ...] = ()  # older major versions this code still reads (it maps their fields)
    # Formats that define a folder (a bundle, a profile kit, a tuning folder): the file that marks one,
    # what the folder is called, and how one is made.
    file: str = ""
    folder: str = ""
    made_by: str = ""

    @property
    def major(self) -> int:
        return self.version[0] if isinstance(self.version, tuple) else self.version

    @property
    def compatibility(self) -> str:
        """The rule, as the files themselves may state it."""
        older = f", or is one of {', '.join(map(str, self.older))}" if self.older else ""
        return (f"A reader reads {self.name} files whose {self.version_key} major equals its own ({self.major}"
                f"{older}); a higher minor version only adds fields, which older readers ignore.")

    def stamp(self) -> dict:
        """The fields that open every file of this format."""
        version = list(self.version) if isinstance(self.version, tuple) else self.version
        return {"format": self.name, self.version_key: version}

    def check(self, doc, where: str | Path) -> dict:
        """`doc` if it is a readable file of this format, else the format's error in one line."""
        if not isinstance(doc, dict) or doc.get("format") != self.name:
            found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise self.error(f"{where}: not a {self.what} (format {found!r}, expected {self.name!r})")
        version = doc.get(self.version_key)
        major = version[0] if isinstance(version, list) and len(version) == 2 else version
        if not isinstance(major, int) or isinstance(major, bool) or major not in (self.major, *self.older):
            hint = f"; {self.hint}" if self.hint else ""
            reads = " and ".join(f"{m}.x" for m in (self.major, *self.older))
            raise self.error(f"{where}: {self.what} {self.version_key.replace('_', ' ')} {version} is not readable by this neurosurgeon "
                             f"(it reads {reads}){hint}")
        return doc

    def parse(self, text: str | bytes, where: str | Path) -> dict:
        try:
            doc = json.loads(text)
        except (UnicodeDecodeError, ValueError) as err:
            raise self.error(f"{where}: not JSON ({err})") from None
        return self.check(doc, where)

    def read(self, path: str | Path) -> dict:
        """The checked contents of `path`."""
        try:
            text = Path(path).read_bytes()
        except OSError as err:
            raise self.error(f"{path}: cannot read {self.what}: {err.strerror}") from None
        return self.parse(text, path)

    def read_folder(self, folder: str | Path) -> dict:
        """The checked contents of this format's `file` inside `folder`."""
        path = Path(folder) / self.file
        if not path.is_file():
            made_by = f"; make one with {self.made_by}" if self.made_by else ""
            raise self.error(f"{folder}: not a {self.folder} ({self.file} is missing{made_by})")
        return self.read(path)

    def write(self, path: str | Path, doc: dict, indent: int | None = 1) -> Path:
        """Write `doc` (which must carry this format's stamp) atomically: an interrupted write never
        leaves a torn file behind."""
        self.check(doc, path)
        return atomic_write_text(path, json.dumps(doc, indent=indent, allow_nan=False) + "\n")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write-then-rename in the same folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
