"""Profiling a target's layer types (Neurosurgeon's deployment phase): build (or reuse) the target's
profile kit, and time it here when the target runs on this machine; otherwise the kit goes to the
board, whose profile.py times it with the runtime alone.

    outcome = profile_target("x86-host", "x86.profile.json", budget_s=600)
    outcome = profile_target("aarch64-neon", kit_only=True)        # then: board_instructions(outcome, ...)
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ..runtime.errors import NeurosurgeonError
from ..runtime.profile import profile_kit, read_kit
from ..targets import Preset, get_preset
from .microbench import build_kit

__all__ = ["DEFAULT_KIT_ROOT", "ProfileOutcome", "board_instructions", "profile_target"]

DEFAULT_KIT_ROOT = Path(".cache") / "profile-kits"


@dataclass
class ProfileOutcome:
    preset: Preset
    kit_dir: Path
    kit: dict
    profile: dict | None  # None: not timed here (kit only, or a target that does not run here)
    output: Path | None


def profile_target(target: str, output: str | Path | None = None, kit: str | Path | None = None,
                   scale: str = "default", kit_only: bool = False, budget_s: float | None = None, repeats: int = 7,
                   warmup: int = 2, progress: bool = True) -> ProfileOutcome:
    """Build or reuse the kit for `target` (default folder .cache/profile-kits/PRESET-SCALE) and, where
    the target runs here and not `kit_only`, time it into `output` (resumed if it exists)."""
    preset = get_preset(target)
    here = preset.runs_here() and not kit_only
    if budget_s is not None and budget_s <= 0:
        raise NeurosurgeonError(f"--budget must be positive, got {budget_s:g}")
    if here and not output:
        raise NeurosurgeonError("-o PROFILE.json is required to profile here (or pass --kit-only)")
    kit_dir = Path(kit) if kit else DEFAULT_KIT_ROOT / f"{preset.name}-{scale}"
    build_kit(preset.name, kit_dir, scale, progress=progress)
    profile = (profile_kit(kit_dir, output, budget_s=budget_s, repeats=repeats, warmup=warmup, progress=progress)
               if here else None)
    return ProfileOutcome(preset, kit_dir, read_kit(kit_dir), profile, Path(output) if output else None)


def board_instructions(outcome: ProfileOutcome, budget_s: float | None = None) -> str:
    """How to time a kit on the board and fit what comes back."""
    preset = outcome.preset
    out = shlex.quote(str(outcome.output or f"{preset.name}.profile.json"))
    budget = f" --budget {budget_s:g}" if budget_s else " --budget 600"
    return (f"On the board (numpy and the apache-tvm package; only TVM's runtime library is loaded):\n"
            f"  scp -r {shlex.quote(str(outcome.kit_dir))} BOARD:kit\n"
            f"  ssh BOARD python3 kit/profile.py -o {out}{budget}      # run again to resume\n"
            f"  scp BOARD:{out} .\n"
            f"then fit it: neurosurgeon fit {out} -o {preset.name}.costmodel.json")
