"""The tuning folder: MetaSchedule's JSON database (database_workload.json, database_tuning_record.json,
its own names, so its tools read the folder too) and tuning.json (target, TVM version, whether
times were measured and where, trials and seconds per task, the runs, and "tiles": the tiled
convolutions' chosen tiles with their times). Every file is rewritten
atomically, so an interrupted run never leaves a torn folder behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from ...runtime.errors import NeurosurgeonError
from ...runtime.jsonfile import JsonFormat
from ...targets import Preset
from ..kernels import DEFAULT_KERNELS

__all__ = ["INFO", "RECORD_FILE", "TUNING_FORMAT", "TuningError", "WORKLOAD_FILE", "database", "database_sha256",
           "open_info", "paths", "read_tuning_info", "tile_choices", "tuning_identity", "write_info"]


class TuningError(NeurosurgeonError):
    pass


# 2: CPU workloads come from compiler/kernels.py's pipeline (GEMMs offloaded, batch norms folded)
INFO = "tuning.json"
TUNING_FORMAT = JsonFormat("neurosurgeon-tuning", 2, "tuning folder's tuning.json", TuningError,
                           hint="its workloads differ from this neurosurgeon's (CPU builds offload GEMMs and fold "
                                "batch norms since version 2): tune again into a new folder",
                           file=INFO, folder="tuning folder", made_by="`neurosurgeon tune`")
WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


def paths(out_dir: Path) -> tuple[Path, Path]:
    """The database's workload and record files."""
    return out_dir / WORKLOAD_FILE, out_dir / RECORD_FILE


_databases: dict[tuple, object] = {}  # parsed databases, by folder and file versions


@contextlib.contextmanager
def database(out_dir: Path):
    """The folder's JSON database as MetaSchedule's current database. Parsed once per version of its
    files: a bundle's segments are compiled one after the other against the same database."""
    from tvm.s_tir import meta_schedule as ms

    workloads, records = paths(out_dir)
    if not (workloads.is_file() and records.is_file()):
        raise TuningError(f"{out_dir}: not a tuning folder ({WORKLOAD_FILE} or {RECORD_FILE} is missing)")
    key = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in (workloads, records))
    if key not in _databases:
        _databases.clear()  # one folder at a time is what builds use; do not hold on to old versions
        _databases[key] = ms.database.JSONDatabase(str(workloads), str(records), allow_missing=False)
    with _databases[key] as db:
        yield db


def read_tuning_info(tuning_dir: str | Path) -> dict:
    return TUNING_FORMAT.read_folder(tuning_dir)


def database_sha256(tuning_dir: str | Path) -> str:
    """One digest of the database: the workload file's bytes followed by the record file's."""
    digest = hashlib.sha256()
    for path in paths(Path(tuning_dir)):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def tile_choices(info: dict, tuning_dir: str | Path) -> dict:
    """The tiled convolutions' chosen tiles in a folder's tuning.json `info` (`conv_key` -> choice; {}
    where none were timed)."""
    from ..tiled_kernels import TILE_KNOBS

    choices = {key: entry.get("choice") for key, entry in info.get("tiles", {}).items()}
    for key, choice in choices.items():
        if not isinstance(choice, dict) or set(choice) - set(TILE_KNOBS):
            raise TuningError(f"{Path(tuning_dir) / INFO}: tiles of {key!r}: expected a choice of {', '.join(TILE_KNOBS)}, got {choice!r}")
    return choices


def tuning_identity(tuning_dir: str | Path) -> dict:
    """What a bundle's manifest records about the tuning it was compiled with: the database's digest and
    the tile choices' (both decide the code)."""
    info = read_tuning_info(tuning_dir)
    tiles = json.dumps(tile_choices(info, tuning_dir), sort_keys=True).encode()
    return {"dir": Path(tuning_dir).resolve().name, "preset": info["preset"],
            "database_sha256": database_sha256(tuning_dir), "tiles_sha256": hashlib.sha256(tiles).hexdigest(),
            "measured": info["measured"],
            "measured_on": info.get("measured_on"), "unmeasured_reason": info.get("unmeasured_reason")}


def write_info(out_dir: Path, info: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    TUNING_FORMAT.write(out_dir / INFO, info)

def open_info(out_dir: Path, preset: Preset, measured: bool, kernels: str = DEFAULT_KERNELS, measured_on: str | None = None,
               unmeasured_reason: str | None = None) -> dict:
    """The folder's tuning.json, or a new one (written on first use); refuses another preset's folder."""
    import tvm

    target, host = preset.resolved_target()
    if (out_dir / INFO).is_file():
        info = read_tuning_info(out_dir)
        if info["preset"] != preset.name or info["target"] != target or info["host"] != host:
            raise TuningError(f"{out_dir}: holds tuning for {info['preset']} ({info['target']}), not for "
                              f"{preset.name} ({target}); use another folder")
        if info["tvm_version"] != tvm.__version__:
            raise TuningError(f"{out_dir}: tuned with TVM {info['tvm_version']}, this is TVM {tvm.__version__}; "
                              "schedules may not apply: use another folder")
        if preset.device != "cuda" and info.get("kernels") != kernels:
            raise TuningError(f"{out_dir}: tuned with --kernels {info.get('kernels')}, not {kernels}; use another folder")
        if info["measured"] != measured:
            had = f"measured ({info.get('measured_on') or 'here'})" if info["measured"] else "without measurement"
            now = f"measured ({measured_on})" if measured else f"without measurement ({unmeasured_reason})"
            raise TuningError(f"{out_dir}: was tuned {had}, this run would tune {now}; one folder holds one kind "
                              "of schedules: use another folder")
        return info
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise TuningError(f"{out_dir}: exists and is not a tuning folder; refusing to write into it")
    if not out_dir.parent.is_dir():
        raise TuningError(f"{out_dir.parent}: no such folder")
    return {**TUNING_FORMAT.stamp(), "preset": preset.name, "target": target, "host": host,
            "tvm_version": tvm.__version__, "measured": measured, "measured_on": measured_on,
            "unmeasured_reason": None if measured else unmeasured_reason,
            "kernels": kernels if preset.device != "cuda" else None,
            "method": ("MetaSchedule: random candidates for every task, then evolutionary search on the tasks "
                       "that take the time; " + ("timed in-process on this machine" if measured_on == "here" else
                                                 f"timed on the board through TVM RPC ({measured_on})")
                       if measured else
                       "MetaSchedule, random valid schedules (candidates built, not timed: no board here)"),
            "tasks": {}, "runs": []}

