"""Build targets as data: each preset names the TVM target, the compiler that links the artifact,
the machine it runs on and the TVM runtime libraries that machine needs (presets.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ..runtime.errors import NeurosurgeonError

SIDES = ("mobile", "server")
HOST_CPU = "@host"  # resolved to this machine's LLVM CPU name at build time

__all__ = ["Preset", "PresetError", "get_preset", "preset_names", "SIDES"]


class PresetError(NeurosurgeonError):
    pass


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    sides: tuple[str, ...]
    device: str  # "cpu" or "cuda": where the segments' kernels run
    target: dict
    cxx: str
    machine: str  # ELF machine of the exported shared object
    runtime_libs: tuple[str, ...]
    host: dict | None = None
    emulation: dict | None = field(default=None, compare=False)
    # Rough speed of TVM's untuned code on this target, for cost estimates until it is measured.
    nominal_gflops: float = 1.0

    @property
    def cuda_arch(self) -> str | None:
        return self.target.get("arch") if self.device == "cuda" else None

    def resolved_target(self) -> tuple[dict, dict | None]:
        """The target dicts with `@host` replaced by this machine's exact CPU (LLVM's `native` silently
        falls back to a generic CPU)."""
        def resolve(spec):
            if spec is None or spec.get("mcpu") != HOST_CPU:
                return spec
            import tvm.target.codegen

            return {**spec, "mcpu": str(tvm.target.codegen.llvm_get_system_cpu())}
        return resolve(self.target), resolve(self.host)

    def tvm_target(self):
        import tvm

        target, host = self.resolved_target()
        if host is None:
            return tvm.target.Target(target)
        return tvm.target.Target(target, host=tvm.target.Target(host))

    def runs_here(self) -> bool:
        """Whether this machine can execute the preset's artifacts (so their costs can be measured)."""
        import platform

        return self.device == "cpu" and self.machine == platform.machine()

    def to_json(self) -> dict:
        target, host = self.resolved_target()
        return {"name": self.name, "device": self.device, "target": target, "host": host, "machine": self.machine,
                "cuda_arch": self.cuda_arch, "runtime_libs": list(self.runtime_libs), "emulation": self.emulation}


@cache
def _presets() -> dict[str, Preset]:
    raw = json.loads((Path(__file__).parent / "presets.json").read_text())
    return {name: Preset(name=name, description=spec["description"], sides=tuple(spec["sides"]), device=spec["device"],
                         target=spec["target"], cxx=spec["cxx"], machine=spec["machine"],
                         runtime_libs=tuple(spec["runtime_libs"]), host=spec.get("host"),
                         emulation=spec.get("emulation"), nominal_gflops=spec.get("nominal_gflops", 1.0))
            for name, spec in raw.items()}


def preset_names(side: str | None = None) -> list[str]:
    return [name for name, p in _presets().items() if side is None or side in p.sides]


def get_preset(name: str, side: str | None = None) -> Preset:
    presets = _presets()
    if name not in presets:
        raise PresetError(f"unknown target preset {name!r}; valid presets"
                          f"{' for the ' + side + ' side' if side else ''}: {', '.join(preset_names(side))}")
    preset = presets[name]
    if side is not None and side not in preset.sides:
        raise PresetError(f"target preset {name!r} is not a {side} preset; valid {side} presets: {', '.join(preset_names(side))}")
    return preset
